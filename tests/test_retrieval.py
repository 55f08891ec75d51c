"""Retrieval that sees more of the user (issue #16): list metrics and diversity, kNN-Embed,
the ICSRec loss, Ada-Retrieval, and their CLI / HTTP entry points."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from test_nextitem import cyclic_log

from userseq import NextItemRecommender
from userseq.core.artifacts import read_json
from userseq.core.config import TrainConfig
from userseq.core.errors import ConfigError, UserseqError
from userseq.core.trainer import Trainer
from userseq.data.split import leave_one_out
from userseq.index.knn_embed import KnnEmbed, KnnEmbedConfig, allot, spherical_kmeans
from userseq.losses import LossConfig, NextItemLoss
from userseq.losses.icsrec import cicl_loss, ficl_loss, kmeans
from userseq.losses.registry import LossContext
from userseq.metrics.ranking import (
    distinct_groups,
    diversity,
    evaluate_lists,
    intra_list_diversity,
    list_ranks,
)

SMALL = {
    "model.dim": 32, "model.max_len": 16, "model.heads": 2, "train.batch_size": 32,
    "train.epochs": 8, "train.lr": 5e-3, "train.patience": 12, "eval.ks": [1, 10],
}


# ---------------------------------------------------------------------- list metrics, diversity
def test_list_metrics_are_hand_computed():
    top = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    targets = np.array([3, 4, 1])
    assert list_ranks(top, targets).tolist() == [2, 3, 4]  # 4 = not in the list (K + 1)
    m = evaluate_lists(top, targets, n_items=10, ks=[1, 3])
    assert m["hr@1"] == 0.0
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)  # truncated at K
    assert m["coverage@3"] == pytest.approx(9 / 10)
    with pytest.raises(ValueError, match="fewer than the cut-off 5"):
        evaluate_lists(top, targets, 10, ks=[5])


def test_intra_list_diversity_and_distinct_groups():
    vectors = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    # pairs of [1, 2, 3]: cos 1, 0, 0 -> distances 0, 1, 1 -> mean 2/3
    assert intra_list_diversity(np.array([[1, 2, 3]]), vectors, 3) == pytest.approx(2 / 3)
    # [1, 4]: opposite vectors, distance 2; a one-item list has no pair: 0
    assert intra_list_diversity(np.array([[1, 4]]), vectors, 2) == pytest.approx(2.0)
    assert intra_list_diversity(np.array([[1, 4]]), vectors, 1) == 0.0
    groups = np.array([-1, 0, 0, 1, 2])
    assert distinct_groups(np.array([[1, 2, 3], [3, 4, 0]]), groups, 3) == pytest.approx(2.0)
    multi = [[], [0, 1], [1], [2], []]
    assert distinct_groups(np.array([[1, 2, 3]]), multi, 3) == 3.0
    d = diversity(np.array([[1, 2, 3]]), [1, 3, 5], vectors, {"clusters": groups})
    assert set(d) == {"ild@1", "ild@3", "clusters@1", "clusters@3"}  # @5 > list length: skipped


# ---------------------------------------------------------------------- kNN-Embed
def test_allot_splits_k_by_largest_remainder():
    p = torch.tensor([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 0.0], [0.05, 0.9, 0.05]])
    q = allot(p, 10)
    assert q.tolist() == [[5, 3, 2], [4, 3, 3], [10, 0, 0], [1, 9, 0]]
    assert (q.sum(1) == 10).all()


def test_spherical_kmeans_separates_directions_and_checks_k():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(20, 3, generator=g)
    b = torch.tensor([0.0, 0.0, 3.0]) + 0.05 * torch.randn(20, 3, generator=g)
    c, assign = spherical_kmeans(torch.cat([a, b]), 2)
    assert len(set(assign[:20].tolist())) == 1 and len(set(assign[20:].tolist())) == 1
    assert assign[0] != assign[20]
    assert torch.allclose(c.norm(dim=1), torch.ones(2))
    with pytest.raises(ConfigError, match=r"retrieval.knn_embed.clusters \(41\) is larger"):
        spherical_kmeans(torch.cat([a, b]), 41)


def two_interest_items() -> torch.Tensor:
    """Items 1-10 point along x, items 11-20 along y (row 0 = padding); scores decrease with id
    inside each group."""
    v = torch.zeros(21, 2)
    v[1:11, 0] = torch.linspace(2.0, 1.0, 10)
    v[11:21, 1] = torch.linspace(2.0, 1.0, 10)
    return v


def test_knn_embed_allots_per_interest_without_duplicates():
    items = two_interest_items()
    knn = KnnEmbed(KnnEmbedConfig(clusters=2, neighbours=0), items)
    cl = knn.cluster_ids()
    assert cl[0] == -1 and len(set(cl[1:11])) == 1 and len(set(cl[11:])) == 1
    # history: 3 x-items and 1 y-item -> mixture 0.75 / 0.25 -> 6 + 2 of 8 slots
    offsets, hist = np.array([0, 4]), np.array([1, 2, 3, 11])
    user = torch.tensor([[1.0, 0.1]])  # single-vector top-8 would be x-items only
    top, scores = knn.retrieve(user, offsets, hist, 8)
    x = [i for i in top[0] if i <= 10]
    y = [i for i in top[0] if i > 10]
    assert x == [4, 5, 6, 7, 8, 9] and y == [12, 13]  # best unseen of each cluster
    assert len(set(top[0])) == 8
    assert (np.diff(scores[0]) <= 0).all()  # ordered by score
    # without seen filtering the history items come back
    top2, _ = knn.retrieve(user, offsets, hist, 8, filter_seen=False)
    assert {1, 2, 3}.issubset(set(top2[0]))
    with pytest.raises(ConfigError, match=r"k \(21\) is larger than the catalogue \(20 items\)"):
        knn.retrieve(user, offsets, hist, 21)
    with pytest.raises(ConfigError, match=r"clusters \(30\) is larger than the catalogue"):
        KnnEmbed(KnnEmbedConfig(clusters=30), items)


def test_knn_embed_neighbours_smooth_the_mixture():
    items = two_interest_items()
    knn = KnnEmbed(KnnEmbedConfig(clusters=2, neighbours=1, smoothing=0.5), items)
    # bank: user 0 likes x only, user 1 (same direction as the query) likes y only
    knn.fit_users(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 2, 4]),
                  np.array([1, 2, 11, 12]))
    x, y = knn.item_cluster[1].item(), knn.item_cluster[11].item()
    p = knn.smoothed(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]).index_fill_(
        1, torch.tensor([x]), 1.0))
    assert p[0, x].item() == pytest.approx(0.5) and p[0, y].item() == pytest.approx(0.5)
    # the user itself is never its own neighbour
    p = knn.smoothed(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), self_rows=np.array([1]))
    assert p[0, x].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------- ICSRec
def icsrec_ctx(**settings) -> LossContext:
    cfg = LossConfig(name="icsrec", icsrec=settings)
    return LossContext(cfg, n_items=10)


def test_cicl_pairs_same_targets_and_masks_false_negatives():
    ctx = icsrec_ctx(fnm=True)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    t = torch.tensor([3, 3, 5, 5])
    # partners: 0<->1 (target 3), 2<->3 (target 5). Row 0's logits against the partners
    # [z1, z0, z3, z2] are [1, 1, 0, 0]; FNM masks z0 (the other same-target pair)
    loss = cicl_loss(z, t, ctx)
    expected = -torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), 0)[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = cicl_loss(z, t, icsrec_ctx(fnm=False))
    assert plain.item() == pytest.approx(
        -torch.log_softmax(torch.tensor([1.0, 1.0, 0.0, 0.0]), 0)[0].item(), rel=1e-5)
    # a lone target with no partner and nothing remembered is left out
    assert cicl_loss(z[:1], t[:1], ctx).item() == 0.0


def test_ficl_pulls_toward_the_nearest_prototype():
    ctx = icsrec_ctx(temperature=1.0)
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert ficl_loss(z, ctx).item() == 0.0  # no prototypes before the first epoch
    ctx.state["prototypes"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert ficl_loss(z, ctx).item() == pytest.approx(expected.item(), rel=1e-5)
    cos = icsrec_ctx(similarity="cosine", temperature=0.5)
    cos.state["prototypes"] = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # norms do not matter
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]  # cos 1 and 0, / 0.5
    assert ficl_loss(z, cos).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match=r"loss.icsrec.intents \(5\) is larger"):
        kmeans(z, 5)


def test_trainer_runs_epoch_start_callbacks_each_epoch():
    calls = []
    model = torch.nn.Linear(2, 1)
    tr = Trainer(TrainConfig(epochs=3, patience=10), quiet=True)
    tr.on_epoch_start.append(lambda m, epoch: calls.append((m is model, epoch)))
    tr.fit(model, lambda e: [torch.ones(4, 2)], 1, lambda m, b: m(b).pow(2).mean())
    assert calls == [(True, 1), (True, 2), (True, 3)]


def test_icsrec_trains_end_to_end_and_refreshes_prototypes(monkeypatch):
    log = cyclic_log()
    split = leave_one_out(log)
    refreshed = []
    orig = NextItemLoss.epoch_start

    def spy(self, h, targets):
        refreshed.append((h.shape, len(targets)))
        orig(self, h, targets)

    monkeypatch.setattr(NextItemLoss, "epoch_start", spy)
    rec = NextItemRecommender("sasrec", overrides={
        **SMALL, "loss.name": "icsrec", "loss.icsrec.intents": 16,
        "loss.icsrec.sample": 300}).fit(log, split, quiet=True)
    assert len(refreshed) == 8 and refreshed[0] == (torch.Size([300, 32]), 300)
    assert rec.evaluate(split.test)["hr@10"] > 0.9  # the cyclic pattern is learned


# ---------------------------------------------------------------------- estimator, Ada
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    log = cyclic_log()
    split = leave_one_out(log)
    run = tmp_path_factory.mktemp("retrieval") / "base"
    rec = NextItemRecommender("sasrec", overrides={**SMALL, "retrieval.knn_embed.clusters": 4}
                              ).fit(log, split, run_dir=run, quiet=True)
    return log, split, rec, run


@pytest.fixture(scope="module")
def ada_run(trained, tmp_path_factory):
    log, split, _, run = trained
    rec = NextItemRecommender.load(run)
    rec.set_params(**{"retrieval.ada.train_k": 10, "retrieval.ada.rounds": 5,
                      "train.epochs": 2})
    out = tmp_path_factory.mktemp("retrieval") / "ada"
    rec.fit_ada(log, split, run_dir=out, quiet=True, base_run=str(run))
    return rec, out


def test_every_mode_evaluates_with_diversity(trained):
    log, split, rec, _ = trained
    single = rec.evaluate(split.test, retrieval="single")
    knn = rec.evaluate(split.test, retrieval="knn_embed", bank=(split.train_offsets,
                                                                 split.train_items))
    for m in (single, knn):
        assert {"hr@10", "ndcg@10", "ild@10", "clusters@10", "coverage@10"} <= set(m)
    assert single["hr@10"] > 0.9 and knn["hr@10"] > 0.9
    with pytest.raises(ConfigError, match="retrieval 'foo' is not a retrieval mode"):
        rec.evaluate(split.test, retrieval="foo")
    with pytest.raises(ConfigError, match="`userseq ada fit RUN --out NEW_RUN`"):
        rec.recommend(["u1"], k=5, retrieval="ada")


def test_knn_embed_recommend_known_and_new_users(trained):
    _, _, rec, _ = trained
    a = rec.recommend(["u1", "u2"], k=6, retrieval="knn_embed")
    assert a.height == 12 and a.group_by("user_id").agg(
        n=pl.col("item_id").n_unique()).get_column("n").to_list() == [6, 6]
    b = rec.recommend_history([["i1", "i2", "i3"]], k=4, retrieval="knn_embed")
    assert b.height == 4 and "i1" not in b["item_id"].to_list()


def test_ada_rounds_save_load_and_errors(trained, ada_run):
    log, split, base, run = trained
    rec, out = ada_run
    assert (out / "ada.safetensors").exists()
    assert rec.config.retrieval.mode == "ada"
    assert rec.config.retrieval.ada.base_run == str(run)
    m = read_json(out / "metrics.json")
    assert m["retrieval"]["mode"] == "ada" and m["test"]["hr@10"] > 0.5
    loaded = NextItemRecommender.load(out)
    a = rec.recommend(["u1", "u7"], k=10)
    b = loaded.recommend(["u1", "u7"], k=10)
    assert a["item_id"].to_list() == b["item_id"].to_list()
    assert a.group_by("user_id").agg(n=pl.col("item_id").n_unique())["n"].to_list() == [10, 10]
    # round 0 is the (fine-tuned) encoder's single-vector top K/T
    single = loaded.recommend(["u1"], k=2, retrieval="single")["item_id"].to_list()
    assert loaded.recommend(["u1"], k=10)["item_id"].to_list()[:2] == single
    with pytest.raises(ConfigError, match=r"k \(7\) is not a multiple of retrieval.ada.rounds"):
        loaded.recommend(["u1"], k=7)
    with pytest.raises(UserseqError, match="not the data this model was trained on"):
        NextItemRecommender.load(run).fit_ada(cyclic_log(seed=3), quiet=True)


# ---------------------------------------------------------------------- CLI, HTTP
def test_cli_retrieval_modes(cli, trained, ada_run, tmp_path):
    import shutil

    _, _, _, run = trained
    r = cli("recommend", run, "--user", "u1", "-k", "5", "--retrieval", "knn_embed", "--json")
    assert r.code == 0, r.error
    assert len(json.loads(r.stdout)) == 5
    r = cli("recommend", run, "--user", "u1", "--retrieval", "nope")
    assert r.code == 2 and "--retrieval nope: not a retrieval mode" in r.error
    r = cli("ada", "fit", tmp_path / "missing", "--out", tmp_path / "x")
    assert r.code == 2 and "missing" in r.error
    _, out = ada_run
    copy = tmp_path / "ada"
    shutil.copytree(out, copy)
    r = cli("recommend", copy, "--user", "u1", "-k", "10", "--json")
    assert r.code == 0 and len(json.loads(r.stdout)) == 10
    r = cli("recommend", copy, "--user", "u1", "-k", "7")
    assert r.code == 2 and "not a multiple of retrieval.ada.rounds (5)" in r.error


def cyclic_log_frame(path) -> None:
    log = cyclic_log()
    offsets, items = log.sequences()
    rows = [(str(log.user_ids[u]), str(log.item_ids[int(i) - 1]), t)
            for u in range(log.n_users)
            for t, i in enumerate(items[offsets[u]:offsets[u + 1]])]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(path)


def test_cli_evaluate_and_ada_fit_from_a_file(cli, tmp_path):
    csv = tmp_path / "events.csv"
    cyclic_log_frame(csv)
    run = tmp_path / "run"
    r = cli("train", "--data", csv, "--out", run, "--quiet", "--epochs", "6", "--set",
            "model.dim=32", "--set", "model.max_len=16", "--set", "train.lr=0.005", "--set",
            "train.batch_size=32")
    assert r.code == 0, r.error
    r = cli("evaluate", run, "--retrieval", "knn_embed", "--set", "retrieval.knn_embed.clusters=4")
    assert r.code == 0, r.error
    m = read_json(run / "metrics.json")
    assert m["retrieval"]["mode"] == "knn_embed" and m["retrieval"]["knn_embed"]["clusters"] == 4
    assert "ild@10" in m["test"] and "clusters@10" in m["test"]
    r = cli("evaluate", run, "--set", "retrieval.knn_embed.clusters=500", "--retrieval",
            "knn_embed")
    assert r.code == 2 and "retrieval.knn_embed.clusters (500) is larger than the catalogue" \
        in r.error
    r = cli("ada", "fit", run, "--out", tmp_path / "ada", "--rounds", "3", "--train-k", "10")
    assert r.code == 2 and "train_k (10) must be a multiple of rounds (3)" in r.error
    r = cli("ada", "fit", run, "--out", tmp_path / "ada", "--epochs", "1", "--train-k", "10",
            "--quiet")
    assert r.code == 0, r.error
    assert read_json(tmp_path / "ada" / "metrics.json")["retrieval"]["mode"] == "ada"
    r = cli("evaluate", tmp_path / "ada", "--retrieval", "single")
    assert r.code == 0, r.error


def test_http_recommend_with_retrieval(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("faiss")
    from fastapi.testclient import TestClient
    from serve_support import fresh_service

    from userseq.serve.app import create_app

    with fresh_service(tmp_path) as svc:
        svc.rec.set_params(**{"retrieval.knn_embed.clusters": 4})
        client = TestClient(create_app(svc))
        r = client.post("/recommend", json={"user_id": "u1", "k": 5, "retrieval": "knn_embed"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["retrieval"] == "knn_embed" and len(body["items"]) == 5
        assert len({i["item_id"] for i in body["items"]}) == 5
        r = client.post("/recommend", json={"history": [101, 102], "k": 3,
                                            "retrieval": "knn_embed"})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        r = client.post("/recommend", json={"user_id": "u1", "retrieval": "ada"})
        assert r.status_code == 422 and "userseq ada fit" in r.text
        r = client.post("/recommend", json={"user_id": "u1", "retrieval": "knn_embed",
                                            "deny": [101]})
        assert r.status_code == 422 and "retrieval 'single' only" in r.text
        r = client.post("/recommend", json={"user_id": "u1", "k": 3})
        assert r.json()["retrieval"] == "single"
