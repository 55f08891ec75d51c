"""A tiny trained run shared by the index, service and web tests (trained once per test session).

Users are strings ("u0".."u79"), items are integers (100..139) so that id conversion is exercised:
every user walks the catalogue in steps of +1, so the next item after item i is i + 1 (mod 40).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

N_ITEMS = 40
FIRST_ITEM = 100
SMALL = {
    "model.dim": 32, "model.max_len": 16, "model.heads": 2, "train.batch_size": 32,
    "train.epochs": 10, "train.lr": 5e-3, "train.patience": 10, "eval.ks": [1, 10],
}


def next_item(item: int) -> int:
    return FIRST_ITEM + (item - FIRST_ITEM + 1) % N_ITEMS


def cyclic_frame(n_users: int = 80, length: int = 14, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(N_ITEMS))
        for t in range(length):
            rows.append((f"u{u}", FIRST_ITEM + (start + t) % N_ITEMS, t))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


@lru_cache(maxsize=1)
def trained_run() -> Path:
    """Directory of a trained SASRec run (no index yet); copy it before changing it."""
    from userseq import EventLog, NextItemRecommender
    from userseq.core.artifacts import write_json
    from userseq.data.split import leave_one_out

    root = Path(tempfile.mkdtemp(prefix="userseq-serve-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    log = EventLog.from_frame(cyclic_frame())
    split = leave_one_out(log)
    rec = NextItemRecommender("sasrec", overrides=SMALL).fit(log, split, run_dir=root / "run",
                                                             quiet=True)
    write_json(rec.report(log, split), root / "run" / "metrics.json")  # as `userseq train` does
    return root / "run"


def fresh_run(dest: Path) -> Path:
    """A private copy of the trained run (tests that build indexes or write files use this)."""
    target = dest / "run"
    shutil.copytree(trained_run(), target)
    return target


def item_meta() -> pl.DataFrame:
    """Titles and genres for the synthetic items (as the web page shows them for ML-1M)."""
    genres = ["Drama", "Comedy", "Action", "Horror"]
    return pl.DataFrame({
        "item_id": [FIRST_ITEM + i for i in range(N_ITEMS)],
        "title": [f"Film {FIRST_ITEM + i}" for i in range(N_ITEMS)],
        "genres": [[genres[i % 4]] for i in range(N_ITEMS)],
    })


@contextmanager
def fresh_service(dest: Path, **options) -> Iterator:
    """A `Service` over a fresh copy of the trained run (closed on exit)."""
    from userseq.serve.service import Service

    svc = Service.from_run(fresh_run(dest), **options)
    try:
        yield svc
    finally:
        svc.close()
