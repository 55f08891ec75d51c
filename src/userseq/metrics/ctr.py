"""CTR metrics: AUC (Mann-Whitney, ties count 1/2), GAUC (grouped, weighted) and logloss.

* AUC is the probability that a random positive scores above a random negative over all
  impressions, with ties counted as 1/2 (average ranks).
* GAUC follows DIN: `sum_g w_g AUC_g / sum_g w_g` over the groups that hold both labels, groups are
  users and `w_g` is the group's number of impressions. Groups with only one label are skipped
  (their count is reported).
* Logloss is the mean binary cross-entropy of probabilities clipped to [eps, 1 - eps].

All three are vectorized numpy (one sort each), so they run on millions of impressions.

`bootstrap_ctr` gives percentile intervals for AUC and GAUC by resampling users (not impressions:
a user's impressions are correlated, and one heavy user can hold a large share of a test set), and
`ctr_by_history` reports AUC/GAUC per bucket of history length (cold users apart from warm ones).
"""

from __future__ import annotations

import numpy as np

from userseq.core.errors import DataError

EPS = 1e-7


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise DataError(f"labels and scores must be 1-D arrays of the same length (got {y.shape} "
                        f"and {s.shape}).")
    if not np.isin(y, (0, 1)).all():
        raise DataError("labels must be 0 or 1.")
    if np.isnan(s).any():
        raise DataError("scores contain NaN.")
    return y.astype(np.int8), s


def _average_ranks(keys: tuple[np.ndarray, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Order of the rows sorted by `keys` (np.lexsort order: last key primary) and, in that order,
    1-based ranks within the primary group with ties (equal in every key) averaged."""
    order = np.lexsort(keys)
    sorted_keys = [k[order] for k in keys]
    new_block = np.zeros(n, dtype=bool)
    new_block[:1] = True
    for k in sorted_keys:
        new_block[1:] |= k[1:] != k[:-1]
    block_id = np.cumsum(new_block) - 1
    block_start = np.flatnonzero(new_block)
    block_end = np.append(block_start[1:], n)  # exclusive
    # global positions are 1-based; a tie block's average position is (start + 1 + end) / 2
    avg_pos = (block_start + 1 + block_end) / 2.0
    return order, avg_pos[block_id]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order, ranks = _average_ranks((s,), len(s))
    pos_rank_sum = float(ranks[y[order] == 1].sum())
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray,
              weights: str = "impressions") -> tuple[float, int]:
    """GAUC over `groups` (DIN: users, weighted by impressions) and the number of groups used.

    `weights`: "impressions" (group size, DIN) or "uniform" (plain mean over groups).
    Returns (nan, 0) when no group has both labels.
    """
    y, s = _check(labels, scores)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise DataError(f"groups must have one entry per impression (got {g.shape}, expected "
                        f"{y.shape}).")
    if len(y) == 0:
        return float("nan"), 0
    per_group, size, ok = _per_group_auc(y, s, g)
    if not ok.any():
        return float("nan"), 0
    if weights == "impressions":
        w = size[ok]
    elif weights == "uniform":
        w = np.ones(int(ok.sum()))
    else:
        raise ValueError(f"unknown GAUC weighting {weights!r}")
    return float((per_group[ok] * w).sum() / w.sum()), int(ok.sum())


def _per_group_auc(y: np.ndarray, s: np.ndarray,
                   g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group (np.unique order of `g`): AUC (NaN where one label is missing), size, and
    whether both labels are present."""
    _, g_idx = np.unique(g, return_inverse=True)
    g_idx = g_idx.reshape(-1)
    n_groups = int(g_idx.max()) + 1
    order, pos = _average_ranks((s, g_idx), len(s))  # sorted by group, then score
    gs, ys = g_idx[order], y[order]
    size = np.bincount(gs, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(gs, weights=ys, minlength=n_groups)
    n_neg = size - n_pos
    # global offset of each group in sorted order
    first = np.concatenate([[0], np.cumsum(size)[:-1]])
    rank_in_group = pos - first[gs]
    pos_rank_sum = np.bincount(gs, weights=rank_in_group * ys, minlength=n_groups)
    ok = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(ok, per_group, np.nan), size, ok


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    y, p = _check(labels, probs)
    if len(y) == 0:
        return float("nan")
    if ((p < 0) | (p > 1)).any():
        raise DataError("logloss needs probabilities in [0, 1].")
    p = np.clip(p, eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def ctr_metrics(labels: np.ndarray, probs: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """The CTR report for one split: auc, gauc (users, impression-weighted), logloss, counts."""
    g, n_groups = group_auc(labels, probs, users)
    y = np.asarray(labels)
    return {
        "auc": auc(labels, probs), "gauc": g, "logloss": logloss(labels, probs),
        "impressions": int(len(y)), "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
        "gauc_groups": n_groups,
    }


def bootstrap_ctr(labels: np.ndarray, scores: np.ndarray, users: np.ndarray, n_boot: int = 200,
                  level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over users for AUC and GAUC: each replicate draws as many
    users as there are, with replacement, and keeps all their impressions (a user drawn twice
    counts twice). Returns {"auc": [low, high], "gauc": [low, high], "n_boot": ..., "level": ...}.
    """
    y, s = _check(labels, scores)
    g = np.asarray(users)
    if g.shape != y.shape:
        raise DataError(f"users must have one entry per impression (got {g.shape}, expected "
                        f"{y.shape}).")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError("level must be in (0, 1) and n_boot >= 1")
    nan = [float("nan"), float("nan")]
    if len(y) == 0 or y.min() == y.max():
        return {"auc": nan, "gauc": nan, "n_boot": n_boot, "level": level}
    _, u = np.unique(g, return_inverse=True)
    u = u.reshape(-1)
    n_users = int(u.max()) + 1
    # AUC with integer sample weights w_i = multiplicity of the sample's user:
    # sum_pos w_i (W_neg below i + W_neg tied with i / 2) / (W_pos W_neg)
    order = np.argsort(s, kind="stable")
    ss, ys, us = s[order], y[order], u[order]
    block = np.cumsum(np.r_[True, ss[1:] != ss[:-1]]) - 1
    n_blocks = int(block[-1]) + 1
    per_group, size, ok = _per_group_auc(y, s, g)
    rng = np.random.default_rng(seed)
    aucs, gaucs = np.empty(n_boot), np.empty(n_boot)
    for r in range(n_boot):
        mult = np.bincount(rng.integers(0, n_users, n_users), minlength=n_users).astype(float)
        w = mult[us]
        wneg_block = np.bincount(block, weights=w * (1 - ys), minlength=n_blocks)
        below = np.cumsum(wneg_block) - wneg_block
        w_pos, w_neg = float((w * ys).sum()), float(wneg_block.sum())
        hits = (w * ys * (below[block] + 0.5 * wneg_block[block])).sum()
        aucs[r] = hits / (w_pos * w_neg) if w_pos > 0 and w_neg > 0 else np.nan
        wg = (mult * size)[ok]
        gaucs[r] = (per_group[ok] * wg).sum() / wg.sum() if wg.sum() > 0 else np.nan
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"auc": [float(x) for x in np.nanpercentile(aucs, q)],
            "gauc": [float(x) for x in np.nanpercentile(gaucs, q)] if ok.any() else nan,
            "n_boot": n_boot, "level": level}


def ctr_by_history(labels: np.ndarray, scores: np.ndarray, users: np.ndarray,
                   history_lengths: np.ndarray,
                   edges: tuple[int, ...] = (20, 100, 1000)) -> list[dict[str, float]]:
    """AUC / GAUC / counts per bucket of history length: [0, e1), [e1, e2), ..., [e_last, inf);
    the first bucket is the cold users (few history events), the rest the warm ones."""
    y, s = _check(labels, scores)
    h = np.asarray(history_lengths)
    g = np.asarray(users)
    if h.shape != y.shape or g.shape != y.shape:
        raise DataError("history_lengths and users must have one entry per impression.")
    bounds = [0, *edges, None]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        m = (h >= lo) & (h < hi if hi is not None else True)
        name = f"{lo}-{hi - 1}" if hi is not None else f">={lo}"
        row: dict[str, float] = {"history": name, "impressions": int(m.sum()),
                                 "users": int(len(np.unique(g[m])))}
        if m.any():
            row["auc"] = auc(y[m], s[m])
            row["gauc"] = group_auc(y[m], s[m], g[m])[0]
        else:
            row["auc"] = row["gauc"] = float("nan")
        out.append(row)
    return out
