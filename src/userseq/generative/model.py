"""The encoder-decoder transformer that writes the next item's semantic ID (TIGER-style).

Tokens: one table holds every code of every position of the tuple (position l's codes at
`offsets[l] ...`), a BOS token and the padding row 0. The encoder reads the history as code
tuples: each history item is the sum of its codes' embeddings plus a (right-aligned) position; it
is causal, so position t summarises the history up to t (the pre-LN `TransformerBlock` of
`encoders/blocks.py`). An optional preference vector (Mender's conditioning slot, e.g. MiniLM of a
user's stated preference) becomes one extra memory token that every query sees.

The decoder reads BOS, c_0, ..., c_{m-2} and predicts c_0, ..., c_{m-1}, with causal self-attention
within one tuple and cross-attention to the encoder memory; the logits of position l are the dot
products with position l's code embeddings (tied). Several tuples are decoded side by side in
one sequence of `groups x T` query tokens with a block-diagonal self-attention mask: for training
one tuple per history position (the target after position t sees memory up to t, so one pass
trains every position as in SASRec), for decoding one tuple per beam.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from userseq.encoders.blocks import (
    Dropout,
    SelfAttention,
    TransformerBlock,
    attention_mask,
    init_normal_,
)


class CrossAttention(nn.Module):
    """Multi-head attention of queries x (B, Q, D) over a memory (B, S, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor,
                attn_mask: torch.Tensor) -> torch.Tensor:
        B, Q, D = x.shape
        S, H = memory.shape[1], self.heads
        q = self.q(x).view(B, Q, H, D // H).transpose(1, 2)
        k, v = self.kv(memory).view(B, S, 2, H, D // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, Q, D))


class DecoderBlock(nn.Module):
    """Pre-LN: x + SelfAttn(LN(x)), x + CrossAttn(LN(x), memory), x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.cross = CrossAttention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor, memory: torch.Tensor,
                cross_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.ln1(x), self_mask))
        x = x + self.drop(self.cross(self.ln2(x), memory, cross_mask))
        return x + self.drop(self.ffn(self.ln3(x)))


def block_causal_mask(groups: int, length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, G*T, G*T) bool: token j of tuple g sees tokens 0..j of the same tuple only."""
    i = torch.arange(groups * length, device=device)
    same = (i[:, None] // length) == (i[None, :] // length)
    return (same & (i[None, :] % length <= i[:, None] % length))[None, None]


class GenerativeRetriever(nn.Module):
    """History of item indices -> distribution over the next item's code tuple."""

    def __init__(self, codes: torch.Tensor, sizes: list[int], dim: int = 64, layers: int = 2,
                 decoder_layers: int = 2, heads: int = 2, ffn_dim: int | None = None,
                 dropout: float = 0.2, max_len: int = 50, preference_dim: int | None = None,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.sizes, self.depth, self.dim, self.max_len = list(sizes), len(sizes), dim, max_len
        self.register_buffer("codes", codes.long())  # (n_items + 1, depth); row 0 padding
        starts = [1]
        for s in self.sizes:
            starts.append(starts[-1] + s)
        self.starts = starts  # token id of code 0 at position l; starts[-1] = BOS
        self.register_buffer("code_tokens", codes.long() + torch.tensor(starts[:-1]))
        self.tokens = nn.Embedding(starts[-1] + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        self.levels = nn.Embedding(self.depth, dim)
        ffn = ffn_dim or 2 * dim
        self.encoder = nn.ModuleList(TransformerBlock(dim, heads, ffn, dropout, "gelu")
                                     for _ in range(layers))
        self.enc_norm = nn.LayerNorm(dim)
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads, ffn, dropout)
                                     for _ in range(decoder_layers))
        self.dec_norm = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)
        self.preference = nn.Linear(preference_dim, dim) if preference_dim else None
        init_normal_(self, init_std)
        self.scale = math.sqrt(dim)

    # ------------------------------------------------------------------ encoder
    def encode(self, history: torch.Tensor, preference: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded item indices (B, L) -> causal encoder states (B, L, D) and the memory
        (B, S, D) with its key mask (B, S): the states, after one preference token if the model
        has the slot (a zero vector when `preference` is None)."""
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
        mask = history > 0
        L = history.shape[1]
        x = self.tokens(self.code_tokens[history]).sum(2) + self.positions.weight[self.max_len - L:]
        x = self.drop(x) * mask.unsqueeze(-1)
        am = attention_mask(mask, causal=True)
        for block in self.encoder:
            x = block(x, am)
        states = self.enc_norm(x)
        if self.preference is None:
            return states, mask
        if preference is None:
            preference = states.new_zeros(len(states), self.preference.in_features)
        pref = self.preference(preference.to(states.dtype)).unsqueeze(1)
        return torch.cat([pref, states], 1), torch.cat([mask.new_ones(len(mask), 1), mask], 1)

    # ------------------------------------------------------------------ decoder
    def _decode(self, tokens: torch.Tensor, length: int, memory: torch.Tensor,
                cross_mask: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, G*T, D) for G tuples of T tokens side by side."""
        groups = tokens.shape[1] // length
        lv = self.levels.weight[:length].repeat(groups, 1)
        x = self.drop(self.tokens(tokens) + lv)
        sm = block_causal_mask(groups, length, tokens.device)
        for block in self.decoder:
            x = block(x, sm, memory, cross_mask)
        return self.dec_norm(x)

    def logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Scores of position `level`'s codes from decoder states (..., D) (tied embeddings)."""
        lo = self.starts[level]
        return h @ self.tokens.weight[lo : lo + self.sizes[level]].T

    def _inputs(self, items: torch.Tensor) -> torch.Tensor:
        """Decoder input tokens (..., depth) of target items: BOS, then all codes but the last."""
        tok = self.code_tokens[items]
        bos = torch.full_like(tok[..., :1], self.starts[-1])
        return torch.cat([bos, tok[..., :-1]], -1)

    def loss(self, rows: torch.Tensor, preference: torch.Tensor | None = None) -> torch.Tensor:
        """Token cross-entropy of every next item of left-padded rows (B, L + 1): the target after
        history position t is decoded with the memory up to t (one pass for all positions)."""
        inputs, targets = rows[:, :-1], rows[:, 1:]
        memory, key_mask = self.encode(inputs, preference)
        B, L = inputs.shape
        T = self.depth
        extra = memory.shape[1] - L  # the preference token
        # query (t, j) sees memory keys s <= t (and the preference token, and itself so that
        # padded positions never see an empty key set)
        t = torch.arange(L, device=rows.device)
        causal = t[None, :] <= t[:, None]
        if extra:
            causal = torch.cat([causal.new_ones(L, extra), causal], 1)
        allowed = causal[None] & key_mask[:, None, :]
        allowed[:, t, t + extra] = True
        cross = allowed.repeat_interleave(T, 1)[:, None]  # (B, 1, L*T, S)
        h = self._decode(self._inputs(targets).reshape(B, L * T), T, memory, cross)
        h = h.view(B, L, T, -1)
        sel = (targets > 0) & (inputs > 0)
        h, codes = h[sel], self.codes[targets[sel]]
        total = h.new_zeros(())
        for lvl in range(T):
            total = total + F.cross_entropy(self.logits(h[:, lvl], lvl), codes[:, lvl])
        return total / T

    def next_logprobs(self, memory: torch.Tensor, key_mask: torch.Tensor,
                      prefixes: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (U, K, sizes[t]) of the next code of K prefixes per user
        (U, K, t) given as codes (decoding step t)."""
        U, K, t = prefixes.shape
        bos = torch.full((U, K, 1), self.starts[-1], dtype=torch.long, device=memory.device)
        offs = torch.tensor(self.starts[:t], dtype=torch.long, device=memory.device)
        tok = torch.cat([bos, prefixes + offs], -1).reshape(U, K * (t + 1))
        cross = key_mask[:, None, None, :]
        h = self._decode(tok, t + 1, memory, cross).view(U, K, t + 1, -1)[:, :, -1]
        return torch.log_softmax(self.logits(h, t).float(), -1)
