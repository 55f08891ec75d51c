"""`userseq tune` on a small real case (issue #14 item 7): SASRec on ML-100K.

    python benchmarks/tune_bench.py                                   # 12 trials, 3.5-minute budget
    python benchmarks/tune_bench.py --trials 4 --budget-minutes 1 --no-write   # smoke

Runs `userseq tune benchmarks/configs/tune-ml-100k-sasrec.yaml`, copies the trials table
(trials.csv, trials.json) and the best config to benchmarks/tune/, stores the row in
benchmarks/tune_runs.json and renders the `tune` section of RESULTS.md. Selection is on
validation NDCG@10 only; the test split is read once, by the final run of the best config.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

HERE = Path(__file__).resolve().parent
STORE = HERE / "tune_runs.json"
LOCK = HERE / "_work" / "tune.lock"
WORK = HERE / "_work" / "tune"
KEEP = HERE / "tune"
CONFIG = HERE / "configs" / "tune-ml-100k-sasrec.yaml"


def run(a: argparse.Namespace) -> None:
    out = WORK / CONFIG.stem
    cmd = ["userseq", "tune", str(CONFIG), "--out", str(out), "--trials", str(a.trials),
           "--budget-minutes", str(a.budget_minutes), "--overwrite"]
    results.log(" ".join(cmd))
    with results.LoadMonitor() as mon:
        results.run_userseq(cmd)
    summary = json.loads((out / "tune.json").read_text())
    trials = json.loads((out / "trials.json").read_text())
    if not a.no_write:
        KEEP.mkdir(exist_ok=True)
        for name in ("trials.csv", "trials.json", "best.yaml"):
            shutil.copy(out / name, KEEP / f"{CONFIG.stem}-{name}")
    row = {"config": str(CONFIG.relative_to(HERE.parent)), "summary": summary,
           "trials_table": f"benchmarks/tune/{CONFIG.stem}-trials.csv",
           "userseq_command": " ".join(cmd).replace(str(HERE.parent) + "/", ""),
           "trials": [{k: t[k] for k in ("number", "state", "value", "best_epoch", "epochs",
                                         "seconds", "params")} for t in trials],
           **results.provenance(mon, seeds=[0], data="ml-100k")}
    if not a.no_write:
        results.save_row(STORE, CONFIG.stem, row, LOCK)
    results.log(f"best trial {summary['best_trial']}: valid {summary['best_valid']:.4f}, test "
                f"ndcg@10 {summary['test']['ndcg@10']:.4f} ({mon.verdict})")


def table_lines(rows: dict) -> list[str]:
    if not rows:
        return ["No rows yet: run `python benchmarks/tune_bench.py`."]
    lines = []
    for key, r in rows.items():
        s = r["summary"]
        t, ft = s["test"], s["final_train"]
        unconv = " (**unconverged**: best epoch = last)" if ft["best_epoch"] == ft["epochs"] \
            else ""
        lines += [
            f"### {key}", "",
            f"Command: `{r['command'].strip()}` → `{r['userseq_command']}`; commit {r['commit']}, "
            f"{r['cores']} cores, {r['date']}, wall {r['wall_s']:.0f} s, load verdict "
            f"**{r['verdict']}**; TPE sampler seed 0, median pruner.",
            "",
            f"{s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned) in "
            f"{s['search_seconds']:.0f} s (budget {s['budget_minutes']} min). Best trial "
            f"{s['best_trial']}: validation {s['monitor']} {s['best_valid']:.4f} with "
            f"`{s['best_params']}`. The best config trained again (same seed) and evaluated once "
            f"on test: NDCG@10 {t['ndcg@10']:.4f}, HR@10 {t['hr@10']:.4f}; best epoch "
            f"{ft['best_epoch']} of {ft['epochs']}{unconv}. Trials table: "
            f"`{r['trials_table']}`.",
            "",
            "| trial | state | valid NDCG@10 | best epoch / epochs | seconds | settings |",
            "|---|---|---|---|---|---|",
        ]
        for tr in r["trials"]:
            lines.append(f"| {tr['number']} | {tr['state']} | {tr['value']:.4f} | "
                         f"{tr['best_epoch']} / {tr['epochs']} | {tr['seconds']:.0f} | "
                         f"`{tr['params']}` |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--budget-minutes", type=float, default=3.5)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    a = ap.parse_args()
    if not a.table_only:
        results.ensure_quiet(a.no_quiet)
        WORK.mkdir(parents=True, exist_ok=True)
        run(a)
    results.publish("tune", "Hyperparameter search on validation (`userseq tune`, issue #14)",
                    table_lines(results.load_rows(STORE)), write=not a.no_write)


if __name__ == "__main__":
    main()
