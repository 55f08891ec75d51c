"""`userseq ctr ...` end to end on a small events file, and one clear error for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from cli_support import assert_user_error

from userseq.ctr.synthetic import synthetic_ctr_events

TINY = """\
model: {item_dim: 8, cat_dim: 4, user_dim: 4, mlp: [16], att_hidden: [8], num_hashes: 4, top_k: 5}
train: {batch_size: 256, threads: 1, device: cpu}
"""




@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ctr")
    df = synthetic_ctr_events(n_users=60, n_items=120, n_cats=6, history_len=40, n_targets=5,
                              evidence=2, recent_clean=10, seed=0)
    events = d / "events.csv"
    df.drop("click_prob").write_csv(events)
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY)
    return events, cfg


@pytest.fixture(scope="module")
def run(cli, files, tmp_path_factory) -> Path:
    events, cfg = files
    out = tmp_path_factory.mktemp("runs") / "dare"
    # --set applies after --config and before the specific options (--epochs wins over --set)
    res = cli("ctr", "train", "--data", events, "--model", "dare", "--category-col", "category",
              "--config", cfg, "--set", "train.epochs=4", "--set", "model.top_k=3", "--epochs", "1",
              "--out", out, "--quiet")
    assert res.code == 0, res.output
    assert "saved run to" in res.stdout and "test" in res.stdout
    return out


def test_train_writes_run_and_metrics(run):
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["test"]) >= {"auc", "gauc", "logloss"}
    assert 0 <= m["test"]["auc"] <= 1 and m["test"]["logloss"] > 0
    assert m["split"]["split"] == "temporal" and m["model"] == "dare"
    assert m["task"] == "ctr" and m["train"]["epochs"] == 1
    cfg = (run / "config.yaml").read_text()
    assert "category_col: category" in cfg and "top_k: 3" in cfg and "epochs: 1" in cfg
    assert json.loads((run / "estimator.json").read_text())["task"] == "ctr"


def test_ctr_serve_command_is_registered(cli):
    res = cli("ctr", "serve", "--help")
    assert res.code == 0 and "POST /score" in res.stdout
    assert_user_error(cli("ctr", "serve", "/nowhere/at/all", "--port", "0"), "--port must be in")


def test_evaluate_rewrites_metrics_identically(cli, run):
    before = json.loads((run / "metrics.json").read_text())["test"]
    (run / "metrics.json").unlink()
    res = cli("ctr", "evaluate", run)
    assert res.code == 0, res.output
    after = json.loads((run / "metrics.json").read_text())["test"]
    for key in ("auc", "gauc", "logloss"):
        assert after[key] == before[key], key


def test_predict_for_user_and_history(cli, run, files):
    res = cli("ctr", "predict", run, "--user", "3", "--item", "5", "--item", "7")
    assert res.code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["item"] for r in rows] == ["5", "7"] and all(0 < r["probability"] < 1 for r in rows)
    res = cli("ctr", "predict", run, "--history", "1,2,3", "--values", "5,1,4", "--item", "5")
    assert res.code == 0, res.output
    assert_user_error(cli("ctr", "predict", run, "--history", "1,2", "--item", "99999"),
                      "unknown candidate item id(s) [99999]")
    assert_user_error(cli("ctr", "predict", run, "--item", "5"), "give --user ID")


def test_synth_command(cli, tmp_path):
    out = tmp_path / "s.parquet"
    res = cli("ctr", "synth", "--out", out, "--users", "5", "--history-len", "100",
              "--targets", "3")
    assert res.code == 0, res.output
    df = pl.read_parquet(out)
    assert df.height == 5 * 103 and df["is_target"].sum() == 15


def test_missing_label_column(cli, files, tmp_path):
    events, cfg = files
    bad = tmp_path / "nolabel.csv"
    pl.read_csv(events).drop("rating").write_csv(bad)
    assert_user_error(cli("ctr", "train", "--data", bad, "--config", cfg, "--out", tmp_path / "r",
                          "--quiet"), "missing label column 'rating'")


def test_labels_not_binary(cli, files, tmp_path):
    events, cfg = files
    assert_user_error(cli("ctr", "train", "--data", events, "--binary-labels", "--config", cfg,
                          "--out", tmp_path / "r", "--quiet"),
                      "labels in column 'rating' must be 0 or 1")


def test_bad_model_name_and_not_a_ctr_run(cli, files, tmp_path):
    events, cfg = files
    assert_user_error(cli("ctr", "train", "--data", events, "--model", "bert", "--out",
                          tmp_path / "r"), "--model bert")
    assert_user_error(cli("ctr", "evaluate", tmp_path / "missing"), "run directory not found")


def test_set_overrides_and_bad_set(cli, files, tmp_path):
    events, cfg = files
    train = ("ctr", "train", "--data", events, "--config", cfg, "--out", tmp_path / "r")
    assert_user_error(cli(*train, "--set", "model.nope=1"), "unknown config key 'model.nope'")
    assert_user_error(cli(*train, "--set", "model.top_k"), "expected KEY=VALUE")


def test_http_score_endpoint(cli, run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from userseq.serve.app import create_ctr_app
    from userseq.serve.routes.ctr import CTRService

    client = TestClient(create_ctr_app(CTRService.from_run(run)))
    assert client.get("/health").json()["model"] == "dare"
    r = client.post("/score", json={"user": 3, "items": [5, 7]})
    assert r.status_code == 200, r.text
    got = [s["probability"] for s in r.json()["scores"]]
    want = json.loads(cli("ctr", "predict", run, "--user", "3", "--item", "5", "--item",
                          "7").stdout)
    assert got == pytest.approx([w["probability"] for w in want], abs=1e-6)
    r = client.post("/score", json={"history": [1, 2, 3], "history_values": [5, 1, 4],
                                    "items": ["5"]})
    assert r.status_code == 200 and 0 < r.json()["scores"][0]["probability"] < 1
    bad = client.post("/score", json={"history": [1], "items": [99999]})
    assert bad.status_code == 422
    assert "unknown candidate item id(s) [99999]" in bad.json()["message"]
    future = client.post("/score", json={"history": [1, 2], "history_timestamps": [5, 20],
                                         "timestamp": 10, "items": [5]})
    assert future.status_code == 422
    assert "at or after the target's timestamp" in future.json()["message"]
    nobody = client.post("/score", json={"items": [5]})
    assert nobody.status_code == 422 and "give `user`" in nobody.json()["message"]


def test_awmoe_on_an_implicit_log_with_sampled_negatives_and_per_user_split(cli, files,
                                                                            tmp_path):
    """An implicit log (no label column): DARE's sampled negatives, every user tested, AW-MoE;
    metrics.json carries the bootstrap intervals over users and the history buckets, and
    `ctr evaluate` rebuilds the same samples (same fingerprint, same figures)."""
    events, cfg = files
    implicit = tmp_path / "implicit.csv"
    pl.read_csv(events).select("user_id", "item_id", "timestamp", "category").write_csv(implicit)
    out = tmp_path / "aw"
    res = cli("ctr", "train", "--data", implicit, "--model", "awmoe", "--category-col",
              "category", "--config", cfg, "--set", "data.negatives=2", "--set", "data.split=user",
              "--set", "data.targets_per_user=5", "--set", "model.num_experts=3",
              "--epochs", "1", "--out", out, "--quiet")
    assert res.code == 0, res.output
    assert "per user" in res.output and "auc 95% CI" in res.stdout
    m = json.loads((out / "metrics.json").read_text())
    t = m["test"]
    assert m["model"] == "awmoe" and m["split"]["split"] == "user"
    assert t["impressions"] == 60 * 3 and t["positive_rate"] == pytest.approx(1 / 3)
    lo, hi = t["ci95"]["auc"]
    assert lo <= t["auc"] <= hi and t["ci95"]["n_boot"] == 200
    assert sum(b["impressions"] for b in t["by_history"]) == t["impressions"]
    res = cli("ctr", "evaluate", out)
    assert res.code == 0, res.output
    again = json.loads((out / "metrics.json").read_text())["test"]
    assert again["auc"] == t["auc"] and again["ci95"] == t["ci95"]
