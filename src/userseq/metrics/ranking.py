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


def self_information(item_counts: np.ndarray) -> np.ndarray:
    """-log2 p(item) per item index, p = training count / all training events; an item without
    training events counts as seen once (index 0, padding, gets 0)."""
    c = np.asarray(item_counts, dtype=np.float64)
    info = -np.log2(np.maximum(c, 1.0) / max(c[1:].sum(), 1.0))
    info[0] = 0.0
    return info


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 when all are equal, (n - 1) / n when one holds
    everything; 0 for all-zero counts."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * total))


def popular_items(item_counts: np.ndarray, share: float = 0.01) -> np.ndarray:
    """Item indices of the top `share` of the catalogue (at least one item) by training count;
    ties are broken by the lower index."""
    c = np.asarray(item_counts)[1:]
    m = max(1, int(np.ceil(share * len(c))))
    return np.argsort(-c, kind="stable")[:m] + 1


def beyond_accuracy(top: np.ndarray, item_counts: np.ndarray, ks: Sequence[int]
                    ) -> dict[str, float]:
    """Beyond-accuracy metrics of recommended lists (n, K) at each cut-off, from the training
    counts per item index (`item_counts`, n_items + 1): `novelty@K` (mean self-information
    -log2 p(i) of the recommended items, `self_information`), `gini@K` (Gini coefficient of how
    often each catalogue item is recommended, `gini`: 0 = every item equally often, 1 = one item
    for everyone) and `pop1%@K` (share of the recommendations among the top 1% most popular
    training items). Empty slots (index 0) are skipped."""
    info = self_information(item_counts)
    popular = np.zeros(len(item_counts), dtype=bool)
    popular[popular_items(item_counts)] = True
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        t = np.asarray(top)[:, :k]
        real = t[t > 0]
        if len(real) == 0:
            continue
        out[f"novelty@{k}"] = float(info[real].mean())
        out[f"gini@{k}"] = gini(np.bincount(real, minlength=len(item_counts))[1:])
        out[f"pop1%@{k}"] = float(popular[real].mean())
    return out


def evaluate(
    scorer: Scorer,
    n_items: int,
    targets: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray] | None,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    item_chunk: int = 262_144,
    item_counts: np.ndarray | None = None,
) -> dict[str, float]:
    """All ranking metrics for one target per user row; with `item_counts` (training counts per
    item index) also the beyond-accuracy metrics (`beyond_accuracy`)."""
    ks = sorted(set(ks))
    ranks, top = rank_targets(scorer, n_items, targets, seen, max(ks), user_chunk, item_chunk)
    out = ranking_metrics(ranks, ks)
    out.update(coverage(top, n_items, ks))
    if item_counts is not None:
        out.update(beyond_accuracy(top, item_counts, ks))
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


def bag_scorer(offsets: np.ndarray, items: np.ndarray, item_scores: torch.Tensor,
               max_len: int | None = None) -> Scorer:
    """Scores of bag-of-items models (item-kNN, EASE): the binary multi-hot vector of each row's
    distinct history items (the last `max_len` events) times `item_scores` (n_items + 1,
    n_items + 1), whose row i is what history item i adds to every item's score. Sparse: the
    cost is (history length x catalogue) per row, not catalogue^2."""
    n = item_scores.shape[0]

    def score(rows: np.ndarray, lo: int, hi: int) -> torch.Tensor:
        r, cols, pos = _csr_rows(rows, offsets, items)
        if max_len is not None:
            length = (offsets[rows + 1] - offsets[rows])[r]
            keep = pos > length - max_len
            r, cols = r[keep], cols[keep]
        idx = torch.from_numpy(np.stack([r, cols]))
        # indices are in range by construction: no invariant checks (and no warning about them).
        # Measured against a dense index_add_ over the same (row, item) pairs: 4-5x faster.
        x = torch.sparse_coo_tensor(idx, torch.ones(len(r)), (len(rows), n),
                                    check_invariants=False).coalesce()
        x = torch.sparse_coo_tensor(x.indices(), x.values().clamp(max=1.0), x.shape,
                                    check_invariants=False)
        return torch.sparse.mm(x, item_scores[:, lo:hi])

    return score


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


# ---------------------------------------------------------------------- top-K lists, diversity
def list_ranks(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target in its recommended list `top` (n, K); a target that is
    not in the list gets rank K + 1 (a miss at every cut-off <= K). For retrieval modes that
    return a list rather than a score for every item (kNN-Embed, multi-round retrieval)."""
    top = np.asarray(top)
    hit = top == np.asarray(targets)[:, None]
    first = hit.argmax(1) + 1
    return np.where(hit.any(1), first, top.shape[1] + 1).astype(np.int64)


def evaluate_lists(top: np.ndarray, targets: np.ndarray, n_items: int,
                   ks: Sequence[int] = (10, 20),
                   item_counts: np.ndarray | None = None) -> dict[str, float]:
    """NDCG/HR/MRR@K and coverage of recommended lists (n, K >= max(ks)); MRR is truncated at K
    (a target outside the list contributes 0). With `item_counts`: `beyond_accuracy` too."""
    ks = sorted(set(ks))
    if top.shape[1] < ks[-1]:
        raise ValueError(f"lists have {top.shape[1]} items, fewer than the cut-off {ks[-1]}")
    ranks = list_ranks(top, targets)
    out = ranking_metrics(ranks, ks)
    out["mrr"] = float(np.where(ranks <= top.shape[1], 1.0 / ranks, 0.0).mean())
    out.update(coverage(top, n_items, ks))
    if item_counts is not None:
        out.update(beyond_accuracy(top, item_counts, ks))
    out["users"] = float(len(targets))
    return out


def intra_list_diversity(top: np.ndarray, item_vectors: np.ndarray | torch.Tensor,
                         k: int) -> float:
    """Mean over rows of the average pairwise cosine distance (1 - cos) of the first k items
    (item 0 / padding entries are skipped). Computed as 1 - (|sum v|^2 - m) / (m (m - 1)) over
    unit vectors, O(k D) per row."""
    V = torch.as_tensor(np.asarray(item_vectors), dtype=torch.float32)
    V = torch.nn.functional.normalize(V, dim=1)
    V[0] = 0.0
    t = torch.from_numpy(np.asarray(top[:, :k], dtype=np.int64))
    m = (t > 0).sum(1).double()
    s = V[t].sum(1).double()
    sim = ((s * s).sum(1) - m) / (m * (m - 1)).clamp(min=1)
    ild = torch.where(m > 1, 1.0 - sim, torch.zeros_like(sim))
    return float(ild.mean())


def distinct_groups(top: np.ndarray, groups: np.ndarray | Sequence[Sequence[int]],
                    k: int) -> float:
    """Mean number of distinct groups among each row's first k items. `groups` is one group id
    per item index (an array of n_items + 1 ints, -1 = none) or a list of group-id lists per item
    index (multi-label, e.g. movie genres)."""
    t = np.asarray(top[:, :k])
    if isinstance(groups, np.ndarray) and groups.ndim == 1:
        g = groups[t]
        g = np.where(t > 0, g, -1)
        s = np.sort(g, 1)
        new = np.concatenate([np.ones((len(s), 1), bool), s[:, 1:] != s[:, :-1]], 1) & (s >= 0)
        return float(new.sum(1).mean()) if len(s) else 0.0
    counts = [len({x for i in row if i > 0 for x in groups[i]}) for row in t]
    return float(np.mean(counts)) if counts else 0.0


def diversity(top: np.ndarray, ks: Sequence[int], item_vectors: np.ndarray | torch.Tensor | None,
              item_groups: dict[str, np.ndarray | Sequence[Sequence[int]]] | None = None
              ) -> dict[str, float]:
    """Diversity of recommended lists at each cut-off: `ild@K` (intra-list diversity over
    `item_vectors`, n_items + 1 rows) and, per entry of `item_groups` (e.g. "clusters",
    "categories"), `NAME@K`, the mean number of distinct groups in the top-K."""
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        if k > top.shape[1]:
            continue
        if item_vectors is not None:
            out[f"ild@{k}"] = intra_list_diversity(top, item_vectors, k)
        for name, g in (item_groups or {}).items():
            out[f"{name}@{k}"] = distinct_groups(top, g, k)
    return out
