"""`EncoderConfig`: the settings every encoder has (the `model:` section of a next-item run).

Each encoder subclasses it with its own settings (`SASRecConfig`, `GRU4RecConfig`, ...) and sets
the default of `name` to its registered name. The item-representation fields (`items`,
`item_table`, `compression`, ...) live here because `items.factory.build_items` reads them for
every encoder (see docs/items.md).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from userseq.core.config import StrictModel, registered
from userseq.items.registry import ITEM_TABLES


class EncoderConfig(StrictModel):
    """Settings shared by every encoder: width, dropout, context length and the item table."""

    # rows above the catalogue the encoder needs in its item table (BERT4Rec's [mask]: 1)
    special_tokens: ClassVar[int] = 0

    name: str = Field(description="the registered encoder name (userseq.encoders.ENCODERS)")
    dim: int = Field(64, ge=2)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(200, ge=2)
    items: Literal["id", "text", "id+text", "id+graph"] = Field(
        "id", description="item representation (docs/items.md); id+graph: the id table "
        "propagated over the training co-occurrence graph (LightGCN-style, userseq.items.graph)")
    graph_layers: int = Field(2, ge=1, le=8, description="id+graph: propagation layers")
    graph_window: int = Field(
        1, ge=1, le=50, description="id+graph: items within this many positions of each other in "
        "a training sequence are linked")
    item_table: str = Field(
        "full", description="how id vectors are stored, a name in userseq.items.ITEM_TABLES (full, "
        "hash, qr, unified, matryoshka, or a registered one); compressed tables use "
        "model.compression")
    compression: float = Field(
        1.0, ge=1, description="memory ratio of the item table vs the full fp32 table "
        "(matryoshka: dim / serving prefix)")
    hash_functions: int = Field(2, ge=1, description="hash / unified tables: look-ups per feature")
    text_adapter: Literal["moe", "mlp"] = Field("moe", description="text vector -> model space")
    text_experts: int = Field(8, ge=1, description="experts of the MoE whitening adapter")
    text_encoder: str = Field(
        "all-minilm-l6-v2", description="sentence encoder of text items: the offline MiniLM "
        "package (default) or the path of a local sentence-transformers model")
    id_dropout: float = Field(
        0.5, ge=0, lt=1, description="id+text: DropoutNet share of item occurrences whose id part "
        "is dropped while training, so the text path alone must rank (0: the pre-0.3 behaviour)")
    id_dropout_scale: bool = Field(
        False, description="id+text: scale kept id parts by 1/(1 - id_dropout) while training "
        "(inverted dropout): at inference the id part weighs its training expectation")
    cold_ids: Literal["none", "text_knn"] = Field(
        "none", description="id+text: cold items (and, while training, dropped ones) borrow the "
        "mean id vector of their 10 nearest trained items in text space")
    id_gate: Literal["popularity", "none"] = Field(
        "popularity", description="id+text: scale the id part by a learned gate of the item's "
        "training count ('none': plain sum)")
    quantize: Literal["none", "int8", "pq"] = Field("none", description="set by `userseq compress`")
    pq_subquantizers: int | None = Field(
        None, ge=1, description="set by `userseq compress --method pq`")

    readout: Literal["last", "set2set"] = Field(
        "last", description="vector at each position: the encoder's own (last) or Set2Set pooling "
        "of its hidden states so far (causal encoders)")
    readout_steps: int = Field(3, ge=1, description="process steps of the set2set readout")

    @field_validator("item_table")
    @classmethod
    def _known_item_table(cls, name: str) -> str:
        return registered(ITEM_TABLES, name)

    @field_validator("compression")
    @classmethod
    def _compressed_table(cls, v: float, info: Any) -> float:
        if v != 1 and info.data.get("item_table", "full") == "full":
            raise ValueError("a compression ratio needs a compressed item table: set model."
                             "item_table (CLI --item-table) to hash, qr, unified or matryoshka")
        return v
