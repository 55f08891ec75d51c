"""`userseq train --init-from RUN` / `fit(init_from=...)`: warm start with growing id maps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import synthetic_events

from userseq.core.errors import ArtifactError, ConfigError
from userseq.data.eventlog import EventLog
from userseq.nextitem.estimator import NextItemRecommender

OVER = {"model.dim": 16, "model.max_len": 8, "train.epochs": 1, "train.device": "cpu"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    frame = synthetic_events(n_users=30, n_items=20, length=10)
    rec = NextItemRecommender("sasrec", overrides=OVER).fit(
        EventLog.from_frame(frame), run_dir=tmp / "base", quiet=True)
    return rec, frame, tmp


def _new_log(frame: pl.DataFrame) -> EventLog:
    """Users u0..u19 only (u20..u29 are not in the new data), plus a new user walking new items."""
    kept = frame.filter(pl.col("user_id").str.slice(1).cast(pl.Int64) < 20)
    new = pl.DataFrame({"user_id": ["fresh"] * 4, "item_id": ["n1", "n2", "i0", "n3"],
                        "timestamp": [1, 2, 3, 4]}).cast({"timestamp": frame["timestamp"].dtype})
    return EventLog.from_frame(pl.concat([kept, new]))


def test_warm_start_keeps_old_rows_and_grows_the_maps(base):
    old, frame, _ = base
    log = _new_log(frame)
    # lr ~ 0: what the model holds after fit is what the warm start copied
    rec = NextItemRecommender("sasrec", overrides={**OVER, "train.lr": 1e-12}).fit(
        log, quiet=True, init_from=old)
    cat = rec.item_ids.to_list()
    assert cat[: log.n_items] == log.item_ids.to_list()  # the log's items first
    assert sorted(cat) == sorted(set(old.item_ids.to_list()) | {"n1", "n2", "n3"})
    W_old, W_new = old.item_matrix(), rec.item_matrix()
    for j, item in enumerate(cat):
        if item.startswith("n"):
            continue
        i = old.item_ids.to_list().index(item)
        np.testing.assert_allclose(W_new[j + 1], W_old[i + 1], atol=1e-6)
    np.testing.assert_allclose(W_new[0], W_old[0], atol=1e-6)
    a, b = old.encoder_.state_dict(), rec.encoder_.state_dict()
    for k in a:
        if a[k].shape == b[k].shape:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    info = rec.item_info_["warm_start"]
    assert info == {"items_kept": 20, "items_new": 3, "users_carried_over": 10}
    # the users the new log lacks are still known, with their old histories
    assert len(rec.user_ids) == 31 and "u25" in rec.user_ids.to_list()
    u_new = rec.user_embeddings()[rec.user_ids.to_list().index("u25")]
    u_old = old.user_embeddings()[old.user_ids.to_list().index("u25")]
    np.testing.assert_allclose(u_new, u_old, atol=1e-5)  # same history, same weights
    assert rec.recommend(["fresh"], k=3).height == 3


def test_cli_init_from_and_its_errors(base, cli, tmp_path):
    old, frame, tmp = base
    data = tmp_path / "new.csv"
    frame.write_csv(data)
    r = cli("train", "--data", data, "--out", tmp_path / "warm", "--init-from", tmp / "base",
            "--set", "model.dim=16", "--set", "model.max_len=8", "--epochs", "1",
            "--device", "cpu", "--quiet")
    assert r.code == 0, r.output
    m = json.loads((tmp_path / "warm" / "metrics.json").read_text())
    assert m["warm_start"] == {"items_kept": 20, "items_new": 0, "users_carried_over": 0}

    r = cli("train", "--data", data, "--out", tmp_path / "g", "--init-from", tmp / "base",
            "--model", "gru4rec", "--set", "model.dim=16", "--epochs", "1", "--quiet")
    assert r.code == 2
    assert ("that run's encoder is 'sasrec', this run's is 'gru4rec'; warm start needs the same "
            "encoder (--model sasrec)") in r.error
    r = cli("train", "--data", data, "--out", tmp_path / "d", "--init-from", tmp / "base",
            "--set", "model.dim=32", "--set", "model.max_len=8", "--epochs", "1", "--quiet")
    assert r.code == 2 and "model.dim is 16 there and 32 here" in r.error
    r = cli("train", "--data", data, "--out", tmp_path / "x", "--init-from", tmp_path / "none")
    assert r.code == 2 and "--init-from" in r.error and "run directory not found" in r.error


def test_init_from_another_task_is_a_clear_error(base, tmp_path):
    old, frame, tmp = base
    fake = tmp_path / "ctr-run"
    shutil.copytree(tmp / "base", fake)  # a complete run whose manifest names another task
    manifest = json.loads((tmp / "base" / "estimator.json").read_text())
    (fake / "estimator.json").write_text(json.dumps({**manifest, "task": "ctr"}))
    rec = NextItemRecommender("sasrec", overrides=OVER)
    with pytest.raises(ArtifactError, match=r"--init-from .*ctr-run: .*this is a 'ctr' run, "
                                            r"not a 'nextitem' run"):
        rec.fit(EventLog.from_frame(frame), init_from=fake, quiet=True)
    with pytest.raises(ConfigError, match="--init-from and --resume exclude each other"):
        rec.fit(EventLog.from_frame(frame), init_from=tmp / "base", resume=True, quiet=True)
