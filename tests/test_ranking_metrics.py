"""Full-ranking metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from userseq.metrics.ranking import (
    coverage,
    evaluate,
    matrix_scorer,
    popularity_scorer,
    rank_targets,
    ranking_metrics,
    repeat_scorer,
)


def table_scorer(S):
    S = torch.as_tensor(S, dtype=torch.float32)
    return lambda rows, lo, hi: S[torch.from_numpy(rows), lo:hi]


def test_ranks_are_pessimistic_on_ties():
    # items 1..4 (column 0 = padding). user 0: target 3 scores 0.5, item 2 higher, item 1 ties
    # -> rank 3
    S = [[9.0, 0.5, 0.9, 0.5, 0.1], [9.0, 1.0, 1.0, 1.0, 1.0]]
    ranks, top = rank_targets(table_scorer(S), 4, np.array([3, 2]), k=2)
    assert ranks.tolist() == [3, 4]  # all-equal scores: the target ranks last, never first
    assert top[0, 0] == 2  # padding (col 0, score 9) is never recommended


def test_collapsed_model_scores_near_zero():
    n = 1000
    S = np.ones((50, n + 1))
    m = evaluate(table_scorer(S), n, np.random.default_rng(0).integers(1, n + 1, 50), None, ks=[10])
    assert m["hr@10"] == 0.0 and m["ndcg@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / n)


def test_metrics_hand_computed():
    ranks = np.array([1, 2, 5, 11])
    m = ranking_metrics(ranks, [1, 10])
    assert m["hr@1"] == pytest.approx(0.25)
    assert m["hr@10"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 0) / 4)
    assert m["ndcg@1"] == pytest.approx(0.25)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11) / 4)


def test_seen_filtering_and_filtered_target():
    S = [[0, 0.9, 0.8, 0.7, 0.1], [0, 0.9, 0.8, 0.7, 0.1]]
    # user0 saw item 1, user1 saw item 3 (its target)
    seen = (np.array([0, 1, 2]), np.array([1, 3]))
    ranks, top = rank_targets(table_scorer(S), 4, np.array([2, 3]), seen, k=3)
    assert ranks[0] == 1  # item 1 removed -> item 2 is first
    assert ranks[1] == 4  # the target itself was filtered: it ranks last
    assert top[0].tolist() == [2, 3, 4]
    assert 3 not in top[1].tolist()


@pytest.mark.parametrize("item_chunk,user_chunk", [(3, 1), (2, 2), (1000, 1000)])
def test_chunking_does_not_change_results(item_chunk, user_chunk):
    rng = np.random.default_rng(1)
    U, W = torch.randn(37, 8), torch.randn(51, 8)
    W[5] = W[6]  # an exact tie
    targets = rng.integers(1, 51, 37)
    off = np.concatenate([[0], np.cumsum(rng.integers(0, 4, 37))])
    items = rng.integers(1, 51, off[-1]).astype(np.int32)
    ref_r, ref_top = rank_targets(matrix_scorer(U, W), 50, targets, (off, items), k=5)
    r, top = rank_targets(matrix_scorer(U, W), 50, targets, (off, items), k=5,
                          user_chunk=user_chunk, item_chunk=item_chunk)
    assert (r == ref_r).all()
    # top-k scores agree (order among exact ties may differ)
    S = (U @ W.T).numpy()
    np.testing.assert_allclose(np.take_along_axis(S, top, 1), np.take_along_axis(S, ref_top, 1),
                               rtol=1e-6)
    # brute force rank
    for i in range(37):
        s = S[i].copy()
        s[0] = -np.inf
        s[items[off[i]:off[i + 1]]] = -np.inf
        t = s[targets[i]]
        expect = 50 if not np.isfinite(t) else 1 + (s > t).sum() + (s == t).sum() - 1
        assert r[i] == expect


def test_coverage_and_baselines():
    top = np.array([[1, 2], [1, 3]])
    assert coverage(top, 10, [1, 2]) == {"coverage@1": 0.1, "coverage@2": 0.3}
    counts = np.array([0, 5, 9, 1])
    ranks, _ = rank_targets(popularity_scorer(counts), 3, np.array([1, 2]), k=2)
    assert ranks.tolist() == [2, 1]
    rep = repeat_scorer(np.array([0, 3]), np.array([2, 1, 2], dtype=np.int32))
    s = rep(np.array([0]), 0, 4)
    assert s.tolist() == [[0.0, 2.0, 3.0, 0.0]]  # most recent occurrence of item 2 wins


def test_scan_never_exceeds_the_chunk_budget(monkeypatch):
    import userseq.metrics.ranking as R

    monkeypatch.setattr(R, "MAX_CELLS", 64)
    sizes = []
    U, W = torch.randn(20, 4), torch.randn(101, 4)
    base = matrix_scorer(U, W)

    def spy(rows, lo, hi):
        sizes.append(len(rows) * (hi - lo))
        return base(rows, lo, hi)

    ranks, top, top_s = R.scan_catalogue(spy, 100, 20, np.arange(1, 21), None, k=5, user_chunk=8)
    assert max(sizes) <= 64
    ref, ref_top, _ = R.scan_catalogue(base, 100, 20, np.arange(1, 21), None, k=5)
    assert (ranks == ref).all()
    np.testing.assert_allclose(top_s, np.take_along_axis((U @ W.T).numpy(), ref_top, 1), rtol=1e-6)
