"""Next-item loss configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from userseq.core.config import StrictModel


class LossConfig(StrictModel):
    """Training objective over the item catalogue."""

    name: Literal["ce", "sampled_softmax", "bce", "gbce"] = "ce"
    negatives: int = Field(256, ge=1, description="negatives for sampled_softmax / gbce")
    sampler: Literal["uniform", "popularity"] = "uniform"
    logq: bool = Field(True, description="logQ correction for sampled softmax")
    gbce_t: float = Field(0.75, ge=0, le=1, description="gSASRec calibration parameter t")
    logits_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="matmul precision of the full-softmax CE (auto: follow autocast, else fp32); "
        "bf16 is about 2x faster on CPUs with AMX, softmax and gradients accumulate in fp32")
