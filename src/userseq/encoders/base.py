"""The one encoder interface: `encoder(item_ids, mask, features=None) -> hidden (B, L, D)`.

* `item_ids`: (B, L) long, left-padded with 0;
* `mask`: (B, L) bool, True where there is a real event;
* `features`: optional dict of (B, L, ...) tensors for encoders that use side information.

`causal` tells tasks whether position t sees only positions <= t (next-item training on
every position) or the whole sequence (masked-item training: the encoder's config then has a
`mask_prob` and `mask_token()` is not None).

Every registered encoder is constructed the same way, `EncoderClass(config, items)`: its config
(an `EncoderConfig` subclass) and the `ItemRepr` it embeds inputs and scores outputs with.
"""

from __future__ import annotations

import torch
from torch import nn

from userseq.items.base import ItemRepr


class SequenceEncoder(nn.Module):
    """Base class of the encoders (see the module docstring for the contract)."""

    causal: bool = True
    max_len: int
    dim: int
    items: ItemRepr

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def last(self, item_ids: torch.Tensor, mask: torch.Tensor,
             features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden state at the last position only, (B, D): the user vector. Encoders may override
        it with a cheaper computation; the result must equal `forward(...)[:, -1]`."""
        return self(item_ids, mask, features)[:, -1]

    def mask_token(self) -> int | None:
        """Index of the [mask] token for masked-item training, or None."""
        return None
