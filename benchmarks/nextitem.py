"""Next-item benchmark: full-ranking test metrics, training time and memory per model and dataset.

Each (dataset, model) trains in its own `userseq train` subprocess (so peak memory is per run)
and the table is written to the `nextitem` section of benchmarks/RESULTS.md.

    python benchmarks/nextitem.py                       # ml-1m + amazon-beauty, all models
    python benchmarks/nextitem.py --datasets ml-1m --models sasrec --max-minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import (  # noqa: E402
    load_rows,
    machine_description,
    publish,
    run_dates,
    run_userseq,
)

CONFIGS = HERE / "configs"
STORE = HERE / "nextitem_runs.json"


def config_args(dataset: str, model: str) -> list[str]:
    """benchmarks/configs/{dataset}-{model}.yaml, else {dataset}.yaml, else the defaults.

    The settings follow the published full-ranking setups (METHODS.md section 5): max length 200
    for MovieLens, 50 with more dropout for the sparse Amazon data.
    """
    for name in (f"{dataset}-{model}", dataset):
        if (CONFIGS / f"{name}.yaml").exists():
            return ["--config", str(CONFIGS / f"{name}.yaml")]
    return []


def run_one(dataset: str, model: str, minutes: float | None, workdir: Path,
            extra: list[str]) -> dict:
    run_dir = workdir / f"{dataset}-{model}"
    cmd = ["userseq", "train", "--data", dataset, "--model", model, "--out", str(run_dir),
           "--overwrite", "--quiet", *extra]
    if minutes is not None:
        cmd += ["--max-minutes", str(minutes)]
    t0 = time.time()
    run_userseq(cmd)
    wall = time.time() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log = json.loads((run_dir / "train_log.json").read_text())
    metrics["train"]["fastest_epoch_s"] = round(min(h["epoch_seconds"] for h in log), 1)
    return {"dataset": dataset, "model": model, "cmd": " ".join(cmd), "wall": wall,
            "metrics": metrics, "load": os.getloadavg()[1]}


def train_rows(args: argparse.Namespace, saved: dict) -> None:
    """Train every (dataset, model) of `args` and store each row in `saved` (and STORE) at once."""
    for ds in [] if args.table_only else args.datasets:
        for model in args.models:
            extra = config_args(ds, model)
            print(f"== {ds} / {model}", flush=True)
            r = run_one(ds, model, args.max_minutes, args.workdir, extra)
            r["date"] = time.strftime("%Y-%m-%d %H:%M")
            r["cmd"] = r["cmd"].replace(str(HERE.parent) + "/", "")  # repository-relative paths
            saved[f"{ds}/{model}"] = r
            STORE.write_text(json.dumps(saved, indent=1) + "\n")
            t = r["metrics"]["test"]
            print(f"   test ndcg@10 {t['ndcg@10']:.4f} hr@10 {t['hr@10']:.4f} "
                  f"({r['wall']:.0f}s)", flush=True)


def table_lines(rows: list[dict]) -> list[str]:
    """The `nextitem` section: one line per run, then one popularity line per dataset."""
    lines = [
        f"Machine: {machine_description()}. Python {platform.python_version()}, "
        "torch threads = cores.",
        "",
        "Full ranking over the whole catalogue, leave-one-out (last item = test, second-to-last = "
        "validation),",
        "items already in the user's history filtered from the ranking, pessimistic ties, all "
        "users.",
        "Early stopping on validation NDCG@10 (never on test). Popularity = most popular training "
        "items.",
        "Load avg = 5-minute load average at the end of the run (2 cores: above 2 means other work "
        "shared the",
        "CPU and times are inflated).",
        "",
        "| dataset | model | NDCG@10 | HR@10 | MRR | epochs (best) | train time "
        "| s/epoch (mean / fastest) | peak RSS | load avg | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, tr = r["metrics"], r["metrics"]["train"]
        t = m["test"]
        lines.append(
            f"| {r['dataset']} | {r['model']} (loss {m['loss']}) | {t['ndcg@10']:.4f} | "
            f"{t['hr@10']:.4f} | {t['mrr']:.4f} | {tr['epochs']} ({tr['best_epoch']}) | "
            f"{tr['seconds'] / 60:.1f} min | "
            f"{tr['seconds_per_epoch']} / {tr.get('fastest_epoch_s', '-')} | "
            f"{tr['peak_rss_gb']:.2f} GB | {r['load']:.1f} | `{r['cmd']}` |"
        )
    seen = set()
    for r in rows:
        if r["dataset"] in seen:
            continue
        seen.add(r["dataset"])
        p = r["metrics"]["baselines"]["popularity"]
        lines.append(f"| {r['dataset']} | popularity | {p['ndcg@10']:.4f} | {p['hr@10']:.4f} "
                     f"| {p['mrr']:.4f} | - | - | - | - | - | (computed by every run) |")
    lines += ["", "Fastest epoch = the quickest epoch of the run, the closest figure to a quiet "
              "machine when the",
              "CPU was shared (epoch time excludes validation)."]
    lines += ["", "Generated by `python benchmarks/nextitem.py [--datasets ...] [--models ...]` "
              "(rows kept in benchmarks/nextitem_runs.json; each row's command is in the table; "
              "dates: " + run_dates(rows) + "). Peak RSS is that of the training process."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-1m", "amazon-beauty"])
    ap.add_argument("--models", nargs="+", default=["sasrec", "bert4rec", "gru4rec"])
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="training budget per run (default: train.max_minutes of each config)")
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "nextitem")
    ap.add_argument("--table-only", action="store_true",
                    help="rewrite the table from stored rows, train nothing")
    args = ap.parse_args()
    # rows of earlier invocations are kept (keyed by dataset and model), so datasets can be run
    # separately
    saved = load_rows(STORE)
    train_rows(args, saved)
    lines = table_lines(list(saved.values()))
    publish("nextitem", "Next-item recommendation (full ranking)", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
