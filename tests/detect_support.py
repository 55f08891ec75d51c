"""Small synthetic detection data shared by the detector and /classify tests."""

from __future__ import annotations

import numpy as np
import polars as pl

from userseq.detect.data import TextData

TINY = {"train.epochs": 6, "train.threads": 2, "model.dim": 16, "train.batch_size": 32,
        "train.lr": 3e-3}


def synthetic_detect(n_users: int = 120, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Malicious users hit a few hot articles within minutes; benign users start on their own user
    page and edit topic pages hours apart."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for u in range(n_users):
        bad = u % 2
        n = int(rng.integers(2, 12))
        t = 1_700_000_000 + int(rng.integers(0, 10**6))
        for j in range(n):
            if bad:
                page = f"Article {int(rng.integers(0, 8))}"
                t += int(rng.integers(10, 120))
            else:
                page = f"User:u{u}" if j == 0 else f"Topic {int(rng.integers(5, 40))}"
                t += int(rng.integers(600, 5000))
            rows.append((f"u{u}", page, t))
        labels.append((f"u{u}", bad))
    return (pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row"),
            pl.DataFrame(labels, schema=["user_id", "label"], orient="row"))


def synthetic_text(n_users: int = 80, seed: int = 0) -> TextData:
    rng = np.random.default_rng(seed)
    good = "the article history section was updated with sources from the library".split()
    bad = "lol buy cheap stuff here you idiot page sucks".split()
    posts, labels = [], []
    for u in range(n_users):
        words = bad if u % 2 else good
        n_posts = int(rng.integers(3, 7))
        posts.append([" ".join(rng.choice(words + good[:3], 8)) for _ in range(n_posts)])
        labels.append(u % 2)
    ids = pl.Series("user_id", [f"t{u}" for u in range(n_users)])
    return TextData(ids, posts, np.array(labels), source="synthetic")
