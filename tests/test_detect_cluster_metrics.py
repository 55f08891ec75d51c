"""FinDeepBehaviorCluster pieces: capture/lift at 10% by hand, risk from training labels only,
rules with precision/recall, the unsupervised behavior-ae end to end (no labels in training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from detect_support import TINY, synthetic_detect

from userseq.data.eventlog import EventLog
from userseq.detect.data import event_data, stratified_split


def test_capture_at_10pct_by_hand():
    from userseq.detect.cluster import capture_at, risk_order

    # 20 users: cluster 0 (2 users, both vandals), cluster 1 (4 users, 1 vandal), noise (14, 1)
    labels = np.array([0, 0] + [1] * 4 + [-1] * 14)
    y = np.array([1, 1] + [1, 0, 0, 0] + [1] + [0] * 13)
    known = np.ones(20, dtype=bool)
    order = risk_order(labels, y, known)
    assert order[0] == 0  # (2+1)/(2+2) = 0.75 > (1+1)/(4+2) > (1+1)/(14+2)
    capture, taken = capture_at(labels, y, order, 0.10)  # 2 users = exactly cluster 0
    assert capture == pytest.approx(2 / 4) and taken == [0]
    capture, taken = capture_at(labels, y, order, 0.20)  # cluster 0 + half of cluster 1
    assert capture == pytest.approx((2 + 0.5 * 1) / 4) and taken == [0, 1]


def test_capture_curve_by_hand():
    from userseq.detect.cluster import capture_at, capture_curve, cluster_metrics, risk_order

    # the same 20 users: order [0, 1, noise]; the curve runs through (share of users, share of
    # the 4 vandals) = (0, 0), (2/20, 2/4), (6/20, 3/4), (20/20, 4/4)
    labels = np.array([0, 0] + [1] * 4 + [-1] * 14)
    y = np.array([1, 1] + [1, 0, 0, 0] + [1] + [0] * 13)
    order = risk_order(labels, y, np.ones(20, dtype=bool))
    c = capture_curve(labels, y, order)
    got = {p["share"]: (p["capture"], p["precision"]) for p in c["points"]}
    assert got[0.10] == pytest.approx((2 / 4, 2 / 2))          # cluster 0: 2 users, 2 vandals
    assert got[0.20] == pytest.approx((2.5 / 4, 2.5 / 4))      # + half of cluster 1
    assert got[0.30] == pytest.approx((3 / 4, 3 / 6))          # clusters 0 and 1
    # + 4 of the 14 noise users (pro rata 4/14 of its one vandal)
    assert got[0.50] == pytest.approx(((3 + 4 / 14) / 4, (3 + 4 / 14) / 10))
    for s in (0.1, 0.2, 0.3, 0.5):
        assert got[s][0] == pytest.approx(capture_at(labels, y, order, s)[0])
    # trapezoids: 0.1 * (0 + .5) / 2 + 0.2 * (.5 + .75) / 2 + 0.7 * (.75 + 1) / 2
    assert c["auc"] == pytest.approx(0.025 + 0.125 + 0.6125)
    assert c["auc_random"] == 0.5 and c["auc_best"] == pytest.approx(1 - 0.2 / 2)
    # worst order (noise first) sits below random
    assert capture_curve(labels, y, [-1, 1, 0])["auc"] < 0.5
    # cluster_metrics: the old keys kept, the curve evaluated on the users whose label was unused
    pytest.importorskip("sklearn")
    known = np.zeros(40, dtype=bool)
    known[20:] = True
    m = cluster_metrics(np.zeros((40, 1)), ["f"], np.concatenate([labels, labels]),
                        np.concatenate([y, y]), known)
    assert m["capture_at_10pct"] == pytest.approx(0.5) and m["lift_at_10pct"] == pytest.approx(5)
    assert m["capture_at_50pct"] == pytest.approx((3 + 4 / 14) / 4)
    assert m["precision_at_30pct"] == pytest.approx(0.5)
    assert m["capture_auc"] == pytest.approx(0.7625)
    assert [p["share"] for p in m["capture_curve"]] == [0.1, 0.2, 0.3, 0.5]


def test_risk_reads_training_labels_only():
    from userseq.detect.cluster import risk_order

    labels = np.array([0, 0, 1, 1])
    y = np.array([1, 0, 0, 1])
    known = np.array([True, False, True, False])
    assert risk_order(labels, y, known) == [0, 1]
    y2 = y.copy()
    y2[~known] = 1 - y2[~known]
    assert risk_order(labels, y2, known) == [0, 1]


def test_rule_metrics_find_the_rule():
    pytest.importorskip("sklearn")
    from userseq.detect.cluster import rule_metrics

    rng = np.random.default_rng(0)
    X = rng.random((400, 2))
    risky = X[:, 0] > 0.7
    y = (risky | (rng.random(400) < 0.05)).astype(int)
    r = rule_metrics(X, ["fast_edits", "night"], risky, y, np.arange(200), np.arange(200, 400))
    assert any("fast_edits >" in rule for rule in r["rules"])
    assert r["precision"] > 0.9 and r["recall"] > 0.8


def test_behavior_ae_trains_without_labels_and_clusters(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from userseq.detect.cluster import cluster_run
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    ev, lab = synthetic_detect(160, seed=2)
    data = event_data(EventLog.from_frame(ev), lab)
    det = UserDetector("behavior-ae", overrides={**TINY, "train.epochs": 3})
    assert det.config.train.monitor == "neg_loss"
    m = train_and_evaluate(data, det, tmp_path / "run", quiet=True)
    # training never reads labels: the same split and seed with shuffled labels give the same
    # encoder
    split = stratified_split(data.labels, 0.1, 0.2, seed=0)
    data2 = event_data(EventLog.from_frame(ev), lab.with_columns(
        lab["label"].sample(fraction=1.0, shuffle=True, seed=5)))
    assert (data2.labels != data.labels).any()
    a = UserDetector("behavior-ae", overrides={**TINY, "train.epochs": 2}).fit(
        data, split, quiet=True).embed(data)
    b = UserDetector("behavior-ae", overrides={**TINY, "train.epochs": 2}).fit(
        data2, split, quiet=True).embed(data)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert m["train"]["monitor"] == "neg_loss"
    s = cluster_run(tmp_path / "run", min_cluster_size=8)
    out = json.loads((tmp_path / "run" / "cluster" / "metrics.json").read_text())
    for k in ("capture_at_10pct", "lift_at_10pct", "purity", "n_clusters", "capture_at_50pct",
              "precision_at_20pct", "capture_auc", "capture_auc_random"):
        assert k in out
    assert out["lift_at_10pct"] == pytest.approx(out["capture_at_10pct"] / 0.10)
    assert out["n_clusters"] >= 2 and 0 <= out["capture_at_10pct"] <= 1
    assert s["metrics"]["features"] == "both"
    hand = cluster_run(tmp_path / "run", tmp_path / "hand", min_cluster_size=8, features="hand")
    assert hand["metrics"]["features"] == "hand"
    assert "Top-risk clusters" in (tmp_path / "run" / "cluster" / "report.md").read_text()
