"""Diversity of top-k lists (rows of item indices; 0 = an empty slot, ignored).

* `distinct_codes(top, codes, level)`: mean number of distinct codes at `level` of the items'
  semantic IDs per list (first-level codes: how many coarse clusters a list spans);
* `intra_list_diversity(top, vectors)`: mean over lists of the mean pairwise cosine distance
  (1 - cos) between the list's item vectors (Ziegler et al. 2005);
* `category_coverage(top, offsets, categories)`: mean number of distinct categories per list, the
  categories of item i being `categories[offsets[i]:offsets[i + 1]]` (CSR).
"""

from __future__ import annotations

import numpy as np


def _rows(top: np.ndarray) -> np.ndarray:
    top = np.asarray(top, dtype=np.int64)
    if top.ndim != 2:
        raise ValueError(f"top lists: expected an (n, k) matrix, got shape {top.shape}")
    return top


def distinct_codes(top: np.ndarray, codes: np.ndarray, level: int = 0) -> float:
    """Mean count of distinct `codes[item, level]` per list (empty slots ignored)."""
    top = _rows(top)
    c = np.asarray(codes)[top, level]
    c = np.where(top > 0, c, -1)
    s = np.sort(c, axis=1)
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    return float(((s >= 0) & new).sum(1).mean()) if len(top) else 0.0


def intra_list_diversity(top: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over lists of the mean pairwise cosine distance of the listed items (lists with fewer
    than two items are skipped)."""
    top = _rows(top)
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    x = v[top] * (top > 0)[..., None]  # (n, k, D); empty slots are zero vectors
    n_real = (top > 0).sum(1)
    pairs = n_real * (n_real - 1) / 2
    s = x.sum(1)
    # sum over pairs i<j of cos = (|sum|^2 - sum |x_i|^2) / 2
    cos_pairs = ((s ** 2).sum(1) - (x ** 2).sum((1, 2))) / 2
    ok = pairs > 0
    if not ok.any():
        return 0.0
    return float((1.0 - cos_pairs[ok] / pairs[ok]).mean())


def category_coverage(top: np.ndarray, offsets: np.ndarray, categories: np.ndarray) -> float:
    """Mean number of distinct categories among each list's items."""
    top = _rows(top)
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = []
    for row in top:
        items = row[row > 0]
        cats = [categories[offsets[i] : offsets[i + 1]] for i in items]
        counts.append(len(np.unique(np.concatenate(cats))) if cats else 0)
    return float(np.mean(counts)) if counts else 0.0
