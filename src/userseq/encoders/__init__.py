"""Sequence encoders sharing one call signature (see `base.SequenceEncoder`)."""

from __future__ import annotations

from userseq.core.errors import ConfigError
from userseq.encoders.base import SequenceEncoder
from userseq.encoders.gru import GRUEncoder
from userseq.encoders.transformer import TransformerEncoder
from userseq.items.base import IdEmbedding, ItemRepr

ENCODERS = ("sasrec", "bert4rec", "gru4rec")


def build_encoder(cfg, n_items: int, items: ItemRepr | None = None) -> SequenceEncoder:
    """Encoder from a `ModelConfig`: 'sasrec', 'bert4rec' or 'gru4rec'.

    `items` overrides the default id-embedding table (text or compressed item representations).
    """
    if cfg.name == "sasrec":
        return TransformerEncoder(items or IdEmbedding(n_items, cfg.dim), cfg.max_len, cfg.layers, cfg.heads,
                                  cfg.dropout, cfg.ffn_dim, causal=True, attn_dropout=cfg.attn_dropout,
                                  init_std=cfg.init_std)
    if cfg.name == "bert4rec":
        return TransformerEncoder(items or IdEmbedding(n_items, cfg.dim, special_tokens=1), cfg.max_len,
                                  cfg.layers, cfg.heads, cfg.dropout, cfg.ffn_dim, causal=False,
                                  activation="gelu", scale_embeddings=False, mask_token=n_items + 1,
                                  attn_dropout=cfg.attn_dropout, init_std=cfg.init_std)
    if cfg.name == "gru4rec":
        return GRUEncoder(items or IdEmbedding(n_items, cfg.dim), cfg.max_len, cfg.layers, cfg.dropout)
    raise ConfigError(f"unknown model '{cfg.name}'. Choose one of: {', '.join(ENCODERS)}.")


def encoder_config(name: str, **settings):
    """The validated config of encoder `name` with `settings` (e.g. dim, layers, dropout, max_len).
    Settings the encoder does not have are an error. (Tasks that build an encoder for their own
    use, e.g. detection, call this instead of constructing a config class.)"""
    from userseq.encoders.config import ModelConfig

    return ModelConfig(name=name, **settings)


__all__ = ["encoder_config", "ENCODERS", "GRUEncoder", "SequenceEncoder", "TransformerEncoder", "build_encoder"]
