"""Text items on amazon-scientific: id-only, text-only and id+text SASRec, on the standard
leave-one-out split and on the cold-start split (test targets are items absent from training).

Each run is one `userseq train` subprocess (benchmarks/nextitem.py's `run_one`); rows are kept in
benchmarks/items_runs.json and the table goes to the `items_text` section of benchmarks/RESULTS.md.

    python benchmarks/items_text.py [--items id text id+text] [--splits loo cold-start]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml
from nextitem import config_args, run_one
from results import machine_description, update_section

HERE = Path(__file__).resolve().parent
STORE = HERE / "items_runs.json"
DATASET = "amazon-scientific"
EPOCHS = yaml.safe_load((HERE / "configs" / f"{DATASET}.yaml").read_text())["train"]["epochs"]


def _save(store: Path, key: str, row: dict) -> None:
    """Add one row; several invocations (e.g. one per split) may run at once."""
    import fcntl

    (HERE / "_work").mkdir(exist_ok=True)
    with open(HERE / "_work" / "items_runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = json.loads(store.read_text()) if store.exists() else {}
        saved[key] = row
        store.write_text(json.dumps(saved, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", nargs="+", default=["id", "text", "id+text"])
    ap.add_argument("--splits", nargs="+", default=["loo", "cold-start"])
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="training time budget per run (default: the config's fixed epochs)")
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "items_text")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--store", type=Path, default=STORE, help="JSON file that keeps the rows")
    args = ap.parse_args()
    for split in [] if args.table_only else args.splits:
        for items in args.items:
            key = f"text/{split}/{items}"
            print(f"== {key}", flush=True)
            extra = [*config_args(DATASET, "sasrec"), "--items", items, "--split", split]
            r = run_one(DATASET, "sasrec", args.max_minutes, args.workdir / f"{split}-{items}", extra)
            r["cmd"] = r["cmd"].replace(str(HERE.parent) + "/", "")
            budget = f"{args.max_minutes} min" if args.max_minutes else f"{EPOCHS} epochs"
            r.update(split=split, items=items, budget=budget, date=time.strftime("%Y-%m-%d %H:%M"))
            _save(args.store, key, r)
            t = r["metrics"]["test"]
            print(f"   test ndcg@10 {t['ndcg@10']:.4f} hr@10 {t['hr@10']:.4f} ({r['wall']:.0f}s)", flush=True)
    saved = json.loads(args.store.read_text()) if args.store.exists() else {}
    rows = [r for k, r in saved.items() if k.startswith("text/")]
    lines = [
        f"Machine: {machine_description()} (shared by several jobs: see the load column).",
        "",
        "SASRec (d=64, 2 blocks, max length 50, dropout 0.2; benchmarks/configs/amazon-scientific.yaml) on",
        "amazon-scientific (UniSRec text: 8,442 users, 4,385 items), full ranking over all 4,385 items, seen",
        "items filtered, pessimistic ties. Item text = the UniSRec \"title. categories. brand.\" string, as",
        "`title: ...`, encoded by MiniLM (all-MiniLM-L6-v2, offline package) once and cached; adapter = MoE",
        "whitening (8 experts). `id+text` gives the id vector only to items seen in training.",
        "Splits: `loo` = leave-one-out (last item test, second-to-last validation); `cold-start` = 20% of",
        "the items held out of training (seed 0), 10% are validation targets and 10% test targets: a user",
        "whose last event is a held-out test item is a test user (history = all earlier events).",
        f"Training: {', '.join(sorted({str(r['budget']) for r in rows}))} per run, or fewer where the 20-minute "
        "safety stop came first (the machine's load was 12-18 on 2 cores: see the epochs column), the best",
        "epoch chosen on validation NDCG@10. Short, because the CPU is shared (a fixed number of epochs, because",
        "its load varied too much for equal time budgets to be fair); longer training would raise every row.",
        "The cold-start split has 803 test users (10% of the items are test items).",
        "",
        "| split | items | NDCG@10 | HR@10 | MRR | popularity NDCG@10 | test users | epochs (best) | train time | item table bytes | load avg | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["split"] != "loo", ["id", "text", "id+text"].index(r["items"]))):
        m, tr = r["metrics"], r["metrics"]["train"]
        t, p = m["test"], m["baselines"]["popularity"]
        lines.append(
            f"| {r['split']} | {r['items']} | {t['ndcg@10']:.4f} | {t['hr@10']:.4f} | {t['mrr']:.4f} | "
            f"{p['ndcg@10']:.4f} | {int(t['users']):,} | {tr['epochs']} ({tr['best_epoch']}) | "
            f"{tr['seconds'] / 60:.1f} min | {m['item_table_bytes']:,} | {r['load']:.1f} | `{r['cmd']}` |")
    lines += [
        "",
        "Zero-shot transfer: not run. Besides amazon-scientific, the staged data with item text is MovieLens",
        "(titles, genres); a transfer row needs a trained text model re-bound to another catalogue's text",
        "vectors (the adapter and encoder carry over, the catalogue does not), which userseq does not do yet.",
        "",
        "Generated by `python benchmarks/items_text.py` (rows kept in benchmarks/items_runs.json; dates: "
        + ", ".join(sorted({r["date"] for r in rows})) + ").",
    ]
    update_section("items_text", "Text items and cold start (amazon-scientific)", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
