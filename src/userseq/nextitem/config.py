"""The next-item run configuration: data, model, loss, train and eval sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from userseq.core.config import StrictModel, TrainConfig, merge_overrides, read_yaml_mapping, validate_config
from userseq.data.config import DataConfig
from userseq.encoders.config import ModelConfig
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


class RunConfig(StrictModel):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dataset: str | None = Field(None, description="dataset name or path the run was trained on")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def updated(self, overrides: dict[str, Any], source: str = "overrides") -> RunConfig:
        """Apply dotted overrides like {"train.epochs": 5, "model.name": "gru4rec"}."""
        data = merge_overrides(self.model_dump(mode="json"), overrides, f"{source}: unknown config key")
        return parse_config(data, source)


def parse_config(data: dict[str, Any] | None, source: str = "<config>") -> RunConfig:
    return validate_config(RunConfig, data, source)


def load_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    return parse_config(read_yaml_mapping(path), str(path))
