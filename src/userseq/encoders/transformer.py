"""The transformer sequence encoder and the settings its variants share.

SASRec (`sasrec.py`) runs it causally; BERT4Rec (`bert4rec.py`) bidirectionally with a [mask] token.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from userseq.encoders.base import SequenceEncoder
from userseq.encoders.blocks import Dropout, TransformerBlock, attention_mask, init_normal_
from userseq.encoders.config import EncoderConfig
from userseq.items.base import IdEmbedding, ItemRepr


def heads_divide_dim(heads: int, info: Any) -> int:
    """Config check shared by every attention config: `heads` must divide `dim`."""
    dim = info.data.get("dim", 64)
    if dim % heads:
        raise ValueError(f"heads ({heads}) must divide dim ({dim})")
    return heads

class TransformerConfig(EncoderConfig):
    """Settings of the transformer encoders (SASRec, BERT4Rec)."""

    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    ffn_dim: int | None = Field(
        None, ge=1, description="feed-forward width (default: dim for SASRec, 4*dim for BERT4Rec)")
    attn_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on attention weights (transformers)")
    init_std: float | None = Field(
        None, gt=0, description="N(0, init_std) for every Linear/Embedding weight (GPT-2 style, "
        "e.g. 0.02); default: PyTorch's layer defaults and N(0, 1/dim) item embeddings")
    block: Literal["pre", "sasrec"] = Field(
        "pre", description="block layout: pre (pre-LayerNorm) or sasrec (the reference SASRec "
        "code's: residuals from the normalised input, keys/values un-normalised)")
    positions: Literal["last", "first"] = Field(
        "last", description="learned positions counted from the newest event (last: it always "
        "has the same position) or from the oldest event of the window (first: as the reference "
        "SASRec code's right-padded batches)")
    exit_layer: int | None = Field(
        None, ge=1, description="read vectors after the first n blocks (then the final "
        "LayerNorm): a shallower, cheaper model from a run trained with loss.mse2d; None: all")

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        return heads_divide_dim(v, info)

    @field_validator("exit_layer")
    @classmethod
    def _exit_inside(cls, v: int | None, info: Any) -> int | None:
        layers = info.data.get("layers", 2)
        if v is not None and v > layers:
            raise ValueError(f"exit_layer ({v}) must be at most layers ({layers})")
        return v


class TransformerEncoder(SequenceEncoder):
    """Item embedding (+ learned positions, right-aligned so the newest event always has the same
    position) -> dropout -> `layers` pre-LN blocks -> LayerNorm.

    causal=True is SASRec (Kang & McAuley 2018); causal=False with a [mask] token is BERT4Rec
    (Sun et al. 2019).
    """

    def __init__(
        self,
        items: ItemRepr,
        max_len: int,
        layers: int = 2,
        heads: int = 1,
        dropout: float = 0.1,
        ffn_dim: int | None = None,
        causal: bool = True,
        activation: str = "relu",
        scale_embeddings: bool = True,
        mask_token: int | None = None,
        attn_dropout: float = 0.0,
        init_std: float | None = None,
        block: str = "pre",
        positions: str = "last",
    ) -> None:
        super().__init__()
        dim = items.dim
        self.items, self.dim, self.max_len, self.causal = items, dim, max_len, causal
        if positions not in ("last", "first"):
            raise ValueError(f"unknown positions {positions!r}: use last or first")
        self.align_first = positions == "first"
        self.scale = math.sqrt(dim) if scale_embeddings else 1.0
        self._mask_token = mask_token
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=1.0 / math.sqrt(dim))
        self.drop = Dropout(dropout)
        ffn = ffn_dim or (dim if causal else 4 * dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, ffn, dropout, activation, attn_dropout, block)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # blocks run by forward/last (None: all); see TransformerConfig.exit_layer
        self.exit_layer: int | None = None
        if init_std is not None:  # the encoder's layers, and the item table if a plain id table
            for child in self.children():
                if child is not items or isinstance(items, IdEmbedding):
                    init_normal_(child, init_std)

    def mask_token(self) -> int | None:
        return self._mask_token

    def forward(self, item_ids, mask, features=None):
        return self._run(item_ids, mask, features, last_only=False)

    def last(self, item_ids, mask, features=None):
        # the final block computes queries for the last position only
        return self._run(item_ids, mask, features, last_only=True)[:, -1]

    def layer_outputs(self, item_ids, mask, features=None) -> list:
        """Hidden states (B, L, D) after each block, each through the final LayerNorm (the last
        equals `forward`): the read-outs of 2D Matryoshka training."""
        return self._run(item_ids, mask, features, last_only=False, every=True)

    def _run(self, item_ids, mask, features, last_only: bool, every: bool = False):
        L = item_ids.shape[1]
        if L > self.max_len:
            item_ids, mask = item_ids[:, -self.max_len :], mask[:, -self.max_len :]
            L = self.max_len
            if features is not None:
                features = {k: v[:, -L:] for k, v in features.items()}
        if self.align_first:  # rows are left-padded: the first real event gets position 0
            start = L - mask.sum(1, keepdim=True)
            pos = self.positions((torch.arange(L, device=mask.device) - start).clamp(min=0))
        else:
            pos = self.positions.weight[self.max_len - L :]
        x = self.items.embed(item_ids, features) * self.scale + pos
        x = self.drop(x) * mask.unsqueeze(-1)
        am = attention_mask(mask, self.causal)
        blocks = self.blocks if every or self.exit_layer is None else \
            self.blocks[: self.exit_layer]
        outs = []
        for i, block in enumerate(blocks):
            x = block(x, am, last_only and i == len(blocks) - 1)
            if every:
                outs.append(self.norm(x))
        return outs if every else self.norm(x)
