"""The context-aggregator run configuration: data, model, train."""

from __future__ import annotations

from pydantic import Field

from userseq.core.config import StrictModel, TaskConfig, TrainConfig


class ContextDataConfig(StrictModel):
    """Which users' post sequences, and how users are held out."""

    valid_fraction: float = Field(0.1, gt=0, lt=1, description="held-out users for early stopping")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out users for the report")
    split_seed: int = Field(0, ge=0, description="seed of the held-out user draw")
    max_history: int = Field(50, ge=1, description="most recent history posts read per user")


class ContextModelConfig(StrictModel):
    """The input-aware aggregator (Persona-Plug's user embedder, without the LLM)."""

    hidden: int = Field(128, ge=4, description="width of the relevance (query/key) space")
    context_dim: int = Field(64, ge=1, description="size of the exported user vector (the "
                             "soft-prompt slot of an external LLM)")
    top_k: int = Field(3, ge=1, description="history items returned as retrieved context")
    temperature: float = Field(0.05, gt=0, description="in-batch contrastive loss temperature")
    recency: bool = Field(True, description="a learned bias per position from the end of the "
                          "history, added to the relevance score")
    text_encoder: str = Field("all-minilm-l6-v2", description="sentence encoder of the posts: "
                              "the offline MiniLM or a local sentence-transformers directory")


def _train_defaults() -> TrainConfig:
    return TrainConfig(epochs=60, batch_size=64, lr=2e-3, weight_decay=1e-4, patience=8,
                       monitor="cosine")


class ContextConfig(TaskConfig):
    """The whole configuration of a context-aggregator run."""

    data: ContextDataConfig = Field(default_factory=ContextDataConfig)
    model: ContextModelConfig = Field(default_factory=ContextModelConfig)
    train: TrainConfig = Field(default_factory=_train_defaults)
    dataset: str | None = Field(None, description="petgen-wiki or a JSONL file of users")
