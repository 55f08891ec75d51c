"""RecTools' SASRec on an exported userseq split; runs in benchmarks/peers/.venv (RecTools 0.19).

Started by benchmarks/peers/rectools_sasrec.py, never imported by userseq. Reads SPLIT/train.csv
(user, item, pos: the training events, in order) and SPLIT/valid.csv (user, item: each user's
validation item, the event after the training ones); trains one epoch at a time (`fit_partial`)
until `--minutes` of training time are spent (recommendation time is not counted), and after each
epoch writes OUT/epoch-E-{valid,test}.npy: top-K item lists for every user in valid.csv's order,
recommended from the training events (valid) and from training + validation events (test), seen
items filtered. OUT/log.jsonl gets one line per epoch: epoch, train_seconds, recommend_seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import SASRecModel
from rectools.models.nn.item_net import IdEmbeddingsItemNet


def dataset(events: pd.DataFrame) -> Dataset:
    df = pd.DataFrame({Columns.User: events["user"], Columns.Item: events["item"],
                       Columns.Weight: 1.0,
                       Columns.Datetime: pd.to_datetime(events["pos"], unit="s")})
    return Dataset.construct(df)


def top_lists(model: SASRecModel, data: Dataset, users: np.ndarray, k: int) -> np.ndarray:
    reco = model.recommend(users=users, dataset=data, k=k, filter_viewed=True)
    reco = reco.sort_values([Columns.User, Columns.Rank])
    out = np.zeros((len(users), k), dtype=np.int64)
    row = pd.Series(np.arange(len(users)), index=users)
    r = row.loc[reco[Columns.User].to_numpy()].to_numpy()
    out[r, reco[Columns.Rank].to_numpy().astype(int) - 1] = reco[Columns.Item].to_numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(a.split / "train.csv")
    valid = pd.read_csv(a.split / "valid.csv")
    last = train.groupby("user")["pos"].max()
    valid_ev = valid.assign(pos=valid["user"].map(last).fillna(-1).astype(int) + 1)
    train_ds = dataset(train)
    test_ds = dataset(pd.concat([train, valid_ev[["user", "item", "pos"]]], ignore_index=True))
    users = valid["user"].to_numpy()
    model = SASRecModel(
        n_blocks=a.blocks, n_heads=a.heads, n_factors=a.dim, dropout_rate=a.dropout,
        session_max_len=a.max_len, loss="softmax", lr=a.lr, batch_size=a.batch_size,
        epochs=1, verbose=0, item_net_block_types=(IdEmbeddingsItemNet,),
        recommend_n_threads=a.threads)
    spent = 0.0
    with open(a.out / "log.jsonl", "w") as log:
        for epoch in range(1, a.max_epochs + 1):
            t0 = time.perf_counter()
            model.fit_partial(train_ds, min_epochs=1, max_epochs=1)
            spent += time.perf_counter() - t0
            t1 = time.perf_counter()
            np.save(a.out / f"epoch-{epoch}-valid.npy", top_lists(model, train_ds, users, a.k))
            np.save(a.out / f"epoch-{epoch}-test.npy", top_lists(model, test_ds, users, a.k))
            log.write(json.dumps({"epoch": epoch, "train_seconds": round(spent, 2),
                                  "recommend_seconds": round(time.perf_counter() - t1, 2)})
                      + "\n")
            log.flush()
            if spent >= a.minutes * 60:
                break


if __name__ == "__main__":
    main()
