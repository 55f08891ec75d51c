"""kNN-Embed (El-Kishky et al., Twitter 2022): retrieval from a user's mixture of interests.

Single-vector top-K retrieval tends to return near-duplicates of the user's dominant interest.
kNN-Embed works on any trained model's user and item vectors:

1. **Interests**: spherical k-means over the item vectors (unit-normalised) -> `clusters`
   clusters, each item in exactly one.
2. **Mixture** `p(c|u)`: the share of the user's history items in each cluster.
3. **Local smoothing**: `p(c|u) <- (1 - smoothing) p(c|u) + smoothing * mean_{v in N_k(u)} p(c|v)`
   over the user's `neighbours` nearest training users (cosine of the user vectors, the user
   itself excluded), so sparse users borrow interests from similar users.
4. **Allotment**: K slots split over the components in proportion to the mixture (largest
   remainder, so they sum to K exactly).
5. **Per-component queries**: component c returns its best allotted items among the items of
   cluster c, scored by the user vector (`query: user`) or by the mean vector of the user's
   history items in c (`query: centroid`, the cluster centroid when the user has none there).
6. **Merge**: the union has no duplicates by construction (clusters are disjoint); slots a
   component cannot fill (too few eligible items in its cluster among the candidates) go to the
   next best items of the single-vector ranking. The list is ordered by score.

Candidates per user are the best `candidates` items of each query (default: the whole catalogue
up to 100,000 items), so memory stays bounded on big catalogues.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from userseq.core.config import StrictModel
from userseq.core.errors import ConfigError


class KnnEmbedConfig(StrictModel):
    """Settings of kNN-Embed retrieval (`retrieval.knn_embed.*`)."""

    clusters: int = Field(32, ge=1, description="item interest clusters (spherical k-means)")
    neighbours: int = Field(10, ge=0, description="nearest training users smoothing the mixture")
    smoothing: float = Field(0.5, ge=0, le=1, description="weight of the neighbours' mixture")
    query: Literal["user", "centroid"] = Field(
        "user", description="per-component query: the user vector restricted to the cluster, or "
        "the mean of the user's items in the cluster")
    iters: int = Field(25, ge=1, description="k-means iterations")
    seed: int = Field(0, description="k-means initialisation seed")
    candidates: int = Field(100_000, ge=1, description="best items per user considered for the "
                            "allotment (the whole catalogue when it is smaller)")


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0,
                     what: str = "retrieval.knn_embed.clusters"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit centroids (k, D), assignment (n,)) of cosine k-means over the rows of `x`.
    Initialised with k-means++ on cosine distance; an empty cluster is re-seeded with the point
    farthest from its centroid."""
    n = len(x)
    if k > n:
        raise ConfigError(f"{what} ({k}) is larger than the number of vectors to cluster ({n}); "
                          f"choose at most {n}.")
    g = torch.Generator().manual_seed(seed)
    xn = F.normalize(x.float(), dim=1)
    first = int(torch.randint(n, (1,), generator=g))
    cent = [xn[first]]
    dist = (1 - xn @ xn[first]).clamp(min=0)
    for _ in range(1, k):
        w = dist + 1e-12
        nxt = int(torch.multinomial(w / w.sum(), 1, generator=g))
        cent.append(xn[nxt])
        dist = torch.minimum(dist, (1 - xn @ xn[nxt]).clamp(min=0))
    c = torch.stack(cent)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        sim = xn @ c.T
        best, assign = sim.max(1)
        sums = torch.zeros_like(c).index_add_(0, assign, xn)
        counts = torch.bincount(assign, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            far = torch.argsort(best)[: len(empty)]
            sums[empty] = xn[far]
        new = F.normalize(sums, dim=1)
        if torch.allclose(new, c):
            break
        c = new
    assign = (xn @ c.T).argmax(1)
    return c, assign


def allot(p: torch.Tensor, k: int) -> torch.Tensor:
    """Split k slots over the columns of each row of `p` (n, C) in proportion to it, by largest
    remainder: integers >= 0 that sum to k exactly (a row of zeros gets everything in column 0)."""
    p = p.double()
    s = p.sum(1, keepdim=True)
    p = torch.where(s > 0, p / s.clamp(min=1e-300), torch.zeros_like(p))
    p[s.squeeze(1) <= 0, 0] = 1.0
    raw = p * k
    base = raw.floor().long()
    left = k - base.sum(1)
    frac = raw - base
    order = torch.argsort(-frac, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p.shape[1]).expand_as(order).contiguous())
    return base + (rank < left[:, None]).long()


class KnnEmbed:
    """kNN-Embed over item vectors (n_items + 1, D; row 0 = padding) and a bank of training
    users (their vectors and histories). See the module docstring for the method."""

    def __init__(self, cfg: KnnEmbedConfig, item_vectors: torch.Tensor) -> None:
        n_items = len(item_vectors) - 1
        if cfg.clusters > n_items:
            raise ConfigError(f"retrieval.knn_embed.clusters ({cfg.clusters}) is larger than the "
                              f"catalogue ({n_items} items); choose at most {n_items}.")
        self.cfg = cfg
        self.items = item_vectors.float()
        self.centroids, assign = spherical_kmeans(self.items[1:], cfg.clusters, cfg.iters,
                                                  cfg.seed)
        self.item_cluster = torch.cat([torch.tensor([-1]), assign])  # item index -> cluster
        self.bank_vectors: torch.Tensor | None = None
        self.bank_mix: torch.Tensor | None = None

    @property
    def n_clusters(self) -> int:
        return self.cfg.clusters

    def cluster_ids(self) -> np.ndarray:
        """Cluster of every item index (n_items + 1,), -1 for the padding row."""
        return self.item_cluster.numpy()

    def mixtures(self, offsets: np.ndarray, items: np.ndarray) -> torch.Tensor:
        """p(c|u) (n, C): the share of each user's history items in each cluster (rows of zeros
        for empty histories)."""
        n = len(offsets) - 1
        lengths = np.diff(offsets)
        rows = torch.from_numpy(np.repeat(np.arange(n), lengths))
        cl = self.item_cluster[torch.from_numpy(np.asarray(items[offsets[0]:offsets[-1]],
                                                           dtype=np.int64))]
        ok = cl >= 0
        m = torch.zeros(n, self.n_clusters)
        m.index_put_((rows[ok], cl[ok]), torch.ones(int(ok.sum())), accumulate=True)
        return m / m.sum(1, keepdim=True).clamp(min=1)

    def fit_users(self, user_vectors: torch.Tensor, offsets: np.ndarray,
                  items: np.ndarray) -> KnnEmbed:
        """The neighbour bank: training users' vectors and mixtures."""
        self.bank_vectors = F.normalize(user_vectors.float(), dim=1)
        self.bank_mix = self.mixtures(offsets, items)
        return self

    def smoothed(self, user_vectors: torch.Tensor, mix: torch.Tensor,
                 self_rows: np.ndarray | None = None) -> torch.Tensor:
        """Mixtures smoothed with the `neighbours` nearest bank users (`self_rows`: each query's
        own bank row, excluded from its neighbours; -1 or None = not in the bank)."""
        k, gamma = self.cfg.neighbours, self.cfg.smoothing
        if self.bank_vectors is None or k == 0 or gamma == 0:
            return mix
        k = min(k, len(self.bank_vectors) - (self_rows is not None))
        if k <= 0:
            return mix
        sims = F.normalize(user_vectors.float(), dim=1) @ self.bank_vectors.T
        if self_rows is not None:
            own = torch.from_numpy(np.array(self_rows, dtype=np.int64))
            has = own >= 0
            sims[torch.nonzero(has).flatten(), own[has]] = float("-inf")
        nb = sims.topk(k, dim=1).indices
        assert self.bank_mix is not None
        return (1 - gamma) * mix + gamma * self.bank_mix[nb].mean(1)

    def _scores(self, user_vectors: torch.Tensor, offsets: np.ndarray,
                items: np.ndarray) -> torch.Tensor:
        """(n, n_items + 1) scores: by the user vector, or per component by the user's
        cluster-mean query."""
        if self.cfg.query == "user":
            return user_vectors.float() @ self.items.T
        n, C = len(user_vectors), self.n_clusters
        lengths = np.diff(offsets)
        rows = torch.from_numpy(np.repeat(np.arange(n), lengths))
        it = torch.from_numpy(np.asarray(items[offsets[0]:offsets[-1]], dtype=np.int64))
        cl = self.item_cluster[it]
        ok = cl >= 0
        q = torch.zeros(n * C, self.items.shape[1])
        q.index_add_(0, rows[ok] * C + cl[ok], F.normalize(self.items[it[ok]], dim=1))
        q = q.view(n, C, -1)
        empty = q.norm(dim=2) == 0
        q = torch.where(empty[..., None], self.centroids[None], F.normalize(q, dim=2))
        s = torch.empty(n, len(self.items))
        for c in range(C):
            cols = torch.nonzero(self.item_cluster == c).flatten()
            s[:, cols] = q[:, c] @ self.items[cols].T
        s[:, 0] = float("-inf")
        return s

    def retrieve(self, user_vectors: torch.Tensor, offsets: np.ndarray, items: np.ndarray,
                 k: int, filter_seen: bool = True, self_rows: np.ndarray | None = None,
                 chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(top items (n, k) item indices, their scores) for users with vectors `user_vectors`
        and histories (offsets, items). Rows may end with -inf/0 entries when fewer than k items
        are eligible."""
        n_items = len(self.items) - 1
        if k > n_items:
            raise ConfigError(f"k ({k}) is larger than the catalogue ({n_items} items).")
        n = len(user_vectors)
        top = np.zeros((n, k), dtype=np.int64)
        top_s = np.full((n, k), -np.inf, dtype=np.float32)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            off = offsets[lo : hi + 1]
            own = None if self_rows is None else self_rows[lo:hi]
            t, s = self._retrieve_chunk(user_vectors[lo:hi], off, items, k, filter_seen, own)
            top[lo:hi], top_s[lo:hi] = t, s
        return top, top_s

    def _retrieve_chunk(self, u: torch.Tensor, off: np.ndarray, items: np.ndarray, k: int,
                        filter_seen: bool, own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(u)
        s = self._scores(u, off, items)
        s[:, 0] = float("-inf")
        lengths = np.diff(off)
        if filter_seen and lengths.sum():
            r = torch.from_numpy(np.repeat(np.arange(n), lengths))
            it = torch.from_numpy(np.asarray(items[off[0]:off[-1]], dtype=np.int64))
            s[r, it] = float("-inf")
        p = self.smoothed(u, self.mixtures(off, items), own)
        quota = allot(p, k)  # (n, C)
        M = min(len(self.items) - 1, max(self.cfg.candidates, k))
        cs, ci = torch.topk(s, M, dim=1)  # candidates in score order
        cl = self.item_cluster[ci].clamp(min=0)
        pos = torch.arange(M).expand(n, M)
        # rank of each candidate within its cluster: group by (cluster, position)
        order = torch.argsort(cl * M + pos, dim=1)
        cl_sorted = cl.gather(1, order)
        counts = torch.zeros(n, self.n_clusters, dtype=torch.long).scatter_add_(
            1, cl, torch.ones_like(cl))
        starts = counts.cumsum(1) - counts
        within_sorted = pos - starts.gather(1, cl_sorted)
        within = torch.empty_like(within_sorted).scatter_(1, order, within_sorted)
        chosen = (within < quota.gather(1, cl)) & torch.isfinite(cs)
        # allotted items first, then the single-vector ranking fills what components could not
        priority = (~chosen).long() + 2 * (~torch.isfinite(cs)).long()
        pick = torch.topk(priority * M + pos, k, dim=1, largest=False).indices
        pick = pick.sort(1).values  # back to score order
        ti, ts = ci.gather(1, pick), cs.gather(1, pick)
        ti = torch.where(torch.isfinite(ts), ti, torch.zeros_like(ti))
        return ti.numpy(), ts.numpy()
