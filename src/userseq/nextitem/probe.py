"""Probing tasks (Papreja et al. 2019, "playlists as sentences"): what a frozen user embedding
holds, measured by linear probes, next to an order-free bag-of-items baseline.

For every user the probes read the window the encoder sees (the last `model.max_len` events):

* `genre_share`: the share of the window's items in each of the `top_genres` most frequent genres
  (multi-genre items count for each), one ridge regression per genre; R² (mean over genres);
* `length`: log of the window length; ridge regression, R²;
* `order`: the original window vs a random shuffle of it (one of each per user); ridge classifier
  on the embedding, accuracy. An order-free encoder scores exactly 0.5.

The baseline embeds each window as the mean of the run's item vectors (bag of items, same
dimension). Users are split 60/20/20 (train/valid/test, by `seed`; both versions of a user in the
order probe fall on the same side); the ridge penalty is chosen on valid and the test figure is
reported. Scores come from `userseq.metrics` (r2_score, binary_metrics).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import UserseqError
from userseq.data.batches import csr_take
from userseq.metrics.classification import binary_metrics
from userseq.metrics.regression import r2_score

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights (with intercept, last) of ridge regression on standardised-by-caller x."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    reg = alpha * np.eye(xa.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the intercept
    return np.linalg.solve(xa.T @ xa + reg, xa.T @ y)


def _predict(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def ridge_probe(x: np.ndarray, y: np.ndarray, parts: tuple[np.ndarray, ...],
                score: Any) -> dict[str, float]:
    """Fit on parts[0] for each penalty, pick the best `score(y, pred)` on parts[1], report it on
    parts[2] (features standardised with the train part's statistics)."""
    tr, va, te = parts
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    z = (x - mu) / sd
    best = max(ALPHAS, key=lambda a: score(y[va], _predict(z[va], _ridge(z[tr], y[tr], a))))
    w = _ridge(z[tr], y[tr], best)
    return {"test": score(y[te], _predict(z[te], w)),
            "valid": score(y[va], _predict(z[va], w)), "alpha": best}


def _accuracy(y: np.ndarray, s: np.ndarray) -> float:
    return binary_metrics(y, s, threshold=0.5, fprs=())["accuracy"]


def genre_targets(offsets: np.ndarray, items: np.ndarray, genres: list[list[str] | None],
                   top: int) -> tuple[list[str], np.ndarray]:
    """The `top` genres by event count and each window's share of them (n, top)."""
    counts: Counter[str] = Counter()
    for i in items:
        counts.update(genres[i - 1] or [])
    names = [g for g, _ in counts.most_common(top)]
    col = {g: j for j, g in enumerate(names)}
    onehot = np.zeros((len(genres) + 1, len(names)))
    for r, gs in enumerate(genres):
        for g in gs or []:
            if g in col:
                onehot[r + 1, col[g]] = 1.0
    lengths = np.diff(offsets)
    sums = np.add.reduceat(onehot[items], offsets[:-1], axis=0)
    return names, sums / lengths[:, None]


def item_genres(rec: Any, meta: pl.DataFrame | None) -> list[list[str] | None] | None:
    """Genres per catalogue item (the order of `rec.item_ids`) from a metadata table with
    `item_id` and `genres` (list or "A|B" strings), or None."""
    if meta is None or "genres" not in meta.columns:
        return None
    g = meta["genres"]
    if g.dtype == pl.String:
        g = g.str.split("|")
    by_id = dict(zip(meta["item_id"].to_list(), g.to_list(), strict=True))
    return [by_id.get(i) for i in rec.item_ids.to_list()]


def probe(rec: Any, offsets: np.ndarray, items: np.ndarray,
          genres: list[list[str] | None] | None = None, top_genres: int = 5, seed: int = 0,
          max_users: int | None = None) -> dict[str, Any]:
    """Run the probes on histories (CSR of item indices) for the run `rec` and the bag-of-items
    baseline; see the module docstring."""
    rng = np.random.default_rng(seed)
    n_all = len(offsets) - 1
    L = rec.config.model.max_len
    pick = np.arange(n_all)
    lengths = np.diff(offsets)
    pick = pick[lengths >= 2]  # the order probe needs two events to shuffle
    if max_users is not None and len(pick) > max_users:
        pick = np.sort(rng.choice(pick, max_users, replace=False))
    if len(pick) < 20:
        raise UserseqError(f"probing needs at least 20 users with 2+ events (found {len(pick)}).")
    ends = offsets[pick + 1]
    starts = np.maximum(offsets[pick], ends - L)  # the window the encoder reads
    off, win = csr_take(offsets, items, starts, ends)
    n = len(pick)
    shuffled = win.copy()
    for u in range(n):
        seg = slice(off[u], off[u + 1])
        shuffled[seg] = rng.permutation(win[seg])
    model = {"original": rec.encode(off, win).numpy().astype(np.float64),
             "shuffled": rec.encode(off, shuffled).numpy().astype(np.float64)}
    item_m = rec.item_matrix().numpy().astype(np.float64)
    bag = np.add.reduceat(item_m[win], off[:-1], axis=0) / np.diff(off)[:, None]
    embeddings = {"model": model, "bag_of_items": {"original": bag, "shuffled": bag}}

    order = rng.permutation(n)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    parts = (order[:cut1], order[cut1:cut2], order[cut2:])
    doubled = tuple(np.concatenate([p, p + n]) for p in parts)
    log_len = np.log(np.diff(off).astype(np.float64))
    y_order = np.concatenate([np.ones(n), np.zeros(n)])
    result: dict[str, Any] = {"users": n, "window": L, "seed": seed, "probes": {}}
    probes = result["probes"]
    names, shares = (None, None)
    if genres is not None:
        names, shares = genre_targets(off, win, genres, top_genres)
    for which, e in embeddings.items():
        x = e["original"]
        probes.setdefault("length", {})[which] = ridge_probe(x, log_len, parts, r2_score)
        both = np.vstack([e["original"], e["shuffled"]])
        probes.setdefault("order", {})[which] = ridge_probe(both, y_order, doubled, _accuracy)
        if shares is not None:
            per = {g: ridge_probe(x, shares[:, j], parts, r2_score)
                   for j, g in enumerate(names)}
            probes.setdefault("genre_share", {})[which] = {
                "test": float(np.mean([p["test"] for p in per.values()])),
                "valid": float(np.mean([p["valid"] for p in per.values()])),
                "per_genre": {g: p["test"] for g, p in per.items()}}
    result["metric"] = {"length": "R²", "order": "accuracy", "genre_share": "R² (mean)"}
    if names is not None:
        result["genres"] = names
    else:
        result["note"] = "no item genres: the genre_share probe was skipped"
    return result


def probe_rows(result: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(probe, embedding, test, valid) rows of a probe result, for tables."""
    return [(p, which, float(v["test"]), float(v["valid"]))
            for p, by in result["probes"].items() for which, v in by.items()]
