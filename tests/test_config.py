"""The one config system (core/config.py): every task config is a TaskConfig read, overridden and
written the same way."""

from __future__ import annotations

import pytest
from pydantic import Field

from userseq.core.config import StrictModel, TaskConfig, TrainConfig
from userseq.core.errors import ConfigError


class Section(StrictModel):
    renamed = {"old_size": "size"}  # old key -> new key
    size: int = Field(3, ge=1)
    name: str = "a"


def _train() -> TrainConfig:
    return TrainConfig(epochs=7, monitor="auc")


class Task(TaskConfig):
    section: Section = Field(default_factory=Section)
    train: TrainConfig = Field(default_factory=_train)
    seed_like: int = 0


def test_yaml_round_trip_and_flat_keys(tmp_path):
    cfg = Task.parse({"section": {"size": 5}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert Task.from_yaml(path) == cfg
    assert Task.from_yaml(None) == Task()
    flat = cfg.flat()
    assert flat["section.size"] == 5 and flat["train.epochs"] == 7 and flat["seed_like"] == 0


def test_partial_sections_keep_the_tasks_own_defaults():
    cfg = Task.parse({"train": {"lr": 0.01}})
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.monitor) == (0.01, 7, "auc")
    assert Task.parse({"train": {"epochs": 2}}).train.monitor == "auc"  # not TrainConfig's ndcg@10
    assert Task.parse({}).train.epochs == 7


def test_overrides_are_dotted_validated_and_follow_renames():
    cfg = Task()
    assert cfg.updated({"section.size": 9, "train.lr": 0.5}).section.size == 9
    assert cfg.updated({"section.old_size": 4}).section.size == 4  # an old name, as an override
    assert Task.parse({"section": {"old_size": 6}}).section.size == 6  # ... and in a file
    assert cfg.updated({"section.size": None}) == cfg  # None: not given
    with pytest.raises(ConfigError, match="unknown config key 'section.nope'"):
        cfg.updated({"section.nope": 1})
    with pytest.raises(ConfigError, match="'section.size'.*greater than or equal to 1"):
        cfg.updated({"section.size": 0})
    with pytest.raises(ConfigError, match="'old_size' is the old name of 'size'"):
        Task.parse({"section": {"old_size": 1, "size": 2}})


def test_bad_files_and_shapes_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        Task.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("section: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Task.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"expected a mapping of sections \(section, train"):
        Task.parse([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key 'section.colour'.*allowed here: size, name"):
        Task.parse({"section": {"colour": "red"}})


def test_set_null_sets_a_field_to_null_while_none_means_not_given():
    from userseq.core.cli import parse_set
    from userseq.core.config import NULL
    from userseq.nextitem.config import RunConfig

    sets = parse_set(["train.max_minutes=null", "train.grad_clip=~", "train.epochs=3"])
    assert sets["train.max_minutes"] is NULL and sets["train.grad_clip"] is NULL
    base = RunConfig().updated({"train.max_minutes": 30, "train.grad_clip": 5.0})
    cfg = base.updated(sets)
    assert cfg.train.max_minutes is None and cfg.train.grad_clip is None and cfg.train.epochs == 3
    # a plain None is "not given" (unset CLI options): the field keeps its value
    kept = base.updated({"train.max_minutes": None})
    assert kept.train.max_minutes == 30
