"""How events are read, filtered and split."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from userseq.core.config import StrictModel


class DataConfig(StrictModel):
    """How events are read, filtered and split."""

    renamed: ClassVar[dict[str, str]] = {"cold_seed": "split_seed"}  # old key -> new key

    user_col: str = "user_id"
    item_col: str = "item_id"
    timestamp_col: str = "timestamp"
    min_user_events: int = Field(0, ge=0)
    min_item_events: int = Field(0, ge=0)
    k_core: bool = False
    dedup_consecutive: bool = False
    split: Literal["loo", "temporal", "cold-start"] = "loo"
    valid_quantile: float = Field(0.8, gt=0, lt=1)
    test_quantile: float = Field(0.9, gt=0, lt=1)
    train_windows: Literal["last", "random"] = Field(
        "last", description="training row per user and epoch: the last max_len+1 items, or a "
        "random crop of a longer history (redrawn every epoch; same cost per epoch)")
    cold_fraction: float = Field(0.2, gt=0, lt=1, description="cold-start split: share of items "
                                 "held out of training (half for validation targets, half for "
                                 "test targets)")
    split_seed: int = Field(0, description="seed of the split's random draws (cold-start: the "
                            "held-out items); was `cold_seed`")
    item_text: str | None = Field(None, description="item attribute table (item_id + text columns) "
                                  "for text items; default: the named dataset's item metadata")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """Old run configs: `cold_seed` is read as `split_seed`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old not in data:
                continue
            value = data.pop(old)
            if new in data and data[new] != value:
                raise ValueError(f"data.{old} is the old name of data.{new}; give only {new} "
                                 f"(got {old}={value!r}, {new}={data[new]!r})")
            data.setdefault(new, value)
        return data
