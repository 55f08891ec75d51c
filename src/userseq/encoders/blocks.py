"""Building blocks shared by the transformer encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def diagonal(L: int, device: torch.device) -> torch.Tensor:
    """(L, L) boolean identity, built by comparison (not torch.eye: onnxruntime has no boolean
    EyeLike, so exported attention masks must not use it)."""
    pos = torch.arange(L, device=device)
    return pos[:, None] == pos[None, :]


def attention_mask(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean (B, 1, L, L) mask, True = may attend. Padded keys are hidden; a position always
    sees itself so that fully padded rows do not produce NaNs (their outputs are never used)."""
    B, L = mask.shape
    allowed = mask[:, None, None, :].expand(B, 1, L, L)
    eye = diagonal(L, mask.device)
    if causal:
        allowed = allowed & torch.tril(torch.ones(L, L, dtype=torch.bool, device=mask.device))
    return allowed | eye


class Dropout(nn.Module):
    """Inverted dropout with random bytes instead of Bernoulli floats: about 7x cheaper on CPU,
    where torch's bernoulli_ was 40% of a SASRec training step. The keep probability is rounded
    to a multiple of 1/256."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = max(1, min(256, round((1.0 - p) * 256)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64,
                              device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) < self.threshold
        return x * (keep.to(x.dtype) * (256.0 / self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention. Attention-weight dropout is
    optional (`attn_dropout`, default 0: on CPU it forces the slower math kernel); residual and
    feed-forward dropout always apply."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor,
                last_only: bool = False, kv: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over x (B, L, D); with last_only, only the last position queries:
        (B, 1, D). `kv`: keys and values from another (B, L, D) input than the queries (the
        reference SASRec code's block: queries from LN(x), keys and values from x)."""
        B, L, D = x.shape
        if kv is None:
            qkv = self.qkv(x)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            qkv = torch.cat([F.linear(x, w[:D], b[:D]), F.linear(kv, w[D:], b[D:])], -1)
        q, k, v = qkv.view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, attn_mask = q[:, :, -1:], attn_mask[:, :, -1:]
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, q.shape[2], D))


def feed_forward(dim: int, ffn_dim: int, dropout: float, activation: str = "relu") -> nn.Sequential:
    """The position-wise feed-forward layer of every block: Linear -> act -> dropout -> Linear."""
    act = nn.GELU() if activation == "gelu" else nn.ReLU()
    return nn.Sequential(nn.Linear(dim, ffn_dim), act, Dropout(dropout), nn.Linear(ffn_dim, dim))


BLOCKS = ("pre", "sasrec")


class TransformerBlock(nn.Module):
    """A transformer block, `style`:

    - "pre" (default): pre-LayerNorm, x + Attn(LN(x)), then x + FFN(LN(x)).
    - "sasrec": the block of the reference SASRec code (kang205/SASRec and its PyTorch ports, used
      by SASRec+): q = LN(x); x = q + Attn(queries q, keys/values x) with no dropout on the
      attention output; h = LN(x); x = h + FFN(h). Residuals start from the normalised input.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, activation: str = "relu",
                 attn_dropout: float = 0.0, style: str = "pre") -> None:
        super().__init__()
        if style not in BLOCKS:
            raise ValueError(f"unknown block style {style!r}: use one of {', '.join(BLOCKS)}")
        self.style = style
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attn_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = feed_forward(dim, ffn_dim, dropout, activation)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        if self.style == "sasrec":
            q = self.ln1(x)
            x = (q[:, -1:] if last_only else q) + self.attn(q, attn_mask, last_only, kv=x)
            h = self.ln2(x)
            return h + self.drop(self.ffn(h))
        y = self.drop(self.attn(self.ln1(x), attn_mask, last_only))
        x = (x[:, -1:] if last_only else x) + y
        return x + self.drop(self.ffn(self.ln2(x)))


def init_normal_(module: nn.Module, std: float) -> None:
    """GPT-2 / RecBole style initialisation: every Linear and Embedding weight ~ N(0, std),
    biases 0, LayerNorms (1, 0), padding rows (index 0 of id tables) zero."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Set2Set(nn.Module):
    """Read-process-write pooling (Vinyals et al. 2016, "Order Matters"): an LSTM with no input
    runs `steps` times, each `q_t = LSTM(q*_{t-1})`, `a = softmax(<m_i, q_t>)`,
    `r_t = sum_i a_i m_i`, `q*_t = [q_t, r_t]`; the output is a linear map of `q*_T`, which does
    not depend on the order of the memories.

    `forward(m (B, L, D), mask)` pools, for every position t, the real memories at positions <= t
    (`causal`) or all of them; with `last_only`, only the last position: (B, 1, D)."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.lstm = nn.LSTMCell(2 * dim, dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, m: torch.Tensor, mask: torch.Tensor, causal: bool = True,
                last_only: bool = False) -> torch.Tensor:
        B, L, D = m.shape
        if last_only:
            allowed = mask[:, None, :]  # (B, 1, L): the last position sees every real memory
        else:
            allowed = mask[:, None, :].expand(B, L, L)
            if causal:
                allowed = allowed & torch.tril(torch.ones(L, L, dtype=torch.bool,
                                                          device=m.device))
            # a position always sees itself, so rows without real memories stay finite
            allowed = allowed | diagonal(L, m.device)
        Q = allowed.shape[1]
        h = m.new_zeros(B * Q, D)
        c = m.new_zeros(B * Q, D)
        q_star = m.new_zeros(B * Q, 2 * D)
        for _ in range(self.steps):
            h, c = self.lstm(q_star, (h, c))
            q = h.view(B, Q, D)
            e = torch.einsum("bqd,bld->bql", q, m).masked_fill(~allowed, float("-inf"))
            r = torch.softmax(e, -1).nan_to_num(0.0) @ m
            q_star = torch.cat([q, r], -1).view(B * Q, 2 * D)
        return self.out(q_star.view(B, Q, 2 * D))
