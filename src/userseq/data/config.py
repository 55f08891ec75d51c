"""How events are read, filtered and split."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from userseq.core.config import StrictModel


class DataConfig(StrictModel):
    """How events are read, filtered and split."""

    renamed: ClassVar[dict[str, str]] = {"cold_seed": "split_seed"}  # old key -> new key (0.1 runs)

    user_col: str = "user_id"
    item_col: str = "item_id"
    timestamp_col: str = "timestamp"
    min_user_events: int = Field(0, ge=0)
    min_item_events: int = Field(0, ge=0)
    k_core: bool = False
    dedup_consecutive: bool = False
    strip_ids: bool = Field(False, description="strip leading/trailing whitespace from string ids "
                            "(otherwise ' u1' and 'u1' are two ids, with a warning)")
    split: Literal["loo", "temporal", "cold-start"] = "loo"
    valid_quantile: float = Field(0.8, gt=0, lt=1)
    test_quantile: float = Field(0.9, gt=0, lt=1)
    train_windows: Literal["last", "random"] = Field(
        "last", description="training row per user and epoch: the last max_len+1 items, or a "
        "random crop of a longer history (redrawn every epoch; same cost per epoch)")
    cold_fraction: float = Field(0.2, gt=0, lt=1, description="cold-start split: share of items "
                                 "held out of training (half for validation targets, half for "
                                 "test targets)")
    split_seed: int = Field(0, ge=0, lt=2**63, description="seed of the split's random draws "
                            "(cold-start: the held-out items); was `cold_seed`")
    tie_order: Literal["file", "item", "random"] = Field(
        "file", description="order of a user's events with equal timestamps: input order "
        "(file), by original item id (item; LRURec's ML-1M preprocessing), or shuffled with "
        "tie_seed (random)")
    tie_seed: int = Field(0, ge=0, lt=2**63, description="seed of tie_order=random")
    train_user_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the users whose training events are trained on "
        "(seeded by split_seed); validation and test stay whole: sample-efficiency curves")
    item_text: str | None = Field(None, description="item attribute table (item_id + text columns) "
                                  "for text items; default: the named dataset's item metadata")
