"""One set of checks for every registered estimator (like scikit-learn's `check_estimator`).

Each task contributes a CASE: how to build an unfitted estimator, fit it on small data, and get
an output that must survive save/load unchanged. The checks are the `Estimator` contract of
docs/architecture.md: construction from a config, `get_params`/`set_params`/`sklearn.base.clone`,
`NotFittedError` before fit, trailing-underscore fitted state, save/load with the task and the
format version checked, and one `metrics.json` writer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from conftest import synthetic_events
from sklearn.base import clone

import userseq
from userseq.core.estimator import (
    ESTIMATORS,
    FORMAT_VERSION,
    MANIFEST,
    Estimator,
    estimator_class,
)


@dataclass
class Case:
    new: Callable[[], Estimator]  # an unfitted estimator with small settings
    fit: Callable[[Estimator], Estimator]  # fits it (returns what fit returns)
    output: Callable[[Estimator], Any]  # a fitted estimator's output, compared after save/load
    setting: str  # a dotted setting that set_params can change (value: an int)


def _nextitem() -> Case:
    log = userseq.EventLog.from_frame(synthetic_events(n_users=30, n_items=20, length=8))
    over = {"model.dim": 8, "model.max_len": 10, "train.epochs": 1, "train.batch_size": 16}
    return Case(lambda: userseq.NextItemRecommender("gru4rec", overrides=over),
                lambda e: e.fit(log, quiet=True),
                lambda e: e.recommend(["u0", "u3"], k=5).to_dicts(), "train.epochs")


def _detect() -> Case:
    from detect_support import synthetic_detect

    from userseq.detect.data import load_event_data

    events, labels = synthetic_detect(n_users=60)
    data = load_event_data(events, labels)
    over = {"train.epochs": 1, "model.dim": 8, "train.batch_size": 32, "train.threads": 1}
    return Case(lambda: userseq.UserDetector("gru", overrides=over),
                lambda e: e.fit(data, quiet=True),
                lambda e: e.predict_proba(data).round(6).tolist(), "train.epochs")


def _ctr() -> Case:
    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import build_ctr_data
    from userseq.ctr.synthetic import synthetic_ctr_events

    df = synthetic_ctr_events(n_users=60, n_items=100, n_cats=10, history_len=60, n_targets=6,
                              evidence=4, recent_clean=20, seed=1)
    cfg = CTRConfig().updated({"data.category_col": "category", "data.target_col": "is_target",
                               "model.item_dim": 8, "model.cat_dim": 4, "model.user_dim": 0,
                               "model.max_len": 60, "model.long_len": 60, "model.mlp": [16],
                               "model.att_hidden": [8],
                               "train.epochs": 1, "train.threads": 1, "train.device": "cpu"})
    data = build_ctr_data(userseq.EventLog.from_frame(df), cfg.data)
    return Case(lambda: userseq.CTREstimator("din", config=cfg),
                lambda e: e.fit(data, quiet=True),
                lambda e: e.predict_proba(data, "test").round(6).tolist(), "train.epochs")


def _attack(tmp_path_factory) -> Case:
    from test_attack import DET, synthetic_posts

    from userseq.attack.target import TargetDetector
    from userseq.detect.data import stratified_split

    data = synthetic_posts(n_users=40)
    split = stratified_split(data.labels, 0.15, 0.25, 0)
    det = userseq.UserDetector("hlstm", overrides={**DET, "train.epochs": 1}).fit(data, split,
                                                                                  quiet=True)
    target = TargetDetector.load(det.save(tmp_path_factory.mktemp("det") / "hlstm"))
    return Case(lambda: userseq.Attacker("copycat"),
                lambda e: e.fit(data, target, split, quiet=True),
                lambda e: e.generate(split.test), "sample_seed")


def _generative() -> Case:
    log = userseq.EventLog.from_frame(synthetic_events(n_users=30, n_items=20, length=8))
    vec = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    over = {"semantic_ids.codebook_size": 4, "semantic_ids.levels": 2, "semantic_ids.epochs": 5,
            "model.dim": 16, "model.max_len": 10, "train.epochs": 1, "train.batch_size": 16,
            "decode.beams": 10, "train.device": "cpu"}
    return Case(lambda: userseq.GenerativeRecommender(overrides=over),
                lambda e: e.fit(log, vectors=vec, quiet=True),
                lambda e: e.recommend(["u0", "u3"], k=5).to_dicts(), "train.epochs")


_PATCH = pytest.MonkeyPatch()  # the context case's stand-in text encoder, undone after the module


def _context(tmp_path_factory) -> Case:
    import test_context
    from test_items import FakeEncoder

    import userseq.items.text as text_mod
    from userseq.context import UserContext

    _PATCH.setenv("USERSEQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    _PATCH.setattr(text_mod, "sentence_encoder", lambda: FakeEncoder())
    frame = test_context.users()
    over = {**test_context.SMALL, "train.epochs": 2}
    return Case(lambda: UserContext(overrides=over),
                lambda e: e.fit(frame, quiet=True),
                lambda e: e.context("about product 3", user=0), "train.epochs")


BUILDERS = {"nextitem": _nextitem, "detect": _detect, "ctr": _ctr, "attack": _attack,
            "generative": _generative, "context": _context}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def case(request, tmp_path_factory) -> tuple[str, Case, Estimator, Any]:
    """(task, case, a fitted estimator, its output) for every task."""
    task = request.param
    build = BUILDERS[task]
    c = build(tmp_path_factory) if task in ("attack", "context") else build()
    est = c.new()
    fitted = c.fit(est)
    yield task, c, fitted, c.output(fitted)
    _PATCH.undo()


def test_every_task_has_a_case():
    for task in ("nextitem", "detect", "ctr", "attack", "generative", "context"):
        estimator_class(task)  # registers the built-in tasks
    assert set(BUILDERS) == set(ESTIMATORS.names())


def test_unfitted(case):
    task, c, _, _ = case
    est = c.new()
    assert est.task == task and isinstance(est, Estimator) and not est.is_fitted
    assert type(est) is estimator_class(task)
    with pytest.raises(userseq.NotFittedError, match="not fitted yet"):
        est.check_is_fitted()
    with pytest.raises(userseq.NotFittedError):
        c.output(est)
    with pytest.raises(userseq.NotFittedError):
        est.save("never-written")
    with pytest.raises(ValueError):  # scikit-learn's NotFittedError is a ValueError too
        est.check_is_fitted()


def test_params_and_clone(case):
    _, c, _, _ = case
    est = c.new()
    params = est.get_params()
    assert params["config"] is est.config
    assert params[c.setting.replace(".", "__")] == est.config.flat()[c.setting]
    assert set(est.get_params(deep=False)) == {"config"}
    twin = clone(est)
    assert type(twin) is type(est) and twin.config == est.config and not twin.is_fitted
    assert type(est)(config=est.config).config is est.config  # a config object is kept as is
    old = est.config.flat()[c.setting]
    assert est.set_params(**{c.setting.replace(".", "__"): old + 3}) is est
    assert est.config.flat()[c.setting] == old + 3 and twin.config.flat()[c.setting] == old
    est.set_params(**{c.setting: old})  # dotted keys work too
    assert est.config == twin.config
    with pytest.raises(userseq.ConfigError, match="unknown config key"):
        est.set_params(no_such__setting=1)


def test_fit_returns_self_and_fitted_state_has_trailing_underscores(case):
    _, c, fitted, _ = case
    assert fitted.is_fitted and fitted.fitted_attribute.endswith("_")
    fitted_names = [k for k, v in vars(fitted).items() if k.endswith("_") and v is not None]
    assert fitted.fitted_attribute in fitted_names
    public = [k for k in vars(fitted) if not k.startswith("_") and not k.endswith("_")]
    assert public == ["config"], f"state other than the config must end with '_': {public}"


def test_save_load_round_trip(case, tmp_path):
    task, c, fitted, output = case
    run = fitted.save(tmp_path / "run")
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["task"] == task and manifest["format_version"] == FORMAT_VERSION == 3
    assert manifest["userseq_version"] == userseq.__version__
    assert (run / "config.yaml").is_file() and not list(run.glob("*.pkl"))
    for loader in (type(fitted).load, Estimator.load, userseq.load):
        back = loader(run)
        assert type(back) is type(fitted) and back.config == fitted.config and back.is_fitted
        assert c.output(back) == output


def test_loading_checks_task_and_format(case, tmp_path):
    task, _, fitted, _ = case
    run = fitted.save(tmp_path / "run")
    other = next(cls for name, cls in ((e.name, e.obj) for e in ESTIMATORS) if name != task)
    with pytest.raises(userseq.ArtifactError, match=f"this is a '{task}' run"):
        other.load(run)
    m = json.loads((run / MANIFEST).read_text())
    (run / MANIFEST).write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(userseq.ArtifactError, match="run format 99.*Upgrade userseq"):
        type(fitted).load(run)
    (run / MANIFEST).write_text("{not json")
    with pytest.raises(userseq.ArtifactError, match="not valid JSON"):
        Estimator.load(run)
    with pytest.raises(userseq.ArtifactError, match="not found"):
        type(fitted).load(tmp_path / "missing")


def test_one_metrics_writer(case, tmp_path):
    task, _, fitted, _ = case
    written = fitted.write_metrics(tmp_path, {"test": {"x": np.float32(0.5)}})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == {"task": task, "format_version": 3, "test": {"x": 0.5}}
    assert list(written) == ["task", "format_version", "test"]
