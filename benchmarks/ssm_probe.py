"""Probing table: what the frozen embeddings of the sequence autoencoder (seq2seq-ae) hold on
ML-1M (genre share from movies.dat, window length, order vs shuffled), next to the bag-of-items
baseline (`userseq probe`, see docs/sequence-models.md).

Trains `seq2seq-ae` with benchmarks/configs/{dataset}-seq2seq-ae.yaml under an epoch budget
(--epochs; early stopping on validation reconstruction accuracy), then runs `userseq probe` on it
(and on any extra --models, trained the same way with their own configs) for each seed.

    python benchmarks/ssm_probe.py                          # ML-1M, seq2seq-ae, 3 epochs, seed 0
    python benchmarks/ssm_probe.py --epochs 30 --seeds 0 1 2 --models seq2seq-ae ssm
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

STORE = HERE / "ssm_probe_runs.json"
LOCK = HERE / "_work" / "ssm_probe.lock"
CONFIGS = HERE / "configs"


def run_one(dataset: str, model: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = args.workdir / f"{dataset}-{model}-e{args.epochs}-s{seed}"
    cmd = ["userseq", "train", "--data", dataset, "--model", model, "--out", str(run_dir),
           "--overwrite", "--quiet", "--seed", str(seed), "--epochs", str(args.epochs),
           "--set", f"train.threads={args.threads}"]
    for name in (f"{dataset}-{model}", dataset):
        if (CONFIGS / f"{name}.yaml").exists():
            cmd += ["--config", str(CONFIGS / f"{name}.yaml")]
            break
    t0 = time.time()
    results.run_userseq(cmd)
    train_s = time.time() - t0
    probe_cmd = ["userseq", "probe", str(run_dir), "--seed", str(seed)]
    if args.max_users:
        probe_cmd += ["--max-users", str(args.max_users)]
    results.run_userseq(probe_cmd)
    p = json.loads((run_dir / "probe.json").read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    tr = m["train"]
    return {"dataset": dataset, "model": model, "seed": seed, "budget_epochs": args.epochs,
            "probes": p["probes"], "genres": p.get("genres"), "users": p["users"],
            "window": p["window"], "epochs": tr["epochs"], "best_epoch": tr["best_epoch"],
            "best_valid": tr["best_valid"], "converged": tr["best_epoch"] < tr["epochs"],
            "train_wall_s": round(train_s, 1),
            "cmd": " ".join(cmd).replace(str(HERE.parent) + "/", ""),
            "probe_cmd": " ".join(probe_cmd).replace(str(HERE.parent) + "/", "")}


def table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["budget_epochs"])].append(r)
    metric = {"genre_share": "R² (mean of top genres)", "length": "R² (log length)",
              "order": "accuracy (0.5 = chance)"}
    lines = ["| dataset | model (budget) | probe | metric | model embedding (test) "
             "| bag of items (test) | status |", "|---|---|---|---|---|---|---|"]
    for (ds, model, budget), rs in sorted(groups.items()):
        status = "converged" if all(r["converged"] for r in rs) else "unconverged"
        for probe in ("genre_share", "length", "order"):
            if probe not in rs[0]["probes"]:
                continue
            own = [r["probes"][probe]["model"]["test"] for r in rs]
            bag = [r["probes"][probe]["bag_of_items"]["test"] for r in rs]
            lines.append(f"| {ds} | {model} ({budget} epochs) | {probe} | {metric[probe]} | "
                         f"{results.mean_std(own)} | {results.mean_std(bag)} | {status} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--models", nargs="+", default=["seq2seq-ae"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-users", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "ssm_probe")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        results.ensure_quiet(args.no_quiet)
        for model in args.models:
            for seed in args.seeds:
                results.log(f"{args.dataset} / {model} / seed {seed}")
                with results.LoadMonitor() as mon:
                    r = run_one(args.dataset, model, seed, args)
                r.update(results.provenance(mon, seeds=[seed], data=args.dataset))
                results.save_row(STORE, f"{args.dataset}/{model}/e{args.epochs}/s{seed}", r, LOCK)
                results.log("  " + ", ".join(f"{k} {v['model']['test']:.3f} vs bag "
                                             f"{v['bag_of_items']['test']:.3f}"
                                             for k, v in r["probes"].items()))
    rows = list(results.load_rows(STORE).values())
    r0 = rows[0] if rows else {}
    lines = [f"Machine: {r0.get('machine', '-')}; dates: {results.run_dates(rows)}; load "
             f"verdicts: {', '.join(r['verdict'] for r in rows)}.", "",
             "Linear (ridge) probes of frozen user embeddings on the window the encoder reads "
             f"(last {r0.get('window')} events; {r0.get('users', 0):,} users split 60/20/20, "
             "penalty chosen on valid, test reported). Bag of items = mean of the run's item "
             "vectors over the same window. genre_share: share of each of the 5 most frequent "
             f"genres ({', '.join(r0.get('genres') or [])}) in the window. 'unconverged': the "
             "best validation epoch was the last of the budget.", "", *table(rows), "",
             "Commands: " + "; ".join(sorted({f"`{r['cmd']}` then `{r['probe_cmd']}`"
                                              for r in rows}))]
    results.publish("ssm_probe", "Sequence autoencoder: probing table", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
