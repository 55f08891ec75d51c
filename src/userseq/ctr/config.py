"""CTR configuration: a `TaskConfig` (unknown keys and bad values are errors; YAML in and out,
dotted overrides: `CTRConfig.from_yaml(path)`, `cfg.updated({"model.name": "dare"})`).

The training section is the shared `TrainConfig` (one training loop for every task); its CTR
defaults differ only in the monitored metric (`auc`) and the batch size / patience.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from userseq.core.config import StrictModel, TaskConfig, TrainConfig

MONITORS = ("auc", "gauc", "neg_logloss")


class CTRDataConfig(StrictModel):
    """How CTR samples are built from an event log."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    timestamp_col: str = "timestamp"
    label_col: str = Field(
        "rating", description="column holding the label (or the rating it is derived from)")
    label_threshold: float | None = Field(
        4.0, description="label = value >= threshold (MovieLens: rating >= 4); null: the column "
                         "already holds 0/1")
    category_col: str | None = Field(
        None, description="item category column in the events; default: MovieLens genres for named "
                          "datasets")
    target_col: str | None = Field(
        None, description="boolean column marking the events that are CTR samples (default: every "
                          "event)")
    context_cols: list[str] = Field(
        default_factory=list, description="numeric per-event context features")
    valid_quantile: float = Field(
        0.8, gt=0, lt=1, description="samples before this time quantile train")
    test_quantile: float = Field(
        0.9, gt=0, lt=1, description="samples at/after this time quantile test")
    split: Literal["time", "user"] = Field(
        "time", description="time: one global time cut for everyone (the quantiles above over all "
                            "samples); user: the quantiles over each user's own targets in time "
                            "order, so every user with >= 3 targets is in valid and test")
    negatives: int = Field(
        0, ge=0, description="per observed event, this many items sampled by item frequency that "
                             "the user never interacted with, as non-clicks (DARE's protocol): "
                             "every observed event is then a click and the label column is only a "
                             "history feature (optional)")
    negative_seed: int = Field(0, description="seed of the negative sampling")
    targets_per_user: int | None = Field(
        None, ge=1, description="keep only each user's last N target events as samples (their "
                                "histories stay whole)")

    @model_validator(mode="after")
    def _order(self) -> CTRDataConfig:
        if self.valid_quantile >= self.test_quantile:
            raise ValueError(f"valid_quantile ({self.valid_quantile}) must be below test_quantile "
                             f"({self.test_quantile})")
        return self


class CTRModelConfig(StrictModel):
    """The CTR model. `name` picks the interest module; the embedding and MLP blocks are shared."""

    name: Literal["nohist", "mean", "din", "sim", "twin", "sdim", "dare", "awmoe"] = "din"
    item_dim: int = Field(32, ge=1)
    cat_dim: int = Field(16, ge=1)
    user_dim: int = Field(16, ge=0, description="user-id embedding size (0: no user-id feature)")
    max_len: int = Field(200, ge=1, description="recent behaviours read by mean and din")
    long_len: int = Field(2000, ge=1, description="behaviours searched by sim, twin, sdim and dare")
    top_k: int = Field(
        20, ge=1, description="behaviours kept by the search stage (sim, twin, dare)")
    mlp: list[int] = Field(
        default_factory=lambda: [200, 80], description="prediction MLP hidden sizes")
    activation: Literal["dice", "prelu"] = "dice"
    att_hidden: list[int] = Field(
        default_factory=lambda: [80, 40], description="DIN local activation unit")
    din_softmax: bool = Field(
        False, description="DIN code variant: softmax-normalized, scaled weights")
    attn_item_dim: int | None = Field(
        None, ge=1, description="DARE attention item dim (default item_dim)")
    attn_cat_dim: int | None = Field(
        None, ge=1, description="DARE attention category dim (default cat_dim)")
    aux_loss: bool = Field(
        False, description="twin/dare: auxiliary loss on softmax attention over all behaviours")
    num_hashes: int = Field(48, ge=1, description="SDIM m")
    hash_bits: int = Field(3, ge=1, le=16, description="SDIM tau (bits per signature)")
    hash_seed: int = 1234
    pos_buckets: int = Field(
        64, ge=2, description="log-spaced buckets of the position counted back from the target")
    dropout: float = Field(0.0, ge=0, lt=1)
    num_experts: int = Field(4, ge=1, description="AW-MoE experts")
    moe_mask_prob: float = Field(
        0.5, ge=0, lt=1, description="AW-MoE: behaviours dropped in the masked (long-tail) view")
    moe_cl_weight: float = Field(
        0.1, ge=0, description="AW-MoE: weight of the contrastive loss on gate outputs (0: off)")
    moe_temperature: float = Field(0.2, gt=0, description="AW-MoE: InfoNCE temperature")

    @field_validator("mlp", "att_hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(h <= 0 for h in v):
            raise ValueError("must be a non-empty list of positive layer sizes")
        return v

    @property
    def window(self) -> int:
        """How many recent behaviours this model reads."""
        if self.name == "nohist":
            return 0
        return self.max_len if self.name in ("mean", "din", "awmoe") else self.long_len


def _train_defaults() -> TrainConfig:
    return TrainConfig(epochs=20, batch_size=512, lr=1e-3, patience=2, monitor="auc", grad_clip=5.0)


class CTRConfig(TaskConfig):
    """The whole CTR configuration: how samples are built, the model, the training loop."""

    data: CTRDataConfig = Field(default_factory=CTRDataConfig)
    model: CTRModelConfig = Field(default_factory=CTRModelConfig)
    train: TrainConfig = Field(default_factory=_train_defaults)
    dataset: str | None = Field(None, description="dataset name or path the run was trained on")

    @model_validator(mode="after")
    def _monitor(self) -> CTRConfig:
        if self.train.monitor not in MONITORS:
            raise ValueError(f"train.monitor must be one of {', '.join(MONITORS)} for CTR "
                             f"(got {self.train.monitor!r})")
        return self
