"""The next-item run configuration: data, model, loss, train and eval sections.

The `model:` section is validated by the config class of the encoder it names (`model.name`, see
`userseq.encoders`): each encoder has its own settings, and the dump keeps them all.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from userseq.core.config import StrictModel, TaskConfig, TrainConfig
from userseq.core.errors import ConfigError
from userseq.data.config import DataConfig
from userseq.data.split import split_options
from userseq.encoders import (
    COMMON_SETTINGS,
    DEFAULT_ENCODER,
    ENCODERS,
    EncoderConfig,
    encoder_config,
    other_encoder_setting,
    parse_encoder_config,
)
from userseq.index.knn_embed import KnnEmbedConfig
from userseq.losses.config import LossConfig

RETRIEVAL_MODES = ("single", "knn_embed", "ada")


class EvalConfig(StrictModel):
    ks: list[int] = Field(default_factory=lambda: [10, 20])
    filter_seen: bool = Field(True, description="remove the user's history items from the ranking")
    user_chunk: int = Field(1024, ge=1)
    item_chunk: int = Field(262_144, ge=1)

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k <= 0 for k in v):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(v))


class AdaConfig(StrictModel):
    """Ada-Retrieval (Li et al., AAAI 2024): K items in `rounds` rounds of K/rounds, with an item
    adapter (frequency filter + attention to the retrieved items) and a user adapter (GRU over the
    rounds' user vectors + MLP). Set by `userseq ada fit`; read by `retrieval: ada`."""

    rounds: int = Field(5, ge=1, description="retrieval rounds T (K must be a multiple of T)")
    train_k: int = Field(100, ge=1, description="items retrieved per training sample (all rounds)")
    round_weight: float = Field(0.3, gt=0, description="loss weight lambda^r of round r (0-based)")
    dropout: float = Field(0.1, ge=0, lt=1, description="adapter dropout")
    freeze_base: bool = Field(False, description="train the adapters only (keep the encoder)")
    base_run: str | None = Field(None, description="the run the adapters were fine-tuned from")

    @model_validator(mode="after")
    def _rounds_divide(self) -> AdaConfig:
        if self.train_k % self.rounds:
            raise ValueError(f"train_k ({self.train_k}) must be a multiple of rounds "
                             f"({self.rounds})")
        return self


class RetrievalConfig(StrictModel):
    """How `recommend`/`evaluate` retrieve: one user vector (`single`), the user's interest
    mixture (`knn_embed`, any run), or multi-round adaptive retrieval (`ada`, a run fine-tuned
    with `userseq ada fit`)."""

    mode: Literal["single", "knn_embed", "ada"] = "single"
    knn_embed: KnnEmbedConfig = Field(default_factory=KnnEmbedConfig)
    ada: AdaConfig = Field(default_factory=AdaConfig)


class RunConfig(TaskConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    model: SerializeAsAny[EncoderConfig] = Field(
        default_factory=lambda: encoder_config(DEFAULT_ENCODER))
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    dataset: str | None = Field(None, description="dataset name or path the run was trained on")

    @field_validator("model", mode="before")
    @classmethod
    def _encoder_settings(cls, v: Any) -> Any:
        return parse_encoder_config(v, "model")

    def updated(self, overrides: dict[str, Any], source: str = "overrides") -> RunConfig:
        """`TaskConfig.updated`, with `model.name` applied first: the encoder decides which
        `model.*` keys exist (`{"model.name": "bert4rec", "model.mask_prob": 0.3}` works). The
        common settings (`COMMON_SETTINGS`: dim, layers, heads, dropout, max_len) that the chosen
        encoder lacks are dropped, so one set of overrides serves every encoder (`model.heads`
        does nothing for gru4rec); any other setting of another encoder is an error, never
        silently ignored (`model.mask_prob` for sasrec)."""
        over = dict(overrides)
        name = over.pop("model.name", None)
        cfg = super().updated({"model.name": name}, source) if name is not None else self
        kept = {}
        for k, v in over.items():
            field = k.removeprefix("model.")
            if k.startswith("model.") and other_encoder_setting(cfg.model, field):
                if field in COMMON_SETTINGS:
                    continue
                allowed = ", ".join(type(cfg.model).model_fields)
                raise ConfigError(f"{source}: '{k}' is not a setting of encoder "
                                  f"'{cfg.model.name}' (it belongs to another encoder); its "
                                  f"settings are: {allowed}.")
            kept[k] = v
        return TaskConfig.updated(cfg, kept, source) if kept else cfg


def validation_metrics(ks: list[int]) -> list[str]:
    """The metric names next-item validation produces for cut-offs `ks` (`metrics.ranking`)."""
    names = [f"{m}@{k}" for k in ks for m in ("ndcg", "hr", "coverage")]
    return [*names, "mrr"]


def check_monitor(cfg: RunConfig) -> None:
    """train.monitor must be a metric validation produces: checked before training (it was a
    KeyError after the first epoch)."""
    produced = validation_metrics(cfg.eval.ks)
    if cfg.model.name in ENCODERS and getattr(ENCODERS.get(cfg.model.name).obj, "reconstructs",
                                              False):
        produced = [*produced, "recon_acc"]  # autoencoders (seq2seq-ae) also validate that
    if cfg.train.monitor not in produced:
        ks = cfg.eval.ks
        raise ConfigError(
            f"train.monitor {cfg.train.monitor!r} is not a validation metric with eval.ks {ks}: "
            f"choose one of {', '.join(produced)} (e.g. --set train.monitor=ndcg@{ks[0]}), or "
            "add its cut-off to eval.ks.")


def split_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of `data.split.make_split` for the configured split."""
    return split_options(cfg.data)
