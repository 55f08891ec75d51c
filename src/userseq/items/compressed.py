"""Compressed item tables (memory formulas in docs/items.md; N items, d dims, 4-byte floats).

* `HashEmbedding`: k hash functions into one table of M rows, summed (the hashing trick).
* `QREmbedding`: quotient-remainder trick: rows `i // m` of a quotient table and `i % m` of a
  remainder table, multiplied element-wise (Shi et al. 2020); distinct (q, r) pairs keep every
  item's vector unique.
* `UnifiedEmbedding`: feature multiplexing (Coleman et al. 2023): the item id and the item's
  categorical attributes (e.g. genres) share ONE table through per-feature hashes; feature f does k
  look-ups whose chunks are concatenated.
* `QuantizedTable`: a trained item matrix after post-training int8 (per-row scale) or product
  quantization (faiss-trained codebooks; decoded in torch, so loading needs no faiss).

Hashes are computed on the fly from (a * x + b) mod p with stored (a, b), so no per-item index is
kept: the table is the only thing that grows with the catalogue's share of memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from userseq.core.errors import ConfigError
from userseq.items.base import ItemRepr

PRIME = 2_147_483_647  # 2^31 - 1; ids up to ~4e9 keep (a * x + b) inside int64
CHUNK = 1 << 20  # rows per chunk when a large table's matrix is built for inference


def hash_params(k: int, seed: int) -> torch.Tensor:
    """(k, 2) int64 (a, b) pairs of k universal hash functions x -> ((a x + b) mod p) mod M."""
    rng = np.random.default_rng(seed)
    ab = np.stack([rng.integers(1, PRIME, k), rng.integers(0, PRIME, k)], 1)
    return torch.from_numpy(ab.astype(np.int64))


def hash_rows(x: torch.Tensor, ab: torch.Tensor, rows: int) -> torch.Tensor:
    """(..., k) table rows of x under each hash function."""
    return ((x.unsqueeze(-1) * ab[:, 0] + ab[:, 1]) % PRIME) % rows


class ComputedTable(ItemRepr):
    """An item table whose rows are computed from the item index: padding (0) is a zero vector and
    special tokens (above n_items) get their own small learned table."""

    def __init__(self, n_items: int, dim: int, special_tokens: int = 0) -> None:
        super().__init__()
        self.n_items, self.dim, self.special_tokens = n_items, dim, special_tokens
        self.special = nn.Embedding(special_tokens, dim) if special_tokens else None
        if self.special is not None:
            nn.init.normal_(self.special.weight, std=1.0 / math.sqrt(dim))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Vectors of item indices 1..n_items (other values: anything; they are masked)."""
        raise NotImplementedError

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        inside = (ids > 0) & (ids <= self.n_items)
        out = self.rows(torch.where(inside, ids, torch.ones_like(ids))) * inside.unsqueeze(-1)
        if self.special is not None:
            extra = ids > self.n_items
            sp = self.special((ids - self.n_items - 1).clamp(0, self.special_tokens - 1))
            out = out + sp * extra.unsqueeze(-1)
        return out

    def output_matrix(self) -> torch.Tensor:
        ids = torch.arange(self.n_items + 1, device=self._device())
        if torch.is_grad_enabled() or self.n_items <= CHUNK:
            return self(ids)
        # inference on a huge catalogue: build the matrix in chunks (no k-fold look-up intermediate)
        out = torch.empty(self.n_items + 1, self.dim, device=ids.device)
        for lo in range(0, len(ids), CHUNK):
            out[lo:lo + CHUNK] = self(ids[lo:lo + CHUNK])
        return out

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self(ids)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class HashEmbedding(ComputedTable):
    """Hashing trick: item i -> sum_j T[h_j(i)], T of `rows` x d, k hash functions."""

    def __init__(self, n_items: int, dim: int, rows: int, k: int = 2, seed: int = 0,
                 special_tokens: int = 0) -> None:
        super().__init__(n_items, dim, special_tokens)
        self.k, self.n_rows = k, rows
        self.table = nn.Parameter(torch.randn(rows, dim) / math.sqrt(dim * k))
        self.register_buffer("hash_ab", hash_params(k, seed))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[hash_rows(ids, self.hash_ab, self.n_rows)].sum(-2)


def qr_remainder_rows(n_items: int, budget_rows: int) -> int:
    """Remainder-table size m so that m + ceil(n / m) <= budget (the smaller root), or sqrt(n)
    when the budget is below the QR minimum of about 2 sqrt(n) rows."""
    disc = budget_rows * budget_rows - 4 * n_items
    if disc < 0:
        return max(1, math.isqrt(n_items - 1) + 1) if n_items > 1 else 1
    m = max(1, math.ceil((budget_rows - math.sqrt(disc)) / 2))
    while m + math.ceil(n_items / m) > budget_rows and m * m < n_items:
        m += 1
    return m


class QREmbedding(ComputedTable):
    """Quotient-remainder trick: item i (0-based j = i - 1) -> Q[j // m] * R[j % m]."""

    def __init__(self, n_items: int, dim: int, remainder_rows: int,
                 special_tokens: int = 0) -> None:
        super().__init__(n_items, dim, special_tokens)
        self.m = remainder_rows
        q_rows = max(1, math.ceil(n_items / remainder_rows))
        # the product of two N(0, d^-1/2) entries has variance 1/d, like a plain table
        std = dim ** -0.25
        self.quotient = nn.Parameter(torch.randn(q_rows, dim) * std)
        self.remainder = nn.Parameter(torch.randn(remainder_rows, dim) * std)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        j = ids - 1
        return self.quotient[j // self.m] * self.remainder[j % self.m]


class UnifiedEmbedding(ComputedTable):
    """Feature multiplexing: features (the id first, then categorical attributes given as padded
    (n_items + 1, T) token-index matrices, 0 = none) share one table of `rows` x chunk; feature f
    does k look-ups with its own hashes and the (mean-pooled) chunks are concatenated to d."""

    def __init__(self, n_items: int, dim: int, rows: int, k: int = 2, seed: int = 0,
                 special_tokens: int = 0, features: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(n_items, dim, special_tokens)
        names = list(features or {})
        n_lookups = k * (1 + len(names))
        if dim % n_lookups:
            raise ConfigError(f"unified item table: dim {dim} must be divisible by the number of "
                              f"look-ups {n_lookups} (k={k} per feature x {1 + len(names)} "
                              f"features: id{', ' + ', '.join(names) if names else ''}); change "
                              "model.dim or "
                              "model.hash_functions.")
        self.k, self.n_rows, self.chunk, self.feature_names = k, rows, dim // n_lookups, names
        self.table = nn.Parameter(torch.randn(rows, self.chunk) / math.sqrt(dim))
        self.register_buffer("hash_ab", hash_params(n_lookups, seed))
        for name in names:
            self.register_buffer(f"tokens_{name}", features[name].to(torch.int64).contiguous())

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        k = self.k
        parts = [self.table[hash_rows(ids, self.hash_ab[:k], self.n_rows)]]  # (..., k, chunk)
        for f, name in enumerate(self.feature_names, start=1):
            tok = getattr(self, f"tokens_{name}")[ids]  # (..., T)
            # token t of feature f hashes with its own functions; 0 (none) is masked out of the mean
            rows = hash_rows(tok, self.hash_ab[f * k:(f + 1) * k], self.n_rows)  # (..., T, k)
            present = (tok > 0).unsqueeze(-1).unsqueeze(-1).to(self.table.dtype)
            summed = (self.table[rows] * present).sum(-3)  # (..., k, chunk)
            parts.append(summed / present.sum(-3).clamp(min=1))
        return torch.cat(parts, -2).flatten(-2)


class QuantizedTable(ItemRepr):
    """A frozen item matrix stored as int8 codes + per-row scales, or PQ codes + codebooks.

    Rows 0..n_items are the catalogue (0 = padding), rows above are special tokens. The vectors
    are decoded once into `decoded` (not saved) when loaded; only codes are stored.
    """

    def __init__(self, n_items: int, dim: int, method: str, codes: torch.Tensor,
                 scale: torch.Tensor | None = None, centroids: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n_items, self.dim, self.method = n_items, dim, method
        self.register_buffer("codes", codes.contiguous())
        if method == "int8":
            self.register_buffer("scale", scale.float().contiguous())
        elif method == "pq":
            self.register_buffer("centroids", centroids.float().contiguous())
        else:
            raise ConfigError(f"unknown quantization '{method}' (int8 or pq).")
        self.register_buffer("decoded", self.decode(), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module._refresh())

    def _refresh(self) -> None:
        self.decoded = self.decode()

    def decode(self) -> torch.Tensor:
        if self.method == "int8":
            out = self.codes.float() * self.scale.unsqueeze(1)
        else:
            codes = self.codes.long()
            out = torch.cat([c[codes[:, j]] for j, c in enumerate(self.centroids)], 1)
        out[0] = 0.0  # padding
        return out

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.decoded[ids]

    def output_matrix(self) -> torch.Tensor:
        return self.decoded[: self.n_items + 1]


def quantize_int8(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: codes = round(127 x / max|x|), scale = max|x| / 127."""
    m = matrix.detach().float()
    scale = m.abs().amax(1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(m / scale.unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return codes, scale


def quantize_pq(matrix: torch.Tensor, subquantizers: int, train_rows: slice | None = None,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Product quantization with faiss-trained codebooks (8 bits per code where there are at least
    256 training rows). Returns (codes (n, M) uint8, centroids (M, ksub, d / M))."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("PQ needs faiss: pip install faiss-cpu (or 'userseq[serve]').") from None
    x = np.ascontiguousarray(matrix.detach().float().numpy())
    n, d = x.shape
    if subquantizers < 1 or d % subquantizers:
        raise ConfigError(f"PQ: the number of sub-quantizers ({subquantizers}) must divide the "
                          f"dimension ({d}).")
    train = x[train_rows] if train_rows is not None else x
    nbits = max(1, min(8, int(math.log2(max(2, len(train))))))
    pq = faiss.ProductQuantizer(d, subquantizers, nbits)
    pq.cp.seed = seed
    pq.train(train)
    flat = faiss.vector_to_array(pq.centroids)
    cent = torch.from_numpy(flat.reshape(subquantizers, pq.ksub, pq.dsub).copy())
    # assign every row to its nearest centroid per sub-space (the same rule as faiss's encoder)
    xs = torch.from_numpy(x).view(n, subquantizers, pq.dsub)
    codes = torch.stack([torch.cdist(xs[:, j], cent[j]).argmin(1) for j in range(subquantizers)], 1)
    return codes.to(torch.uint8), cent
