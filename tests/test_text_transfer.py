"""Issue 20: cold-start-aware id+text items (DropoutNet + popularity gate), the warm/cold/all test
groups of the cold-start split, zero-shot transfer to another catalogue, text-encoder choice."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from conftest import synthetic_events
from test_items import TINY, fake_text, item_meta  # noqa: F401 - fake_text is a fixture

from userseq.data.eventlog import EventLog
from userseq.data.split import cold_start_split
from userseq.items.text import TextItems
from userseq.nextitem.estimator import NextItemRecommender


# ---------------------------------------------------------------------- DropoutNet + gate
def test_popularity_gate_and_id_dropout_weights():
    vec = torch.randn(4, 384)
    has = torch.tensor([False, True, True, True])
    known = torch.tensor([False, True, True, False])  # item 3 is cold: no id part
    counts = torch.tensor([0, 3, 0, 0])
    t = TextItems(vec, has, 8, "id+text", known=known, adapter="mlp", dropout=0.0, id_dropout=0.5,
                  gate="popularity", counts=counts).eval()
    w = t.id_weight(torch.tensor([0, 1, 2, 3]))
    # sigmoid(1 * log(1 + 3) + 0) = 4 / 5; sigmoid(log 1) = 1/2; cold and padding: 0
    assert torch.allclose(w, torch.tensor([0.0, 0.8, 0.5, 0.0]))
    t.train()
    big = torch.ones(20_000, dtype=torch.long)
    kept = (t.id_weight(big) > 0).float().mean().item()
    assert abs(kept - 0.5) < 0.02  # half the occurrences lose their id part while training
    out = t(torch.tensor([3]))  # a cold item is its text path alone, also while training
    assert torch.allclose(out, t.adapter(vec[3:4]))
    old = TextItems(vec, has, 8, "id+text", known=known, adapter="mlp").train()
    assert torch.equal(old.id_weight(torch.tensor([0, 1, 2, 3])),
                       torch.tensor([0.0, 1.0, 1.0, 0.0]))  # no drop, no gate: the old sum


def test_cold_start_split_has_a_warm_group_out_of_training():
    log = EventLog.from_frame(synthetic_events(n_users=80, n_items=40))
    sp = cold_start_split(log, cold_fraction=0.3, seed=1)
    warm = sp.groups["warm"]
    offsets, items = log.sequences()
    assert len(warm) == sp.info["warm_test_users"] > 0
    assert len(warm) + len(sp.valid) + len(sp.test) == log.n_users  # every user exactly once
    for i in range(len(warm)):
        u = int(warm.users[i])
        seq = items[offsets[u]:offsets[u + 1]]
        kept = sp.train_items[sp.train_offsets[u]:sp.train_offsets[u + 1]]
        assert warm.targets[i] == seq[-1] and np.array_equal(warm.history(i), seq[:-1])
        assert len(kept) == int(np.isin(seq[:-1], kept).sum())  # the target left training
    cold = set(sp.test.targets.tolist()) | set(sp.valid.targets.tolist())
    assert cold.isdisjoint(sp.train_items.tolist())
    assert set(warm.targets.tolist()) <= set(sp.train_items.tolist()) | set(warm.targets.tolist())
    assert not cold & set(warm.targets.tolist())


def test_id_text_dropout_trains_reports_groups_and_reloads(fake_text, tmp_path):
    log = EventLog.from_frame(synthetic_events(n_users=150, n_items=100, length=8))
    sp = cold_start_split(log, cold_fraction=0.3, seed=0)
    over = {**TINY, "train.epochs": 8, "train.patience": 8, "train.lr": 0.005,
            "train.threads": 1, "model.items": "id+text"}
    meta = item_meta(100)
    new = NextItemRecommender("sasrec", overrides=over).fit(log, sp, item_meta=meta, quiet=True,
                                                            run_dir=tmp_path / "new")
    old = NextItemRecommender("sasrec", overrides={**over, "model.id_dropout": 0.0,
                                                   "model.id_gate": "none"}).fit(
        log, sp, item_meta=meta, quiet=True)
    g_new, g_old = new.group_report(sp), old.group_report(sp)
    assert set(g_new) == {"cold", "warm", "all"}
    n = g_new["cold"]["users"] + g_new["warm"]["users"]
    assert g_new["all"]["users"] == n
    all_ndcg = (g_new["cold"]["ndcg@10"] * g_new["cold"]["users"]
                + g_new["warm"]["ndcg@10"] * g_new["warm"]["users"]) / n
    assert math.isclose(g_new["all"]["ndcg@10"], all_ndcg, rel_tol=1e-5)
    # the text path ranks never-trained items (the smooth fake text generalises), ids the warm
    assert g_new["cold"]["hr@10"] > 0.5 and g_new["warm"]["hr@10"] > 0.5, g_new
    assert "items.gate_w" in new.encoder_.state_dict()
    assert "items.gate_w" not in old.encoder_.state_dict()
    m = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert m["test_groups"]["cold"]["ndcg@10"] == pytest.approx(g_new["cold"]["ndcg@10"])
    back = NextItemRecommender.load(tmp_path / "new")
    assert torch.allclose(back.item_matrix(), new.item_matrix())
