"""The generative-retrieval run configuration: data, semantic_ids, model, train, decode, eval."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from userseq.core.config import StrictModel, TaskConfig, TrainConfig
from userseq.data.config import DataConfig
from userseq.index.semantic_ids import SemanticIdConfig


class ItemVectorConfig(StrictModel):
    """Where the item vectors that the semantic IDs are learned from come from."""

    source: str = Field("text", description="text (MiniLM over the item text: data.item_text or "
                        "the dataset's metadata) | run:RUN_DIR (a trained next-item run's item "
                        "embeddings) | file:PATH (Parquet/CSV with item_id + embedding)")

    @field_validator("source")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != "text" and not v.startswith(("run:", "file:")):
            raise ValueError("expected text, run:RUN_DIR or file:PATH")
        return v


class GenerativeModelConfig(StrictModel):
    """The encoder-decoder transformer."""

    name: Literal["generative"] = "generative"
    dim: int = Field(64, ge=8)
    layers: int = Field(2, ge=1, description="encoder blocks")
    decoder_layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    ffn_dim: int | None = Field(None, ge=1, description="feed-forward width (default 2*dim)")
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, ge=1, description="history items read by the encoder")
    init_std: float = Field(0.02, gt=0)
    preference: bool = Field(False, description="a text-preference slot (Mender): a per-user "
                             "text vector projected to one extra encoder-memory token")

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        dim = info.data.get("dim", 64)
        if dim % v:
            raise ValueError(f"heads ({v}) must divide dim ({dim})")
        return v


class DecodeConfig(StrictModel):
    """How the next item's code tuple is decoded (prefix-trie constrained)."""

    method: Literal["beam", "diverse"] = "beam"
    beams: int = Field(20, ge=1, description="beams B (at least k)")
    groups: int = Field(1, ge=1, description="Diverse Beam Search: groups G (must divide beams)")
    diversity: float = Field(0.0, ge=0, description="Diverse Beam Search: Hamming penalty λ")

    @model_validator(mode="after")
    def _groups_divide(self) -> DecodeConfig:
        check_decode(self.method, self.beams, self.groups, self.diversity, "decode.")
        return self


def check_decode(method: str, beams: int, groups: int, diversity: float,
                 prefix: str = "--") -> None:
    """Groups must divide beams; plain beam search has one group and no penalty."""
    if beams % groups:
        raise ValueError(f"{prefix}groups ({groups}) must divide {prefix}beams ({beams})")
    if method == "beam" and (groups != 1 or diversity):
        raise ValueError(f"{prefix}groups and {prefix}diversity need method 'diverse' "
                         f"(got groups={groups}, diversity={diversity})")


class GenerativeEvalConfig(StrictModel):
    ks: list[int] = Field(default_factory=lambda: [5, 10])
    filter_seen: bool = Field(True, description="the user's history items are never generated")
    user_chunk: int = Field(256, ge=1, description="users decoded together")

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(v))


def _train_defaults() -> TrainConfig:
    # lr 3e-3: validation NDCG@10 0.0225 vs 0.0177 at 1e-3 (Beauty, 1-minute budget, 1 thread)
    return TrainConfig(batch_size=256, lr=3e-3, patience=5, valid_users=2000, monitor="ndcg@10")


class GenerativeConfig(TaskConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    items: ItemVectorConfig = Field(default_factory=ItemVectorConfig)
    semantic_ids: SemanticIdConfig = Field(default_factory=SemanticIdConfig)
    model: GenerativeModelConfig = Field(default_factory=GenerativeModelConfig)
    train: TrainConfig = Field(default_factory=_train_defaults)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    eval: GenerativeEvalConfig = Field(default_factory=GenerativeEvalConfig)
    dataset: str | None = Field(None, description="dataset name or path the run was trained on")
    preferences: str | None = Field(None, description="table of user_id + preference text "
                                    "(needs model.preference)")

    @model_validator(mode="after")
    def _beams_cover_k(self) -> GenerativeConfig:
        if self.decode.beams < max(self.eval.ks):
            raise ValueError(f"decode.beams ({self.decode.beams}) must be at least the largest "
                              f"eval.ks ({max(self.eval.ks)}): beam search returns one item per "
                              "beam.")
        return self
