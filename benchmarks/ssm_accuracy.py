"""Accuracy of the state-space encoders next to attention at the same split and budget.

Each (dataset, model, seed) trains with `userseq train` (its own subprocess) under an epoch
budget (--epochs), early stopping on validation NDCG@10, and reports full-ranking test NDCG@10 /
HR@10. Configs: benchmarks/configs/{dataset}-{model}.yaml (else {dataset}.yaml). A row whose best
validation epoch is the last one stopped on the budget while still improving: "unconverged".

    python benchmarks/ssm_accuracy.py                                  # Beauty, 5 epochs, 3 seeds
    python benchmarks/ssm_accuracy.py --datasets ml-1m --epochs 3 --seeds 0 --models ssm sasrec
    python benchmarks/ssm_accuracy.py --epochs 200                     # to convergence (long)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "ssm_accuracy_runs.json"
LOCK = HERE / "_work" / "ssm_accuracy.lock"
CONFIGS = HERE / "configs"
MODELS = ["ssm", "hybrid", "sasrec", "hydra", "bert4rec"]


def config_path(dataset: str, model: str) -> Path | None:
    for name in (f"{dataset}-{model}", dataset):
        if (CONFIGS / f"{name}.yaml").exists():
            return CONFIGS / f"{name}.yaml"
    return None


def run_one(dataset: str, model: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.workdir / f"{dataset}-{model}-e{args.epochs}-s{seed}"
    cfg = config_path(dataset, model)
    cmd = ["userseq", "train", "--data", dataset, "--out", str(run_dir), "--overwrite", "--quiet",
           "--seed", str(seed), "--epochs", str(args.epochs),
           "--set", f"train.threads={args.threads}"]
    if cfg is not None:
        cmd += ["--config", str(cfg)]
    if model != "hybrid":  # hybrid = ssm with model.blocks, from its config file
        cmd += ["--model", model]
    t0 = time.time()
    results.run_userseq(cmd)
    m = json.loads((run_dir / "metrics.json").read_text())
    tr = m["train"]
    return {"dataset": dataset, "model": model, "seed": seed, "budget_epochs": args.epochs,
            "test": m["test"], "valid": m["valid"], "epochs": tr["epochs"],
            "best_epoch": tr["best_epoch"], "seconds_per_epoch": tr["seconds_per_epoch"],
            "train_seconds": tr["seconds"], "wall_s": round(time.time() - t0, 1),
            "converged": tr["best_epoch"] < tr["epochs"],
            "popularity": m["baselines"]["popularity"],
            "cmd": " ".join(cmd).replace(str(HERE.parent) + "/", "")}


def table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["budget_epochs"], r["model"])].append(r)
    lines = ["| dataset | budget | model | test NDCG@10 | test HR@10 | valid NDCG@10 | best epoch "
             "| s/epoch | status | load verdicts |", "|---|---|---|---|---|---|---|---|---|---|"]
    ref: dict[tuple, float] = {}
    for (ds, budget, model), rs in sorted(groups.items()):
        nd = [r["test"]["ndcg@10"] for r in rs]
        if model == "sasrec":
            ref[(ds, budget)] = sum(nd) / len(nd)
    for (ds, budget, model), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                          MODELS.index(kv[0][2])
                                                                          if kv[0][2] in MODELS
                                                                          else 99)):
        nd = [r["test"]["ndcg@10"] for r in rs]
        status = "converged" if all(r["converged"] for r in rs) else "unconverged"
        rel = ""
        if (ds, budget) in ref and model != "sasrec":
            rel = f" ({100 * (sum(nd) / len(nd) / ref[(ds, budget)] - 1):+.1f}% vs sasrec)"
        lines.append(
            f"| {ds} | {budget} epochs | {model} | {results.mean_std(nd)}{rel} | "
            f"{results.mean_std([r['test']['hr@10'] for r in rs])} | "
            f"{results.mean_std([r['valid']['ndcg@10'] for r in rs])} | "
            f"{', '.join(str(r['best_epoch']) for r in rs)} | "
            f"{sum(r['seconds_per_epoch'] for r in rs) / len(rs):.1f} | {status} | "
            f"{', '.join(r['verdict'] for r in rs)} |")
    seen = set()
    for r in rows:
        if r["dataset"] not in seen:
            seen.add(r["dataset"])
            p = r["popularity"]
            lines.append(f"| {r['dataset']} | - | popularity | {p['ndcg@10']:.4f} | "
                         f"{p['hr@10']:.4f} | - | - | - | - | - |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["amazon-beauty"])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5, help="epoch budget per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "ssm_accuracy")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        results.ensure_quiet(args.no_quiet)
        for ds in args.datasets:
            for model in args.models:
                for seed in args.seeds:
                    results.log(f"{ds} / {model} / seed {seed} / {args.epochs} epochs")
                    with results.LoadMonitor() as mon:
                        r = run_one(ds, model, seed, args)
                    r.update(results.provenance(mon, seeds=[seed], data=ds))
                    results.save_row(STORE, f"{ds}/{model}/e{args.epochs}/s{seed}", r, LOCK)
                    results.log(f"  test ndcg@10 {r['test']['ndcg@10']:.4f} (best epoch "
                                f"{r['best_epoch']}/{r['epochs']}, {r['wall_s']:.0f}s)")
    rows = list(results.load_rows(STORE).values())
    lines = [f"Machine: {rows[0]['machine'] if rows else '-'}; dates: {results.run_dates(rows)}.",
             "", "Full ranking, leave-one-out, seen items filtered, early stopping on validation "
             "NDCG@10 within an epoch budget (the budget column); mean ± std over seeds "
             "(`train.seed` and the split seed). Settings: benchmarks/configs/"
             "{dataset}-{model}.yaml (hybrid = ssm with `model.blocks: [ssm, attn]`). "
             "'unconverged': some seed's best validation epoch was its last, so the budget, not "
             "convergence, ended training; these rows compare models at equal (small) budgets, "
             "not at their best. 'ssm (default init)': amazon-beauty-ssm.yaml before "
             "`init_std: 0.02` (SASRec's init) was added to it (rows of commit "
             + ", ".join(sorted({r["commit"] for r in rows if "default init" in r["model"]}))
             + ").", "", *table(rows), "",
             "Commands: `" + "`, `".join(sorted({r["cmd"].split(" --out")[0] + " ... "
                                                 + r["cmd"].split("--quiet")[1]
                                                 for r in rows})[:8]) + "`"]
    results.publish("ssm_accuracy", "State-space encoders: accuracy at equal budget", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
