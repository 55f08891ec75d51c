"""FinDeepBehaviorCluster on wiki-vandals (issue #19 item 6): the unsupervised behaviour
embedding (`behavior-ae`) + readable features, clustered with HDBSCAN, scored by the share of
vandals the top-risk clusters covering 10% of users capture, against clustering the supervised
detector's embedding and the readable (hand) features alone; HDBSCAN runtime at the real size and
on synthetic users. Rows in benchmarks/cluster_wiki_runs.json -> RESULTS.md `cluster-wiki`; the
cluster map of the main row is copied to benchmarks/cluster_wiki_map.png (report:
RUN/cluster/report.html).

    python benchmarks/cluster_wiki.py --part train --seeds 0 1 2   # behavior-ae runs
    python benchmarks/cluster_wiki.py --part cluster --seeds 0 1 2 # clusterings (+ supervised)
    python benchmarks/cluster_wiki.py --part scale --sizes 33000 100000
    python benchmarks/cluster_wiki.py --part all --sample 2000 --no-write --no-quiet   # smoke

The supervised embedding is the target transformer of benchmarks/attack_events.py (run it first,
`--part detectors`), same split (seed 0).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

STORE = HERE / "cluster_wiki_runs.json"
LOCK = HERE / "_work" / "cluster_wiki.lock"
WORK = HERE / "_work" / "cluster_wiki"
SUPERVISED = HERE / "_work" / "attack_events" / "target"
CURVE_KEYS = ("capture_at_20pct", "capture_at_30pct", "capture_at_50pct", "precision_at_10pct",
              "precision_at_20pct", "precision_at_30pct", "precision_at_50pct", "capture_auc",
              "capture_auc_best")
AE = {"model.max_len": 50, "train.batch_size": 256, "train.epochs": 8, "train.threads": 2,
      "model.dim": 32}


def train(data, seed, args):
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    det = UserDetector("behavior-ae", overrides={**AE, "train.seed": seed, "split_seed": seed,
                                                 "train.max_minutes": args.max_minutes,
                                                 "dataset": "wiki-vandals"})
    m = train_and_evaluate(data, det, WORK / f"ae-s{seed}", quiet=True)
    tr = m["train"]
    return {"kind": "train", "seed": seed, "epochs": tr["epochs"], "best_epoch": tr["best_epoch"],
            "best_valid_neg_loss": tr["best_valid_roc_auc"],
            "converged": tr["best_epoch"] < tr["epochs"],
            "anomaly_roc_auc": m["test"]["roc_auc"], "seconds": tr["seconds"]}


def cluster(run, features, seed):
    from userseq.detect.cluster import cluster_run

    s = cluster_run(run, WORK / f"{Path(run).name}-{features}", seed=seed, features=features)
    m = s["metrics"]
    return {"kind": "cluster", "seed": seed, "run": Path(run).name, "features": features,
            **{k: m[k] for k in ("capture_at_10pct", "lift_at_10pct", "purity", "n_clusters",
                                 "noise_share", "rule_precision", "rule_recall",
                                 "cluster_seconds", "evaluated_users", "evaluated_vandals",
                                 *CURVE_KEYS)},
            "rules": m["rule"]["rules"][:4]}


def scale(n, seed):
    """HDBSCAN on n synthetic users: 32-d embedding + 12 readable features, 20 blobs + noise."""
    from userseq.detect.cluster import cluster_embeddings

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (20, 44))
    x = centres[rng.integers(0, 20, n)] + rng.normal(0, 1, (n, 44))
    t0 = time.perf_counter()
    labels, _ = cluster_embeddings(x.astype(np.float32), seed=seed)
    return {"kind": "scale", "users": n, "seconds": round(time.perf_counter() - t0, 2),
            "n_clusters": int(len(set(labels.tolist()) - {-1}))}


def render(rows):
    cl = [r for r in rows.values() if r["kind"] == "cluster"]
    lines = ["wiki-vandals, all users; risk of a cluster = vandal rate of its *training* users "
             "(split seed = seed); capture@10% = share of the other users' vandals inside the "
             "riskiest clusters covering 10% of those users (last cluster pro rata; random = "
             "0.10, lift 1); purity: size-weighted over clusters (noise excluded); rules: depth-3 "
             "tree on readable features recognising the risky clusters (fitted on training users, "
             "precision/recall for vandals on the others). HDBSCAN (scikit-learn) on a 10-d PCA "
             "of the standardised inputs, min_cluster_size 0.5% of users.", "",
             "| embedding | clustered | seeds | capture@10% | lift@10% | purity | clusters | noise "
             "| rule precision | rule recall | HDBSCAN s | verdicts |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    groups = {}
    for r in cl:
        emb = "behavior-ae (no labels)" if r["run"].startswith("ae-") else \
            "supervised transformer"
        groups.setdefault((emb if r["features"] != "hand" else "—", r["features"]), []).append(r)
    for (emb, feats), rs in sorted(groups.items()):
        def ms(k, rs=rs):
            vals = [r[k] for r in rs if r[k] is not None]
            return results.mean_std(vals) if vals else "n/a"
        lines.append(f"| {emb} | {feats} | {','.join(str(r['seed']) for r in rs)} "
                     f"| {ms('capture_at_10pct')} | {ms('lift_at_10pct')} | {ms('purity')} "
                     f"| {ms('n_clusters')} | {ms('noise_share')} | {ms('rule_precision')} "
                     f"| {ms('rule_recall')} | {ms('cluster_seconds')} "
                     f"| {','.join(sorted({r['verdict'] for r in rs}))} |")
    curve = [(k, rs) for k, rs in sorted(groups.items())
             if all("capture_auc" in r for r in rs)]
    if curve:
        lines += ["", "Recall (share of the evaluated users' vandals caught) and precision (vandal "
                  "rate of the users taken) of the riskiest clusters at cumulative user shares, "
                  "and the area under that capture curve (random 0.5; best possible = 1 - "
                  "vandal rate / 2). Capture@10% cannot exceed 0.10 / vandal rate (about 0.2 here: "
                  "vandals are about half the users).", "",
                  "| embedding | clustered | seeds | recall@10% | @20% | @30% | @50% "
                  "| precision@10% | @20% | @30% | @50% | capture AUC | best AUC |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for (emb, feats), rs in curve:
            def ms(k, rs=rs):
                return results.mean_std([r[k] for r in rs])
            lines.append(f"| {emb} | {feats} | {','.join(str(r['seed']) for r in rs)} | "
                         + " | ".join(ms(f"{m}_at_{p}pct") for m in ("capture", "precision")
                                      for p in (10, 20, 30, 50))
                         + f" | {ms('capture_auc')} | {ms('capture_auc_best')} |")
    main = [r for r in cl if r["run"].startswith("ae-") and r["features"] == "both"]
    if main and main[0]["rules"]:
        lines += ["", f"Rules (behavior-ae + features, seed {main[0]['seed']}):", ""]
        lines += [f"- {x}" for x in main[0]["rules"]]
    tr = [r for r in rows.values() if r["kind"] == "train"]
    if tr:
        lines += ["", "behavior-ae training (contrastive, no labels; best epoch on validation "
                  "loss): " + "; ".join(
                      f"seed {r['seed']}: {r['epochs']} epochs (best {r['best_epoch']}"
                      f"{'' if r['converged'] else ', unconverged'}), {r['seconds']:.0f} s, "
                      f"anomaly-score ROC-AUC {r['anomaly_roc_auc']:.3f}" for r in tr) + "."]
    sc = sorted((r for r in rows.values() if r["kind"] == "scale"), key=lambda r: r["users"])
    if sc:
        lines += ["", "HDBSCAN runtime on synthetic users (44-d, 20 blobs): " + "; ".join(
            f"{r['users']:,} users {r['seconds']:.1f} s ({r['verdict']})" for r in sc) + "."]
    lines += ["", "Map: benchmarks/cluster_wiki_map.png. Commands: " + "; ".join(
        f"`{c.strip()}`" for c in sorted({r["command"] for r in rows.values()})),
        f"Dates: {results.run_dates(rows.values())}."]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["train", "cluster", "scale", "all"], required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[33000, 100000])
    ap.add_argument("--max-minutes", type=float, default=1.5)
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if not args.no_write:
        results.ensure_quiet(args.no_quiet)
    from threadpoolctl import threadpool_limits

    WORK.mkdir(parents=True, exist_ok=True)
    parts = ["train", "cluster", "scale"] if args.part == "all" else [args.part]
    data = None
    if "train" in parts:
        from attack_events import load

        data = load(args.sample)
    for part in parts:
        jobs = []
        if part == "train":
            jobs = [(f"train/ae-s{s}", lambda s=s: train(data, s, args)) for s in args.seeds]
        elif part == "cluster":
            for s in args.seeds:
                run = WORK / f"ae-s{s}"
                jobs += [(f"cluster/ae-s{s}/{f}", lambda run=run, f=f, s=s: cluster(run, f, s))
                         for f in ("both", "embedding", "hand")]
            if SUPERVISED.is_dir():
                jobs.append(("cluster/supervised/embedding",
                             lambda: cluster(SUPERVISED, "embedding", 0)))
                jobs.append(("cluster/supervised/both", lambda: cluster(SUPERVISED, "both", 0)))
        else:
            jobs = [(f"scale/{n}", lambda n=n: scale(n, 0)) for n in args.sizes]
        for key, job in jobs:
            with results.LoadMonitor() as mon, threadpool_limits(2):
                row = job()
            row.update(results.provenance(mon))
            results.log(f"{key}: {row}")
            if not args.no_write:
                results.save_row(STORE, key, row, LOCK)
        if part == "cluster" and not args.no_write:
            src = WORK / f"ae-s{args.seeds[0]}-both" / "map.png"
            if src.exists():
                shutil.copy(src, HERE / "cluster_wiki_map.png")
    rows = results.load_rows(STORE)
    if rows:
        results.publish("cluster-wiki", "Behaviour clustering on wiki-vandals "
                        "(FinDeepBehaviorCluster)", render(rows), write=not args.no_write)


if __name__ == "__main__":
    main()
