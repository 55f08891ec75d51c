"""Generative retrieval on Amazon Beauty (S3-Rec 5-core, leave-one-out, full catalogue).

Per seed: SASRec (the next-item estimator, benchmarks/configs/amazon-beauty.yaml) and the
generative recommender are trained on the same split with the same time budget; the generative
model's semantic IDs are learned (RQ-VAE) from that SASRec run's item embeddings. Test
Recall@5/10 and NDCG@5/10 of both, the RQ-VAE's codebook usage per level and collision rate.

With --diversity (one seed): beam search vs Diverse Beam Search at several λ on a random subset of
test users (top-10 lists = all 10 beams): Recall@10, distinct first-level codes, intra-list
diversity (cosine distance of the SASRec item vectors) and attribute coverage (distinct
brand/category attribute ids of Beauty_item2attributes.json); and decoding latency per user
(p50/p99, one user at a time, beam 10 and 20) next to SASRec encoding + a faiss flat index search.

    python benchmarks/generative.py --seeds 0 --minutes 1.5 --diversity
    python benchmarks/generative.py --seeds 1 --minutes 1.5
    python benchmarks/generative.py --table-only

Budgets are small (minutes per model); rows whose training stopped on the budget are labelled
"unconverged". Selection uses validation only (best validated epoch); test is reported once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

HERE = Path(__file__).resolve().parent
STORE = HERE / "generative_runs.json"
LOCK = HERE / "_work" / "generative.lock"
CONFIG = HERE / "configs" / "amazon-beauty.yaml"
TIGER = {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}
KS = (5, 10)


def _attributes(n_items: int, item_ids) -> tuple[np.ndarray, np.ndarray]:
    data = os.environ.get("USERSEQ_DATA", str(HERE.parents[1] / "shared" / "data"))
    raw = json.loads((Path(data) / "amazon-s3rec" / "Beauty_item2attributes.json").read_text())
    lists = [[]] + [raw.get(str(i), []) for i in item_ids.to_list()]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])])
    return offsets, np.array([a for x in lists for a in x], dtype=np.int64)


def _metrics(m: dict) -> dict:
    return {f"{name}@{k}": float(m[f"{'hr' if name == 'recall' else name}@{k}"])
            for k in KS for name in ("recall", "ndcg")}


def run_seed(args, seed: int, log, split) -> dict:
    import torch

    from userseq.core.config import read_yaml_mapping
    from userseq.generative.estimator import GenerativeRecommender
    from userseq.nextitem.config import RunConfig
    from userseq.nextitem.estimator import NextItemRecommender

    torch.set_num_threads(args.threads)
    base = RunConfig.parse(read_yaml_mapping(CONFIG), str(CONFIG))
    t0 = time.time()
    sas = NextItemRecommender(config=base, overrides={
        "train.seed": seed, "train.max_minutes": args.minutes, "train.threads": args.threads,
        "train.valid_users": args.valid_users, "eval.ks": list(KS)}).fit(log, split, quiet=True)
    sas_test = sas.evaluate(split.test, ks=list(KS))
    results.log(f"seed {seed}: SASRec {time.time() - t0:.0f}s, test {_metrics(sas_test)}")
    t1 = time.time()
    gen = GenerativeRecommender(overrides={
        "train.seed": seed, "train.max_minutes": args.minutes, "train.threads": args.threads,
        "train.valid_users": args.valid_users, "train.epochs": args.epochs,
        "semantic_ids.seed": seed, "semantic_ids.epochs": args.rqvae_epochs,
        "decode.beams": args.beams, "model.max_len": 50, "dataset": "amazon-beauty"})
    gen.fit(log, split, vectors=sas.item_embeddings(), quiet=True)
    t_fit = time.time() - t1
    work = HERE / "_work" / "generative" / f"seed{seed}"
    sas.save(work / "sasrec")  # kept for re-evaluation: userseq generative evaluate ...
    gen.save(work / "generative")
    gen_test = gen.evaluate(split.test)
    results.log(f"seed {seed}: generative {t_fit:.0f}s, test {_metrics(gen_test)}")
    row = {
        "seed": seed, "sasrec": _metrics(sas_test), "generative": _metrics(gen_test),
        "sasrec_train": sas.train_state_, "generative_train": gen.train_state_,
        "semantic_ids": gen.semantic_ids_.report, "beams": args.beams,
        "budget": {"minutes_per_model": args.minutes, "threads": args.threads,
                   "valid_users": args.valid_users, "rqvae_epochs": args.rqvae_epochs},
    }
    if args.diversity:
        row["diversity"] = diversity(args, gen, sas, log, split, seed)
        row["latency"] = latency(args, gen, sas, split, seed)
        row["user_semantic_ids"] = user_ids(sas, seed)
    return row


def user_ids(sas, seed: int) -> dict:
    """ULMRec-style user semantic IDs of the SASRec user vectors, and whether equal prefixes mean
    near users."""
    from userseq.index.semantic_ids import SemanticIdTokenizer, prefix_neighbour_check

    vectors = sas.user_embeddings()
    tok = SemanticIdTokenizer({"levels": 2, "codebook_size": 64, "epochs": 30, "seed": seed})
    tok.fit(vectors, what="users")
    out = {"report": tok.report_, "check": prefix_neighbour_check(vectors, tok.ids_, seed=seed)}
    results.log(f"  user semantic IDs: {out}")
    return out


def diversity(args, gen, sas, log, split, seed: int) -> list[dict]:
    from userseq.data.batches import csr_take
    from userseq.data.split import EvalSet
    from userseq.generative.decoding import DecodeSettings
    from userseq.metrics.diversity import category_coverage, distinct_codes, intra_list_diversity

    rng = np.random.default_rng(seed)
    t = split.test
    pick = np.sort(rng.choice(len(t), min(args.diversity_users, len(t)), replace=False))
    off, items = csr_take(t.offsets, t.items, t.offsets[pick], t.offsets[pick + 1])
    sub = EvalSet(t.users[pick], t.targets[pick], off, items)
    vectors = sas.item_matrix().numpy()
    codes = gen.semantic_ids_.codes
    a_off, a_cat = _attributes(log.n_items, log.item_ids)
    out = []
    settings = [("beam", DecodeSettings(10, 1, 0.0))]
    settings += [(f"diverse G={g} λ={lam}", DecodeSettings(10, g, lam))
                 for g in args.groups for lam in args.lambdas]
    for name, s in settings:
        t0 = time.time()
        m, top = gen.evaluate(sub, ks=[10], settings=s, return_lists=True)
        out.append({"decode": name, "groups": s.groups, "lambda": s.diversity,
                    "recall@10": m["hr@10"], "ndcg@10": m["ndcg@10"],
                    "distinct_first_codes": distinct_codes(top, codes, 0),
                    "intra_list_diversity": intra_list_diversity(top, vectors),
                    "attribute_coverage": category_coverage(top, a_off, a_cat),
                    "seconds": round(time.time() - t0, 2), "users": len(sub)})
        results.log(f"  {name}: {out[-1]}")
    return out


def latency(args, gen, sas, split, seed: int) -> dict:
    import torch

    from userseq.data.batches import pad_left
    from userseq.generative.decoding import DecodeSettings, decode
    from userseq.index.vector import VectorIndex

    rng = np.random.default_rng(seed + 1)
    t = split.test
    users = rng.choice(len(t), args.latency_users, replace=False)
    L = gen.config.model.max_len
    out = {}
    for beams in (10, 20):
        s = DecodeSettings(beams, 1, 0.0)
        times = []
        for u in users:
            a, b = t.offsets[u], t.offsets[u + 1]
            t0 = time.perf_counter()
            x = torch.from_numpy(pad_left(np.array([a]), np.array([b]), t.items,
                                          int(min(L, b - a))))
            decode(gen.model_, gen.trie_, x, s, 10, [t.items[a:b]])
            times.append(time.perf_counter() - t0)
        out[f"beam{beams}"] = {"p50_ms": 1000 * float(np.percentile(times, 50)),
                               "p99_ms": 1000 * float(np.percentile(times, 99))}
    index = VectorIndex.build(sas.item_matrix()[1:].numpy(), "ip")
    times = []
    for u in users:
        a, b = t.offsets[u], t.offsets[u + 1]
        t0 = time.perf_counter()
        vec = sas.encode(np.array([0, b - a]), t.items[a:b])
        index.search(vec.numpy(), 10 + int(b - a))
        times.append(time.perf_counter() - t0)
    out["sasrec_ann"] = {"p50_ms": 1000 * float(np.percentile(times, 50)),
                         "p99_ms": 1000 * float(np.percentile(times, 99)),
                         "index": index.describe()["kind"] if hasattr(index, "describe") else ""}
    results.log(f"  latency: {out}")
    return out


def table(rows: dict) -> list[str]:
    seeds = sorted(rows.values(), key=lambda r: r["seed"])
    if not seeds:
        return ["No rows yet."]
    lines = [
        "Amazon Beauty (S3-Rec 5-core: 22,363 users, 12,101 items), leave-one-out, full catalogue, "
        "seen items filtered. SASRec: `benchmarks/configs/amazon-beauty.yaml`; generative: "
        "semantic IDs (RQ-VAE 3 x 256 + collision code) learned from the same seed's SASRec item "
        "embeddings, encoder-decoder d=64 (2+2 blocks), trie-constrained beam search "
        f"({seeds[0]['beams']} beams). Budget per model and seed: "
        f"{seeds[0]['budget']['minutes_per_model']} min on {seeds[0]['budget']['threads']} "
        "thread(s), selection on validation NDCG@10 (subset of "
        f"{seeds[0]['budget']['valid_users']} users).",
        "",
        "| model | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | epochs (best) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in (("SASRec (ours)", "sasrec"), ("generative (ours)", "generative")):
        vals = {m: results.mean_std([r[key][m] for r in seeds]) for m in seeds[0][key]}
        tr = [r[f"{key}_train"] for r in seeds]
        ep = ", ".join(f"{t['epochs']} ({t['best_epoch']})" for t in tr)
        status = ("unconverged (time budget)" if any("budget" in t["stopped"] for t in tr)
                  else "converged (early stopping)")
        lines.append(f"| {name} | {vals['recall@5']} | {vals['ndcg@5']} | {vals['recall@10']} | "
                     f"{vals['ndcg@10']} | {ep} | {status} |")
    lines.append(f"| TIGER (published, other preprocessing) | {TIGER['recall@5']} | "
                 f"{TIGER['ndcg@5']} | {TIGER['recall@10']} | {TIGER['ndcg@10']} | - | - |")
    lines += ["", "RQ-VAE (per seed): codebook usage per level, collision rate before the "
              "collision code, largest collision code, relative reconstruction error.", "",
              "| seed | usage per level | collisions | max collision code | rel. recon. error |",
              "|---|---|---|---|---|"]
    for r in seeds:
        s = r["semantic_ids"]
        lines.append(f"| {r['seed']} | {', '.join(f'{u:.1%}' for u in s['codebook_usage'])} | "
                     f"{s['collision_rate']:.2%} | {s['max_collision_code']} | "
                     f"{s['relative_reconstruction_error']:.3f} |")
    div = sorted((r for r in seeds if "diversity" in r), key=lambda r: r["date"])[-1:]
    for r in div:
        d = r["diversity"]
        base = d[0]
        lines += ["", f"Diversity (seed {r['seed']}, {base['users']} random test users, top-10 = "
                  "all 10 beams; change vs beam search in brackets):", "",
                  "| decoding | Recall@10 | distinct first codes | intra-list diversity | "
                  "attribute coverage |", "|---|---|---|---|---|"]

        def rel(x: float, b: float) -> str:
            return f"{x:.3f} ({(x / b - 1) * 100:+.0f}%)" if b else f"{x:.3f}"

        for e in d:
            lines.append(f"| {e['decode']} | {rel(e['recall@10'], base['recall@10'])} | "
                         f"{rel(e['distinct_first_codes'], base['distinct_first_codes'])} | "
                         f"{rel(e['intra_list_diversity'], base['intra_list_diversity'])} | "
                         f"{rel(e['attribute_coverage'], base['attribute_coverage'])} |")
        lat = r["latency"]
        lines += ["", "Latency per user (one user per call, CPU, "
                  f"{r['budget']['threads']} thread(s)):", "", "| method | p50 ms | p99 ms |",
                  "|---|---|---|"]
        for key, name in (("beam10", "generative, beam 10"), ("beam20", "generative, beam 20"),
                          ("sasrec_ann", "SASRec encode + faiss flat top-10")):
            lines.append(f"| {name} | {lat[key]['p50_ms']:.1f} | {lat[key]['p99_ms']:.1f} |")
        if "user_semantic_ids" in r:
            u = r["user_semantic_ids"]
            rep = u["report"]
            lines += ["", f"User semantic IDs (seed {r['seed']}): RQ-VAE 2 x 64 + collision code "
                      f"over the {rep['vectors']:,} SASRec user vectors; codebook usage "
                      f"{', '.join(f'{x:.0%}' for x in rep['codebook_usage'])}, collision rate "
                      f"{rep['collision_rate']:.1%}. Nearest-user check on 2,000 random users:",
                      "", "| prefix | cosine, same prefix | cosine, all pairs | 10-NN sharing "
                      "the prefix | by chance |", "|---|---|---|---|---|"]
            for c in u["check"]:
                lines.append(f"| {c['prefix']} | {c['same_prefix_cosine']:.3f} | "
                             f"{c['all_pairs_cosine']:.3f} | {c['knn_same_prefix']:.1%} | "
                             f"{c['chance_same_prefix']:.1%} |")
    lines += ["", "Rows: " + "; ".join(f"seed {r['seed']}: `{r['command']}` ({r['date']}, "
                                         f"commit {r['commit']}, load {r['verdict']})"
                                         for r in seeds)]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--minutes", type=float, default=1.5, help="training budget per model")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--valid-users", type=int, default=1000)
    p.add_argument("--rqvae-epochs", type=int, default=50)
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--diversity", action="store_true", help="also diversity and latency")
    p.add_argument("--diversity-users", type=int, default=2000)
    p.add_argument("--latency-users", type=int, default=200)
    p.add_argument("--groups", type=int, nargs="+", default=[5])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if not args.table_only:
        results.ensure_quiet()
        from userseq.data.config import DataConfig
        from userseq.data.load import load_events
        from userseq.data.split import make_split

        log = load_events("amazon-beauty", DataConfig())
        split = make_split(log, "loo")
        for seed in args.seeds:
            with results.LoadMonitor() as mon:
                row = run_seed(args, seed, log, split)
            row.update(results.provenance(mon, seeds=[seed], data="amazon-beauty (S3-Rec)"))
            results.save_row(STORE, f"seed{seed}", row, LOCK)
    results.publish("generative", "Generative retrieval (semantic IDs, beam / Diverse Beam "
                    "Search)", table(results.load_rows(STORE)), write=not args.no_write)


if __name__ == "__main__":
    main()
