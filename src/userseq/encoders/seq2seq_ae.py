"""`seq2seq-ae`: an unsupervised sequence autoencoder (playlists as sentences, Papreja et al.
2019): a GRU encoder reads the history, a GRU decoder started from the encoder's final state
reconstructs it item by item (teacher forcing), and the encoder's final state is the user/session
embedding.

The encoder half is GRU4Rec's network (so `forward`, `last` and the streaming `step` are GRU4Rec's:
the embedding after each event); `reconstruct(ids, mask)` gives the decoder's hidden states, one
per input position, which the next-item task trains with the configured loss (`loss.name`, full
softmax by default) against the input items themselves: the reconstruction objective
(`NextItemRecommender` picks it for encoders with `reconstructs = True`). Validation adds
`recon_acc` (top-1 reconstruction accuracy) for early stopping (`train.monitor: recon_acc`).
`userseq probe RUN` measures what the frozen embeddings hold (genre share, length, order).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from userseq.encoders.gru4rec import GRU4Rec, GRU4RecConfig, run_left_padded
from userseq.encoders.registry import register_encoder
from userseq.items.base import ItemRepr


class Seq2SeqAEConfig(GRU4RecConfig):
    """Sequence autoencoder: GRU encoder (`layers`) and a GRU decoder of the same size."""

    name: str = "seq2seq-ae"


@register_encoder("seq2seq-ae", config=Seq2SeqAEConfig)
class Seq2SeqAE(GRU4Rec):
    """GRU encoder-decoder; the encoder's final state (through GRU4Rec's projection) is the
    embedding, and the decoder reconstructs the sequence from it."""

    reconstructs = True

    def __init__(self, config: Seq2SeqAEConfig, items: ItemRepr) -> None:
        super().__init__(config, items)
        dim, layers = items.dim, config.layers
        self.bridge = nn.Linear(dim, layers * dim)  # embedding -> decoder initial state
        self.decoder = nn.GRU(dim, dim, num_layers=layers, batch_first=True,
                              dropout=config.dropout if layers > 1 else 0.0)
        self.start = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.dec_out = nn.Linear(dim, dim)

    def reconstruct(self, item_ids: torch.Tensor, mask: torch.Tensor,
                    features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Decoder states (B, L, D): position t is scored against the item at t, having seen the
        embedding of the whole sequence and the items before t (a start vector at the first)."""
        if item_ids.shape[1] > self.max_len:
            item_ids, mask = item_ids[:, -self.max_len :], mask[:, -self.max_len :]
            if features is not None:
                features = {k: v[:, -self.max_len :] for k, v in features.items()}
        B = item_ids.shape[0]
        z = self(item_ids, mask, features)[:, -1]
        h0 = torch.tanh(self.bridge(z)).view(B, self.gru.num_layers, self.dim)
        emb = self.items.embed(item_ids, features) * mask.unsqueeze(-1)
        prev = torch.cat([torch.zeros_like(emb[:, :1]), emb[:, :-1]], 1)
        prev_real = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1)
        dec_in = torch.where(prev_real.unsqueeze(-1), prev, self.start.expand_as(prev))
        out, _ = run_left_padded(self.decoder, dec_in, mask, self.drop,
                                 h0.transpose(0, 1).contiguous())
        return self.dec_out(self.drop(out))
