"""Detection configuration: `DetectConfig` (the whole run) and its `model:` section.

`model.name` is a detector model (`detect.models.DETECT_MODELS`) or, for event data, any registered
encoder. `train.seed` seeds training; `split_seed` seeds the user split (runs written before the
rename call it `seed`: still read, also as an override).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from userseq.core.config import StrictModel, TaskConfig, TrainConfig
from userseq.core.errors import ConfigError
from userseq.detect.models import detect_model
from userseq.encoders.transformer import heads_divide_dim


class DetectModelConfig(StrictModel):
    """The detector network and how much of each user it reads."""

    name: str = Field("gru", description="gru | transformer | any registered encoder (events); "
                      "hlstm | cnn | minilm (post texts); behavior-ae (unsupervised, events)")
    dim: int = Field(64, ge=2)
    layers: int = Field(1, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(100, ge=1, description="events (event models) scored per user: the "
                         "first max_len")
    page_min_users: int = Field(2, ge=1, description="pages edited by fewer training users share "
                                "one 'rare' vector")
    causal_pages: bool = Field(True, description="an event reads its page's vector only if "
                               "page_min_users training users had edited the page before it "
                               "(else the 'rare' vector); False: any time (reads the future)")
    max_posts: int = Field(20, ge=1)
    max_tokens: int = Field(30, ge=1)
    vocab_size: int = Field(20000, ge=10)
    min_token_count: int = Field(2, ge=1)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        try:
            detect_model(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        return heads_divide_dim(v, info)


MONITORS = ("roc_auc", "accuracy", "neg_loss")  # what detector validation returns (estimator.fit;
# neg_loss: the unsupervised models' validation loss, negated)


def _train_defaults() -> TrainConfig:
    return TrainConfig(epochs=30, batch_size=128, lr=1e-3, patience=4, monitor="roc_auc",
                       weight_decay=0.0)


class DetectConfig(TaskConfig):
    """A detector run: model, training, the user split and the early-detection prefixes."""

    renamed: ClassVar[dict[str, str]] = {"seed": "split_seed"}  # old key -> new key (0.1 runs)

    model: DetectModelConfig = Field(default_factory=DetectModelConfig)
    train: TrainConfig = Field(default_factory=_train_defaults)
    prefix_prob: float = Field(0.5, ge=0, le=1, description="share of training rows cut to a "
                               "random first-k prefix")
    valid: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, lt=2**63,
                            description="seeds the stratified user split (and the folds)")
    first_k: list[int] = Field(default_factory=lambda: [1, 2, 5, 10])
    with_leakage: bool = False
    dataset: str | None = None
    fixed_posts: int | None = Field(
        None, ge=0, description="text data: posts per user (users with fewer are dropped); None "
        "= the dataset's default (petgen-wiki 8: removes the post-count confound), 0 = all")
    fixed_keep: Literal["last", "first"] = Field(
        "last", description="which posts fixed_posts keeps ('last' keeps the target context)")

    @model_validator(mode="after")
    def _monitor(self) -> DetectConfig:
        """train.monitor must be a metric detector validation produces (checked before
        training, not after the first epoch)."""
        if self.train.monitor not in MONITORS:
            raise ValueError(f"train.monitor must be one of {', '.join(MONITORS)} for detectors "
                             f"(got {self.train.monitor!r})")
        return self
