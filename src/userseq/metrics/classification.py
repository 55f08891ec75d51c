"""Binary classification metrics (NumPy only): ROC-AUC, PR-AUC, F1, accuracy, TPR at fixed FPR.

Scores are probabilities (or any monotone score) of the positive class ('malicious' = 1).
Ties in scores are handled exactly: ROC-AUC counts a tied positive/negative pair as 1/2, and
the ROC/PR curves move through a group of tied scores in one step.
"""

from __future__ import annotations

import numpy as np

from userseq.core.errors import UserseqError

DEFAULT_FPRS = (0.01, 0.05, 0.1)


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise UserseqError(f"labels ({len(y)}) and scores ({len(s)}) differ in length.")
    if len(y) == 0:
        raise UserseqError("no users to evaluate.")
    if not np.isin(y, (0, 1)).all():
        raise UserseqError("labels must be 0 or 1.")
    return y, s


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct threshold, highest score
    first."""
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]  # last index of each tie group
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64)


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (probability a random positive outscores a random negative;
    ties 1/2)."""
    y, s = _check(y, s)
    P, N = y.sum(), len(y) - y.sum()
    if P == 0 or N == 0:
        return float("nan")
    tp, fp = _curve(y, s)
    tpr, fpr = np.r_[0, tp] / P, np.r_[0, fp] / N
    return float(np.trapezoid(tpr, fpr))


def pr_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision."""
    y, s = _check(y, s)
    P = y.sum()
    if P == 0:
        return float("nan")
    tp, fp = _curve(y, s)
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0, tp]) / P
    return float((recall_step * precision).sum())


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    """Largest true-positive rate reachable with a false-positive rate <= `fpr` (threshold on
    scores)."""
    y, s = _check(y, s)
    P, N = y.sum(), len(y) - y.sum()
    if P == 0 or N == 0:
        return float("nan")
    tp, fp = _curve(y, s)
    ok = fp / N <= fpr + 1e-12
    return float(tp[ok].max() / P) if ok.any() else 0.0


def binary_metrics(y: np.ndarray, s: np.ndarray, threshold: float = 0.5,
                   fprs: tuple[float, ...] = DEFAULT_FPRS) -> dict[str, float]:
    """accuracy, precision, recall, f1 at `threshold`; roc_auc, pr_auc; tpr@fpr for each fpr; n."""
    y, s = _check(y, s)
    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {
        "accuracy": float((pred == (y == 1)).mean()),
        "roc_auc": roc_auc(y, s),
        "pr_auc": pr_auc(y, s),
        "f1": f1,
        "precision": precision,
        "recall": recall,
    }
    for f in fprs:
        out[f"tpr@fpr{f:g}"] = tpr_at_fpr(y, s, f)
    out["n"] = len(y)
    return out


def best_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Threshold maximising accuracy (chosen on validation users, then applied to test)."""
    y, s = _check(y, s)
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    correct = tp + ((len(y) - y.sum()) - fp)  # predicted positive = scores >= ss[last]
    i = int(np.argmax(correct))
    if correct[i] <= len(y) - y.sum():  # predicting nobody positive is as good
        return float(ss[0]) + 1e-9
    return float(ss[last[i]])


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise UserseqError(f"wilson_interval: need 0 <= k <= n (got k={k}, n={n}).")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def roc_auc_interval(y: np.ndarray, s: np.ndarray, n_boot: int = 200, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ROC-AUC, resampling users stratified by class."""
    y, s = _check(y, s)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = [roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                    np.r_[s[rng.choice(pos, len(pos))], s[rng.choice(neg, len(neg))]])
            for _ in range(n_boot)]
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))
