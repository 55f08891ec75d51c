"""`model.readout`: how a causal encoder's hidden states become the vector at each position.

`last` (default) is the encoder itself. `set2set` runs `blocks.Set2Set` over the hidden states at
positions <= t (order-free pooling of the encoder's outputs, Vinyals et al. 2016) instead of
reading position t alone; `build_encoder` wraps any causal encoder with `Set2SetReadout`. The
item table stays at `items.*` in the state dict (the wrapper owns it; the inner encoder's other
weights are under `inner.*`), so item-table loading works as for the plain encoder.
"""

from __future__ import annotations

import torch

from userseq.encoders.base import SequenceEncoder
from userseq.encoders.blocks import Set2Set


class Set2SetReadout(SequenceEncoder):
    """A causal encoder followed by Set2Set pooling of its hidden states."""

    causal = True

    def __init__(self, inner: SequenceEncoder, steps: int) -> None:
        super().__init__()
        if not inner.causal:
            raise ValueError(f"model.readout: set2set needs a causal encoder; "
                             f"{type(inner).__name__} is bidirectional (it reads the [mask] "
                             "position)")
        items = inner.items
        inner._modules.pop("items", None)
        object.__setattr__(inner, "items", items)  # a plain reference: the wrapper owns the table
        self.items = items
        self.inner = inner
        self.dim, self.max_len = inner.dim, inner.max_len
        self.pool = Set2Set(inner.dim, steps)

    def _hidden(self, item_ids, mask, features):
        h = self.inner(item_ids, mask, features)
        mask = mask[:, -h.shape[1] :]
        return h * mask.unsqueeze(-1), mask

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor, features=None) -> torch.Tensor:
        h, mask = self._hidden(item_ids, mask, features)
        return self.pool(h, mask, causal=True)

    def last(self, item_ids: torch.Tensor, mask: torch.Tensor, features=None) -> torch.Tensor:
        h, mask = self._hidden(item_ids, mask, features)
        return self.pool(h, mask, last_only=True)[:, -1]
