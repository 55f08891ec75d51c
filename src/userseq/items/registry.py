"""Item tables by name (`model.item_table`): how the id part of an item is stored.

`ITEM_TABLES` maps a name to a builder with one signature:

    builder(cfg, n_items: int, special_tokens: int, features: dict[str, Tensor]) -> ItemRepr

`cfg` is the model config (the builders read `dim`, `compression` and `hash_functions`),
`n_items` the catalogue size, `special_tokens` the rows above the catalogue the encoder needs
(BERT4Rec's [mask]), and `features` the categorical attribute token matrices of the catalogue
({name: (n_items + 1, T)}, possibly empty; only tables that multiplex attributes read them).
A compressing table stores about `full rows / cfg.compression` rows.

Built-ins: `full` (one row per item), `hash` (k hashes into a shared table), `qr`
(quotient-remainder), `unified` (the id and its attributes share one hashed table) and
`matryoshka` (a full table whose nested prefixes are trained together; see items.factory).
Add one from user code with `userseq.register_item_table("name")` on a builder.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from userseq.core.registry import Registry, decorator
from userseq.items.base import IdEmbedding, ItemRepr
from userseq.items.compressed import (
    HashEmbedding,
    QREmbedding,
    UnifiedEmbedding,
    qr_remainder_rows,
)

ITEM_TABLES: Registry[Any] = Registry(
    "item table", "Set model.item_table (CLI --item-table), or add one with "
    "userseq.register_item_table.")
register_item_table = decorator(ITEM_TABLES)

Features = dict[str, torch.Tensor]


def compressed_rows(full_rows: int, cfg: Any) -> int:
    """Rows of a table compressed `cfg.compression` times (at least one)."""
    return max(1, math.ceil(full_rows / cfg.compression))


@register_item_table("full")
def full(cfg: Any, n_items: int, special_tokens: int, features: Features) -> ItemRepr:
    """One learned row per item (no compression)."""
    return IdEmbedding(n_items, cfg.dim, special_tokens)


@register_item_table("matryoshka")
def matryoshka(cfg: Any, n_items: int, special_tokens: int, features: Features) -> ItemRepr:
    """A full table whose nested prefixes (d, d/2, ... d/compression) are trained and served."""
    return IdEmbedding(n_items, cfg.dim, special_tokens)


@register_item_table("hash")
def hashed(cfg: Any, n_items: int, special_tokens: int, features: Features) -> ItemRepr:
    """The hashing trick: model.hash_functions hashes into one shared table, summed."""
    return HashEmbedding(n_items, cfg.dim, compressed_rows(n_items, cfg), cfg.hash_functions,
                         special_tokens=special_tokens)


@register_item_table("qr")
def quotient_remainder(cfg: Any, n_items: int, special_tokens: int,
                       features: Features) -> ItemRepr:
    """Quotient-remainder trick: two small tables whose rows are multiplied."""
    remainder = qr_remainder_rows(n_items, compressed_rows(n_items, cfg))
    return QREmbedding(n_items, cfg.dim, remainder, special_tokens)


@register_item_table("unified")
def unified(cfg: Any, n_items: int, special_tokens: int, features: Features) -> ItemRepr:
    """Feature multiplexing: the id and its categorical attributes share one hashed table."""
    features = dict(sorted(features.items()))
    # full = one d-wide row per id and per attribute value; the shared table has chunk-wide rows
    vocab = n_items + sum(int(t.max()) for t in features.values())
    rows = compressed_rows(vocab * cfg.hash_functions * (1 + len(features)), cfg)
    return UnifiedEmbedding(n_items, cfg.dim, rows, cfg.hash_functions,
                            special_tokens=special_tokens, features=features)
