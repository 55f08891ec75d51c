"""Full-catalogue evaluation streamed in item chunks: computed item tables (hash, QR, unified) are
scored chunk by chunk from `output_rows`, never as a whole matrix, with the same results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userseq.data.eventlog import EventLog
from userseq.items.compressed import ComputedTable
from userseq.metrics.ranking import evaluate, matrix_scorer, streamed_scorer
from userseq.nextitem.estimator import NextItemRecommender


def test_streamed_scorer_equals_the_matrix_scorer():
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(37, 8, generator=g), torch.randn(1001, 8, generator=g)
    targets = np.random.default_rng(0).integers(1, 1001, 37)
    full = evaluate(matrix_scorer(users, items), 1000, targets, None, (5, 10), 16, 10_000)
    calls = []

    def rows(lo, hi):
        calls.append((lo, hi))
        return items[lo:hi]

    chunked = evaluate(streamed_scorer(users, rows), 1000, targets, None, (5, 10), 16, 64)
    assert chunked == full
    assert max(hi - lo for lo, hi in calls) <= 64  # never more than one chunk of item vectors


@pytest.mark.parametrize("table", ["hash", "qr"])
def test_compressed_table_is_evaluated_chunk_by_chunk(table, monkeypatch):
    from conftest import synthetic_events

    log = EventLog.from_frame(synthetic_events(n_users=50, n_items=300, length=12))
    rec = NextItemRecommender("sasrec", overrides={
        "model.dim": 16, "model.max_len": 8, "model.item_table": table, "model.compression": 4,
        "train.epochs": 1, "train.device": "cpu", "loss.name": "sampled_softmax",
        "eval.item_chunk": 1_000_000}).fit(log, quiet=True)
    whole = rec.evaluate(_valid(rec, log))
    rec.set_params(eval__item_chunk=64)

    def no_matrix(self):
        raise AssertionError("the whole item matrix was built")

    monkeypatch.setattr(ComputedTable, "output_matrix", no_matrix)
    chunked = rec.evaluate(_valid(rec, log))
    # kNN-Embed's clusters@K needs the whole item matrix: the streamed evaluation leaves it out
    assert set(chunked) == {k for k in whole if not k.startswith("clusters@")}
    assert "ild@10" in chunked  # intra-list diversity from the listed items' rows only
    for k in chunked:
        assert chunked[k] == pytest.approx(whole[k], abs=1e-6), k
    top = rec.recommend(["u1"], k=5)  # recommending streams too
    assert top.height == 5


def _valid(rec, log):
    from userseq.data.split import make_split
    from userseq.nextitem.config import split_kwargs

    return make_split(log, rec.config.data.split, **split_kwargs(rec.config)).valid
