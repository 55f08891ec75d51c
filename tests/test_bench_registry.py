"""`make bench` registry (benchmarks/bench.py): estimates from stored rows, subsets, the plan."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("userseq_bench_registry",
                                                  ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_every_group_names_an_existing_script_and_a_unique_name():
    names = [g.name for g in bench.GROUPS]
    assert len(names) == len(set(names))
    for g in bench.GROUPS:
        assert (ROOT / g.args.split()[0]).is_file(), g.name


def test_estimate_sums_the_stored_wall_times_of_the_group_rows(tmp_path, monkeypatch):
    store = tmp_path / "x_runs.json"
    store.write_text(json.dumps({"a/1": {"wall_s": 10.0}, "a/2": {"wall": 5}, "b/1":
                                 {"wall_s": 100.0}, "a/3": {"note": "no wall time"}}))
    monkeypatch.setattr(bench, "HERE", tmp_path)
    g = bench.Group("a", "benchmarks/x.py", "x_runs.json", "a/", guess_s=7)
    assert bench.estimate(g, {}) == (15.0, "stored rows")
    assert bench.estimate(bench.Group("c", "benchmarks/x.py", "x_runs.json", "c/", guess_s=7),
                          {}) == (7, "guess")
    assert bench.estimate(bench.Group("d", "benchmarks/x.py", guess_s=42), {}) == (42, "guess")


def test_rows_subset_and_unknown_names():
    assert [g.name for g in bench.select("tune,classical")] == ["tune", "classical"]
    assert len(bench.select(None)) == len(bench.GROUPS)
    with pytest.raises(SystemExit, match="unknown group\\(s\\) nope; `make bench-list`"):
        bench.select("classical,nope")


def test_run_prints_the_total_estimate_first(capsys):
    assert bench.main(["run", "--rows", "classical,tune", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    stores: dict = {}
    total = sum(bench.estimate(g, stores)[0] for g in bench.select("classical,tune"))
    assert out[0].startswith(f"make bench: 2 groups, estimated total {bench.fmt_seconds(total)}")
    assert "[1/2] classical" in out[1] and "[2/2] tune" in out[2]
