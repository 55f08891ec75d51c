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

    # An autoencoder (`reconstructs` True: seq2seq-ae) also has `reconstruct(ids, mask,
    # features=None) -> (B, L, D)`: states scored against the input items themselves; the
    # next-item task then trains it by reconstruction instead of next-item prediction.
    reconstructs: bool = False

    # ------------------------------------------------------------------ streaming (optional)
    # A recurrent encoder (`recurrent` True: gru4rec, ssm) also runs one event at a time:
    # `init_state(batch)` -> a dict of (batch, ...) float tensors (safetensors-ready), and
    # `step(state, item_ids (B,), features=None)` -> (new state, hidden (B, D)) where hidden equals
    # `forward(...)[:, -1]` of the history so far. Streaming user state is built on these.
    recurrent: bool = False

    def init_state(self, batch: int, device: torch.device | None = None
                   ) -> dict[str, torch.Tensor]:
        raise ValueError(f"{type(self).__name__} has no recurrent state")

    def step(self, state: dict[str, torch.Tensor], item_ids: torch.Tensor,
             features: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        raise ValueError(f"{type(self).__name__} has no recurrent state")
