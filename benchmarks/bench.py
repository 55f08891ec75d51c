"""`make bench`: every benchmark row group of benchmarks/RESULTS.md, with an estimated duration.

    python benchmarks/bench.py list                   # make bench-list: groups, commands, estimates
    python benchmarks/bench.py run                    # make bench: every group, one at a time
    python benchmarks/bench.py run --rows classical,tune   # make bench ROWS=classical,tune
    python benchmarks/bench.py run --dry-run          # print what would run, run nothing

`run` prints the total estimate first, then runs each group's command in turn, each under
`../shared/tools/quiet-run` when that tool exists (the machine-wide lock and a wait for a quiet
machine; USERSEQ_UNDER_QUIET_RUN=1 keeps the scripts from wrapping themselves again), else
directly. A failing group is reported and the others still run; the exit code is 1 if any failed.

Estimates come from the committed rows: the sum of the stored wall times (`wall_s`, or `wall`
for the older stores) of the rows the group writes (its store file and key prefix); a group
whose rows record no wall time has a stated guess, marked as such in `list`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402


@dataclass(frozen=True)
class Group:
    """One row group: the command that regenerates it and where its rows are stored."""

    name: str
    args: str  # the script and its arguments, relative to the repository root
    store: str | None = None  # benchmarks/*_runs.json the rows go to
    prefix: str = ""  # key prefix of the group's rows in the store
    guess_s: float = 300.0  # used when no stored row records its wall time
    section: str = ""  # RESULTS.md section


GROUPS: list[Group] = [
    Group("ingest", "benchmarks/ingest.py", guess_s=600, section="ingest"),
    Group("nextitem", "benchmarks/nextitem.py", "nextitem_runs.json", section="nextitem"),
    Group("retrieval-beauty-ce",
          "benchmarks/retrieval.py --part train --dataset amazon-beauty --loss ce --seeds 0 1 2",
          "retrieval_runs.json", "train/amazon-beauty/ce/", section="retrieval"),
    Group("retrieval-beauty-icsrec", "benchmarks/retrieval.py --part train --dataset "
          "amazon-beauty --loss icsrec --seeds 0 1 2", "retrieval_runs.json",
          "train/amazon-beauty/icsrec/s", section="retrieval"),
    Group("retrieval-ml1m-ce", "benchmarks/retrieval.py --part train --dataset ml-1m --loss ce "
          "--seeds 0 1 2 --epochs 3", "retrieval_runs.json", "train/ml-1m/ce/",
          section="retrieval"),
    Group("retrieval-knn", "benchmarks/retrieval.py --part knn --dataset amazon-beauty --seeds "
          "0 1 2", "retrieval_runs.json", "knn/amazon-beauty/", section="retrieval"),
    Group("retrieval-ada", "benchmarks/retrieval.py --part ada --dataset amazon-beauty --seeds "
          "0 1 2", "retrieval_runs.json", "ada/amazon-beauty/", section="retrieval"),
    Group("retrieval-latency", "benchmarks/retrieval.py --part latency --dataset amazon-beauty",
          "retrieval_runs.json", "latency/", section="retrieval"),
    # after the retrieval groups: it re-evaluates their saved SASRec runs
    Group("classical", "benchmarks/classical.py --sasrec-runs benchmarks/_work/retrieval",
          "classical_runs.json", guess_s=480, section="classical"),
    Group("tune", "benchmarks/tune_bench.py", "tune_runs.json", guess_s=300, section="tune"),
    Group("ctr-real", "benchmarks/ctr.py --part real", "ctr_runs.json", "real/", guess_s=1200,
          section="ctr"),
    Group("ctr-scaling", "benchmarks/ctr.py --part scaling", "ctr_runs.json", "scaling/",
          guess_s=300, section="ctr"),
    Group("ctr-synthetic", "benchmarks/ctr.py --part synthetic", "ctr_runs.json", "synthetic/",
          guess_s=600, section="ctr"),
    Group("compression", "benchmarks/compression.py --part table --jobs 2",
          "compression_runs.json", section="compression"),
    Group("distributed-ddp", "benchmarks/distributed.py ddp", "distributed_runs.json", "ddp/",
          section="distributed"),
    Group("distributed-ray", "benchmarks/distributed.py ray", "distributed_runs.json", "ray/",
          section="distributed"),
    Group("distributed-catalogue", "benchmarks/distributed.py catalogue",
          "distributed_runs.json", "catalogue/", section="distributed"),
    Group("distributed-warm", "benchmarks/distributed.py warm", "distributed_runs.json",
          "warm/", section="distributed"),
    Group("generative", "benchmarks/generative.py --seeds 0 1 2 --minutes 1.5 --diversity",
          "generative_runs.json", section="generative"),
    Group("items-text", "benchmarks/items_text.py", "items_runs.json", "text/",
          section="items_text"),
    Group("ssm-accuracy", "benchmarks/ssm_accuracy.py", "ssm_accuracy_runs.json",
          section="ssm_accuracy"),
    Group("ssm-cost", "benchmarks/ssm_cost.py", "ssm_cost_runs.json", section="ssm_cost"),
    Group("ssm-probe", "benchmarks/ssm_probe.py", "ssm_probe_runs.json", section="ssm_probe"),
    Group("ssm-stream", "benchmarks/ssm_stream.py", "ssm_stream_runs.json",
          section="ssm_stream"),
    Group("serve-overload", "benchmarks/serve_load.py --part overload",
          "serve_overload_runs.json", section="serve_overload"),
    Group("epoch-time", "benchmarks/epoch_time.py", guess_s=120, section="epoch_time"),
    Group("ann", "benchmarks/ann.py", guess_s=900, section="ann"),
    Group("embed-stream", "benchmarks/embed_stream.py", guess_s=600, section="embed_stream"),
    Group("scale", "benchmarks/scale.py", guess_s=600, section="scale"),
    Group("detect", "benchmarks/detect.py", guess_s=1800, section="detect"),
    Group("attack", "benchmarks/attack.py", guess_s=3600, section="attack"),
]


def stored_seconds(group: Group, stores: dict[str, dict]) -> float | None:
    """The sum of the wall times of the group's stored rows (None: no row records one)."""
    if group.store is None:
        return None
    rows = stores.setdefault(group.store, results.load_rows(HERE / group.store))
    walls = [r.get("wall_s", r.get("wall")) for k, r in rows.items()
             if k.startswith(group.prefix) and isinstance(r, dict)]
    walls = [float(w) for w in walls if isinstance(w, int | float) and w > 0]
    return sum(walls) if walls else None


def estimate(group: Group, stores: dict[str, dict]) -> tuple[float, str]:
    """(seconds, source): "stored rows" or "guess"."""
    s = stored_seconds(group, stores)
    return (s, "stored rows") if s is not None else (group.guess_s, "guess")


def select(rows: str | None) -> list[Group]:
    if not rows:
        return list(GROUPS)
    names = [r.strip() for r in rows.split(",") if r.strip()]
    known = {g.name: g for g in GROUPS}
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"ROWS: unknown group(s) {', '.join(bad)}; `make bench-list` lists "
                         f"them: {', '.join(known)}.")
    return [known[n] for n in names]


def fmt_seconds(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def command(group: Group) -> list[str]:
    """The group's command line: under quiet-run when the tool exists."""
    cmd = [sys.executable, *group.args.split()]
    tool = Path(os.environ.get("USERSEQ_QUIET_RUN", results.QUIET_RUN))
    return [str(tool), "--", *cmd] if tool.exists() else cmd


def list_groups(groups: list[Group]) -> None:
    stores: dict[str, dict] = {}
    total = 0.0
    print(f"{'group':<24} {'estimate':>10}  {'from':<11}  command")
    for g in groups:
        s, src = estimate(g, stores)
        total += s
        print(f"{g.name:<24} {fmt_seconds(s):>10}  {src:<11}  python {g.args}")
    print(f"{len(groups)} groups, total estimate {fmt_seconds(total)} (one at a time)")


def run_groups(groups: list[Group], dry_run: bool = False) -> int:
    stores: dict[str, dict] = {}
    plan = [(g, *estimate(g, stores)) for g in groups]
    total = sum(s for _, s, _ in plan)
    print(f"make bench: {len(plan)} groups, estimated total {fmt_seconds(total)} "
          f"({sum(src == 'guess' for _, _, src in plan)} estimates are guesses); one at a time",
          flush=True)
    failed = []
    env = dict(os.environ, USERSEQ_UNDER_QUIET_RUN="1", PYTHONUNBUFFERED="1")
    t_all = time.time()
    for i, (g, s, src) in enumerate(plan, 1):
        cmd = command(g)
        results.log(f"[{i}/{len(plan)}] {g.name} (estimate {fmt_seconds(s)}, {src}): "
                    f"{' '.join(cmd)}")
        if dry_run:
            continue
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        results.log(f"[{i}/{len(plan)}] {g.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} "
                    f"in {fmt_seconds(time.time() - t0)}")
        if rc != 0:
            failed.append(g.name)
    if not dry_run:
        results.log(f"make bench: {len(plan) - len(failed)} of {len(plan)} groups ok in "
                    f"{fmt_seconds(time.time() - t_all)}" +
                    (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["list", "run", "json"])
    ap.add_argument("--rows", default=None, help="comma-separated group names (default: all)")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    groups = select(a.rows)
    if a.action == "list":
        list_groups(groups)
        return 0
    if a.action == "json":
        stores: dict[str, dict] = {}
        print(json.dumps([{"name": g.name, "command": f"python {g.args}",
                           "estimate_s": estimate(g, stores)[0],
                           "estimate_from": estimate(g, stores)[1]} for g in groups], indent=1))
        return 0
    return run_groups(groups, a.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
