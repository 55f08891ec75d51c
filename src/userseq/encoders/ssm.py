"""`ssm`: a causal diagonal state-space encoder (S4D, Gu et al. 2022), with an optional hybrid
stack of state-space and attention blocks.

Each state-space layer is, per channel h, the linear system `x_t = Ā x_{t-1} + B̄ u_t`,
`y_t = 2 Re(C x_t) + D u_t` with a diagonal complex `A = -exp(a) + i b` (stable for any value of
the parameters: Re A < 0), discretised by zero-order hold with a learned step `dt`. It runs two
ways that give the same outputs:

* training and batch encoding: a long convolution with the kernel `K_l = 2 Re(C Ā^l B̄)`, computed
  for the batch's length and applied with an FFT (O(L log L) per channel, no L x L matrix);
* streaming: the recurrence, O(1) per new event (`init_state` / `step`), so a user's state is
  updated without re-reading the history (`NextItemRecommender.update`).

Inputs are left-padded; every layer's input is zeroed at padded positions, so padding never enters
the state and outputs do not depend on the amount of padding. There is no fixed kernel limit:
the kernel is computed for each batch's length (histories longer than `model.max_len` keep their
last `max_len` events, as for every encoder; the streaming state is never cut).

`model.blocks` (e.g. `[ssm, attn, ssm, attn]`) interleaves state-space and attention blocks
(`blocks.TransformerBlock`, the SASRec block); a stack with attention encodes in parallel only
(no streaming state). The bidirectional variant is `hydra.py`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from userseq.encoders.base import SequenceEncoder
from userseq.encoders.blocks import (
    Dropout,
    TransformerBlock,
    attention_mask,
    feed_forward,
    init_normal_,
)
from userseq.encoders.config import EncoderConfig
from userseq.encoders.registry import register_encoder
from userseq.encoders.transformer import heads_divide_dim
from userseq.items.base import IdEmbedding, ItemRepr

BlockKind = Literal["ssm", "attn"]


class SSMConfig(EncoderConfig):
    """The causal state-space encoder: `layers` S4D blocks, or the hybrid stack of `blocks`."""

    name: str = "ssm"
    layers: int = Field(2, ge=1, description="number of blocks (when `blocks` is not given)")
    state_dim: int = Field(16, ge=1, description="complex state size N per channel")
    ffn_dim: int | None = Field(None, ge=1, description="feed-forward width (default: dim)")
    dt_min: float = Field(0.001, gt=0, description="smallest initial step size")
    dt_max: float = Field(0.1, gt=0, description="largest initial step size")
    blocks: list[BlockKind] | None = Field(
        None, min_length=1, description="hybrid stack, e.g. [ssm, attn, ssm, attn] (default: "
        "`layers` ssm blocks); attention blocks are SASRec blocks")
    heads: int = Field(1, ge=1, description="attention heads of `attn` blocks")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights")
    init_std: float | None = Field(
        None, gt=0, description="N(0, init_std) for every Linear/Embedding weight (as the "
        "transformers' init_std, e.g. 0.02); default: PyTorch's layer defaults and N(0, 1/dim) "
        "item embeddings")

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        return heads_divide_dim(v, info)

    @field_validator("dt_max")
    @classmethod
    def _dt_range(cls, v: float, info: Any) -> float:
        lo = info.data.get("dt_min", 0.001)
        if v < lo:
            raise ValueError(f"dt_max ({v}) must be >= dt_min ({lo})")
        return v

    def stack(self) -> list[str]:
        """The block kinds, first to last."""
        return list(self.blocks) if self.blocks else ["ssm"] * self.layers


class DiagonalSSM(nn.Module):
    """One S4D layer over `dim` channels with `state` complex modes each (ZOH, B = 1)."""

    def __init__(self, dim: int, state: int, dt_min: float = 0.001, dt_max: float = 0.1) -> None:
        super().__init__()
        log_dt = torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        # S4D-Lin initialisation: A_n = -1/2 + i pi n
        self.log_neg_re = nn.Parameter(torch.full((dim, state), math.log(0.5)))
        self.im = nn.Parameter(math.pi * torch.arange(state, dtype=torch.float32).repeat(dim, 1))
        self.C = nn.Parameter(torch.randn(dim, state, 2) * math.sqrt(0.5))
        self._cache: tuple | None = None

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dt*A, Ā, C B̄), complex (dim, state)."""
        A = torch.complex(-torch.exp(self.log_neg_re.float()), self.im.float())
        dtA = torch.exp(self.log_dt.float()).unsqueeze(-1) * A
        dA = torch.exp(dtA)
        dB = (dA - 1.0) / A
        return dtA, dA, torch.view_as_complex(self.C.float().contiguous()) * dB

    def kernel(self, length: int) -> torch.Tensor:
        """K (dim, length): K_l = 2 Re(C Ā^l B̄).

        With l = q c + r (c ~ sqrt(length)), Ā^l = Ā^{qc} Ā^r, so the Vandermonde product is one
        batched complex matmul (dim, Q, state) @ (dim, state, c) over 2 sqrt(length) powers per
        mode, instead of an exp for each of the dim x state x length terms (which also kept a
        dim x state x length tensor for the backward pass)."""
        dtA, _, CB = self.discrete()
        c = max(1, math.isqrt(length - 1) + 1)
        q = -(-length // c)
        dev = dtA.device
        inner = torch.exp(dtA.unsqueeze(-1) * torch.arange(c, device=dev, dtype=torch.float32))
        outer = torch.exp(dtA.unsqueeze(-1)
                          * (c * torch.arange(q, device=dev, dtype=torch.float32)))
        K = (CB.unsqueeze(-1) * outer).transpose(1, 2) @ inner  # (dim, q, c)
        return 2.0 * K.reshape(K.shape[0], q * c)[:, :length].real

    def recurrence(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Ā, B̄, C) of the recurrence; cached while the parameters are unchanged and no
        gradient is needed (streaming inference)."""
        params = (self.log_dt, self.log_neg_re, self.im, self.C)
        key = tuple((p._version, p.data_ptr()) for p in params)
        if torch.is_grad_enabled() or self._cache is None or self._cache[0] != key:
            A = torch.complex(-torch.exp(self.log_neg_re.float()), self.im.float())
            dA = torch.exp(torch.exp(self.log_dt.float()).unsqueeze(-1) * A)
            out = (dA, (dA - 1.0) / A, torch.view_as_complex(self.C.float().contiguous()))
            if torch.is_grad_enabled():
                return out
            self._cache = (key, *out)
        return self._cache[1:]

    def step(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrence step: state x (B, dim, state) complex, input u (B, dim) ->
        (new state, 2 Re(C x) without the D term)."""
        dA, dB, C = self.recurrence()
        x = dA * x + dB * u.float().unsqueeze(-1)
        return x, 2.0 * (C * x).sum(-1).real


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s <= t} k_{t-s} u_s along the last axis, by FFT: u (B, H, L), k (H, L)."""
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :L]


class SSMMixer(nn.Module):
    """The sequence mixer of an SSM block: S4D (+ D skip) -> GELU -> Linear -> GLU. With
    `bidirectional` (Hydra-style), a forward and a flipped backward pass, each excluding the
    current position, plus the diagonal D term."""

    def __init__(self, dim: int, state: int, dt_min: float, dt_max: float,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.fwd = DiagonalSSM(dim, state, dt_min, dt_max)
        self.bwd = DiagonalSSM(dim, state, dt_min, dt_max) if bidirectional else None
        self.D = nn.Parameter(torch.randn(dim))
        self.out = nn.Linear(dim, 2 * dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, dim), zero at padded positions -> (B, L, dim)."""
        L = u.shape[1]
        ut = u.float().transpose(1, 2)  # (B, dim, L); the FFT runs in fp32 (no bf16 FFT on CPU)
        if self.bwd is None:
            y = causal_conv(ut, self.fwd.kernel(L))
        else:  # kernels shifted by one: each direction sees strictly earlier / later positions
            kf = F.pad(self.fwd.kernel(L)[:, :-1], (1, 0))
            kb = F.pad(self.bwd.kernel(L)[:, :-1], (1, 0))
            y = causal_conv(ut, kf) + causal_conv(ut.flip(-1), kb).flip(-1)
        y = y.transpose(1, 2).to(u.dtype) + self.D * u
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def step(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal recurrence step: state x (B, dim, state) complex, u (B, dim)."""
        x, y = self.fwd.step(x, u)
        y = y.to(u.dtype) + self.D * u
        return x, F.glu(self.out(F.gelu(y)), dim=-1)


class SSMBlock(nn.Module):
    """Pre-LayerNorm block like `TransformerBlock`, with the SSM mixer in place of attention:
    x + Mixer(LN(x) * mask), then x + FFN(LN(x))."""

    def __init__(self, dim: int, state: int, ffn_dim: int, dropout: float, dt_min: float,
                 dt_max: float, bidirectional: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.mixer = SSMMixer(dim, state, dt_min, dt_max, bidirectional)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = feed_forward(dim, ffn_dim, dropout, "gelu")
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.mixer(self.ln1(x) * mask.unsqueeze(-1)))
        return x + self.drop(self.ffn(self.ln2(x)))

    def step(self, state: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, y = self.mixer.step(state, self.ln1(x))
        x = x + self.drop(y)
        return state, x + self.drop(self.ffn(self.ln2(x)))


class SSMEncoder(SequenceEncoder):
    """Item embedding -> dropout -> blocks (S4D, or a hybrid with attention) -> LayerNorm.

    Causal (`ssm`) or bidirectional with a [mask] token (`hydra`). A causal all-SSM stack is
    `recurrent`: `init_state(batch)` and `step(state, ids)` run it one event at a time."""

    def __init__(self, config: SSMConfig, items: ItemRepr, causal: bool = True,
                 mask_token: int | None = None) -> None:
        super().__init__()
        dim = items.dim
        self.items, self.dim, self.max_len, self.causal = items, dim, config.max_len, causal
        self._mask_token = mask_token
        self.scale = math.sqrt(dim)
        self.kinds = config.stack()
        self.state_dim = config.state_dim
        ffn = config.ffn_dim or dim
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            SSMBlock(dim, config.state_dim, ffn, config.dropout, config.dt_min, config.dt_max,
                     bidirectional=not causal) if kind == "ssm" else
            TransformerBlock(dim, config.heads, ffn, config.dropout, "gelu", config.attn_dropout)
            for kind in self.kinds)
        self.norm = nn.LayerNorm(dim)
        if config.init_std is not None:  # the encoder's layers, and a plain id item table
            for child in self.children():
                if child is not items or isinstance(items, IdEmbedding):
                    init_normal_(child, config.init_std)

    @property
    def recurrent(self) -> bool:
        """Whether `step` can run the encoder one event at a time (causal, no attention)."""
        return self.causal and all(k == "ssm" for k in self.kinds)

    def mask_token(self) -> int | None:
        return self._mask_token

    def forward(self, item_ids, mask, features=None):
        L = item_ids.shape[1]
        if L > self.max_len:
            item_ids, mask = item_ids[:, -self.max_len :], mask[:, -self.max_len :]
            L = self.max_len
            if features is not None:
                features = {k: v[:, -L:] for k, v in features.items()}
        x = self.drop(self.items.embed(item_ids, features) * self.scale) * mask.unsqueeze(-1)
        am = attention_mask(mask, self.causal) if "attn" in self.kinds else None
        for kind, block in zip(self.kinds, self.blocks, strict=True):
            x = block(x, mask) if kind == "ssm" else block(x, am)
        return self.norm(x)

    # ------------------------------------------------------------------ recurrence
    def init_state(self, batch: int, device: torch.device | None = None
                   ) -> dict[str, torch.Tensor]:
        """The state before any event: one zero (batch, dim, state_dim, 2) tensor per block (the
        complex state as real pairs, so it can be saved as safetensors)."""
        self._check_recurrent()
        shape = (batch, self.dim, self.state_dim, 2)
        return {f"block{i}": torch.zeros(shape, device=device) for i in range(len(self.blocks))}

    def step(self, state: dict[str, torch.Tensor], item_ids: torch.Tensor,
             features: dict[str, torch.Tensor] | None = None
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One event per row: item_ids (B,) -> (new state, hidden (B, D)), the same hidden as
        `forward(...)[:, -1]` after this event."""
        self._check_recurrent()
        x = self.drop(self.items.embed(item_ids, features) * self.scale)
        new = {}
        for i, block in enumerate(self.blocks):
            s = torch.view_as_complex(state[f"block{i}"].float().contiguous())
            s, x = block.step(s, x)
            new[f"block{i}"] = torch.view_as_real(s)
        return new, self.norm(x)

    def _check_recurrent(self) -> None:
        if not self.recurrent:
            raise ValueError(f"this encoder ({'bidirectional' if not self.causal else 'hybrid'} "
                             f"stack {self.kinds}) has no recurrent state; streaming needs a "
                             "causal all-ssm stack")


@register_encoder("ssm", config=SSMConfig)
class SSM(SSMEncoder):
    """Causal S4D state-space encoder (parallel FFT convolution for training, recurrence for
    streaming); with `model.blocks`, a hybrid of SSM and attention blocks."""

    def __init__(self, config: SSMConfig, items: ItemRepr) -> None:
        super().__init__(config, items, causal=True)
