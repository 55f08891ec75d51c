"""The next-item run configuration: data, model, loss, train and eval sections.

The `model:` section is validated by the config class of the encoder it names (`model.name`, see
`userseq.encoders`): each encoder has its own settings, and the dump keeps them all.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SerializeAsAny, field_validator

from userseq.core.config import StrictModel, TaskConfig, TrainConfig
from userseq.core.errors import ConfigError
from userseq.data.config import DataConfig
from userseq.data.split import split_options
from userseq.encoders import (
    COMMON_SETTINGS,
    DEFAULT_ENCODER,
    EncoderConfig,
    encoder_config,
    other_encoder_setting,
    parse_encoder_config,
)
from userseq.losses.config import LossConfig


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


class RunConfig(TaskConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    model: SerializeAsAny[EncoderConfig] = Field(
        default_factory=lambda: encoder_config(DEFAULT_ENCODER))
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
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


def split_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of `data.split.make_split` for the configured split."""
    return split_options(cfg.data)
