"""BERT4Rec (Sun et al. 2019): bidirectional self-attention trained to fill in masked items."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from userseq.encoders.registry import register_encoder
from userseq.encoders.transformer import TransformerConfig, TransformerEncoder
from userseq.items.base import ItemRepr


class BERT4RecConfig(TransformerConfig):
    """BERT4Rec: a bidirectional transformer (ffn_dim defaults to 4*dim) with a [mask] token."""

    special_tokens: ClassVar[int] = 1  # the [mask] row after the catalogue

    name: str = "bert4rec"
    mask_prob: float = Field(0.2, gt=0, lt=1, description="BERT4Rec masking proportion")


@register_encoder("bert4rec", config=BERT4RecConfig)
class BERT4Rec(TransformerEncoder):
    """BERT4Rec (Sun et al. 2019): bidirectional transformer; the [mask] token is item n_items + 1
    and recommendations read the [mask] appended after the history."""

    def __init__(self, config: BERT4RecConfig, items: ItemRepr) -> None:
        super().__init__(items, config.max_len, config.layers, config.heads, config.dropout,
                         config.ffn_dim, causal=False, activation="gelu", scale_embeddings=False,
                         mask_token=items.n_items + 1, attn_dropout=config.attn_dropout,
                         init_std=config.init_std, block=config.block,
                         positions=config.positions)
        self.exit_layer = config.exit_layer
