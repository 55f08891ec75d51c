"""Graph-context items (`model.items: id+graph`, userseq.items.graph): the co-occurrence adjacency
by hand, LightGCN propagation against a dense computation, no validation/test edges (leakage),
training end to end (SASRec and the hybrid ssm+attention stack) and a save/load round trip."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from userseq import EventLog, NextItemRecommender
from userseq.core.errors import ConfigError
from userseq.data.split import leave_one_out
from userseq.items.base import IdEmbedding
from userseq.items.factory import build_items
from userseq.items.graph import GraphItems, cooccurrence_graph


def dense(index: torch.Tensor, value: torch.Tensor, n: int) -> np.ndarray:
    a = np.zeros((n + 1, n + 1), dtype=np.float32)
    a[index[0].numpy(), index[1].numpy()] = value.numpy()
    return a


def test_adjacency_by_hand():
    # users [1, 2, 3] and [2, 4] (CSR), 4 items
    idx, val = cooccurrence_graph(np.array([0, 3, 5]), np.array([1, 2, 3, 2, 4]), 4)
    a = dense(idx, val, 4)
    # edges 1-2, 2-3, 2-4; degrees 1: 1, 2: 3, 3: 1, 4: 1; value = 1 / sqrt(d_i d_j)
    want = np.zeros((5, 5), dtype=np.float32)
    for i, j in ((1, 2), (2, 3), (2, 4)):
        want[i, j] = want[j, i] = 1 / np.sqrt(3)
    np.testing.assert_allclose(a, want, atol=1e-7)
    # window 2 adds 1-3; the boundary between users never links (3 -> 2 is not an edge)
    idx2, val2 = cooccurrence_graph(np.array([0, 3, 5]), np.array([1, 2, 3, 2, 4]), 4, window=2)
    a2 = dense(idx2, val2, 4)
    assert a2[1, 3] > 0 and a2[3, 1] > 0
    i3, _ = cooccurrence_graph(np.array([0, 2, 4]), np.array([1, 2, 3, 4]), 4)
    assert {(int(r), int(c)) for r, c in i3.T} == {(1, 2), (2, 1), (3, 4), (4, 3)}
    # repeats are no self-loops
    i4, _ = cooccurrence_graph(np.array([0, 3]), np.array([1, 1, 2]), 2)
    assert {(int(r), int(c)) for r, c in i4.T} == {(1, 2), (2, 1)}


def test_propagation_equals_dense_lightgcn():
    torch.manual_seed(0)
    idx, val = cooccurrence_graph(np.array([0, 3, 5]), np.array([1, 2, 3, 2, 4]), 4)
    ids = IdEmbedding(4, 6, special_tokens=1)
    g = GraphItems(ids, idx, val, layers=2)
    e = ids.output_matrix().detach().numpy()
    a = dense(idx, val, 4)
    want = (e + a @ e + a @ a @ e) / 3
    np.testing.assert_allclose(g.output_matrix().detach().numpy(), want, atol=1e-6)
    x = torch.tensor([[0, 2, 5], [4, 1, 3]])  # 5 = the special token ([mask]): the id table's row
    out = g(x).detach().numpy()
    np.testing.assert_allclose(out[1], want[[4, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(out[0, 2], ids.table.weight[5].detach().numpy(), atol=1e-7)
    # gradients reach the id table through the sparse products
    g.output_matrix().sum().backward()
    assert ids.table.weight.grad is not None and ids.table.weight.grad[1:5].abs().sum() > 0


def leaky_log() -> pl.DataFrame:
    """Each user walks items 0..9 in order, then a validation item and a test item that nobody
    has in training (v<u>, t<u>)."""
    rows = []
    for u in range(30):
        seq = [f"i{(u + t) % 10}" for t in range(8)] + [f"v{u}", f"t{u}"]
        rows += [(f"u{u}", item, t) for t, item in enumerate(seq)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


SMALL = {"model.dim": 16, "model.max_len": 12, "train.batch_size": 16, "train.epochs": 2,
         "eval.ks": [1, 10], "model.items": "id+graph"}


@pytest.mark.parametrize("model,extra", [("sasrec", {}),
                                         ("ssm", {"model.blocks": ["ssm", "attn"]})])
def test_graph_has_no_validation_or_test_edges_and_round_trips(tmp_path, model, extra):
    log = EventLog.from_frame(leaky_log())
    split = leave_one_out(log)
    rec = NextItemRecommender(model, overrides={**SMALL, **extra}).fit(
        log, split, run_dir=tmp_path / "run", quiet=True)
    items = rec.encoder_.items
    assert isinstance(items, GraphItems)
    ids = log.item_ids.to_list()
    held_out = {i + 1 for i, v in enumerate(ids) if v[0] in "vt"}  # item indices of v*/t*
    linked = set(items.graph_index.flatten().tolist())
    assert not linked & held_out  # validation and test items have no edge
    assert linked == {i + 1 for i, v in enumerate(ids) if v[0] == "i"}
    assert rec.item_info_["graph"]["source"] == "training split"
    back = NextItemRecommender.load(tmp_path / "run")
    assert isinstance(back.encoder_.items, GraphItems)
    np.testing.assert_allclose(back.item_embeddings(), rec.item_embeddings(), atol=1e-5)
    h = [["i1", "i2", "i3"]]
    a = rec.recommend_history(h, k=3)
    b = back.recommend_history(h, k=3)
    assert a["item_id"].to_list() == b["item_id"].to_list()


def test_id_graph_needs_the_graph():
    from userseq.encoders.ssm import SSMConfig

    cfg = SSMConfig(items="id+graph")
    with pytest.raises(ConfigError, match="co-occurrence graph of the training split"):
        build_items(cfg, 10)
