"""Next-item loss configuration (the `loss:` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from userseq.core.config import StrictModel
from userseq.core.errors import ConfigError
from userseq.losses.registry import LOSSES


class ICSRecConfig(StrictModel):
    """Settings of the `icsrec` loss (`loss.icsrec.*`, see userseq.losses.icsrec)."""

    rec_loss: str = Field("ce", description="the recommendation loss (a registered loss)")
    cicl_weight: float = Field(0.3, ge=0, description="lambda: coarse intent contrast weight")
    ficl_weight: float = Field(0.1, ge=0, description="beta: fine intent (prototype) weight")
    intents: int = Field(256, ge=1, description="k-means intent prototypes, refreshed each epoch")
    temperature: float = Field(1.0, gt=0, description="InfoNCE temperature")
    similarity: Literal["dot", "cosine"] = Field(
        "dot", description="similarity in both InfoNCE terms (ICSRec: dot)")
    fnm: bool = Field(True, description="false-negative masking of same-target pairs")
    pairs: int = Field(512, ge=2, description="positions per batch in the contrastive terms")
    sample: int = Field(50_000, ge=1, description="training positions clustered each epoch")
    kmeans_iters: int = Field(10, ge=1, description="k-means iterations per refresh")

    @field_validator("rec_loss")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            return LOSSES.canonical(v)
        except ConfigError as e:
            raise PydanticCustomError("unknown_loss", "{m}", {"m": str(e)}) from None


class Matryoshka2DConfig(StrictModel):
    """2D Matryoshka training (2DMSE, Li et al. 2024; `loss.mse2d.*`): user vectors usable from
    the first n encoder blocks as well as from the first d dimensions. Each step adds the loss of
    the last block at one sampled prefix width and of one sampled earlier block at one sampled
    width, plus a KL term pulling the earlier block's softmax over items toward the last block's
    (sentence-transformers' Matryoshka2dLoss defaults: one layer and one width per step, weights
    1, KL temperature 0.3). Transformer encoders (sasrec, bert4rec) only."""

    enabled: bool = False
    dims: list[int] | None = Field(
        None, description="prefix widths sampled from (default: dim, dim/2, ... down to 8)")
    last_layer_weight: float = Field(1.0, ge=0)
    prior_layers_weight: float = Field(1.0, ge=0)
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL alignment term")
    kl_temperature: float = Field(0.3, gt=0)
    kl_rows: int = Field(512, ge=1, description="positions per step in the KL term (its cost is "
                         "rows x catalogue)")


class LossConfig(StrictModel):
    """Training objective over the item catalogue. `name` is a registered loss (`LOSSES`); the
    other settings are read by the losses that use them."""

    name: str = "ce"
    negatives: int = Field(256, ge=1, description="negatives for sampled_softmax / gbce")
    sampler: Literal["uniform", "popularity"] = "uniform"
    logq: bool = Field(True, description="logQ correction for sampled softmax")
    gbce_t: float = Field(0.75, ge=0, le=1, description="gSASRec calibration parameter t")
    logits_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="matmul precision of the full-softmax CE (auto: follow autocast, else "
        "fp32); bf16 is about 2x faster on CPUs with AMX, softmax and gradients accumulate in fp32")
    icsrec: ICSRecConfig = Field(default_factory=ICSRecConfig)
    mse2d: Matryoshka2DConfig = Field(default_factory=Matryoshka2DConfig)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            return LOSSES.canonical(v)
        except ConfigError as e:
            raise PydanticCustomError("unknown_loss", "{m}", {"m": str(e)}) from None
