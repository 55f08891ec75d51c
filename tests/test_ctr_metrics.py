"""AUC, GAUC and logloss against hand-computed values (and scikit-learn's AUC when installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from userseq.core.errors import DataError
from userseq.metrics.ctr import (
    auc,
    bootstrap_ctr,
    ctr_by_history,
    ctr_metrics,
    group_auc,
    logloss,
)


def test_auc_hand_computed_with_ties():
    # positives 0.8, 0.4, 0.4; negatives 0.4, 0.1
    # pairs: (0.8>0.4) 1, (0.8>0.1) 1, (0.4=0.4) .5, (0.4>0.1) 1, (0.4=0.4) .5, (0.4>0.1) 1 -> 5 / 6
    y = np.array([1, 0, 1, 0, 1])
    s = np.array([0.8, 0.4, 0.4, 0.1, 0.4])
    assert auc(y, s) == pytest.approx(5 / 6)


def test_auc_extremes_and_constant():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(y, np.zeros(4)) == 0.5  # all ties: 1/2 per pair
    assert math.isnan(auc(np.ones(3), np.arange(3.0)))


def test_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 500)
        s = rng.integers(0, 30, 500) / 7.0  # many ties
        assert auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


def test_gauc_hand_computed():
    # user a: 4 impressions, AUC 3/4 (pos 0.9 beats both negs; pos 0.2 beats 0.1, loses to 0.5)
    # user b: 3 impressions, AUC 0 (pos 0.1 below both negs)
    # user c: 2 impressions, both positive -> skipped
    # GAUC = (4 * 3/4 + 3 * 0) / (4 + 3) = 3/7
    users = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "c"])
    y = np.array([1, 1, 0, 0, 1, 0, 0, 1, 1])
    s = np.array([0.9, 0.2, 0.5, 0.1, 0.1, 0.3, 0.2, 0.5, 0.6])
    g, n = group_auc(y, s, users)
    assert n == 2
    assert g == pytest.approx(3 / 7)
    g_uniform, _ = group_auc(y, s, users, weights="uniform")
    assert g_uniform == pytest.approx((0.75 + 0.0) / 2)


def test_gauc_equals_weighted_per_user_auc_on_random_data():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 2000)
    y = rng.integers(0, 2, 2000)
    s = rng.integers(0, 10, 2000).astype(float)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * auc(y[m], s[m])
            den += m.sum()
    assert group_auc(y, s, users)[0] == pytest.approx(num / den, abs=1e-12)


def test_logloss_hand_computed_and_clipped():
    y = np.array([1, 0])
    p = np.array([0.8, 0.4])
    assert logloss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))


def test_metric_input_errors():
    with pytest.raises(DataError, match="0 or 1"):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(DataError, match="same length"):
        auc(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(DataError, match="probabilities"):
        logloss(np.array([0, 1]), np.array([0.1, 1.5]))


def test_ctr_metrics_report():
    m = ctr_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 1, 2, 2]))
    assert m["auc"] == 1.0 and m["gauc"] == 1.0 and m["gauc_groups"] == 2
    assert m["impressions"] == 4 and m["positive_rate"] == 0.5


def test_bootstrap_replicate_equals_metrics_on_redrawn_users():
    """One replicate: AUC and GAUC equal the plain metrics on the data with each user's
    impressions repeated as often as the user was drawn."""
    rng = np.random.default_rng(1)
    n = 400
    users = rng.permutation(np.repeat(np.arange(40), 10))
    y = rng.integers(0, 2, n)
    s = np.round(y * 0.3 + rng.random(n), 2)  # rounded: ties across users
    out = bootstrap_ctr(y, s, users, n_boot=1, seed=5)
    mult = np.bincount(np.random.default_rng(5).integers(0, 40, 40), minlength=40)
    rep = np.concatenate([np.tile(np.flatnonzero(users == u), mult[u]) for u in range(40)])
    # a user drawn twice is two groups for GAUC: tag the copies
    copy = np.concatenate([np.repeat(np.arange(mult[u]), (users == u).sum()) for u in range(40)])
    want_auc = auc(y[rep], s[rep])
    want_gauc, _ = group_auc(y[rep], s[rep], users[rep] * 100 + copy)
    assert out["auc"][0] == pytest.approx(want_auc, abs=1e-12)
    assert out["auc"][1] == pytest.approx(want_auc, abs=1e-12)
    assert out["gauc"][0] == pytest.approx(want_gauc, abs=1e-12)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_users():
    rng = np.random.default_rng(2)

    def width(n_users):
        users = np.repeat(np.arange(n_users), 20)
        y = rng.integers(0, 2, len(users))
        s = y * 0.4 + rng.random(len(users))
        out = bootstrap_ctr(y, s, users, n_boot=200)
        a = auc(y, s)
        assert out["auc"][0] <= a <= out["auc"][1]
        assert out["level"] == 0.95 and out["n_boot"] == 200
        return out["auc"][1] - out["auc"][0]

    assert width(400) < width(25)
    one = bootstrap_ctr(np.ones(4), np.arange(4.0), np.arange(4))
    assert all(math.isnan(v) for v in one["auc"])


def test_ctr_by_history_buckets_hand_computed():
    y = np.array([1, 0, 1, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.5])
    users = np.array([0, 0, 1, 1, 2, 2])
    hist = np.array([3, 3, 50, 50, 2000, 2000])
    rows = ctr_by_history(y, s, users, hist, edges=(20, 100))
    assert [r["history"] for r in rows] == ["0-19", "20-99", ">=100"]
    assert [r["impressions"] for r in rows] == [2, 2, 2]
    assert [r["auc"] for r in rows] == [1.0, 0.0, 1.0]
    assert [r["users"] for r in rows] == [1, 1, 1]
    empty = ctr_by_history(y, s, users, hist, edges=(5000,))[1]
    assert empty["impressions"] == 0 and math.isnan(empty["auc"])
