"""Classical baselines behind the one encoder interface: most-popular, item-kNN and EASE.

They are fitted in closed form from the training events (no gradient steps; the next-item
estimator calls `fit_closed_form` instead of the Trainer and chooses the setting of the `grid()` on
validation), then score like every encoder: user vector . item output vectors.

* `pop`: the user vector is the constant 1 (D = 1), an item's output vector its training count.
* `itemknn` (Sarwar et al. 2001): cosine similarity of items on the binary user x item training
  matrix, S[i, j] = C[i, j] / sqrt(C[i, i] C[j, j]) with C = X^T X the co-occurrence counts, the
  diagonal removed, each item i keeping its `neighbours` most similar items; the score of item j
  for a user is the sum of S[i, j] over the distinct items i of the history.
* `ease` (Steck 2019): B = I - P diag(1 / diag P), P = (X^T X + l2 I)^-1, diag(B) = 0; the score
  of j is the sum of B[i, j] over the distinct history items i.

Item-kNN and EASE are bag-of-items models (`bag_of_items`): the user vector is the binary
multi-hot vector of the last `max_len` history events (D = n_items + 1, index 0 unused) and
`item_scores` the (n_items + 1, n_items + 1) matrix B[i, j] (history item i -> item j); the item
output matrix is its transpose. The Gram matrix and B are float32 and solved once per setting
(a Cholesky factorisation): 3.4k items (ML-1M) take 0.05 GB, 12k items (Beauty) 0.6 GB each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, field_validator

from userseq.encoders.base import SequenceEncoder
from userseq.encoders.config import EncoderConfig
from userseq.encoders.registry import register_encoder
from userseq.items.base import ItemRepr


class ClassicalConfig(EncoderConfig):
    """Settings of the closed-form baselines (`dim`, `dropout` and the item-table settings of
    the neural encoders do not apply)."""

    max_len: int = Field(100_000, ge=2, description="history events a user vector reads (the "
                                                    "default: the whole history)")


class PopConfig(ClassicalConfig):
    """Most-popular: every user gets the items ranked by training count."""

    name: str = "pop"


class ItemKNNConfig(ClassicalConfig):
    """Item-kNN: `neighbours` is the grid of top-k neighbour counts chosen from on validation."""

    name: str = "itemknn"
    neighbours: list[int] = Field(
        default_factory=lambda: [5, 10, 20, 50, 100, 200, 500, 1000, 2000],
        description="neighbours kept per item (grid, chosen on validation; counts above the "
        "catalogue size keep every item)")

    @field_validator("neighbours")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError("neighbours must be a non-empty list of positive integers")
        return sorted(set(v))


class EASEConfig(ClassicalConfig):
    """EASE: `l2` is the grid of L2 penalties (lambda) chosen from on validation."""

    name: str = "ease"
    l2: list[float] = Field(default_factory=lambda: [10.0, 50.0, 200.0, 500.0, 1000.0, 3000.0],
                            description="L2 penalties lambda (grid, chosen on validation)")

    @field_validator("l2")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("l2 must be a non-empty list of positive numbers")
        return sorted(set(v))


class ScoreTable(ItemRepr):
    """The item side of a closed-form model: a fixed (n_items + 1, dim) output matrix, stored as
    is or (`transposed`) as its transpose, the item-to-item matrix B of bag-of-items models."""

    def __init__(self, n_items: int, dim: int, transposed: bool = False) -> None:
        super().__init__()
        self.n_items, self.dim, self.transposed = n_items, dim, transposed
        shape = (dim, n_items + 1) if transposed else (n_items + 1, dim)
        self.register_buffer("weight", torch.zeros(*shape))

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.output_matrix()[ids]

    def output_matrix(self) -> torch.Tensor:
        return self.weight.T if self.transposed else self.weight


class ClosedFormEncoder(SequenceEncoder):
    """Base of the classical baselines: fitted by `fit_closed_form`, never by gradient steps."""

    closed_form = True
    bag_of_items = False
    causal = True

    def grid(self) -> list[dict[str, Any]]:
        """The settings `fit_closed_form` is tried with; the estimator keeps the best on
        validation."""
        return [{}]

    def fit_closed_form(self, offsets: np.ndarray, items: np.ndarray,
                        **setting: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self) -> None:
        """Drop what fitting cached (called once the setting is chosen)."""


@register_encoder("pop", config=PopConfig)
class Pop(ClosedFormEncoder):
    """Most-popular: user vector 1, item vector its training count."""

    def __init__(self, config: PopConfig, items: ItemRepr | None = None) -> None:
        super().__init__()
        self.max_len, self.dim = config.max_len, 1
        self.items = ScoreTable(items.n_items if items is not None else 0, 1)

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return torch.ones(*item_ids.shape, 1, device=item_ids.device)

    def fit_closed_form(self, offsets: np.ndarray, items: np.ndarray, **setting: Any) -> None:
        counts = np.bincount(items, minlength=self.items.n_items + 1).astype(np.float32)
        counts[0] = 0.0
        self.items.weight.copy_(torch.from_numpy(counts)[:, None])


class BagOfItems(ClosedFormEncoder):
    """Item-to-item models: user vector = binary multi-hot of the history (D = n_items + 1)."""

    bag_of_items = True

    def __init__(self, config: ClassicalConfig, items: ItemRepr | None = None) -> None:
        super().__init__()
        n = items.n_items if items is not None else 0
        self.max_len, self.dim = config.max_len, n + 1
        self.config = config
        self.items = ScoreTable(n, n + 1, transposed=True)  # weight = B; item j's vector B[:, j]

    @property
    def item_scores(self) -> torch.Tensor:
        """B (n_items + 1, n_items + 1): B[i, j] is what history item i adds to item j's score."""
        return self.items.weight

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        ids = torch.where(mask, item_ids, torch.zeros_like(item_ids))
        hot = torch.nn.functional.one_hot(ids, self.dim).float().cumsum(1).clamp_(max=1.0)
        hot[..., 0] = 0.0
        return hot

    def last(self, item_ids: torch.Tensor, mask: torch.Tensor,
             features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        ids = torch.where(mask, item_ids, torch.zeros_like(item_ids))
        out = torch.zeros(len(ids), self.dim, device=ids.device)
        out.scatter_(1, ids, 1.0)
        out[:, 0] = 0.0
        return out

    def _gram(self, offsets: np.ndarray, items: np.ndarray) -> torch.Tensor:
        """X^T X of the training histories, computed once for all settings of the grid."""
        key = (len(offsets), len(items), int(items.sum()))
        if getattr(self, "_gram_key", None) != key:
            self._gram_key, self._gram_value = key, gram(offsets, items, self.items.n_items)
        return self._gram_value

    def release(self) -> None:
        """Drop the cached Gram matrix (after fitting)."""
        self._gram_key, self._gram_value = None, None

    def _set(self, b: torch.Tensor) -> None:
        b[0, :] = 0.0
        b[:, 0] = 0.0
        self.items.weight.copy_(b)


def gram(offsets: np.ndarray, items: np.ndarray, n_items: int) -> torch.Tensor:
    """X^T X (n_items + 1, n_items + 1) float32 of the binary user x item matrix of CSR histories
    (repeated events of a user count once; row and column 0 stay 0)."""
    users = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (users, items.astype(np.int64))),
                      shape=(len(offsets) - 1, n_items + 1))
    x.sum_duplicates()
    x.data[:] = 1.0
    g = (x.T @ x).toarray().astype(np.float32, copy=False)
    g[0, :] = 0.0
    g[:, 0] = 0.0
    return torch.from_numpy(g)


@register_encoder("itemknn", config=ItemKNNConfig)
class ItemKNN(BagOfItems):
    """Item-kNN: cosine on co-occurrence, top-k neighbours per item."""

    def grid(self) -> list[dict[str, Any]]:
        return [{"neighbours": k} for k in self.config.neighbours]

    def fit_closed_form(self, offsets: np.ndarray, items: np.ndarray, **setting: Any) -> None:
        self._set(cosine_neighbours(self._gram(offsets, items),
                                    setting.get("neighbours", self.config.neighbours[-1])))


def cosine_neighbours(g: torch.Tensor, k: int) -> torch.Tensor:
    """Row i: item i's `k` most cosine-similar other items (from the Gram matrix `g`), the rest
    0. Items without training events have no neighbours."""
    norm = g.diagonal().sqrt()
    s = g / (norm[:, None] * norm[None, :]).clamp(min=1e-12)
    s.fill_diagonal_(0.0)
    k = min(k, s.shape[1] - 1)
    if k < s.shape[1] - 1:
        val, idx = torch.topk(s, k, dim=1)
        s = torch.zeros_like(s).scatter_(1, idx, val)
    return s


@register_encoder("ease", config=EASEConfig)
class EASE(BagOfItems):
    """EASE: closed-form linear item-item autoencoder with a zero diagonal."""

    def grid(self) -> list[dict[str, Any]]:
        return [{"l2": x} for x in self.config.l2]

    def fit_closed_form(self, offsets: np.ndarray, items: np.ndarray, **setting: Any) -> None:
        self._set(ease_weights(self._gram(offsets, items), setting.get("l2", self.config.l2[0])))


def ease_weights(g: torch.Tensor, l2: float) -> torch.Tensor:
    """EASE's B from the Gram matrix `g` (n, n): P = (g + l2 I)^-1, B[i, j] = -P[i, j] / P[j, j],
    diag(B) = 0. An all-zero row/column of `g` (padding, items without training events) gets an
    all-zero row and column of B. Float64 up to 2,048 items, float32 above (memory: three n x n
    matrices)."""
    a = g.double() if g.shape[0] <= 2048 else g.float().clone()
    a.diagonal().add_(float(l2))
    chol = torch.linalg.cholesky(a)
    del a
    p = torch.cholesky_inverse(chol)
    del chol
    d = p.diagonal().clone()
    p.div_(d[None, :]).neg_()
    p.fill_diagonal_(0.0)
    return p.float()
