"""The `userseq` command line: happy paths on a tiny trained run, and for every bad input one clear
message on stderr, exit code 2 and no traceback.

All commands run in-process through `userseq.cli.main` (the console-script entry point) with the
`cli` fixture from conftest.py; `test_real_process_*` checks once that a separate process behaves
the same way. A tiny model is trained once per module (`run` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from cli_support import assert_user_error

from userseq.core.artifacts import file_digest


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- a trained run (once)


@pytest.fixture(scope="module")
def run(cli, synthetic_csv, tiny_config, tmp_path_factory) -> Path:
    """`userseq train` on the synthetic log, with a relative --data path from another directory."""
    work = synthetic_csv.parent
    run_dir = tmp_path_factory.mktemp("runs") / "sasrec"
    cwd = os.getcwd()
    os.chdir(work)
    try:
        res = cli("train", "--data", synthetic_csv.name, "--out", run_dir, "--config", tiny_config,
                  "--epochs", "2", "--quiet")
    finally:
        os.chdir(cwd)
    assert res.code == 0, res.output
    assert "saved run to" in res.stdout
    return run_dir


def test_train_writes_a_run(run, synthetic_csv):
    for name in ("model.safetensors", "config.yaml", "user_ids.parquet", "item_ids.parquet",
                 "metrics.json"):
        assert (run / name).is_file(), name
    config = (run / "config.yaml").read_text()
    assert "dim: 16" in config and "max_len: 20" in config and "batch_size: 32" in config
    # recorded absolute: `evaluate` works from anywhere
    assert f"dataset: {synthetic_csv.resolve()}" in config
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 2
    assert metrics["data"] == {**metrics["data"], "users": 60, "items": 30, "events": 900}


def test_evaluate_writes_metrics(cli, run):
    (run / "metrics.json").unlink()
    res = cli("evaluate", run)  # the test's working directory is not where the data file is
    assert res.code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        for key in ("ndcg@10", "hr@10", "mrr"):
            assert 0.0 <= metrics[split][key] <= 1.0, (split, key)
    assert metrics["split"] == "leave-one-out" and metrics["test"]["users"] == 60
    assert "wrote" in res.stdout


def test_evaluate_set_changes_evaluation_settings_only(cli, run):
    res = cli("evaluate", run, "--set", "eval.ks=[5]")
    assert res.code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert "ndcg@5" in metrics["test"] and "ndcg@10" not in metrics["test"]
    assert_user_error(cli("evaluate", run, "--set", "model.dim=8"),
                      "--set model.dim: evaluate can change evaluation settings only (eval.*, "
                      "retrieval.mode, retrieval.knn_embed.*)")
    assert cli("evaluate", run).code == 0  # back to the run's own settings
    assert "ndcg@10" in json.loads((run / "metrics.json").read_text())["test"]


def test_config_show(cli, run):
    import yaml

    res = cli("config", "show", run)
    assert res.code == 0, res.output
    shown = yaml.safe_load(res.stdout)
    assert shown["model"]["dim"] == 16 and shown["train"]["batch_size"] == 32  # the run's
    assert shown["train"]["optimizer"] == "adam" and shown["data"]["split_seed"] == 0  # defaults
    defaults = yaml.safe_load(cli("config", "show", "--task", "ctr").stdout)
    assert defaults["model"]["name"] == "din" and "data" in defaults
    assert_user_error(cli("config", "show"), "give a run directory")
    assert_user_error(cli("config", "show", "--task", "nope"), "unknown task 'nope'")
    assert_user_error(cli("config", "show", run.parent / "missing"), "run directory not found")


def test_recommend_known_user_json(cli, run, synthetic_csv):
    res = cli("recommend", run, "--user", "u3", "-k", "5", "--json")
    assert res.code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 5
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and {r["user_id"] for r in rows} == {"u3"}
    events = pl.read_csv(synthetic_csv)
    seen = set(events.filter(pl.col("user_id") == "u3")["item_id"].to_list())
    catalogue = set(events["item_id"].to_list())
    assert {r["item_id"] for r in rows} <= catalogue - seen  # history items are filtered by default
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_recommend_from_history(cli, run):
    res = cli("recommend", run, "--history", "i1,i2", "-k", "3")
    assert res.code == 0, res.output
    assert res.stdout.count("<history>") == 3
    rows = json.loads(cli("recommend", run, "--history", "i1, i2", "-k", "3", "--json").stdout)
    assert len(rows) == 3 and not {"i1", "i2"} & {r["item_id"] for r in rows}


def test_embed_writes_one_row_per_user(cli, run, tmp_path):
    res = cli("embed", run, "--out", tmp_path / "users.parquet")
    assert res.code == 0, res.output
    users = pl.read_parquet(tmp_path / "users.parquet")
    assert users.height == 60 and users["user_id"].n_unique() == 60
    assert users["embedding"].dtype.size == 16  # Array(Float32, 16)
    items = pl.read_parquet(tmp_path / "users_items.parquet")
    assert items.height == 30


# --------------------------------------------------------------------------- validate


def test_validate_prints_counts_and_problems(cli, tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,a,2\nu1,b,2\nu2,c,5\n"
                                     "u3,a,1\nu3,b,3\nu3,a,4\nu3,c,10\n")
    res = cli("validate", path)
    assert res.code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "│ users │ 3 │" in text and "│ items │ 3 │" in text and "│ events │ 8 │" in text
    assert "problems found:" in text
    assert "1 users have fewer than 3 events" in text and "--min-user-events 3" in text
    assert "1 events share their user's previous timestamp" in text
    assert "1 consecutive repeats" in text
    report = json.loads(cli("validate", path, "--json").stdout)
    assert (report["users"], report["items"], report["events"]) == (3, 3, 8)
    assert len(report["problems"]) == 3


def test_validate_clean_file_and_options(cli, tmp_path, synthetic_csv):
    res = cli("validate", synthetic_csv)
    assert res.code == 0 and "no problems found" in res.stdout
    path = write(tmp_path / "e.tsv", "uid\tsku\tts\nu1\ta\t1\nu1\tb\t2\nu1\tc\t3\nu2\ta\t1\n")
    res = cli("validate", path, "--user-col", "uid", "--item-col", "sku", "--timestamp-col", "ts",
              "--min-user-events", "3", "--json")
    assert res.code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["users"], report["events"]) == (1, 3)
    assert any("removed 1 events, 1 users" in s for s in report["steps"])


# --------------------------------------------------------------------------- bad data


def test_missing_file(cli, tmp_path):
    assert_user_error(cli("validate", tmp_path / "nope.csv"), str(tmp_path / "nope.csv"),
                      "file not found")


def test_empty_file(cli, tmp_path):
    assert_user_error(cli("validate", write(tmp_path / "e.csv", "")), "e.csv",
                      "file is empty (0 bytes)")


def test_header_only_file(cli, tmp_path):
    assert_user_error(cli("validate", write(tmp_path / "e.csv", "user_id,item_id,timestamp\n")),
                      "e.csv", "no event rows (only a header)")


def test_misnamed_column(cli, tmp_path):
    path = write(tmp_path / "e.csv", "userid,item_id,timestamp\nu1,a,1\n")
    assert_user_error(cli("validate", path), "missing required user column 'user_id'",
                      "Found columns: ['userid', 'item_id', 'timestamp']", "Did you mean 'userid'?",
                      "--user-col")
    assert cli("validate", path, "--user-col", "userid").code == 0  # the suggested fix works


def test_misnamed_column_in_train(cli, tmp_path, tiny_config):
    path = write(tmp_path / "e.csv", "user,item_id,timestamp\nu1,a,1\n")
    assert_user_error(cli("train", "-d", path, "-o", tmp_path / "run", "--config", tiny_config),
                      "missing required user column 'user_id'", "Did you mean 'user'?")


def test_null_ids(cli, tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,1\n,b,2\nu2,c,3\n")
    assert_user_error(cli("validate", path), "e.csv",
                      "column 'user_id' has 1 null/empty ids (line 3)")


def test_unparsable_timestamps(cli, tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,2024-01-01\nu1,b,yesterday\n")
    assert_user_error(cli("validate", path), "e.csv", "column 'timestamp'", "line 3: 'yesterday'",
                      "ISO 8601")


def test_mixed_id_types_in_jsonl(cli, tmp_path):
    path = write(tmp_path / "e.jsonl", '{"user_id": 1, "item_id": "a", "timestamp": 1}\n'
                                       '{"user_id": "x", "item_id": "b", "timestamp": 2}\n')
    assert_user_error(cli("validate", path), "e.jsonl",
                      "column 'user_id' mixes JSON numbers and strings", "1-based row 2: 'x'")


def test_ragged_csv(cli, tmp_path):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,b,2,3\n")
    assert_user_error(cli("validate", path), "e.csv", "line 3 has 4 fields")


def test_single_event_user_under_leave_one_out(cli, tmp_path, tiny_config):
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu1,c,3\nu2,a,1\n")
    assert_user_error(cli("train", "-d", path, "-o", tmp_path / "run", "--config", tiny_config,
                          "--quiet"),
                      "leave-one-out needs at least 3 events per user", "'u2' has 1",
                      "--min-user-events 3")
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_name(cli, tmp_path):
    assert_user_error(cli("train", "-d", "ml1m", "-o", tmp_path / "run"),
                      "ml1m: not a known dataset name", "Did you mean 'ml-1m'?",
                      "userseq datasets list")
    assert_user_error(cli("validate", "no-such-dataset"), "not a known dataset name", "ml-100k")


# --------------------------------------------------------------------------- bad options and config


def test_unknown_model(cli, tmp_path, synthetic_csv):
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--model", "foo"),
                      "--model foo", "unknown encoder 'foo'", "Choose one of:", "sasrec",
                      "bert4rec", "gru4rec", "userseq.register_encoder")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--loss", "cee"),
                      "--loss cee", "unknown loss 'cee'", "Did you mean 'ce'?")


def test_train_help_lists_the_registered_encoders_and_losses(cli):
    from userseq.encoders import ENCODERS
    from userseq.losses import LOSSES

    res = cli("train", "--help")
    assert res.code == 0
    words = set(res.stdout.replace("|", " ").replace("│", " ").split())  # rich wraps the help
    assert {"encoder:", *ENCODERS.names(), *LOSSES.names(), "--set", "--split-seed"} <= words


def test_set_and_seed_options(cli, tmp_path, synthetic_csv):
    """--set applies after --config and before the flags; --seed seeds training and the split."""
    import yaml

    config = write(tmp_path / "c.yaml", "model:\n  dim: 16\ntrain:\n  batch_size: 64\n")
    run = tmp_path / "run"
    res = cli("train", "-d", synthetic_csv, "-o", run, "--config", config, "--model", "bert4rec",
              "--set", "model.mask_prob=0.3", "--set", "model.dim=8", "--set", "train.epochs=5",
              "--set", "eval.ks=[5, 10]", "--epochs", "1", "--split", "cold-start", "--seed", "7",
              "--quiet")
    assert res.code == 0, res.output
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "bert4rec" and cfg["model"]["mask_prob"] == 0.3
    assert cfg["model"]["dim"] == 8 and cfg["train"]["batch_size"] == 64  # --set over --config
    assert cfg["train"]["epochs"] == 1 and cfg["eval"]["ks"] == [5, 10]  # the flag over --set
    assert cfg["train"]["seed"] == 7 and cfg["data"]["split_seed"] == 7
    assert json.loads((run / "metrics.json").read_text())["train"]["epochs"] == 1
    # --split-seed seeds the split alone
    res = cli("train", "-d", synthetic_csv, "-o", tmp_path / "r2", "--config", config, "--seed",
              "7", "--split-seed", "3", "--epochs", "1", "--quiet")
    assert res.code == 0, res.output
    cfg = yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 7 and cfg["data"]["split_seed"] == 3
    res = cli("train", "-d", synthetic_csv, "-o", tmp_path / "bad", "--set", "model.nope=1")
    assert_user_error(res, "--set: unknown config key 'model.nope'")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "bad", "--set", "dim"),
                      "--set 'dim': expected KEY=VALUE")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "bad", "--set",
                          "model.dim=1"), "--set", "'model.dim'", "greater than or equal to 2")


def test_bad_option_value(cli, tmp_path, synthetic_csv):
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--epochs", "0"),
                      "--epochs 0", "greater than or equal to 1")


def test_bad_config_key(cli, tmp_path, synthetic_csv):
    config = write(tmp_path / "c.yaml", "model:\n  dimm: 16\n")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--config", config),
                      str(config), "unknown key 'model.dimm'", "allowed here:", "dim")
    config = write(tmp_path / "s.yaml", "modle:\n  dim: 16\n")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--config", config),
                      "unknown key 'modle'")


def test_bad_config_value(cli, tmp_path, synthetic_csv):
    config = write(tmp_path / "c.yaml", "model:\n  dim: -3\ntrain:\n  lr: fast\n")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--config", config),
                      str(config), "'model.dim'", "(got -3)", "'train.lr'", "(got 'fast')")


def test_bad_config_file(cli, tmp_path, synthetic_csv):
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--config",
                          tmp_path / "no.yaml"),
                      "config file not found")
    config = write(tmp_path / "c.yaml", "model: [\n")
    assert_user_error(cli("train", "-d", synthetic_csv, "-o", tmp_path / "run", "--config", config),
                      "not valid YAML")


# --------------------------------------------------------------------------- bad runs and requests


def test_truncated_checkpoint(cli, run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    model = broken / "model.safetensors"
    for size in (model.stat().st_size // 2, 4):
        os.truncate(model, size)
        for args in (("recommend", broken, "--user", "u1"), ("evaluate", broken),
                     ("embed", broken, "-o", tmp_path / "u.parquet")):
            assert_user_error(cli(*args), "model.safetensors", "bytes, but the run recorded",
                              "was cut, changed or replaced", "train again")


def test_missing_run_files(cli, run, tmp_path):
    assert_user_error(cli("recommend", tmp_path / "nope", "--user", "u1"),
                      "run directory not found")
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").unlink()
    assert_user_error(cli("recommend", broken, "--user", "u1"), "model.safetensors: missing",
                      "train again")
    (broken / "COMPLETE").unlink()
    assert_user_error(cli("recommend", broken, "--user", "u1"), "unfinished run", "--resume")
    (broken / "estimator.json").unlink()
    assert_user_error(cli("recommend", broken, "--user", "u1"), "training has not finished",
                      "--resume")
    (broken / "checkpoint.safetensors").unlink()
    assert_user_error(cli("recommend", broken, "--user", "u1"), "not a userseq run directory")


def test_unknown_user(cli, run):
    assert_user_error(cli("recommend", run, "--user", "nobody"), "unknown user(s) ['nobody']",
                      "--history")


def test_unknown_history_item(cli, run):
    assert_user_error(cli("recommend", run, "--history", "i1,zzz"), "unknown item id(s) ['zzz']")
    assert_user_error(cli("recommend", run, "--history", " , "), "--history is empty")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_must_be_positive(cli, run, k):
    assert_user_error(cli("recommend", run, "--user", "u1", "-k", k),
                      f"-k must be a positive integer (got {k})")


def test_recommend_needs_user_or_history(cli, run):
    assert_user_error(cli("recommend", run), "give --user ID")


def test_evaluate_when_the_data_moved(cli, run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    config = moved / "config.yaml"
    config.write_text(config.read_text().replace("events.csv", "gone.csv"))
    assert_user_error(cli("evaluate", moved), "config.yaml", "the run recorded")  # edited
    manifest = json.loads((moved / "estimator.json").read_text())  # re-seal the edited config
    manifest["files"]["config.yaml"] = file_digest(config)
    (moved / "estimator.json").write_text(json.dumps(manifest))
    assert_user_error(cli("evaluate", moved), "gone.csv, which no longer exists", "--data")


def test_embed_into_missing_directory(cli, run, tmp_path):
    assert_user_error(cli("embed", run, "-o", tmp_path / "no" / "u.parquet"), "does not exist")


def test_markup_in_messages_is_printed_verbatim(cli, tmp_path):
    path = write(tmp_path / "e.csv", "[bold]user,item_id,timestamp\nu1,a,1\n")
    assert_user_error(cli("validate", path),
                      "Found columns: ['[bold]user', 'item_id', 'timestamp']")


def test_real_process_exit_code_and_stderr(tmp_path):
    """The same contract from a separate process: `python -m userseq.cli` (as the `userseq`
    script)."""
    proc = subprocess.run([sys.executable, "-m", "userseq.cli", "validate",
                           str(tmp_path / "nope.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "file not found" in proc.stderr and proc.stdout == ""
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1  # one message, not wrapped into several lines


def test_command_line_ids_follow_the_model_id_type():
    from userseq.core.errors import UserseqError
    from userseq.nextitem.cli import _typed

    ints = pl.Series("id", [3, 10])
    assert _typed(["10", " 3"], ints, "user") == [10, 3]
    with pytest.raises(UserseqError, match=r"unknown user id\(s\) \['nobody'\].*--history"):
        _typed(["10", "nobody"], ints, "user")
    assert _typed(["10", "x"], pl.Series("id", ["10", "x"]), "item") == ["10", "x"]
