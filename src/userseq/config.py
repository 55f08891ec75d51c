"""Experiment configuration: pydantic models, YAML in and out, clear errors for bad keys/values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from userseq.errors import ConfigError


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    """How events are read, filtered and split."""

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
        "last", description="training row per user and epoch: the last max_len+1 items, or a random crop of "
        "a longer history (redrawn every epoch; same cost per epoch)")
    cold_fraction: float = Field(0.2, gt=0, lt=1, description="cold-start split: share of items held out of "
                                 "training (half for validation targets, half for test targets)")
    cold_seed: int = Field(0, description="cold-start split: seed of the held-out item draw")
    item_text: str | None = Field(None, description="item attribute table (item_id + text columns) for text "
                                  "items; default: the named dataset's item metadata")


class ModelConfig(StrictModel):
    """Encoder architecture. `name` picks the family; unused fields are ignored by other families."""

    name: Literal["sasrec", "bert4rec", "gru4rec"] = "sasrec"
    dim: int = Field(64, ge=2)
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(200, ge=2)
    ffn_dim: int | None = Field(None, ge=1, description="feed-forward width (default: dim for SASRec, 4*dim for BERT4Rec)")
    mask_prob: float = Field(0.2, gt=0, lt=1, description="BERT4Rec masking proportion")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights (transformers)")
    init_std: float | None = Field(
        None, gt=0, description="transformers: N(0, init_std) for every Linear/Embedding weight (GPT-2 style, "
        "e.g. 0.02); default: PyTorch's layer defaults and N(0, 1/dim) item embeddings")
    items: Literal["id", "text", "id+text"] = Field("id", description="item representation (docs/items.md)")
    item_table: Literal["full", "hash", "qr", "unified", "matryoshka"] = Field(
        "full", description="how id vectors are stored; compressed tables use model.compression")
    compression: float = Field(1.0, ge=1, description="memory ratio of the item table vs the full fp32 table "
                               "(matryoshka: dim / serving prefix)")
    hash_functions: int = Field(2, ge=1, description="hash / unified tables: look-ups per feature")
    text_adapter: Literal["moe", "mlp"] = Field("moe", description="text vector -> model space")
    text_experts: int = Field(8, ge=1, description="experts of the MoE whitening adapter")
    text_encoder: Literal["all-minilm-l6-v2"] = "all-minilm-l6-v2"
    quantize: Literal["none", "int8", "pq"] = Field("none", description="set by `userseq compress`")
    pq_subquantizers: int | None = Field(None, ge=1, description="set by `userseq compress --method pq`")

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        dim = info.data.get("dim", 64)
        if dim % v:
            raise ValueError(f"heads ({v}) must divide dim ({dim})")
        return v

    @field_validator("compression")
    @classmethod
    def _compressed_table(cls, v: float, info: Any) -> float:
        if v != 1 and info.data.get("item_table", "full") == "full":
            raise ValueError("a compression ratio needs a compressed item table: set model.item_table (CLI "
                             "--item-table) to hash, qr, unified or matryoshka")
        return v


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


class TrainConfig(StrictModel):
    """The training loop."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    patience: int = Field(10, ge=1, description="epochs without validation improvement before stopping")
    monitor: str = "ndcg@10"
    monitor_mode: Literal["max", "min"] = Field("max", description="whether a higher or a lower monitor value is better")
    max_minutes: float | None = Field(None, gt=0, description="training time budget")
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU (measured faster there)"
    )
    eval_every: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    valid_users: int | None = Field(None, ge=1, description="validate on a fixed random subset of users (None: all)")


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


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any], error: str) -> dict[str, Any]:
    """Apply dotted overrides ({"train.epochs": 5}) to a config dict; None values are skipped.
    An unknown section or field raises ConfigError(f"{error} '{key}'.")."""
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, field = key.partition(".")
        if section not in data or (field and (not isinstance(data[section], dict) or field not in data[section])):
            raise ConfigError(f"{error} '{key}'.")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return data


def validate_config(model: type[BaseModel], data: dict[str, Any] | None, source: str, what: str = "config") -> Any:
    """Validate `data` against a pydantic config model; every problem is named in one ConfigError."""
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                section = err["loc"][0] if len(err["loc"]) > 1 else None
                sub = model.model_fields[section].annotation if section in model.model_fields else model
                allowed = ", ".join(getattr(sub, "model_fields", {}).keys())
                problems.append(f"unknown key '{loc}' (allowed here: {allowed})")
            else:
                problems.append(f"'{loc or what}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: invalid {what}: " + "; ".join(problems)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any] | None:
    """A YAML file holding a mapping (or nothing); clear errors for a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level.")
    return data


def parse_config(data: dict[str, Any] | None, source: str = "<config>") -> RunConfig:
    return validate_config(RunConfig, data, source)


def load_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    return parse_config(read_yaml_mapping(path), str(path))
