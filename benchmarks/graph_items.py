"""Graph-context items (GSM++ idea, issue #21 item 5): SASRec with the plain id table vs SASRec
with `--items id+graph` (the id table propagated over the training co-occurrence graph,
LightGCN-style; userseq.items.graph), and optionally the hybrid ssm+attention stack with graph
items, at the same epoch budget and settings (benchmarks/configs/{dataset}.yaml).

Full ranking, leave-one-out, early stopping on validation NDCG@10 within the budget; test
NDCG@10/HR@10 of the best validation epoch. A row whose best validation epoch is its last is
"unconverged" (the budget, not convergence, ended it).

    python benchmarks/graph_items.py --datasets amazon-beauty --epochs 5 --seeds 0
    python benchmarks/graph_items.py --datasets ml-1m --epochs 2 --seeds 0
    python benchmarks/graph_items.py --datasets amazon-beauty ml-1m --epochs 30 --seeds 0 1 2
    python benchmarks/graph_items.py --table-only
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

STORE = HERE / "graph_items_runs.json"
LOCK = HERE / "_work" / "graph_items.lock"
VARIANTS = {
    "sasrec": ["--model", "sasrec"],
    "sasrec id+graph": ["--model", "sasrec", "--items", "id+graph"],
    "hybrid id+graph": ["--model", "ssm", "--items", "id+graph", "--set",
                        "model.blocks=[ssm,attn]", "--set", "model.init_std=0.02"],
}


def run_one(dataset: str, variant: str, seed: int, args: argparse.Namespace) -> dict:
    tag = variant.replace(" ", "-").replace("+", "")
    run_dir = args.workdir / f"{dataset}-{tag}-e{args.epochs}-s{seed}"
    cmd = ["userseq", "train", "--data", dataset, "--out", str(run_dir), "--overwrite", "--quiet",
           "--seed", str(seed), "--epochs", str(args.epochs), "--config",
           str(HERE / "configs" / f"{dataset}.yaml"), "--set", f"train.threads={args.threads}",
           *VARIANTS[variant]]
    t0 = time.time()
    results.run_userseq(cmd)
    m = json.loads((run_dir / "metrics.json").read_text())
    tr = m["train"]
    return {"dataset": dataset, "variant": variant, "seed": seed, "budget_epochs": args.epochs,
            "test": m["test"], "valid": m["valid"], "epochs": tr["epochs"],
            "best_epoch": tr["best_epoch"], "seconds_per_epoch": tr["seconds_per_epoch"],
            "wall_s": round(time.time() - t0, 1), "converged": tr["best_epoch"] < tr["epochs"],
            "popularity": m["baselines"]["popularity"],
            "cmd": " ".join(cmd).replace(str(HERE.parent) + "/", "")}


def table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["budget_epochs"], r["variant"])].append(r)
    ref = {(ds, b): sum(r["test"]["ndcg@10"] for r in rs) / len(rs)
           for (ds, b, v), rs in groups.items() if v == "sasrec"}
    lines = ["| dataset | budget | variant | test NDCG@10 | test HR@10 | valid NDCG@10 "
             "| best epoch | s/epoch | status | load verdicts |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = list(VARIANTS)
    for (ds, b, v), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                 order.index(kv[0][2]))):
        nd = [r["test"]["ndcg@10"] for r in rs]
        rel = ""
        if v != "sasrec" and (ds, b) in ref:
            rel = f" ({100 * (sum(nd) / len(nd) / ref[(ds, b)] - 1):+.1f}% vs sasrec)"
        status = "converged" if all(r["converged"] for r in rs) else "unconverged"
        lines.append(f"| {ds} | {b} epochs | {v} | {results.mean_std(nd)}{rel} | "
                     f"{results.mean_std([r['test']['hr@10'] for r in rs])} | "
                     f"{results.mean_std([r['valid']['ndcg@10'] for r in rs])} | "
                     f"{', '.join(str(r['best_epoch']) for r in rs)} | "
                     f"{sum(r['seconds_per_epoch'] for r in rs) / len(rs):.1f} | {status} | "
                     f"{', '.join(r['verdict'] for r in rs)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["amazon-beauty"])
    ap.add_argument("--variants", nargs="+", default=["sasrec", "sasrec id+graph"],
                    choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=5, help="epoch budget per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "graph_items")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        results.ensure_quiet(args.no_quiet)
        for ds in args.datasets:
            for seed in args.seeds:
                for variant in args.variants:
                    results.log(f"{ds} / {variant} / seed {seed} / {args.epochs} epochs")
                    with results.LoadMonitor() as mon:
                        r = run_one(ds, variant, seed, args)
                    r.update(results.provenance(mon, seeds=[seed], data=ds))
                    results.save_row(STORE, f"{ds}/{variant}/e{args.epochs}/s{seed}", r, LOCK)
                    results.log(f"  test ndcg@10 {r['test']['ndcg@10']:.4f} (best epoch "
                                f"{r['best_epoch']}/{r['epochs']}, {r['wall_s']:.0f}s)")
    rows = list(results.load_rows(STORE).values())
    lines = [f"Machine: {rows[0]['machine'] if rows else '-'}; dates: {results.run_dates(rows)}.",
             "", "Full ranking, leave-one-out, seen items filtered; each run early-stops on "
             "validation NDCG@10 within the epoch budget; settings benchmarks/configs/"
             "{dataset}.yaml, the same for every variant. `id+graph`: the id table propagated "
             "over the item co-occurrence graph of the training split (2 LightGCN layers, "
             "window 1; userseq.items.graph). 'unconverged': some seed's best validation epoch "
             "was its last, so these rows compare variants at an equal small budget, not at "
             "their best.", "", *table(rows), "",
             "Commands: " + ", ".join(f"`{c}`" for c in sorted({r["command"] for r in rows}))]
    results.publish("graph_items", "Graph-context items (GSM++ idea): id+graph vs id", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
