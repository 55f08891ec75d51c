"""How much does the order of same-timestamp events move SASRec's test NDCG@10? (issue #14 item 3)

ML-1M as staged here has no timestamps (two files, one order: see --part stats), so the question
"how much of the gap to the published 0.1821 is data version / tie order?" is measured where
timestamps exist:

    python benchmarks/ties.py --part stats                       # data only (seconds, no training)
    python benchmarks/ties.py --part train --dataset ml-100k --orders file item random --seeds 0 1 2
    python benchmarks/ties.py --table-only

`stats`: per dataset and tie order (`data.tie_order`: file = input order, item = by item id as in
LRURec's preprocessing, random = shuffled with tie_seed 0), the share of events inside a
same-second tie, the events whose position holds another item than in file order, and the users
whose leave-one-out test (last) or validation (second-to-last) item changes; and the comparison of
the two ML-1M files in ../shared/data/ml-1m (items, events, lengths, differing positions).
`train`: SASRec (benchmarks/configs/ml-100k.yaml) per order and seed, leave-one-out, full ranking,
seen items filtered, best epoch on validation NDCG@10, test read once. Rows: benchmarks/
ties_runs.json, rendered into RESULTS.md section `ties`.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "ties_runs.json"
LOCK = HERE / "_work" / "ties.lock"
WORK = HERE / "_work" / "ties"
SECTION = "ties"
ORDERS = ("file", "item", "random")
PUBLISHED = 0.1821  # SASRec+ ML-1M test NDCG@10 (METHODS.md §5)
OURS = 0.1525  # issue #14: our ML-1M SASRec (full CE) test NDCG@10 when the issue was filed


def data_dir() -> Path:
    return Path(os.environ.get("USERSEQ_DATA", HERE.parents[1] / "shared" / "data"))


def load(dataset: str, order: str, seed: int = 0):
    from userseq.data.config import DataConfig
    from userseq.data.load import load_events

    return load_events(dataset, DataConfig(tie_order=order, tie_seed=seed))


def raw_sequences(log) -> dict:
    offsets, items = log.sequences()
    ids = log.item_ids.to_numpy()
    users = log.user_ids.to_list()
    return {users[u]: ids[items[offsets[u]:offsets[u + 1]] - 1] for u in range(log.n_users)}


def tie_share(log) -> float:
    """Share of events whose (user, timestamp) is shared with another event."""
    import polars as pl

    f = log.frame.select("user", "timestamp")
    size = f.group_by(["user", "timestamp"]).agg(pl.len().alias("n"))
    return float(size.filter(pl.col("n") > 1)["n"].sum() / f.height)


def part_stats(a) -> None:
    for dataset in ("ml-100k", "ml-latest-small"):
        base = load(dataset, "file")
        ref = raw_sequences(base)
        share = tie_share(base)
        for order in ORDERS:
            seqs = raw_sequences(load(dataset, order, 0))
            moved = sum(int((seqs[u] != ref[u]).sum()) for u in ref)
            test = sum(seqs[u][-1] != ref[u][-1] for u in ref)
            valid = sum(len(ref[u]) > 1 and seqs[u][-2] != ref[u][-2] for u in ref)
            row = {"part": "stats", "dataset": dataset, "order": order, "users": base.n_users,
                   "items": base.n_items, "events": base.n_events, "tie_share": round(share, 4),
                   "moved_events": moved, "test_item_changed": int(test),
                   "valid_item_changed": int(valid), **results.provenance(None)}
            results.save_row(STORE, f"stats/{dataset}/{order}", row, LOCK)
            results.log(f"{dataset} {order}: ties {share:.1%}, moved {moved}, test changed {test}")
    results.save_row(STORE, "stats/ml-1m-files", {"part": "ml1m", **ml1m_files(),
                                                  **results.provenance(None)}, LOCK)


def ml1m_files() -> dict:
    """The two staged ML-1M files: ml-1m.seq.txt.gz (all ratings, DiffuRec's order) and
    ml-1m.sasrec5.txt.gz (SASRec layout, items with >= 5 ratings); after applying the 5-rating
    filter to the first, how many positions differ?"""
    d = data_dir() / "ml-1m"
    seq = {}
    with gzip.open(d / "ml-1m.seq.txt.gz", "rt") as f:
        for line in f:
            p = line.split()
            seq[int(p[0])] = [int(x) for x in p[1:]]
    item_map = {}
    for line in (d / "ml-1m.sasrec5.item_map.tsv").read_text().splitlines()[1:]:
        a, b = line.split()
        item_map[int(a)] = int(b)
    s5: dict[int, list[int]] = {}
    with gzip.open(d / "ml-1m.sasrec5.txt.gz", "rt") as f:
        for line in f:
            u, i = line.split()
            s5.setdefault(int(u), []).append(item_map[int(i)])
    counts = Counter(x for v in seq.values() for x in v)
    keep = {i for i, c in counts.items() if c >= 5}
    filtered = {u: [x for x in v if x in keep] for u, v in seq.items()}
    differ = sum(sum(x != y for x, y in zip(filtered[u], s5.get(u, []), strict=False))
                 + abs(len(filtered[u]) - len(s5.get(u, []))) for u in filtered)
    lengths = np.array([len(v) for v in s5.values()])
    return {"seq_users": len(seq), "seq_items": len(counts), "seq_events": sum(counts.values()),
            "sasrec5_users": len(s5), "sasrec5_items": len({x for v in s5.values() for x in v}),
            "sasrec5_events": int(lengths.sum()),
            "filtered_seq_events": sum(len(v) for v in filtered.values()),
            "positions_differing": int(differ),
            "users_differing": sum(filtered[u] != s5.get(u) for u in filtered),
            "length_median": float(np.median(lengths)), "length_mean": float(lengths.mean()),
            "length_max": int(lengths.max()),
            "share_longer_than_200": float((lengths > 200).mean())}


def part_train(a) -> None:
    from userseq.core.artifacts import read_json
    from userseq.data.split import make_split
    from userseq.nextitem.config import RunConfig, split_kwargs
    from userseq.nextitem.estimator import NextItemRecommender

    base = RunConfig.from_yaml(HERE / "configs" / f"{a.dataset}.yaml")
    for order in a.orders:
        for seed in a.seeds:
            cfg = base.updated({"data.tie_order": order, "data.tie_seed": 0, "train.seed": seed,
                                "train.threads": a.threads, "dataset": a.dataset})
            log = load(a.dataset, order, 0)
            split = make_split(log, cfg.data.split, **split_kwargs(cfg))
            out = WORK / f"{a.dataset}-{order}-s{seed}"
            results.log(f"train {a.dataset} tie_order={order} seed={seed}")
            with results.LoadMonitor() as mon:
                NextItemRecommender(config=cfg).fit(log, split, run_dir=out, quiet=True)
            m = read_json(out / "metrics.json")
            t = m["train"]
            status = ("unconverged" if t["best_epoch"] == t["epochs"]
                      else f"best epoch {t['best_epoch']}/{t['epochs']}")
            row = {"part": "train", "dataset": a.dataset, "order": order, "seed": seed,
                   "valid_ndcg10": m["valid"]["ndcg@10"], "test_ndcg10": m["test"]["ndcg@10"],
                   "test_hr10": m["test"]["hr@10"], "status": status, "train": t,
                   **results.provenance(mon, seeds=[seed], data=a.dataset)}
            results.save_row(STORE, f"train/{a.dataset}/{order}/s{seed}", row, LOCK)
            results.log(f"  test ndcg@10 {row['test_ndcg10']:.4f} ({t['seconds']}s, {status})")


def table(write: bool) -> None:
    rows = results.load_rows(STORE)
    lines = ["Protocol: leave-one-out, full ranking, seen items filtered; best epoch on "
             "validation NDCG@10. `data.tie_order`: file = input order (the default), item = by "
             "item id (LRURec's preprocessing), random = shuffled (tie_seed 0).", ""]
    stats = [r for r in rows.values() if r.get("part") == "stats"]
    if stats:
        lines += ["### Data: what tie order changes", "",
                  "| dataset | users | items | events | events in a same-second tie | order | "
                  "events moved vs file order | users whose test item changes | users whose "
                  "validation item changes |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for r in sorted(stats, key=lambda r: (r["dataset"], ORDERS.index(r["order"]))):
            lines.append(f"| {r['dataset']} | {r['users']:,} | {r['items']:,} | {r['events']:,} | "
                         f"{r['tie_share']:.1%} | {r['order']} | {r['moved_events']:,} | "
                         f"{r['test_item_changed']} ({r['test_item_changed'] / r['users']:.1%}) | "
                         f"{r['valid_item_changed']} ({r['valid_item_changed'] / r['users']:.1%})"
                         " |")
    f = rows.get("stats/ml-1m-files")
    if f:
        lines += ["", f"ML-1M files (../shared/data/ml-1m): `ml-1m.seq.txt.gz` has "
                  f"{f['seq_users']:,} users, {f['seq_items']:,} items, {f['seq_events']:,} "
                  f"events; `ml-1m.sasrec5.txt.gz` {f['sasrec5_users']:,} users, "
                  f"{f['sasrec5_items']:,} items, {f['sasrec5_events']:,} events (the published "
                  f"SASRec statistics). The first, filtered to items with >= 5 ratings, has "
                  f"{f['filtered_seq_events']:,} events and differs from the second at "
                  f"{f['positions_differing']:,} positions ({f['users_differing']} users): the "
                  "two files are one data version in one order (the SASRec file was derived from "
                  "the other), with no timestamps, so tie order cannot be varied on ML-1M here. "
                  f"Sequence length: median {f['length_median']:.0f}, mean "
                  f"{f['length_mean']:.1f}, max {f['length_max']:,}; "
                  f"{f['share_longer_than_200']:.1%} of users have more than 200 events."]
    train = [r for r in rows.values() if r.get("part") == "train"]
    if train:
        lines += ["", "### SASRec test NDCG@10 by tie order", "",
                  "| dataset | tie order | test NDCG@10 | valid NDCG@10 | HR@10 | seeds | "
                  "status | train s (mean) | verdicts |", "|---|---|---|---|---|---|---|---:|---|"]
        means = {}
        for ds in sorted({r["dataset"] for r in train}):
            for order in ORDERS:
                g = [r for r in train if r["dataset"] == ds and r["order"] == order]
                if not g:
                    continue
                means[(ds, order)] = float(np.mean([r["test_ndcg10"] for r in g]))
                lines.append(
                    f"| {ds} | {order} | {results.mean_std([r['test_ndcg10'] for r in g])} | "
                    f"{results.mean_std([r['valid_ndcg10'] for r in g])} | "
                    f"{results.mean_std([r['test_hr10'] for r in g])} | "
                    f"{', '.join(str(r['seed']) for r in sorted(g, key=lambda r: r['seed']))} | "
                    f"{'; '.join(r['status'] for r in g)} | "
                    f"{np.mean([r['train']['seconds'] for r in g]):.0f} | "
                    f"{', '.join(sorted({r['verdict'] for r in g}))} |")
        for ds in sorted({k[0] for k in means}):
            vals = [v for k, v in means.items() if k[0] == ds]
            if len(vals) > 1:
                spread = max(vals) - min(vals)
                seed_sd = np.mean([np.std([r["test_ndcg10"] for r in train
                                           if r["dataset"] == ds and r["order"] == o], ddof=1)
                                   for o in ORDERS if sum(1 for r in train if r["dataset"] == ds
                                                          and r["order"] == o) > 1] or [0.0])
                lines += ["", f"{ds}: the tie order moves mean test NDCG@10 by {spread:.4f} "
                          f"(largest minus smallest of {len(vals)} orders; seed std within an "
                          f"order {seed_sd:.4f}); the ML-1M gap to the published {PUBLISHED} "
                          f"was {PUBLISHED - OURS:.4f} ({OURS} when issue #14 was filed)."]
        cmds = sorted({f"`{r['command'].strip()}`" for r in train})
        lines += ["", f"Commands: {'; '.join(cmds)}. Machine: {train[0]['machine']}."]
    results.publish(SECTION, "Tie order of same-timestamp events (ML-1M data version question)",
                    lines, write=write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["stats", "train"], default="stats")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    a = ap.parse_args()
    if a.table_only:
        table(not a.no_write)
        return
    if a.part == "train":
        results.ensure_quiet(a.no_quiet)
    WORK.mkdir(parents=True, exist_ok=True)
    {"stats": part_stats, "train": part_train}[a.part](a)
    table(not a.no_write)


if __name__ == "__main__":
    main()
