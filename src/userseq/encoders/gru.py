"""GRU4Rec-style recurrent encoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from userseq.encoders.base import SequenceEncoder
from userseq.encoders.blocks import Dropout
from userseq.items.base import ItemRepr


class GRUEncoder(SequenceEncoder):
    """GRU4Rec-style recurrent encoder (Hidasi et al. 2016): embeddings -> GRU -> projection."""

    causal = True

    def __init__(self, items: ItemRepr, max_len: int, layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        dim = items.dim
        self.items, self.dim, self.max_len = items, dim, max_len
        self.drop = Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, item_ids, mask, features=None):
        if item_ids.shape[1] > self.max_len:
            item_ids, mask = item_ids[:, -self.max_len :], mask[:, -self.max_len :]
            if features is not None:
                features = {k: v[:, -self.max_len :] for k, v in features.items()}
        B, L = item_ids.shape
        n = mask.sum(1)
        # Inputs are left-padded; the GRU must start at each row's first real event (padding would
        # otherwise change its state), so shift rows to the left, pack, run, and shift back.
        shift = (L - n).unsqueeze(1)
        pos = torch.arange(L, device=item_ids.device).unsqueeze(0)
        x = self.items.embed(item_ids, features) * mask.unsqueeze(-1)
        idx = (pos + shift).clamp(max=L - 1).unsqueeze(-1).expand(B, L, x.shape[-1])
        x = self.drop(torch.gather(x, 1, idx) * (pos < n.unsqueeze(1)).unsqueeze(-1))
        packed = pack_padded_sequence(x, n.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=L)
        back = (pos - shift).clamp(min=0)
        h = torch.gather(h, 1, back.unsqueeze(-1).expand(B, L, h.shape[-1])) * mask.unsqueeze(-1)
        return self.proj(self.drop(h))
