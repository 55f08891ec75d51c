"""Classical baselines (pop, item-kNN, EASE) through the next-item estimator, CLI and service,
and the beyond-accuracy metrics, against hand-computed cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import polars as pl
import pytest
import torch

from userseq import EventLog, NextItemRecommender
from userseq.data.split import leave_one_out
from userseq.encoders.classical import cosine_neighbours, ease_weights, gram
from userseq.metrics.ranking import (
    bag_scorer,
    beyond_accuracy,
    gini,
    popular_items,
    self_information,
)

# three users over items 1..3: u1 {1, 2}, u2 {2, 3}, u3 {1, 2, 3} (CSR of item indices)
OFFSETS = np.array([0, 2, 4, 7])
ITEMS = np.array([1, 2, 2, 3, 1, 2, 3])
# X^T X: item 1 has 2 users, item 2 three, item 3 two; 1&2 share 2, 1&3 share 1, 2&3 share 2
G = [[2, 2, 1], [2, 3, 2], [1, 2, 2]]


def test_gram_counts_each_user_item_once():
    g = gram(np.array([0, 3, 5, 8]), np.array([1, 2, 1, 2, 3, 1, 2, 3]), 3)  # u1 saw 1 twice
    assert g.shape == (4, 4) and g[0].abs().sum() == 0 and g[:, 0].abs().sum() == 0
    np.testing.assert_array_equal(g[1:, 1:].numpy(), G)


def test_ease_weights_by_hand():
    # lambda 1: A = G + I = [[3,2,1],[2,4,2],[1,2,3]], det 16, P = A^-1 = adj(A) / 16
    #   = [[.5,-.25,0],[-.25,.5,-.25],[0,-.25,.5]]; B[i,j] = -P[i,j] / P[j,j], diag 0
    b = ease_weights(torch.tensor(G, dtype=torch.float32), 1.0)
    np.testing.assert_allclose(b.numpy(), [[0, .5, 0], [.5, 0, .5], [0, .5, 0]], atol=1e-6)
    # a zero row/column (the padding index) stays zero
    padded = torch.nn.functional.pad(torch.tensor(G, dtype=torch.float32), (1, 0, 1, 0))
    bp = ease_weights(padded, 1.0)
    assert bp[0].abs().sum() == 0 and bp[:, 0].abs().sum() == 0
    np.testing.assert_allclose(bp[1:, 1:].numpy(), b.numpy(), atol=1e-6)


def test_item_knn_cosine_and_neighbours_by_hand():
    s = cosine_neighbours(torch.tensor(G, dtype=torch.float32), 5)
    c12, c13, c23 = 2 / math.sqrt(6), 1 / math.sqrt(4), 2 / math.sqrt(6)
    np.testing.assert_allclose(s.numpy(), [[0, c12, c13], [c12, 0, c23], [c13, c23, 0]],
                               atol=1e-6)
    one = cosine_neighbours(torch.tensor(G, dtype=torch.float32), 1)
    # item 1 keeps item 2 (0.816 > 0.5), item 3 keeps item 2; item 2 keeps one of its two ties
    np.testing.assert_allclose(one[0].numpy(), [0, c12, 0], atol=1e-6)
    np.testing.assert_allclose(one[2].numpy(), [0, c23, 0], atol=1e-6)
    assert (one[1] > 0).sum() == 1 and float(one[1].max()) == pytest.approx(c12)


def test_bag_scorer_sums_distinct_history_rows_and_respects_max_len():
    b = torch.zeros(4, 4)
    b[1:, 1:] = torch.tensor([[0, .5, 0], [.5, 0, .5], [0, .5, 0]])
    offsets, items = np.array([0, 3, 4]), np.array([1, 1, 3, 2])  # user 0 saw item 1 twice
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the intended sparse op warns about nothing
        s = bag_scorer(offsets, items, b)(np.array([0, 1]), 0, 4)
    np.testing.assert_allclose(s.numpy(), [[0, 0, 1.0, 0], [0, .5, 0, .5]])
    last = bag_scorer(offsets, items, b, max_len=1)(np.array([0]), 0, 4)  # only item 3 counts
    np.testing.assert_allclose(last.numpy(), [[0, 0, .5, 0]])
    np.testing.assert_allclose(bag_scorer(offsets, items, b)(np.array([1]), 2, 4).numpy(),
                               [[0, .5]])


# --------------------------------------------------------------------------- beyond accuracy
COUNTS = np.array([0, 6, 2, 1, 1, 0])  # 10 training events; item 5 never seen


def test_self_information_by_hand():
    info = self_information(COUNTS)
    np.testing.assert_allclose(info, [0, -math.log2(.6), -math.log2(.2), -math.log2(.1),
                                      -math.log2(.1), -math.log2(.1)])


def test_gini_by_hand():
    assert gini(np.array([3, 3, 3])) == 0.0
    assert gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)  # (n - 1) / n
    assert gini(np.array([2, 1, 1, 0])) == pytest.approx(6 / 16)  # sorted 0,1,1,2: sum (2i-n-1)x
    assert gini(np.zeros(3)) == 0.0


def test_popular_items_top_one_percent_at_least_one():
    assert popular_items(COUNTS).tolist() == [1]
    assert popular_items(np.array([0, 1, 5, 5, 0]), share=0.5).tolist() == [2, 3]


def test_beyond_accuracy_by_hand():
    top = np.array([[1, 2], [1, 3]])
    m = beyond_accuracy(top, COUNTS, [1, 2])
    i1, i2, i3 = -math.log2(.6), -math.log2(.2), -math.log2(.1)
    assert m["novelty@1"] == pytest.approx(i1)
    assert m["novelty@2"] == pytest.approx((2 * i1 + i2 + i3) / 4)
    # @2: recommended counts over the 5 catalogue items [2, 1, 1, 0, 0]: sorted 0,0,1,1,2
    assert m["gini@2"] == pytest.approx(((-4) * 0 + (-2) * 0 + 0 * 1 + 2 * 1 + 4 * 2) / (5 * 4))
    assert m["gini@1"] == pytest.approx(4 * 2 / (5 * 2))  # only item 1, twice
    assert m["pop1%@1"] == 1.0 and m["pop1%@2"] == 0.5
    empty = beyond_accuracy(np.array([[0, 1]]), COUNTS, [1])  # empty slots are skipped
    assert empty == {}


# --------------------------------------------------------------------------- estimator / CLI
def _cyclic(n_users: int = 40, n_items: int = 12, length: int = 8) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(length):
            rows.append((f"u{u}", f"i{(start + t) % n_items}", t))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


@pytest.fixture(scope="module")
def log() -> EventLog:
    return EventLog.from_frame(_cyclic())


@pytest.mark.parametrize("model", ["pop", "itemknn", "ease"])
def test_estimator_fits_in_closed_form_and_round_trips(model, log, tmp_path):
    split = leave_one_out(log)
    over = {"model.l2": [1.0, 100.0]} if model == "ease" else {}
    if model == "itemknn":
        over = {"model.neighbours": [1, 3]}
    rec = NextItemRecommender(model, overrides=over).fit(log, split, run_dir=tmp_path / "run",
                                                         quiet=True)
    tr = rec.train_state_
    assert tr["fit"] == "closed form" and tr["epochs"] == 0
    tried = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert len(tried) == (1 if model == "pop" else 2)
    best = max(tried, key=lambda r: r["valid_ndcg@10"])
    assert tr["best_valid"] == pytest.approx(best["valid_ndcg@10"])
    assert {k: best[k] for k in tr["chosen"]} == tr["chosen"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("novelty@10", "gini@10", "pop1%@10", "coverage@10"):
        assert key in metrics["test"] and key in metrics["baselines"]["popularity"]
    assert "ild@10" not in metrics["test"]  # no embedding space
    if model == "pop":  # the pop model is the popularity baseline, through the estimator
        for k in ("ndcg@10", "hr@10", "mrr", "novelty@10"):
            assert metrics["test"][k] == pytest.approx(metrics["baselines"]["popularity"][k])
    # the same recommendations after save/load, from user ids and explicit histories
    again = NextItemRecommender.load(tmp_path / "run")
    users = ["u0", "u5"]
    assert rec.recommend(users, k=3).equals(again.recommend(users, k=3))
    hist = [["i0", "i1", "i2"]]
    assert rec.recommend_history(hist, k=2).equals(again.recommend_history(hist, k=2))


def test_bag_models_score_the_same_sparse_and_dense(log):
    """The sparse evaluation scorer equals the dense encoder path (user vectors x item matrix)
    that embeddings, the index and the service use."""
    split = leave_one_out(log)
    rec = NextItemRecommender("ease", overrides={"model.l2": [10.0]}).fit(log, split, quiet=True)
    off, items = split.test.offsets, split.test.items
    rows = np.arange(len(off) - 1)
    sparse = rec.history_scorer(off, items)(rows, 0, len(rec.item_ids) + 1)
    dense = rec.scorer(rec.encode(off, items))(rows, 0, len(rec.item_ids) + 1)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    # co-occurrence: after i0, i1, i2 the best items are their neighbours on the cycle
    top = rec.recommend_history([["i0", "i1", "i2"]], k=2)["item_id"].to_list()
    assert set(top) <= {"i3", "i11", "i4", "i10"}


def test_ease_weights_match_the_hand_formula_in_the_estimator(log):
    split = leave_one_out(log)
    rec = NextItemRecommender("ease", overrides={"model.l2": [5.0]}).fit(log, split, quiet=True)
    want = ease_weights(gram(split.train_offsets, split.train_items, len(rec.item_ids)), 5.0)
    torch.testing.assert_close(rec.encoder_.item_scores, want)


def test_closed_form_rejects_what_does_not_apply(log):
    from userseq.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.items, model.item_table and model.quantize"):
        NextItemRecommender("ease", overrides={"model.item_table": "hash",
                                               "model.compression": 2}).fit(log, quiet=True)
    with pytest.raises(Exception, match="l2 must be a non-empty list of positive numbers"):
        NextItemRecommender("ease", overrides={"model.l2": [0]})


def test_cli_train_evaluate_recommend(cli, tmp_path):
    path = tmp_path / "events.csv"
    _cyclic().write_csv(path)
    run = tmp_path / "ease"
    r = cli("train", "--data", path, "--model", "ease", "--out", run, "--quiet",
            "--set", "model.l2=[1,50]")
    assert r.code == 0, r.output
    assert "closed form, chosen on validation: {'l2':" in r.stdout
    assert "beyond accuracy (test)" in r.stdout
    r = cli("evaluate", run)
    assert r.code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == "ease" and 0 <= m["test"]["gini@10"] <= 1
    assert m["train"]["chosen"]["l2"] in (1.0, 50.0)
    r = cli("recommend", run, "--history", "i4,i5,i6", "-k", "2", "--json")
    assert r.code == 0, r.output
    assert "item_id" in r.stdout and ("i7" in r.stdout or "i3" in r.stdout)


def test_service_serves_a_classical_run(log, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    from fastapi.testclient import TestClient

    from userseq.serve.app import create_app
    from userseq.serve.service import Service

    split = leave_one_out(log)
    rec = NextItemRecommender("itemknn", overrides={"model.neighbours": [3]})
    rec.fit(log, split, run_dir=tmp_path / "run", quiet=True)
    svc = Service.from_run(tmp_path / "run")
    try:
        with TestClient(create_app(svc)) as client:
            r = client.post("/recommend", json={"history": ["i0", "i1", "i2"], "k": 3})
            assert r.status_code == 200, r.text
            got = [x["score"] for x in r.json()["items"]]
            want = rec.recommend_history([["i0", "i1", "i2"]], k=3)["score"].to_list()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # ties may reorder ids
            r = client.post("/recommend", json={"user_id": "u3", "k": 2})
            assert r.status_code == 200 and r.json()["known_user"]
    finally:
        svc.close()
