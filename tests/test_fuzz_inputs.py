"""A table of bad inputs (docs/hardening.md): event files, configs, command-line options, output
paths, run directories and API calls. Every case ends in exactly one of three outcomes:

* "error":   exit code 2 and one `error:` line naming the file/setting and the fix, no traceback;
* "warning": the documented warning (a `warning:` line, or a problem listed by `validate`), and
             the command still succeeds;
* "ok":      the correct result (checked by value).

Never a traceback, never exit 0 with a wrong answer. All calls are in-process (`invoke_cli`)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from cli_support import assert_user_error
from conftest import synthetic_events

from userseq.core.artifacts import save_tensors
from userseq.core.errors import UserseqError, UserseqWarning

TINY = "model: {dim: 8, max_len: 10}\ntrain: {batch_size: 64, threads: 1, device: cpu}\n"


@dataclass
class Ctx:
    root: Path  # the module's files: good.csv, tiny.yaml, the trained run
    tmp: Path  # this case's own directory

    @property
    def good(self) -> Path:
        return self.root / "good.csv"

    @property
    def config(self) -> Path:
        return self.root / "tiny.yaml"

    def file(self, name: str, text: str | bytes) -> Path:
        p = self.tmp / name
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def run(self) -> Path:
        """A private copy of the trained run, to damage."""
        dest = self.tmp / "run"
        shutil.copytree(self.root / "run", dest)
        return dest

    def train(self, data: Any, *extra: Any) -> list[Any]:
        return ["train", "-d", data, "-o", self.tmp / "out", "--config", self.config, "--quiet",
                *extra]

    def csv(self, rows: str, header: str = "user_id,item_id,timestamp") -> Path:
        return self.file("events.csv", f"{header}\n{rows}")


@pytest.fixture(scope="module")
def root(tmp_path_factory, cli) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    synthetic_events(n_users=40, n_items=15, length=8).write_csv(d / "good.csv")
    (d / "tiny.yaml").write_text(TINY)
    res = cli("train", "-d", d / "good.csv", "-o", d / "run", "--config", d / "tiny.yaml",
              "--epochs", "1", "--quiet")
    assert res.code == 0, res.output
    return d


# ---------------------------------------------------------------------- run-directory damage
def manifest(run: Path) -> dict:
    return json.loads((run / "estimator.json").read_text())


def set_manifest(run: Path, **changes: Any) -> Path:
    m = {**manifest(run), **changes}
    (run / "estimator.json").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))
    return run


def as_format_2(run: Path) -> Path:
    """A run as userseq wrote it before hashes: no file list, no marker."""
    set_manifest(run, format_version=2, files=None)
    (run / "COMPLETE").unlink()
    return run


def reverse_ids(run: Path, name: str) -> Path:
    df = pl.read_parquet(run / name)
    df.with_columns(df["id"].reverse()).write_parquet(run / name)
    return run


def shift_ids(run: Path, name: str) -> Path:
    df = pl.read_parquet(run / name)
    df.with_columns(df["id"].shift(1, fill_value=df["id"][-1])).write_parquet(run / name)
    return run


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def foreign_histories(run: Path) -> Path:
    """histories.safetensors of another (bigger) run: more users, other item indices."""
    offsets = torch.arange(0, 8 * 101, 8, dtype=torch.int64)
    save_tensors({"offsets": offsets, "items": torch.full((800,), 99, dtype=torch.int32)},
                 run / "histories.safetensors")
    return run


def same_answer(c: Ctx) -> list[dict]:
    """The untouched run's recommendations for u1 (what a loadable damaged run must answer)."""
    from userseq import load

    return load(c.root / "run").recommend(["u1"]).with_columns(
        pl.col("user_id").cast(pl.String)).to_dicts()


def recommend(run: Path) -> list[Any]:
    return ["recommend", run, "--user", "u1"]


# ---------------------------------------------------------------------- the table
E, W, OK = "error", "warning", "ok"
Case = tuple[str, str, Callable[[Ctx], list[Any]], Any]

EVENT_FILES: list[Case] = [
    ("missing file", E, lambda c: ["validate", c.tmp / "nope.csv"], ["file not found"]),
    ("empty file", E, lambda c: ["validate", c.file("e.csv", "")], ["file is empty"]),
    ("header only", E, lambda c: ["validate", c.csv("")], ["no event rows"]),
    ("a directory", E, lambda c: ["validate", c.tmp], ["is a directory"]),
    ("unknown suffix", E, lambda c: ["validate", c.file("e.xyz", "a")], ["unknown file type"]),
    ("bz2", E, lambda c: ["validate", c.file("e.csv.bz2", "x")], ["bz2"]),
    ("no user column", E, lambda c: ["validate", c.csv("a,1", "item_id,timestamp")],
     ["missing required user column"]),
    ("no timestamp column", E, lambda c: ["validate", c.csv("u,a", "user_id,item_id")],
     ["missing required timestamp column", "--timestamp-col"]),
    ("null user id", E, lambda c: ["validate", c.csv("u1,a,1\n,b,2\n")], ["null/empty ids"]),
    ("blank item id", E, lambda c: ["validate", c.csv('u1,a,1\nu1," ",2\n')],
     ["null/empty ids", "line 3"]),
    ("missing timestamp", E, lambda c: ["validate", c.csv("u1,a,1\nu1,b,\n")],
     ["missing timestamps"]),
    ("unparsable timestamp", E,
     lambda c: ["validate", c.csv("u1,a,2024-01-01\nu1,b,yesterday\n")],
     ["unparsable timestamps", "'yesterday'"]),
    ("numbers and dates mixed", E,
     lambda c: ["validate", c.csv("u1,a,2024-01-01\nu1,b,1700000000\n")], ["mixes numbers"]),
    ("infinite timestamp", E, lambda c: ["validate", c.csv("u1,a,1.5\nu1,b,inf\n")],
     ["infinite timestamps"]),
    ("fractional ids", E, lambda c: ["validate", c.csv("1.5,a,1\n2,b,2\n")],
     ["non-integer numbers"]),
    ("jsonl number+string ids", E, lambda c: ["validate", c.file(
        "e.jsonl", '{"user_id": 1, "item_id": "a", "timestamp": 1}\n'
                   '{"user_id": "u2", "item_id": "b", "timestamp": 2}\n')],
     ["mixes JSON numbers and strings"]),
    ("jsonl boolean among string ids", E, lambda c: ["validate", c.file(
        "e.jsonl", '{"user_id": true, "item_id": "a", "timestamp": 1}\n'
                   '{"user_id": "u2", "item_id": "b", "timestamp": 2}\n')],
     ["JSON boolean", "never true/false"]),
    ("jsonl boolean ids", E, lambda c: ["validate", c.file(
        "e.jsonl", '{"user_id": true, "item_id": "a", "timestamp": 1}\n'
                   '{"user_id": false, "item_id": "b", "timestamp": 2}\n')],
     ["holds booleans", "strings or integers"]),
    ("jsonl boolean item among numbers", E, lambda c: ["validate", c.file(
        "e.jsonl", '{"user_id": "u", "item_id": true, "timestamp": 1}\n'
                   '{"user_id": "u", "item_id": 5, "timestamp": 2}\n')], ["could not"]),
    ("ragged csv", E, lambda c: ["validate", c.csv("u1,a,1\nu1,b,2,9,9\n")], ["line 3"]),
    ("tabs in a .csv", E, lambda c: ["validate", c.file("e.csv", "user_id\titem_id\ttimestamp\n"
                                                                  "u\ta\t1\n")],
     ["looks tab-separated"]),
    ("garbage parquet", E, lambda c: ["validate", c.file("e.parquet", b"not parquet")],
     ["could not parse as parquet"]),
    ("garbage jsonl", E, lambda c: ["validate", c.file("e.jsonl", "{oops\n")], ["could not"]),
    ("garbage gzip", E, lambda c: ["validate", c.file("e.csv.gz", b"not gzip")], ["e.csv.gz"]),
    ("one column for two roles", E,
     lambda c: ["validate", c.good, "--item-col", "user_id"], ["three different columns"]),
    ("misspelt dataset", E, lambda c: ["validate", "ml1m"], ["not a known dataset name"]),
    ("csv bool-like ids are strings", OK, lambda c: ["validate", "--json", c.csv(
        "true,a,1\nfalse,b,2\ntrue,c,3\n")], lambda r, c: json.loads(r.stdout)["users"] == 2),
    ("gzip csv", OK, lambda c: ["validate", "--json", c.file(
        "e.csv.gz", gzip.compress(b"user_id,item_id,timestamp\nu,a,1\nu,b,2\n"))],
     lambda r, c: json.loads(r.stdout)["events"] == 2),
]

SILENT_BEFORE: list[Case] = [  # were silent wrong results; now warnings or correct results
    ("blank-padded ids", W, lambda c: ["validate", c.csv("u1,a,1\n u1,b,2\nu1 ,c,3\n")],
     ["leading/trailing whitespace", "' u1'", "data.strip_ids"]),
    ("blank-padded ids in train", W, lambda c: c.train(c.csv(
        "".join(f"u{u},i{t},{t}\n" for u in range(8) for t in range(5))
        + "".join(f" u1,i{t},{t}\n" for t in range(3))),
        "--epochs", "1"), ["warning:", "leading/trailing whitespace"]),
    ("strip_ids merges them", OK, lambda c: ["validate", "--json", "--strip-ids", c.csv(
        "u1,a,1\n u1,b,2\nu1 ,c,3\n")],
     lambda r, c: json.loads(r.stdout)["users"] == 1 and "values have leading" not in r.stdout
     and "stripped leading/trailing whitespace from 2" in r.stdout),
    ("seconds and milliseconds", W, lambda c: ["validate", c.csv(
        "u1,a,1700000000\nu1,b,1700000001000\nu2,a,1700000002\n")],
     ["mixes timestamp magnitudes", "seconds", "milliseconds", "line 3"]),
    ("milliseconds only", OK, lambda c: ["validate", "--json", c.csv(
        "u1,a,1700000000000\nu1,b,1700000001000\n")],
     lambda r, c: "magnitudes" not in r.stdout),
    ("small counters are not unix time", OK, lambda c: ["validate", "--json", c.csv(
        "u1,a,1\nu1,b,1700000001000\n")], lambda r, c: "magnitudes" not in r.stdout),
]

CONFIGS: list[Case] = [
    ("duplicate section", E, lambda c: c.train(c.good, "--config", c.file(
        "c.yaml", "train: {epochs: 1}\ntrain: {epochs: 3}\n")), ["'train' appears twice",
                                                                 "lines 1 and 2"]),
    ("duplicate nested key", E, lambda c: c.train(c.good, "--config", c.file(
        "c.yaml", "model:\n  dim: 8\n  dim: 16\n")), ["'dim' appears twice"]),
    ("unknown section", E, lambda c: c.train(c.good, "--config", c.file("c.yaml", "trian: {}\n")),
     ["unknown key 'trian'"]),
    ("unknown train key", E, lambda c: c.train(c.good, "--config", c.file(
        "c.yaml", "train: {epoch: 3}\n")), ["unknown key 'train.epoch'"]),
    ("a list, not a mapping", E, lambda c: c.train(c.good, "--config", c.file("c.yaml", "- 1\n")),
     ["expected a mapping"]),
    ("invalid yaml", E, lambda c: c.train(c.good, "--config", c.file("c.yaml", "a: [1\n")),
     ["not valid YAML"]),
    ("missing config", E, lambda c: c.train(c.good, "--config", c.tmp / "none.yaml"),
     ["config file not found"]),
    ("zero epochs", E, lambda c: c.train(c.good, "--epochs", "0"), ["--epochs 0"]),
    ("negative lr", E, lambda c: c.train(c.good, "--set", "train.lr=-1"), ["train.lr"]),
    ("monitor: loss", E, lambda c: c.train(c.good, "--set", "train.monitor=loss"),
     ["train.monitor 'loss' is not a validation metric", "ndcg@10"]),
    ("eval.ks without 10", E, lambda c: c.train(c.good, "--set", "eval.ks=[5]"),
     ["train.monitor 'ndcg@10'", "eval.ks [5]", "ndcg@5"]),
    ("eval.ks empty", E, lambda c: c.train(c.good, "--set", "eval.ks=[]"), ["non-empty list"]),
    ("unknown optimizer", E, lambda c: c.train(c.good, "--set", "train.optimizer=adamx"),
     ["adamx"]),
    ("unknown encoder", E, lambda c: c.train(c.good, "--model", "gpt9"), ["gpt9"]),
    ("negative seed", E, lambda c: c.train(c.good, "--seed", "-5"), ["--seed -5"]),
    ("20-digit seed", E, lambda c: c.train(c.good, "--seed", "12345678901234567890"),
     ["--seed 12345678901234567890", "less than"]),
    ("negative split seed", E, lambda c: c.train(c.good, "--split-seed", "-1"),
     ["--split-seed -1"]),
    ("--set without =", E, lambda c: c.train(c.good, "--set", "train.lr"), ["KEY=VALUE"]),
    ("--set unknown key", E, lambda c: c.train(c.good, "--set", "train.nope=1"),
     ["unknown config key 'train.nope'"]),
    ("--set another encoder's key", E, lambda c: c.train(
        c.good, "--model", "sasrec", "--set", "model.mask_prob=0.3"),
     ["'model.mask_prob' is not a setting of encoder 'sasrec'"]),
    ("negative checkpoint_every", E, lambda c: c.train(c.good, "--set",
                                                       "train.checkpoint_every=-1"),
     ["train.checkpoint_every"]),
    ("cuda without a GPU", E, lambda c: c.train(c.good, "--device", "cuda"), ["cuda"]),
    ("detect monitor: loss", E, lambda c: ["detect", "train", "-d", c.good, "-o", c.tmp / "o",
                                           "--set", "train.monitor=loss"],
     ["train.monitor must be one of roc_auc, accuracy"]),
    ("ctr monitor: ndcg@10", E, lambda c: ["ctr", "train", "-d", c.good, "-o", c.tmp / "o",
                                           "--set", "train.monitor=ndcg@10"],
     ["train.monitor must be one of"]),
]

OUTPUTS: list[Case] = [
    ("--out is a file", E, lambda c: ["train", "-d", c.good, "-o", c.file("f", "x")],
     ["exists and is not a directory"]),
    ("--out under a file", E, lambda c: ["train", "-d", c.good, "-o", c.file("f", "x") / "run"],
     ["is a file, not a directory"]),
    ("--out not writable", E, lambda c: ["train", "-d", c.good, "-o", "/proc/userseq-run"],
     ["not writable"]),
    ("--out holds a run", E, lambda c: ["train", "-d", c.good, "-o", c.run()],
     ["holds a run", "--resume", "--overwrite"]),
    ("--out holds other files", E, lambda c: ["train", "-d", c.good, "-o", c.file(
        "x.txt", "x").parent], ["is not empty", "--overwrite"]),
    ("--overwrite of a non-run", E, lambda c: ["train", "-d", c.good, "--overwrite", "-o",
                                               c.file("x.txt", "x").parent],
     ["not a userseq run", "will not delete"]),
    ("--resume with --overwrite", E, lambda c: ["train", "-d", c.good, "-o", c.run(), "--resume",
                                                "--overwrite"], ["not both"]),
    ("--resume without checkpoint", E, lambda c: c.train(c.good, "--resume", "--epochs", "1"),
     ["no checkpoint to resume from"]),
    ("--overwrite replaces the run", OK, lambda c: [
        "train", "-d", c.good, "-o", c.run(), "--overwrite", "--config", c.config, "--epochs",
        "1", "--quiet"],
     lambda r, c: "saved run to" in r.stdout),
    ("ctr --out holds a run", E, lambda c: ["ctr", "train", "-d", c.good, "-o", c.run()],
     ["holds a run"]),
    ("detect --out holds a run", E, lambda c: ["detect", "train", "-d", c.good, "-o", c.run()],
     ["holds a run"]),
    ("embed --out .csv", E, lambda c: ["embed", c.root / "run", "-o", c.tmp / "u.csv"],
     ["written as Parquet", "u.parquet"]),
    ("embed --items-out .json", E, lambda c: ["embed", c.root / "run", "-o", c.tmp / "u.parquet",
                                              "--items-out", c.tmp / "i.json"], ["--items-out"]),
    ("embed --out a directory", E, lambda c: ["embed", c.root / "run", "-o",
                                              (c.tmp / "d.parquet").mkdir() or c.tmp / "d.parquet"],
     ["is a directory"]),
    ("embed --out in a missing dir", E, lambda c: ["embed", c.root / "run", "-o",
                                                   c.tmp / "no" / "u.parquet"], ["does not exist"]),
    ("embed --out not writable", E, lambda c: ["embed", c.root / "run", "-o", "/proc/u.parquet"],
     ["not writable"]),
    ("embed writes parquet, no .part", OK, lambda c: ["embed", c.root / "run", "-o",
                                                      c.tmp / "u.parquet", "--quiet"],
     lambda r, c: "wrote 40 user embeddings" in r.stdout),
]

RUNS: list[Case] = [
    ("run not found", E, lambda c: recommend(c.tmp / "none"), ["run directory not found"]),
    ("item ids reversed", E, lambda c: recommend(reverse_ids(c.run(), "item_ids.parquet")),
     ["item_ids.parquet", "train again"]),
    ("item ids shifted", E, lambda c: recommend(shift_ids(c.run(), "item_ids.parquet")),
     ["item_ids.parquet"]),
    ("user ids reversed", E, lambda c: recommend(reverse_ids(c.run(), "user_ids.parquet")),
     ["user_ids.parquet"]),
    ("histories cut", E, lambda c: recommend((r := c.run(),
                                              cut(r / "histories.safetensors"))[0]),
     ["histories.safetensors", "bytes, but the run recorded"]),
    ("histories of another run", E, lambda c: recommend(foreign_histories(c.run())),
     ["histories.safetensors"]),
    ("format 2: histories of another run", E,
     lambda c: recommend(foreign_histories(as_format_2(c.run()))),
     ["does not belong to this run", "100 users", "has 40"]),
    ("format 2: item ids cut", E, lambda c: recommend(
        (r := as_format_2(c.run()), pl.read_parquet(r / "item_ids.parquet").head(5).write_parquet(
            r / "item_ids.parquet"))[0]), ["items but the model expects"]),
    ("format 2 still loads", OK, lambda c: [*recommend(as_format_2(c.run())), "--json"],
     lambda r, c: json.loads(r.stdout) == same_answer(c)),
    ("model cut", E, lambda c: recommend((r := c.run(), cut(r / "model.safetensors"))[0]),
     ["model.safetensors"]),
    ("model missing", E, lambda c: recommend((r := c.run(),
                                              (r / "model.safetensors").unlink())[0]),
     ["model.safetensors: missing"]),
    ("config edited", E, lambda c: recommend((r := c.run(), (r / "config.yaml").write_text(
        (r / "config.yaml").read_text().replace("dim: 8", "dim: 9")))[0]), ["config.yaml"]),
    ("no completion marker", E, lambda c: recommend((r := c.run(),
                                                     (r / "COMPLETE").unlink())[0]),
     ["unfinished run", "--resume"]),
    ("future format", E, lambda c: recommend(set_manifest(c.run(), format_version=99)),
     ["run format 99", "Upgrade userseq"]),
    ("future userseq version", E, lambda c: recommend(set_manifest(c.run(),
                                                                   userseq_version="9.0.0")),
     ["userseq 9.0.0", "Upgrade userseq"]),
    ("boolean format version", E, lambda c: recommend(set_manifest(c.run(), format_version=True)),
     ["Upgrade userseq"]),
    ("no file list", E, lambda c: recommend(set_manifest(c.run(), files=None)),
     ["no file list"]),
    ("manifest not json", E, lambda c: recommend((r := c.run(), (r / "estimator.json").write_text(
        "{"))[0]), ["not valid JSON"]),
    ("manifest without task", E, lambda c: recommend((r := c.run(),
                                                      (r / "estimator.json").write_text("{}"))[0]),
     ["no 'task'"]),
    ("evaluate --set train.lr", E, lambda c: ["evaluate", c.root / "run", "--set", "train.lr=1"],
     ["evaluation settings only"]),
    ("evaluate with other ks", OK, lambda c: ["evaluate", c.run(), "--set", "eval.ks=[5]"],
     lambda r, c: "ndcg@5" in r.stdout),
    ("recommend -k 0", E, lambda c: [*recommend(c.root / "run"), "-k", "0"], ["-k must be"]),
    ("recommend unknown user", E, lambda c: ["recommend", c.root / "run", "--user", "zz"],
     ["unknown user(s) ['zz']"]),
    ("recommend empty history", E, lambda c: ["recommend", c.root / "run", "--history", ","],
     ["--history is empty"]),
    ("config show of a damaged run", E, lambda c: ["config", "show", set_manifest(
        c.run(), format_version=99)], ["Upgrade userseq"]),
]

TABLE = EVENT_FILES + SILENT_BEFORE + CONFIGS + OUTPUTS + RUNS


def test_the_table_is_large_enough():
    assert len(TABLE) + len(API_CASES) >= 70
    assert len({name for name, *_ in TABLE}) == len(TABLE)


@pytest.mark.parametrize("name,kind,args,expect", TABLE, ids=[c[0] for c in TABLE])
def test_bad_input(root, tmp_path, cli, name, kind, args, expect):
    ctx = Ctx(root, tmp_path)
    res = cli(*args(ctx))
    assert "Traceback" not in res.output
    if kind == E:
        assert_user_error(res, *expect)
    elif kind == W:
        assert res.code == 0, res.output
        assert "error:" not in res.stderr
        for fragment in expect:
            assert fragment in " ".join(res.output.split()), (fragment, res.output)
    else:
        assert res.code == 0, res.output
        assert expect(res, ctx), res.output
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob(".*.tmp"))


# ---------------------------------------------------------------------- the Python API
@pytest.fixture(scope="module")
def rec(root):
    from userseq import load

    return load(root / "run")


def _api_blank_ids(rec):
    from userseq import EventLog

    df = pl.DataFrame({"user_id": ["u1", " u1", "u2"], "item_id": ["a", "b", "a"],
                       "timestamp": [1, 2, 3]})
    with pytest.warns(UserseqWarning, match="leading/trailing whitespace"):
        log = EventLog.from_frame(df)
    assert log.n_users == 3
    assert EventLog.from_frame(df, strip_ids=True).n_users == 2


def _api_bool_frame(rec):
    from userseq import EventLog

    df = pl.DataFrame({"user_id": [True, False], "item_id": ["a", "b"], "timestamp": [1, 2]})
    with pytest.raises(UserseqError, match="holds booleans"):
        EventLog.from_frame(df)


API_CASES: list[tuple[str, Callable[[Any], Any], str | None]] = [
    ("recommend([True])", lambda r: r.recommend([True]), "is a boolean"),
    ("recommend_history([[True]])", lambda r: r.recommend_history([[True]]), "is a boolean"),
    ("recommend(k=True)", lambda r: r.recommend(["u1"], k=True), "k must be a positive integer"),
    ("recommend(k=2.5)", lambda r: r.recommend(["u1"], k=2.5), "k must be a positive integer"),
    ("blank ids warn; strip_ids", _api_blank_ids, None),
    ("boolean id column", _api_bool_frame, None),
]


@pytest.mark.parametrize("name,call,error", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_api_call(rec, name, call, error):
    if error is None:
        call(rec)
    else:
        with pytest.raises(UserseqError, match=error):
            call(rec)
