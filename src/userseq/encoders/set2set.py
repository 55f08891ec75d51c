"""`set2set`: a permutation-invariant set encoder (read-process-write, Vinyals et al. 2016).

The history is read as an unordered set: item vectors (through one linear "read" map) are the
memories, and `blocks.Set2Set` pools them with `steps` rounds of LSTM attention. At position t
the output pools the items at positions <= t, so next-item training works as for any causal
encoder, and the user vector (the last position) is the same for any order of the history:
the encoder for baskets, sets of pages or multi-valued features, and the baseline that shows
what order adds.

The same pooling is the readout option of every causal encoder: `model.readout: set2set`
(`readout.py`) replaces "the last position" by Set2Set over the encoder's hidden states.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from userseq.encoders.base import SequenceEncoder
from userseq.encoders.blocks import Dropout, Set2Set
from userseq.encoders.config import EncoderConfig
from userseq.encoders.registry import register_encoder
from userseq.items.base import ItemRepr


class Set2SetConfig(EncoderConfig):
    """Set2Set: read (linear map) -> process (`steps` LSTM attention rounds) -> write."""

    name: str = "set2set"
    steps: int = Field(3, ge=1, description="process steps T of the LSTM")


@register_encoder("set2set", config=Set2SetConfig)
class Set2SetEncoder(SequenceEncoder):
    """Order-free encoder: the output at position t is Set2Set over the items at positions <= t."""

    causal = True

    def __init__(self, config: Set2SetConfig, items: ItemRepr) -> None:
        super().__init__()
        dim = items.dim
        self.items, self.dim, self.max_len = items, dim, config.max_len
        self.read = nn.Linear(dim, dim)
        self.drop = Dropout(config.dropout)
        self.pool = Set2Set(dim, config.steps)

    def _memories(self, item_ids, mask, features):
        if item_ids.shape[1] > self.max_len:
            item_ids, mask = item_ids[:, -self.max_len :], mask[:, -self.max_len :]
            if features is not None:
                features = {k: v[:, -self.max_len :] for k, v in features.items()}
        m = self.drop(self.read(self.items.embed(item_ids, features))) * mask.unsqueeze(-1)
        return m, mask

    def forward(self, item_ids, mask, features=None):
        m, mask = self._memories(item_ids, mask, features)
        return self.pool(m, mask, causal=True)

    def last(self, item_ids, mask, features=None):
        m, mask = self._memories(item_ids, mask, features)
        return self.pool(m, mask, last_only=True)[:, -1]
