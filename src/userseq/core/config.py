"""Configuration base: strict pydantic sections, YAML in, dotted overrides, one error for every
problem.

Every component config (data, encoder, loss, trainer, task) is a `StrictModel`: unknown keys are
errors, assignments are validated. Configs are read with `yaml.safe_load` (`read_yaml_mapping`) and
overridden with dotted keys (`merge_overrides`, the CLI's `--set section.key=value`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from userseq.core.errors import ConfigError
from userseq.core.optim import OPTIMIZERS, SCHEDULERS
from userseq.core.registry import Registry


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated.

    `renamed` maps old key names to new ones (e.g. {"cold_seed": "split_seed"}): configs of older
    runs and overrides that use the old name are read as the new one."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.renamed:
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old not in data:
                continue
            value = data.pop(old)
            if new in data and data[new] != value:
                raise ValueError(f"'{old}' is the old name of '{new}'; give only {new} "
                                 f"(got {old}={value!r}, {new}={data[new]!r})")
            data.setdefault(new, value)
        return data


class TrainConfig(StrictModel):
    """The training loop."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    bucket_batches: int = Field(
        32, ge=1, description="length bucketing of sequence batches: shuffle, sort each run of "
        "this many batches by length, batch it (less padding); 1: plain shuffled batches")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: str = Field("adam", description="adam | adamw | sgd, or a registered optimizer")
    momentum: float = Field(0.0, ge=0, lt=1, description="momentum of the sgd optimizer")
    scheduler: str = Field("none", description="learning-rate schedule: none | cosine | linear, "
                           "or a registered scheduler")
    warmup_steps: int = Field(0, ge=0,
                              description="optimizer steps of linear learning-rate warm-up")
    grad_clip: float | None = Field(5.0, gt=0)
    patience: int = Field(10, ge=1,
                          description="epochs without validation improvement before stopping")
    monitor: str = "ndcg@10"
    monitor_mode: Literal["max", "min"] = Field(
        "max", description="whether a higher or a lower monitor value is better")
    max_minutes: float | None = Field(None, gt=0, description="training time budget")
    seed: int = Field(42, ge=0, lt=2**63, description="seeds training (torch, NumPy, Python)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU (measured faster there)"
    )
    eval_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(
        0, ge=0, description="also checkpoint every N optimizer steps inside an epoch (0: at the "
        "end of each epoch only); a killed run resumed with --resume loses at most N steps")
    threads: int | None = Field(None, ge=1)
    compile: bool = Field(False, description="train through torch.compile(model, dynamic=True) "
                          "(needs a C++ compiler on CPU; compiling takes part of the first "
                          "epoch); saving, validation and serving use the plain module")
    valid_users: int | None = Field(
        None, ge=1, description="validate on a fixed random subset of users (None: all)")
    dist_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="data-parallel training under torchrun: auto = nccl on CUDA, gloo "
        "on CPU (docs/distributed.md)")
    dist_timeout: float = Field(
        300.0, gt=0, description="seconds a rank waits for the others before the job fails")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        return registered(OPTIMIZERS, name)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        return registered(SCHEDULERS, name)


def registered(registry: Registry[Any], name: str) -> str:
    """A config field validator's check of a registered name: the canonical name, or the registry's
    message (the names to choose from) as a validation error, so `validate_config` reports it with
    the file and the field."""
    try:
        return registry.canonical(name)
    except ConfigError as e:
        raise PydanticCustomError("unknown_name", str(e)) from None


class _Null:
    """`NULL`: an override that sets a field to null (None), where a plain None means "not
    given" (unset CLI options)."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any], error: str) -> dict[str, Any]:
    """Apply dotted overrides ({"train.epochs": 5, "model.dim": 128}) to a config dict; None values
    are skipped (not given), `NULL` sets the field to null (`--set train.max_minutes=null`). A key
    that names no existing section or field raises ConfigError(f"{error} '{key}'.")."""
    for key, value in overrides.items():
        if value is None:
            continue
        if value is NULL:
            value = None
        *path, last = key.split(".")
        node = data
        for part in path:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                raise ConfigError(f"{error} '{key}'.")
            node = node[part]
        if not isinstance(node, dict) or last not in node:
            raise ConfigError(f"{error} '{key}'.")
        node[last] = value
    return data


def validate_config(model: type[BaseModel], data: dict[str, Any] | None, source: str,
                    what: str = "config") -> Any:
    """Validate `data` against a pydantic config model; every problem is named in one
    ConfigError."""
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                section = err["loc"][0] if len(err["loc"]) > 1 else None
                fields = model.model_fields
                sub = fields[section].annotation if section in fields else model
                allowed = ", ".join(getattr(sub, "model_fields", {}).keys())
                problems.append(f"unknown key '{loc}' (allowed here: {allowed})")
            else:
                problems.append(f"'{loc or what}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: invalid {what}: " + "; ".join(problems)) from None


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice (plain YAML keeps the last value silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(
                        f"key '{key}' appears twice in one mapping (lines {seen[key]} and "
                        f"{line}); YAML would keep only the last value. Remove one of them.")
            except TypeError:  # an unhashable key: the base loader reports it
                break
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict[str, Any] | None:
    """A YAML file holding a mapping (or nothing); clear errors for a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found.")
    try:
        data = yaml.load(p.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except DuplicateKeyError as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level.")
    return data


Self = TypeVar("Self", bound="TaskConfig")


class TaskConfig(StrictModel):
    """The whole configuration of one estimator (its sections are other `StrictModel`s).

    One way to read, override and write every task's config: `parse` (a mapping, every problem in
    one ConfigError), `from_yaml` (a file, read with yaml.safe_load), `updated` (dotted
    overrides, as the CLI's `--set section.key=value`) and `to_yaml`."""

    @classmethod
    def parse(cls: type[Self], data: dict[str, Any] | None, source: str = "<config>") -> Self:
        """Validate a mapping. A partial section keeps the task's own defaults for the keys it
        leaves out (CTR trains with `monitor: auc` and batch 512; `train: {epochs: 5}` in a CTR
        config changes only the epochs)."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections "
                              f"({', '.join(cls.model_fields)}), got {type(data).__name__}.")
        return validate_config(cls, with_task_defaults(cls, data), source)

    @classmethod
    def from_yaml(cls: type[Self], path: str | Path | None) -> Self:
        return cls() if path is None else cls.parse(read_yaml_mapping(path), str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def updated(self: Self, overrides: dict[str, Any], source: str = "overrides") -> Self:
        """A copy with dotted overrides applied ({"train.epochs": 5}), validated again."""
        overrides = {canonical_key(type(self), k): v for k, v in overrides.items()}
        error = f"{source}: unknown config key"
        data = merge_overrides(self.model_dump(mode="json"), overrides, error)
        return type(self).parse(data, source)

    def flat(self) -> dict[str, Any]:
        """Every leaf setting as a dotted key ({"train.lr": 0.001, ...})."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = node

        walk("", self.model_dump(mode="json"))
        return out


def canonical_key(model: type[BaseModel], key: str) -> str:
    """A dotted key with old names replaced by new ones along the way ("data.cold_seed" ->
    "data.split_seed"), following each section's `renamed` map."""
    parts, out = key.split("."), []
    node: Any = model
    for part in parts:
        renamed = getattr(node, "renamed", {}) if isinstance(node, type) else {}
        part = renamed.get(part, part)
        out.append(part)
        field = getattr(node, "model_fields", {}).get(part) if isinstance(node, type) else None
        node = field.annotation if field is not None else None
    return ".".join(out)


def with_task_defaults(model: type[BaseModel],
                       data: dict[str, Any] | None) -> dict[str, Any] | None:
    """`data` with each partial section completed by the task's default for that section: the
    settings where the section's `default_factory` differs from the section class's own defaults
    (e.g. CTR's `train.monitor: auc`), so a partial section never falls back to another task's."""
    if not data:
        return data
    out = dict(data)
    for name, field in model.model_fields.items():
        given = out.get(name)
        if not isinstance(given, dict) or field.default_factory is None:
            continue
        default = field.default_factory()
        if isinstance(default, BaseModel):
            own = default.model_dump(mode="json", exclude_defaults=True)
            if own:
                out[name] = {**own, **given}
    return out
