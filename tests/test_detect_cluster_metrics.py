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
    for k in ("capture_at_10pct", "lift_at_10pct", "purity", "n_clusters"):
        assert k in out
    assert out["lift_at_10pct"] == pytest.approx(out["capture_at_10pct"] / 0.10)
    assert out["n_clusters"] >= 2 and 0 <= out["capture_at_10pct"] <= 1
    assert s["metrics"]["features"] == "both"
    hand = cluster_run(tmp_path / "run", tmp_path / "hand", min_cluster_size=8, features="hand")
    assert hand["metrics"]["features"] == "hand"
    assert "Top-risk clusters" in (tmp_path / "run" / "cluster" / "report.md").read_text()
