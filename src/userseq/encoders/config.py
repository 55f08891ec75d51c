"""Encoder configuration (the `model:` section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from userseq.core.config import StrictModel


class ModelConfig(StrictModel):
    """Encoder architecture. `name` picks the family; unused fields are ignored by other families."""

    name: Literal["sasrec", "bert4rec", "gru4rec"] = "sasrec"
    dim: int = Field(64, ge=2)
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(200, ge=2)
    ffn_dim: int | None = Field(None, ge=1, description="feed-forward width (default: dim for SASRec, 4*dim for BERT4Rec)")
    mask_prob: float = Field(0.2, gt=0, lt=1, description="BERT4Rec masking proportion")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights (transformers)")
    init_std: float | None = Field(
        None, gt=0, description="transformers: N(0, init_std) for every Linear/Embedding weight (GPT-2 style, "
        "e.g. 0.02); default: PyTorch's layer defaults and N(0, 1/dim) item embeddings")
    items: Literal["id", "text", "id+text"] = Field("id", description="item representation (docs/items.md)")
    item_table: Literal["full", "hash", "qr", "unified", "matryoshka"] = Field(
        "full", description="how id vectors are stored; compressed tables use model.compression")
    compression: float = Field(1.0, ge=1, description="memory ratio of the item table vs the full fp32 table "
                               "(matryoshka: dim / serving prefix)")
    hash_functions: int = Field(2, ge=1, description="hash / unified tables: look-ups per feature")
    text_adapter: Literal["moe", "mlp"] = Field("moe", description="text vector -> model space")
    text_experts: int = Field(8, ge=1, description="experts of the MoE whitening adapter")
    text_encoder: Literal["all-minilm-l6-v2"] = "all-minilm-l6-v2"
    quantize: Literal["none", "int8", "pq"] = Field("none", description="set by `userseq compress`")
    pq_subquantizers: int | None = Field(None, ge=1, description="set by `userseq compress --method pq`")

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        dim = info.data.get("dim", 64)
        if dim % v:
            raise ValueError(f"heads ({v}) must divide dim ({dim})")
        return v

    @field_validator("compression")
    @classmethod
    def _compressed_table(cls, v: float, info: Any) -> float:
        if v != 1 and info.data.get("item_table", "full") == "full":
            raise ValueError("a compression ratio needs a compressed item table: set model.item_table (CLI "
                             "--item-table) to hash, qr, unified or matryoshka")
        return v
