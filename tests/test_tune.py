"""`userseq tune`: the search-space format, pruning through the Trainer hook, the trials table,
and the rule that only the final evaluation reads the test split."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

pytest.importorskip("optuna", reason="optuna is not installed (pip install 'userseq[tune]')")

from conftest import synthetic_events  # noqa: E402

from userseq import EventLog, NextItemRecommender  # noqa: E402
from userseq.core.errors import ConfigError, UserseqError  # noqa: E402
from userseq.data.split import leave_one_out  # noqa: E402
from userseq.nextitem.tune import read_tune_config, sealed, tune  # noqa: E402

CONFIG = """\
model: {name: sasrec, dim: 16, max_len: 16, heads: 1}
train: {epochs: 3, batch_size: 32, patience: 5, lr: 0.005}
search:
  train.lr: {low: 0.001, high: 0.01, log: true}
  model.layers: {low: 1, high: 2}
  model.dropout: [0.0, 0.2]
tune: {pruner: median, startup_trials: 1, warmup_epochs: 0, seed: 3}
"""


@pytest.fixture(scope="module")
def log() -> EventLog:
    return EventLog.from_frame(synthetic_events(n_users=40, n_items=20, length=10))


def _config(tmp_path, text: str = CONFIG):
    p = tmp_path / "tune.yaml"
    p.write_text(text)
    return p


def test_search_space_format_and_errors(tmp_path):
    cfg, space, options = read_tune_config(_config(tmp_path))
    assert cfg.model.name == "sasrec" and set(space) == {"train.lr", "model.layers",
                                                         "model.dropout"}
    assert options["startup_trials"] == 1
    with pytest.raises(ConfigError, match="no `search:` section"):
        read_tune_config(_config(tmp_path, "train: {epochs: 2}\n"))
    with pytest.raises(ConfigError, match="search.train.lr: low .* is above high"):
        read_tune_config(_config(tmp_path, "search: {train.lr: {low: 0.1, high: 0.01}}\n"))
    with pytest.raises(ConfigError, match="unknown config key .train.lrr"):
        read_tune_config(_config(tmp_path, "search: {train.lrr: [0.1, 0.2]}\n"))
    with pytest.raises(ConfigError, match="tune: unknown setting"):
        read_tune_config(_config(tmp_path, "search: {train.lr: [0.1]}\ntune: {trials: 3}\n"))


def test_sealed_split_refuses_test_reads(log):
    split = sealed(leave_one_out(log))
    assert len(split.valid) == 40
    with pytest.raises(UserseqError, match="a trial read the test split"):
        _ = split.test.targets
    with pytest.raises(UserseqError, match="a trial read the test split"):
        len(split.test)


def test_trainer_hook_stops_training(log):
    seen = []

    def hook(epoch, metrics):
        seen.append((epoch, round(metrics["ndcg@10"], 6)))
        return "pruned at epoch 2" if epoch == 2 else None

    rec = NextItemRecommender("sasrec", overrides={"model.dim": 8, "model.max_len": 12,
                                                   "train.epochs": 5}).fit(
        log, quiet=True, on_validated=hook)
    assert [e for e, _ in seen] == [1, 2]
    assert rec.train_state_["stopped"] == "pruned at epoch 2" and rec.train_state_["epochs"] == 2


def test_tune_writes_trials_and_reads_test_once(log, tmp_path, monkeypatch):
    reports = []
    original = NextItemRecommender.report

    def counting_report(self, *a, **k):
        reports.append(self.config.train.lr)
        return original(self, *a, **k)

    monkeypatch.setattr(NextItemRecommender, "report", counting_report)
    summary = tune(_config(tmp_path), log, tmp_path / "out", trials=3)
    out = tmp_path / "out"
    trials = pl.read_csv(out / "trials.csv")
    assert trials.height == 3 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert {"train.lr", "model.layers", "model.dropout", "valid_ndcg@10"} <= set(trials.columns)
    records = json.loads((out / "trials.json").read_text())
    best = max((r for r in records if r["state"] == "COMPLETE"), key=lambda r: r["value"])
    assert summary["best_trial"] == best["number"] and summary["best_params"] == best["params"]
    chosen = yaml.safe_load((out / "best.yaml").read_text())
    assert chosen["train"]["lr"] == pytest.approx(best["params"]["train.lr"])
    assert chosen["model"]["layers"] == best["params"]["model.layers"]
    # the test split is evaluated exactly once: by the final run of the best config
    assert reports == [pytest.approx(best["params"]["train.lr"])]
    final = json.loads((out / "best-run" / "metrics.json").read_text())
    assert summary["test"] == final["test"] and 0 <= final["test"]["ndcg@10"] <= 1
    assert all(len(r["curve"]) == r["epochs"] for r in records)


def test_a_trial_that_reads_test_data_fails(log, tmp_path, monkeypatch):
    original = NextItemRecommender.fit

    def peeking_fit(self, log, split=None, *a, **k):
        _ = split.test.targets  # a trial looking at test targets
        return original(self, log, split, *a, **k)

    monkeypatch.setattr(NextItemRecommender, "fit", peeking_fit)
    with pytest.raises(UserseqError, match="a trial read the test split"):
        tune(_config(tmp_path), log, tmp_path / "out", trials=1)


def test_cli_tune(cli, tmp_path):
    data = tmp_path / "events.csv"
    synthetic_events(n_users=30, n_items=15, length=8).write_csv(data)
    cfg = _config(tmp_path, CONFIG.replace("epochs: 3", "epochs: 2"))
    r = cli("tune", cfg, "--data", data, "--out", tmp_path / "t", "--trials", "2",
            "--budget-minutes", "5")
    assert r.code == 0, r.output
    assert "2 trials" in r.stdout and (tmp_path / "t" / "best.yaml").is_file()
    r = cli("tune", cfg, "--data", data, "--out", tmp_path / "t", "--trials", "1")
    assert r.code == 2 and "holds an earlier search; pass --overwrite" in r.error


def test_tune_a_closed_form_model_with_list_choices(log, tmp_path):
    cfg = _config(tmp_path, "model: {name: ease}\nsearch:\n  model.l2: [[1.0], [50.0], [500.0]]\n"
                            "tune: {pruner: none, seed: 1}\n")
    summary = tune(cfg, log, tmp_path / "out", trials=3)
    records = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert all(r["state"] == "COMPLETE" and r["epochs"] == 0 for r in records)
    assert {tuple(r["params"]["model.l2"]) for r in records} <= {(1.0,), (50.0,), (500.0,)}
    chosen = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert chosen["model"]["l2"] == summary["best_params"]["model.l2"]
    best = max(records, key=lambda r: r["value"])
    assert summary["best_valid"] == pytest.approx(best["value"])
