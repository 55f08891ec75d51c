"""SESA concept head (issue #21 item 4): how well a linear map from a finished next-item run's
item vectors predicts named concepts of held-out items, and whether users' concept profiles point
at their next item's concepts.

For each finished run (default: the SASRec runs of benchmarks/retrieval.py, ML-1M and Beauty,
seeds 0-2; read only, nothing is written into them) the concept map is fitted in memory
(`userseq.nextitem.concepts.fit_run_concepts`, held-out split seed = the run's seed):

* item level: top-1 accuracy (the highest-scoring concept is one of the held-out item's concepts)
  and micro F1 at 0.5, each next to the most-frequent-concept baseline;
* user level: for every training user, the history without its last event is encoded and mapped
  onto the concepts; hit when the user's top concept is one of the last item's concepts, next to
  the same most-frequent-concept baseline.

Concepts: ML-1M genres (movies.dat, 18); Beauty: S3-Rec item2attributes (categories and brands,
integer-coded, kept when on >= 10 items).

    python benchmarks/concepts.py
    python benchmarks/concepts.py --runs ml-1m=/path/run amazon-beauty=/path/run2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "concepts_runs.json"
LOCK = HERE / "_work" / "concepts.lock"
RUNS = Path("/work/main/benchmarks/_work/retrieval")
BEAUTY_ATTRS = Path(os.environ.get("USERSEQ_DATA", "/work/shared/data")) / "amazon-s3rec" / \
    "Beauty_item2attributes.json"


def default_runs() -> list[tuple[str, Path, int]]:
    out = []
    for ds in ("ml-1m", "amazon-beauty"):
        for seed in (0, 1, 2):
            p = RUNS / f"{ds}-sasrec-ce-s{seed}"
            if (p / "model.safetensors").exists():
                out.append((ds, p, seed))
    return out


def labels_for(dataset: str, rec) -> tuple[dict, str]:
    from userseq.data.datasets import load_item_metadata
    from userseq.nextitem.concepts import read_concepts

    if dataset == "amazon-beauty":
        return read_concepts(BEAUTY_ATTRS), "S3-Rec item2attributes"
    meta = load_item_metadata(dataset)
    return read_concepts(meta, "genres"), "genres"


def user_level(rec, head, y: np.ndarray, freq_top: int, max_users: int, seed: int) -> dict:
    """Top user concept (history minus its last event) vs the last item's concepts."""
    offsets, items = rec.histories_
    lengths = np.diff(offsets)
    users = np.flatnonzero(lengths >= 2)
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    starts, ends = offsets[users], offsets[users + 1]
    last = items[ends - 1].astype(np.int64) - 1  # item rows of the held-back events
    keep = y[last].sum(1) > 0  # the last item has concepts
    users, starts, ends, last = users[keep], starts[keep], ends[keep], last[keep]
    prefix_len = ends - 1 - starts
    offs = np.concatenate([[0], np.cumsum(prefix_len)])
    flat = np.concatenate([items[s:e - 1] for s, e in zip(starts, ends, strict=True)])
    u = rec.encode(offs, flat.astype(np.int64)).numpy()
    top = head.probabilities(u).argmax(1)
    hit = y[last, top]
    return {"users": int(len(users)), "user_top1": round(float(hit.mean()), 4),
            "user_top1_baseline": round(float(y[last, freq_top].mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", help="DATASET=RUN_DIR (seed 0); default: retrieval runs")
    ap.add_argument("--max-users", type=int, default=20000)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        results.ensure_quiet(args.no_quiet)
        from userseq.nextitem.concepts import fit_run_concepts, label_matrix
        from userseq.nextitem.estimator import NextItemRecommender

        runs = ([(r.split("=")[0], Path(r.split("=")[1]), 0) for r in args.runs] if args.runs
                else default_runs())
        for ds, path, seed in runs:
            with results.LoadMonitor() as mon:
                rec = NextItemRecommender.load(path)
                concepts, source = labels_for(ds, rec)
                head = fit_run_concepts(rec, concepts, seed=seed, source=source)
                names, y, _ = label_matrix(rec.item_ids, concepts, head.metrics["min_items"])
                assert names == head.names
                freq_top = int(y.sum(0).argmax())
                ul = user_level(rec, head, y, freq_top, args.max_users, seed)
            row = {"dataset": ds, "run": str(path), "seed": seed, "source": source,
                   **head.metrics, **ul, **results.provenance(mon, seeds=[seed], data=ds)}
            results.save_row(STORE, f"{ds}/{path.name}", row, LOCK)
            results.log(f"{ds} {path.name}: item top-1 {row['top1_accuracy']} (baseline "
                        f"{row['top1_baseline']}), user top-1 {row['user_top1']} (baseline "
                        f"{row['user_top1_baseline']})")
    rows = list(results.load_rows(STORE).values())
    lines = [f"Machine: {rows[0]['machine'] if rows else '-'}; dates: {results.run_dates(rows)}.",
             "", "Concept map fitted on each finished SASRec run's item output vectors "
             "(L2-normalised, linear + sigmoid, multi-label logistic loss, 500 full-batch Adam "
             "steps); 80% of the labelled items train it, 20% are held out (split seed = run "
             "seed). Item: top-1 accuracy = the highest-scoring concept is one of the held-out "
             "item's concepts; F1 = micro F1 at 0.5. User: the user's history without its last "
             "event, mapped through the same head; hit when the top concept is one of the last "
             "item's concepts. Baselines: always the most frequent concept (F1: every concept on "
             "at least half the training items, else the most frequent). mean ± std over runs.",
             "", "| dataset | concepts | source | held-out items | item top-1 | baseline | "
             "item micro F1 | baseline F1 | users | user top-1 | baseline | runs | verdicts |",
             "|---|---:|---|---:|---|---|---|---|---:|---|---|---|---|"]
    for ds in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == ds]
        ms = results.mean_std
        lines.append(f"| {ds} | {rs[0]['concepts']} | {rs[0]['source']} | "
                     f"{rs[0]['items_heldout']:,} | {ms([r['top1_accuracy'] for r in rs])} | "
                     f"{ms([r['top1_baseline'] for r in rs])} | {ms([r['f1'] for r in rs])} | "
                     f"{ms([r['baseline_f1'] for r in rs])} | {rs[0]['users']:,} | "
                     f"{ms([r['user_top1'] for r in rs])} | "
                     f"{ms([r['user_top1_baseline'] for r in rs])} | "
                     f"{', '.join(Path(r['run']).name for r in rs)} | "
                     f"{', '.join(r['verdict'] for r in rs)} |")
    lines += ["", "Commands: " + ", ".join(f"`{c}`" for c in sorted({r["command"]
                                                                     for r in rows}))]
    results.publish("concepts", "SESA concept head: concept prediction from embeddings", lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
