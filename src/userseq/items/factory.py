"""`build_items`: the item representation a `ModelConfig` asks for.

`model.items` picks what an item is (id | text | id+text); `model.item_table` how its id vectors
are stored (a name of `ITEM_TABLES`: full | hash | qr | unified | matryoshka, or a registered
table) at `model.compression`; `model.quantize`
(set by `userseq compress`) replaces everything by a quantized frozen matrix. Saved runs rebuild
the same modules from their own tensors (`saved`), so no metadata, cache or encoder is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.core.errors import ConfigError
from userseq.items.base import ItemRepr, state_bytes
from userseq.items.compressed import QuantizedTable
from userseq.items.graph import GraphItems
from userseq.items.registry import ITEM_TABLES
from userseq.items.text import TextItems

FP32 = 4


def special_tokens(cfg: Any) -> int:
    """Rows above the catalogue the encoder needs (BERT4Rec's [mask]): its config says."""
    return int(getattr(cfg, "special_tokens", 0))


def serve_dim(cfg: Any) -> int:
    """Dimension used for scoring and serving: a Matryoshka prefix, else the full dimension."""
    if cfg.item_table == "matryoshka":
        return max(1, round(cfg.dim / cfg.compression))
    return cfg.dim


def matryoshka_dims(cfg: Any) -> list[int]:
    """Nested prefixes trained together: d, d/2, d/4, ... down to the serving prefix."""
    dims, m, low = [], cfg.dim, serve_dim(cfg)
    while m > low:
        dims.append(m)
        m //= 2
    return [*dims, low]


def categorical_features(catalogue: pl.Series,
                         meta: pl.DataFrame | None) -> dict[str, torch.Tensor]:
    """List-of-string attribute columns (e.g. genres) as padded (n_items + 1, T) token matrices
    (token 0 = none), aligned with the catalogue; the input of the unified table."""
    if meta is None:
        return {}
    out = {}
    for col, dtype in sorted(meta.schema.items()):
        if not (isinstance(dtype, pl.List) and dtype.inner == pl.String):
            continue
        ids = meta["item_id"].cast(catalogue.dtype, strict=False)
        aligned = pl.DataFrame({"item_id": catalogue}).join(
            pl.DataFrame({"item_id": ids, "v": meta[col]}).unique("item_id", keep="first"),
            on="item_id", how="left", maintain_order="left")["v"].to_list()
        vocab: dict[str, int] = {}
        rows = [[vocab.setdefault(t, len(vocab) + 1) for t in (v or []) if t] for v in aligned]
        width = max([1, *map(len, rows)])
        mat = np.zeros((len(rows) + 1, width), dtype=np.int64)
        for i, r in enumerate(rows, start=1):
            mat[i, : len(r)] = r
        out[col] = torch.from_numpy(mat)
    return out


def id_table(cfg: Any, n_items: int, special: int,
             features: dict[str, torch.Tensor] | None = None) -> ItemRepr:
    """The id part, built by the `model.item_table` entry of `ITEM_TABLES`."""
    return ITEM_TABLES.get(cfg.item_table).obj(cfg, n_items, special, features or {})


def build_items(cfg: Any, n_items: int, *, text: tuple[torch.Tensor, torch.Tensor] | None = None,
                known: torch.Tensor | None = None, features: dict[str, torch.Tensor] | None = None,
                saved: dict[str, torch.Tensor] | None = None,
                counts: torch.Tensor | None = None,
                graph: tuple[torch.Tensor, torch.Tensor] | None = None) -> ItemRepr:
    """Item representation for a `ModelConfig`.

    `text`: (vectors (n_items + 1, E), has_text (n_items + 1,)) for text items; `known`: items with
    training events (id+text gives only those an id vector); `counts`: training events per item
(the id+text popularity gate); `features`: categorical attribute
    token matrices for the unified table; `graph`: the co-occurrence adjacency (indices, values)
    of `items.graph.cooccurrence_graph` for id+graph; `saved`: the encoder state dict of a saved
    run, from which all of these are taken instead.
    """
    ITEM_TABLES.canonical(cfg.item_table)  # an unknown name: the registry's ConfigError
    special = special_tokens(cfg)
    saved = {k[len("items."):]: v for k, v in (saved or {}).items()
             if k.startswith("items.")} or None
    if cfg.quantize != "none":
        if saved is None:
            raise ConfigError("model.quantize is set by `userseq compress` on a trained run; train "
                              "with quantize: none.")
        return QuantizedTable(n_items, cfg.dim, cfg.quantize, saved["codes"], saved.get("scale"),
                              saved.get("centroids"))
    if saved is not None:
        prefix = "ids.tokens_" if cfg.items in ("id+text", "id+graph") else "tokens_"
        features = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
    if cfg.items == "id":
        if text is not None:
            raise ConfigError("item text was given but model.items is 'id'; use --items text or "
                              "id+text.")
        return id_table(cfg, n_items, special, features)
    if cfg.items == "id+graph":
        if saved is not None:
            graph = (saved["graph_index"], saved["graph_value"])
        if graph is None:
            raise ConfigError("model.items 'id+graph' needs the item co-occurrence graph of the "
                              "training split (NextItemRecommender.fit builds it).")
        return GraphItems(id_table(cfg, n_items, special, features), *graph, cfg.graph_layers)
    if saved is not None:
        text = (saved["text_vectors"], saved["has_text"])
    if text is None:
        raise ConfigError(f"model.items '{cfg.items}' needs item text: a named dataset with item "
                          "text (amazon-scientific, MovieLens titles) or data.item_text (CLI "
                          "--item-text FILE).")
    common = {"special_tokens": special, "adapter": cfg.text_adapter, "experts": cfg.text_experts,
              "dropout": cfg.dropout}
    if cfg.items == "text":
        id_rows = None if saved is None else saved["id_rows"]
        return TextItems(*text, cfg.dim, "text", id_rows=id_rows, **common)
    ids = id_table(cfg, n_items, special, features)
    # the gate of a saved run is what it was trained with (runs before the gate have none)
    gate = getattr(cfg, "id_gate", "none") if saved is None else (
        "popularity" if "gate_w" in saved else "none")
    cold = getattr(cfg, "cold_ids", "none") if saved is None else (
        "text_knn" if "nbr_idx" in saved else "none")
    if gate == "popularity" and counts is None and known is not None:
        counts = known.float()
    return TextItems(*text, cfg.dim, "id+text", ids=ids, known=known,
                     id_dropout=getattr(cfg, "id_dropout", 0.0), gate=gate, counts=counts,
                     id_dropout_scale=getattr(cfg, "id_dropout_scale", False),
                     cold_ids=cold, **common)


def table_report(items: ItemRepr, cfg: Any) -> dict[str, Any]:
    """Bytes of the stored item representation and the plain fp32 id table it replaces.

    Matryoshka serves a prefix: its table bytes are those of the (n_items + 1) x prefix matrix used
    for scoring (the encoder still reads full-width input rows; see docs/items.md)."""
    n, d = items.n_items, cfg.dim
    full = (n + 1) * d * FP32
    if cfg.item_table == "matryoshka" and cfg.quantize == "none":
        stored = (n + 1) * serve_dim(cfg) * FP32
    else:
        stored = state_bytes(items)
    return {"items": cfg.items, "table": cfg.item_table, "quantize": cfg.quantize, "dim": d,
            "serve_dim": serve_dim(cfg), "item_table_bytes": int(stored),
            "full_fp32_bytes": int(full), "compression": round(full / max(stored, 1), 3)}
