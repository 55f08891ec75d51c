"""Item representations: how an item index becomes a vector.

Every encoder embeds its inputs and scores its outputs through an `ItemRepr`, so id tables,
text-derived vectors and compressed tables are interchangeable. Index 0 is padding; indices
1..n_items are real items; indices above n_items are special tokens (e.g. BERT4Rec's [mask]).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ItemRepr(nn.Module):
    """Interface: `forward(ids, features=None) -> (..., dim)` and
    `output_matrix() -> (n_items + 1, dim)`.

    `features` is the encoder's optional dict of per-event tensors (B, L, ...); representations that
    use side information (event features, text) read it, id tables ignore it. Encoders pass it only
    when it is given, so `forward(ids)` alone must work.
    """

    n_items: int
    dim: int

    def embed(self, ids: torch.Tensor,
              features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Call the representation, with features only when there are some."""
        return self(ids) if features is None else self(ids, features)

    def output_matrix(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Output vectors of some items, `output_matrix()[ids]`. Sampled losses call this so that
        representations that compute their rows (hashed, text) never build the whole matrix."""
        return self.output_matrix()[ids]

    def table_bytes(self) -> int:
        """Bytes this representation stores for the catalogue: every parameter and persistent buffer
        (tables, text vectors, codes, adapters), as saved in model.safetensors."""
        return state_bytes(self)


class IdEmbedding(ItemRepr):
    """One learned vector per item id (the classic table), with optional special tokens."""

    def __init__(self, n_items: int, dim: int, special_tokens: int = 0) -> None:
        super().__init__()
        self.n_items, self.dim, self.special_tokens = n_items, dim, special_tokens
        self.table = nn.Embedding(n_items + 1 + special_tokens, dim, padding_idx=0)
        nn.init.normal_(self.table.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.table.weight[0].zero_()

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.table(ids)

    def output_matrix(self) -> torch.Tensor:
        return self.table.weight[: self.n_items + 1]

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's state dict (parameters and persistent buffers)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
