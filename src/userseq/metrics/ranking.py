"""Full-ranking evaluation over the whole catalogue (never sampled negatives).

The rank of a target is pessimistic: 1 + #{items scoring higher} + #{other items scoring equal},
so a model that gives every item the same score gets rank n_items (metrics ~ 0), never rank 1.
Scores are computed in (users x items) chunks so memory stays bounded for million-item
catalogues; top-K lists are merged across item chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# scorer(rows, lo, hi) -> (len(rows), hi - lo) scores for items lo..hi-1 of the users at `rows`
Scorer = Callable[[np.ndarray, int, int], torch.Tensor]


def _seen_mask_(scores: torch.Tensor, rows: np.ndarray, offsets: np.ndarray, items: np.ndarray,
                lo: int, hi: int) -> None:
    """Set scores of each user's history items (within [lo, hi)) to -inf, in place."""
    r, cols, _ = _csr_rows(rows, offsets, items)
    sel = (cols >= lo) & (cols < hi)
    scores[torch.from_numpy(r[sel]), torch.from_numpy(cols[sel] - lo)] = float("-inf")


MAX_CELLS = 1 << 25  # at most 32M scores (128 MB) in one users x items chunk


def scan_catalogue(
    scorer: Scorer,
    n_items: int,
    n_rows: int,
    targets: np.ndarray | None = None,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    k: int = 10,
    user_chunk: int = 1024,
    item_chunk: int = 262_144,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """One pass over all (user row, item) scores in bounded chunks.

    Returns (ranks, top_items, top_scores): 1-based pessimistic ranks of `targets` (None when no
    targets are given) and the top-k items with their scores for every row. Item 0 (padding) is
    never ranked; `seen=(offsets, items)` removes those items from each row's ranking (a seen
    target then ranks last). Chunks never exceed MAX_CELLS scores, whatever the catalogue size.
    """
    user_chunk = max(1, min(user_chunk, n_rows))
    item_chunk = max(1, min(item_chunk, MAX_CELLS // user_chunk))
    ranks = np.empty(n_rows, dtype=np.int64) if targets is not None else None
    k_eff = min(k, n_items)
    top = np.zeros((n_rows, k_eff), dtype=np.int64)
    top_s = np.zeros((n_rows, k_eff), dtype=np.float32)
    total = n_items + 1
    bounds = [(lo, min(lo + item_chunk, total)) for lo in range(0, total, item_chunk)]
    for u0 in range(0, n_rows, user_chunk):
        rows = np.arange(u0, min(u0 + user_chunk, n_rows))
        tgt = None if targets is None else torch.from_numpy(targets[rows].astype(np.int64))
        rank, best_i, best_s = _scan_rows(_chunk_scorer(scorer, rows, seen), bounds, len(rows),
                                          k_eff, tgt, n_items)
        if ranks is not None and rank is not None:
            ranks[rows] = rank.numpy()
        top[rows], top_s[rows] = best_i.numpy(), best_s.numpy()
    return ranks, top, top_s


ChunkScores = Callable[[int, int], torch.Tensor]


def _chunk_scorer(scorer: Scorer, rows: np.ndarray,
                  seen: tuple[np.ndarray, np.ndarray] | None) -> ChunkScores:
    """Scores of `rows` for items lo..hi-1, padding and (if given) seen items set to -inf."""

    def chunk_scores(lo: int, hi: int) -> torch.Tensor:
        s = scorer(rows, lo, hi).float().clone()
        if lo == 0:
            s[:, 0] = float("-inf")
        if seen is not None:
            _seen_mask_(s, rows, seen[0], seen[1], lo, hi)
        return s

    return chunk_scores


def _scan_rows(chunk_scores: ChunkScores, bounds: list[tuple[int, int]], n: int, k: int,
               tgt: torch.Tensor | None, n_items: int
               ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(pessimistic ranks of `tgt` or None, top-k items, their scores) of n rows over the item
    chunks `bounds` (a single chunk is scored once)."""
    cached = chunk_scores(*bounds[0]) if len(bounds) == 1 else None
    t_score = None if tgt is None else _target_scores(chunk_scores, bounds, tgt, cached)
    higher = torch.zeros(n, dtype=torch.long)
    equal = torch.zeros(n, dtype=torch.long)
    best_s = torch.full((n, k), float("-inf"))
    best_i = torch.zeros((n, k), dtype=torch.long)
    for lo, hi in bounds:
        s = cached if cached is not None else chunk_scores(lo, hi)
        if t_score is not None:
            higher += (s > t_score[:, None]).sum(1)
            equal += (s == t_score[:, None]).sum(1)
        cs, ci = torch.topk(s, min(k, hi - lo), dim=1)
        both_s, both_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci + lo], 1)
        order = torch.topk(both_s, k, dim=1).indices
        best_s, best_i = both_s.gather(1, order), both_i.gather(1, order)
    if t_score is None:
        return None, best_i, best_s
    rank = 1 + higher + (equal - 1)  # `equal` includes the target itself
    # a filtered (-inf) target ties with every filtered item: pessimistically last
    rank = torch.where(torch.isfinite(t_score), rank, torch.full_like(rank, n_items))
    return rank, best_i, best_s


def _target_scores(chunk_scores: ChunkScores, bounds: list[tuple[int, int]], tgt: torch.Tensor,
                   cached: torch.Tensor | None) -> torch.Tensor:
    """Each row's target score, read from the same matrix product that ranks it."""
    if cached is not None:
        return cached.gather(1, tgt[:, None]).squeeze(1)
    t_score = torch.empty(len(tgt))
    for lo, hi in bounds:
        inside = (tgt >= lo) & (tgt < hi)
        if inside.any():
            s = chunk_scores(lo, hi)
            t_score[inside] = s[inside].gather(1, (tgt[inside] - lo)[:, None]).squeeze(1)
    return t_score


def rank_targets(
    scorer: Scorer,
    n_items: int,
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    k: int = 10,
    user_chunk: int = 1024,
    item_chunk: int = 262_144,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1-based, pessimistic) of `targets` and top-k item lists for every row."""
    ranks, top, _ = scan_catalogue(scorer, n_items, len(targets), targets, seen, k, user_chunk,
                                   item_chunk)
    return ranks, top


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """NDCG@K, HR@K (= Recall@K with one target), MRR from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
        out[f"hr@{k}"] = float(hit.mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def coverage(top: np.ndarray, n_items: int, ks: Sequence[int]) -> dict[str, float]:
    """Share of the catalogue that appears in at least one user's top-K list."""
    out = {}
    for k in ks:
        items = np.unique(top[:, :k])
        out[f"coverage@{k}"] = float(len(items[items > 0]) / n_items)
    return out


def evaluate(
    scorer: Scorer,
    n_items: int,
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray] | None,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    item_chunk: int = 262_144,
) -> dict[str, float]:
    """All ranking metrics for one target per user row."""
    ks = sorted(set(ks))
    ranks, top = rank_targets(scorer, n_items, targets, seen, max(ks), user_chunk, item_chunk)
    out = ranking_metrics(ranks, ks)
    out.update(coverage(top, n_items, ks))
    out["users"] = float(len(targets))
    return out


def matrix_scorer(user_vectors: torch.Tensor, item_matrix: torch.Tensor) -> Scorer:
    """Dot-product scores from user vectors (n, D) and the item output matrix (n_items + 1, D)."""
    return lambda rows, lo, hi: user_vectors[torch.from_numpy(rows)] @ item_matrix[lo:hi].T


def streamed_scorer(user_vectors: torch.Tensor,
                    item_rows: Callable[[int, int], torch.Tensor]) -> Scorer:
    """Dot-product scores whose item vectors are computed chunk by chunk: `item_rows(lo, hi)` gives
    the output vectors of items lo..hi-1, so the (n_items + 1, D) matrix is never built and memory
    stays flat as the catalogue grows (for hashed/QR/unified tables, whose rows are computed). The
    price: item vectors are recomputed once per user chunk."""
    return lambda rows, lo, hi: user_vectors[torch.from_numpy(rows)] @ item_rows(lo, hi).T


def popularity_scorer(item_counts: np.ndarray) -> Scorer:
    """Most-popular baseline: every user gets the training counts as scores."""
    c = torch.from_numpy(item_counts.astype(np.float32))
    return lambda rows, lo, hi: c[lo:hi].expand(len(rows), hi - lo)


def _csr_rows(rows: np.ndarray, offsets: np.ndarray, items: np.ndarray):
    """(row position, item, 1-based position in history) for every history event of `rows`."""
    starts, ends = offsets[rows], offsets[rows + 1]
    lengths = ends - starts
    r = np.repeat(np.arange(len(rows)), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # of each row's events, in the output
    within = np.arange(lengths.sum()) - np.repeat(first, lengths)
    return r, items[np.repeat(starts, lengths) + within].astype(np.int64), within + 1


def repeat_scorer(offsets: np.ndarray, items: np.ndarray) -> Scorer:
    """'Last item repeat' baseline: items in the history scored by recency (most recent highest),
    all other items tie at 0. Meaningful only without seen-item filtering."""

    def score(rows: np.ndarray, lo: int, hi: int) -> torch.Tensor:
        r, cols, pos = _csr_rows(rows, offsets, items)
        sel = (cols >= lo) & (cols < hi)
        s = torch.zeros(len(rows) * (hi - lo))
        flat = torch.from_numpy(r[sel] * (hi - lo) + cols[sel] - lo)
        s.scatter_reduce_(0, flat, torch.from_numpy(pos[sel].astype(np.float32)), reduce="amax")
        return s.view(len(rows), hi - lo)

    return score
