"""Classical baselines next to SASRec in one table (issue #14 items 4 and 5).

Most-popular, item-kNN and EASE (`userseq train --model pop|itemknn|ease`, closed form, the
setting chosen on validation NDCG@10) and saved SASRec (full CE) runs re-evaluated with the same
code, on ML-1M and Amazon Beauty: NDCG@10, HR@10 and the beyond-accuracy columns (coverage,
novelty, Gini, share of the top-1% popular items, genres per list where the data has them).

    python benchmarks/classical.py                                  # classical rows, both datasets
    python benchmarks/classical.py --datasets ml-1m --models ease
    python benchmarks/classical.py --models --sasrec-runs /work/main/benchmarks/_work/retrieval
    python benchmarks/classical.py --table-only

`--sasrec-runs DIR` re-evaluates DIR/{dataset}-sasrec-ce-s{0,1,2} (copied to the work directory
first; the originals are not modified): training budget and convergence are reported from each
run's own record. Classical models are deterministic (no seeds): one row each.
Protocol: leave-one-out, full ranking over the whole catalogue, seen items filtered, pessimistic
ties, every user.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

HERE = Path(__file__).resolve().parent
STORE = HERE / "classical_runs.json"
LOCK = HERE / "_work" / "classical.lock"
WORK = HERE / "_work" / "classical"
SECTION = "classical"
COLUMNS = ["ndcg@10", "hr@10", "coverage@10", "novelty@10", "gini@10", "pop1%@10",
           "categories@10"]


def train_classical(dataset: str, model: str, sets: list[str]) -> None:
    out = WORK / f"{dataset}-{model}"
    cmd = ["userseq", "train", "--data", dataset, "--model", model, "--out", str(out),
           "--overwrite", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    results.log(" ".join(cmd))
    with results.LoadMonitor() as mon:
        results.run_userseq(cmd)
    m = json.loads((out / "metrics.json").read_text())
    row = {"dataset": dataset, "model": model, "kind": "classical", "valid": m["valid"],
           "test": m["test"], "train": m["train"], "userseq_command": " ".join(cmd),
           **results.provenance(mon, seeds=[], data=dataset, deterministic=True)}
    results.save_row(STORE, f"{dataset}/{model}", row, LOCK)
    t = m["test"]
    results.log(f"{dataset} {model}: test ndcg@10 {t['ndcg@10']:.4f} chosen "
                f"{m['train'].get('chosen')} ({mon.record()['wall_s']}s, {mon.verdict})")


def evaluate_sasrec(dataset: str, runs: Path) -> None:
    for src in sorted(runs.glob(f"{dataset}-sasrec-ce-s*")):
        seed = int(src.name.rsplit("-s", 1)[1])
        dst = WORK / src.name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint*", "best*", "index"))
        cmd = ["userseq", "evaluate", str(dst)]
        results.log(" ".join(cmd))
        with results.LoadMonitor() as mon:
            results.run_userseq(cmd)
        m = json.loads((dst / "metrics.json").read_text())
        row = {"dataset": dataset, "model": "sasrec (ce)", "kind": "sasrec", "valid": m["valid"],
               "test": m["test"], "train": m["train"], "run": str(src),
               "userseq_command": " ".join(cmd),
               **results.provenance(mon, seeds=[seed], data=dataset)}
        results.save_row(STORE, f"{dataset}/sasrec-ce/s{seed}", row, LOCK)
        results.log(f"{dataset} sasrec s{seed}: test ndcg@10 {m['test']['ndcg@10']:.4f}")


def _fmt(rows: list[dict], key: str) -> str:
    vals = [r["test"][key] for r in rows if key in r["test"]]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return results.mean_std(vals)


def _status(rows: list[dict]) -> str:
    tr = rows[0]["train"]
    if tr.get("fit") == "closed form":
        return f"closed form, chosen on validation: {tr.get('chosen') or '—'}; deterministic"
    eps = [r["train"] for r in rows]
    unconv = sum(1 for t in eps if t.get("best_epoch") == t.get("epochs"))
    label = f"{eps[0]['epochs']} epochs budget, best epochs {[t['best_epoch'] for t in eps]}"
    return label + ("; **unconverged** (best epoch = last)" if unconv else "")


def table_lines(saved: dict) -> list[str]:
    rows = list(saved.values())
    if not rows:
        return ["No rows yet: run `python benchmarks/classical.py`."]
    lines = [
        "Leave-one-out, full ranking over the whole catalogue, seen items filtered, pessimistic "
        "ties, every user (test split). Beyond accuracy at K = 10: catalogue coverage, novelty = "
        "mean -log2 p(item) of the recommended items (p from training events), Gini of how often "
        "each item is recommended (0 = evenly, 1 = one item for all), pop1% = share of "
        "recommendations among the top-1% most popular training items, genres = distinct genres "
        "per list (ML-1M only). Classical models choose their setting on validation NDCG@10; "
        "SASRec rows are saved runs re-evaluated by the same code (mean ± std over seeds).",
        "",
        "| dataset | model | seeds | NDCG@10 | HR@10 | coverage@10 | novelty@10 | Gini@10 | "
        "pop1%@10 | genres@10 | fit / train | status | wall s | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    order = {"pop": 0, "itemknn": 1, "ease": 2}
    for (ds, model), g in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                 order.get(kv[0][1], 9))):
        seeds = "deterministic" if g[0]["kind"] == "classical" else ", ".join(
            str(s) for r in g for s in r["seeds"])
        secs = sum(r["train"].get("seconds") or 0 for r in g) / len(g)
        verdicts = sorted({r["verdict"] for r in g})
        cells = [_fmt(g, k) for k in COLUMNS]
        lines.append(f"| {ds} | {model} | {seeds} | " + " | ".join(cells)
                     + f" | {secs:.1f} s | {_status(g)} | "
                     f"{sum(r['wall_s'] for r in g):.0f} | {'/'.join(verdicts)} |")
    ref = results.load_rows(HERE / "nextitem_runs.json")
    notes = []
    for ds in sorted({r["dataset"] for r in rows}):
        r = ref.get(f"{ds}/sasrec")
        if r:
            t, tr = r["metrics"]["test"], r["metrics"]["train"]
            notes.append(f"{ds}: SASRec (CE) trained to patience in the `nextitem` section, one "
                         f"seed, {tr['epochs']} epochs (best {tr['best_epoch']}): NDCG@10 "
                         f"{t['ndcg@10']:.4f}, HR@10 {t['hr@10']:.4f} (no beyond-accuracy "
                         "figures: its run directory was not kept)")
    if notes:
        lines += ["", "For reference (benchmarks/nextitem_runs.json): " + "; ".join(notes) + "."]
    lines += ["", "Rows kept in benchmarks/classical_runs.json (each with its exact command, "
              "commit, machine, load verdict); dates: " + results.run_dates(rows) + ".",
              "Commands: " + "; ".join(sorted({f"`{r['command'].strip()}`" for r in rows}))]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-1m", "amazon-beauty"])
    ap.add_argument("--models", nargs="*", default=["pop", "itemknn", "ease"])
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="a --set override for every classical training (repeatable)")
    ap.add_argument("--sasrec-runs", type=Path, default=None,
                    help="directory with saved {dataset}-sasrec-ce-s{seed} runs to re-evaluate")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not store it")
    ap.add_argument("--no-quiet", action="store_true", help="do not wait for quiet-run")
    a = ap.parse_args()
    if not a.table_only:
        results.ensure_quiet(a.no_quiet)
        WORK.mkdir(parents=True, exist_ok=True)
        for ds in a.datasets:
            for model in a.models:
                train_classical(ds, model, a.sets)
            if a.sasrec_runs is not None:
                evaluate_sasrec(ds, a.sasrec_runs)
    results.publish(SECTION, "Classical baselines and beyond-accuracy metrics (issue #14)",
                    table_lines(results.load_rows(STORE)), write=not a.no_write)


if __name__ == "__main__":
    t0 = time.time()
    main()
    results.log(f"done in {time.time() - t0:.0f}s")
