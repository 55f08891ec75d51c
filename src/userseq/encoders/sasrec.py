"""SASRec (Kang & McAuley 2018): causal self-attention over the item sequence."""

from __future__ import annotations

from userseq.encoders.registry import register_encoder
from userseq.encoders.transformer import TransformerConfig, TransformerEncoder
from userseq.items.base import ItemRepr


class SASRecConfig(TransformerConfig):
    """SASRec: a causal transformer (ffn_dim defaults to dim)."""

    name: str = "sasrec"


@register_encoder("sasrec", config=SASRecConfig)
class SASRec(TransformerEncoder):
    """SASRec (Kang & McAuley 2018): causal transformer, each position predicts the next item."""

    def __init__(self, config: SASRecConfig, items: ItemRepr) -> None:
        super().__init__(items, config.max_len, config.layers, config.heads, config.dropout,
                         config.ffn_dim, causal=True, attn_dropout=config.attn_dropout,
                         init_std=config.init_std, block=config.block,
                         positions=config.positions)
        self.exit_layer = config.exit_layer
