"""Text that carries over (issue #20): cold-start-aware id+text items, zero-shot transfer, the
item-vector cache, the Persona-Plug context aggregator.

Parts (each stores rows in benchmarks/text_transfer_runs.json and re-renders its RESULTS.md
section):

    python benchmarks/text_transfer.py --part cache
    python benchmarks/text_transfer.py --part cold --seeds 0 1 2 --epochs 3
    python benchmarks/text_transfer.py --part zeroshot --seeds 0 1 2
    python benchmarks/text_transfer.py --part context --seeds 0 1 2
    python benchmarks/text_transfer.py --table-only

Protocol (cold): amazon-scientific, the cold-start split (20% of the items held out of training,
split seed 0 for every row), full ranking, seen items filtered, pessimistic ties; SASRec with
benchmarks/configs/amazon-scientific.yaml; the best epoch chosen on validation NDCG@10 (the
cold-start split's validation users are cold-item users); `--seeds` are training seeds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results  # noqa: E402

HERE = Path(__file__).resolve().parent
STORE = HERE / "text_transfer_runs.json"
LOCK = HERE / "_work" / "text_transfer.lock"
WORK = HERE / "_work" / "text_transfer"
CACHE = WORK / "cache"  # USERSEQ_CACHE of every part: text vectors are encoded once
SCI = "amazon-scientific"
VARIANTS = {  # name -> model overrides
    "id": {"model.items": "id"},
    "text": {"model.items": "text"},
    "id+text (old: plain sum)": {"model.items": "id+text", "model.id_dropout": 0.0,
                                 "model.id_gate": "none"},
    "id+text + dropout + gate": {"model.items": "id+text"},
    "id+text + inverted dropout 0.5 + gate": {"model.items": "id+text",
                                              "model.id_dropout_scale": True},
    "id+text + inverted dropout 0.8 + gate": {"model.items": "id+text", "model.id_dropout": 0.8,
                                              "model.id_dropout_scale": True},
    "id+text + dropout + gate + text-kNN ids": {"model.items": "id+text",
                                                "model.cold_ids": "text_knn"},
}


def converged(train: dict) -> str:
    if train.get("best_epoch") == train.get("epochs") and "epochs" in str(train.get("stopped")):
        return "unconverged"
    return f"{train.get('best_epoch')}/{train.get('epochs')}"


def cli_sets(over: dict) -> str:
    return " ".join(f"--set {k}={v}" for k, v in over.items())


# ---------------------------------------------------------------------- cache
def part_cache(a) -> None:
    from userseq.data.datasets import load_item_metadata
    from userseq.data.load import load_events
    from userseq.items.text import encode_texts, item_text_for

    log = load_events(SCI)
    it = item_text_for(log.item_ids, load_item_metadata(SCI))
    texts = [t for t in it.texts if t is not None][: a.limit]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["USERSEQ_CACHE"] = tmp
        with results.LoadMonitor() as mon:
            t0 = time.perf_counter()
            _, s_cold = encode_texts(texts)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, s_hit = encode_texts(texts)
            hit = time.perf_counter() - t0
            changed = [texts[0] + " (new edition)", *texts[1:]]
            t0 = time.perf_counter()
            _, s_one = encode_texts(changed)
            one = time.perf_counter() - t0
        src = Path(tmp) / "text-vectors"
        CACHE.joinpath("text-vectors").mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.parquet"):
            shutil.copy(f, CACHE / "text-vectors" / f.name)
    row = {"texts": len(texts), "cold_s": round(cold, 3), "hit_s": round(hit, 3),
           "one_changed_s": round(one, 3), "cold_counts": s_cold, "hit_counts": s_hit,
           "one_changed_counts": s_one, **results.provenance(mon, data=SCI)}
    results.save_row(STORE, "cache", row, LOCK)
    results.log(f"cache: cold {cold:.1f}s, hit {hit:.2f}s, one changed {one:.1f}s")


# ---------------------------------------------------------------------- cold start
def part_cold(a) -> None:
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import RunConfig, split_kwargs
    from userseq.nextitem.estimator import NextItemRecommender

    os.environ["USERSEQ_CACHE"] = str(CACHE)
    base = RunConfig.from_yaml(HERE / "configs" / f"{SCI}.yaml")
    log = sp = None
    for seed in a.seeds:
        for name, over in VARIANTS.items():
            if a.variants and not any(name.startswith(v) for v in a.variants):
                continue
            sets = {"data.split": "cold-start", "data.split_seed": 0, "train.seed": seed,
                    "train.epochs": a.epochs, "train.threads": a.threads, "dataset": SCI, **over}
            cfg = base.updated(sets)
            if log is None:
                log = load_events(SCI, cfg.data)
                sp = make_split(log, "cold-start", **split_kwargs(cfg))
            with results.LoadMonitor() as mon:
                rec = NextItemRecommender(config=cfg).fit(log, sp, quiet=True)
                groups = rec.group_report(sp)
            cmd = (f"userseq train --data {SCI} --model sasrec --config "
                   f"benchmarks/configs/{SCI}.yaml --split cold-start --split-seed 0 --seed {seed}"
                   f" --epochs {a.epochs} {cli_sets(over)} --out RUN")
            row = {"variant": name, "seed": seed, "epochs": a.epochs, "groups": groups,
                   "train": rec.train_state_, "train_cmd": cmd,
                   **results.provenance(mon, seeds=[seed], data=SCI)}
            results.save_row(STORE, f"cold/{name}/s{seed}", row, LOCK)
            results.log(f"cold {name} s{seed}: " + ", ".join(
                f"{g} {groups[g]['ndcg@10']:.4f}" for g in ("warm", "cold", "all")))


# ---------------------------------------------------------------------- zero-shot
ML = "ml-latest-small"


def part_zeroshot(a) -> None:
    """Per seed: a text-only model on each catalogue (Scientific, MovieLens), each evaluated
    zero-shot on the other; with `--curve-seeds`, 1% / 10% fine-tunes warm-started from the other
    catalogue's model against the same fractions trained from scratch."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split
    from userseq.nextitem.config import RunConfig
    from userseq.nextitem.estimator import NextItemRecommender

    os.environ["USERSEQ_CACHE"] = str(CACHE)
    base = RunConfig.from_yaml(HERE / "configs" / f"{SCI}.yaml")  # one architecture for both
    data = {}
    for ds in (SCI, ML):
        cfg = base.updated({"dataset": ds})
        log = load_events(ds, cfg.data)
        data[ds] = (log, make_split(log, "loo"))
    other = {SCI: ML, ML: SCI}

    def config(ds: str, seed: int, fraction: float = 1.0):
        return base.updated({"dataset": ds, "model.items": "text", "train.seed": seed,
                             "train.epochs": a.epochs, "train.threads": a.threads,
                             "data.train_user_fraction": fraction, "data.split_seed": seed})

    def test_row(m: dict) -> dict:
        return {"ndcg@10": m["test"]["ndcg@10"], "hr@10": m["test"]["hr@10"],
                "popularity_ndcg@10": m["baselines"]["popularity"]["ndcg@10"],
                "users": m["test"]["users"]}

    for seed in a.seeds:
        src = {}
        for ds in (SCI, ML):
            log, sp = data[ds]
            with results.LoadMonitor() as mon:
                src[ds] = NextItemRecommender(config=config(ds, seed)).fit(log, sp, quiet=True)
                m = src[ds].report(log, sp)
            row = {"kind": "trained on target", "source": ds, "target": ds, "fraction": 1.0,
                   "seed": seed, **test_row(m), "train": src[ds].train_state_,
                   "cmd": f"userseq train --data {ds} --config benchmarks/configs/{SCI}.yaml "
                          f"--items text --seed {seed} --epochs {a.epochs} --out RUN",
                   **results.provenance(mon, seeds=[seed], data=ds)}
            results.save_row(STORE, f"zs/{ds}/{ds}/1.0/s{seed}", row, LOCK)
            results.log(f"trained {ds} s{seed}: {row['ndcg@10']:.4f}")
        for ds in (SCI, ML):
            tgt = other[ds]
            log, sp = data[tgt]
            with results.LoadMonitor() as mon:
                zs = src[ds].transfer(log, dataset=tgt)
                m = zs.report(log, sp)
            row = {"kind": "zero-shot", "source": ds, "target": tgt, "fraction": 0.0,
                   "seed": seed, **test_row(m),
                   "cmd": f"userseq evaluate RUN_{ds} --data {tgt} --zero-shot",
                   **results.provenance(mon, seeds=[seed], data=tgt)}
            results.save_row(STORE, f"zs/{ds}/{tgt}/0.0/s{seed}", row, LOCK)
            results.log(f"zero-shot {ds} -> {tgt} s{seed}: {row['ndcg@10']:.4f} "
                        f"(popularity {row['popularity_ndcg@10']:.4f})")
        if seed not in a.curve_seeds:
            continue
        for ds in (SCI, ML):
            tgt = other[ds]
            log, sp = data[tgt]
            for frac in a.fractions:
                for kind, init in (("fine-tuned", src[ds]), ("scratch", None)):
                    with results.LoadMonitor() as mon:
                        rec = NextItemRecommender(config=config(tgt, seed, frac)).fit(
                            log, sp, quiet=True, init_from=init)
                        m = rec.report(log, sp)
                    init_arg = f" --init-from RUN_{ds}" if init is not None else ""
                    row = {"kind": kind, "source": ds if init is not None else tgt,
                           "target": tgt, "fraction": frac, "seed": seed, **test_row(m),
                           "train": rec.train_state_,
                           "cmd": f"userseq train --data {tgt} --config benchmarks/configs/"
                                  f"{SCI}.yaml --items text --seed {seed} --epochs {a.epochs} "
                                  f"--set data.train_user_fraction={frac}{init_arg} --out RUN",
                           **results.provenance(mon, seeds=[seed], data=tgt)}
                    results.save_row(STORE, f"zs/{kind}/{ds}/{tgt}/{frac}/s{seed}", row, LOCK)
                    results.log(f"{kind} {tgt} {frac:.0%} s{seed}: {row['ndcg@10']:.4f}")


# ---------------------------------------------------------------------- context
def part_context(a) -> None:
    from userseq.context import UserContext

    os.environ["USERSEQ_CACHE"] = str(CACHE)
    for seed in a.seeds:
        with results.LoadMonitor() as mon:
            ctx = UserContext(overrides={"data.split_seed": seed, "train.seed": seed,
                                         "train.threads": a.threads,
                                         "model.context_dim": a.context_dim}).fit(quiet=True)
        row = {"seed": seed, "head": "residual", "metrics": ctx.metrics_,
               "train": ctx.train_state_,
               "cmd": f"userseq context train --data petgen-wiki --seed {seed} --context-dim "
                      f"{a.context_dim} --out RUN",
               **results.provenance(mon, seeds=[seed], data="petgen-wiki")}
        results.save_row(STORE, f"context/s{seed}", row, LOCK)
        t = ctx.metrics_["test"]
        results.log(f"context s{seed}: cosine {t['cosine']:.4f} hit@10 {t['hit@10']:.4f}")


# ---------------------------------------------------------------------- tables
def mean_std(rows, f) -> str:
    return results.mean_std([f(r) for r in rows])


def cache_lines(rows: dict) -> list[str]:
    r = rows.get("cache")
    if r is None:
        return ["Not run yet: `python benchmarks/text_transfer.py --part cache`."]
    return [
        f"Command: `{r['command'].strip()}` · commit {r['commit']} · {r['date']} · "
        f"verdict {r['verdict']} (load mean {r['load_mean']}, max {r['load_max']})",
        "",
        f"MiniLM (all-MiniLM-L6-v2, offline package) vectors of the {r['texts']:,} "
        "amazon-scientific item texts, CPU, cache = one Parquet file keyed by SHA-256 of the text:",
        "",
        "| case | seconds | vectors from cache | vectors encoded |",
        "|---|---|---|---|",
        f"| cold (empty cache; includes loading the model) | {r['cold_s']:.2f} | "
        f"{r['cold_counts']['cached']:,} | {r['cold_counts']['encoded']:,} |",
        f"| cache hit (every text cached; the model is not loaded) | {r['hit_s']:.3f} | "
        f"{r['hit_counts']['cached']:,} | {r['hit_counts']['encoded']:,} |",
        f"| one item's text changed (loads the model for that one text) | {r['one_changed_s']:.2f}"
        f" | {r['one_changed_counts']['cached']:,} | {r['one_changed_counts']['encoded']:,} |",
    ]


def cold_lines(rows: dict) -> list[str]:
    cold = [r for k, r in rows.items() if k.startswith("cold/")]
    if not cold:
        return ["Not run yet: `python benchmarks/text_transfer.py --part cold --seeds 0 1 2`."]
    first = cold[0]
    sp = first["groups"]
    lines = [
        f"Command: `{first['command'].strip()}` · commit {first['commit']} · machine "
        f"{first['machine']}",
        "",
        "amazon-scientific, cold-start split (split seed 0: 20% of the items held out of training;"
        f" {int(sp['cold']['users'])} test users whose last item is a held-out test item = `cold`;"
        f" {int(sp['warm']['users']):,} users whose last item is a trained item, that event held"
        " out = `warm`; `all` = both), full ranking over the whole catalogue, seen items filtered,"
        " pessimistic ties. SASRec, benchmarks/configs/amazon-scientific.yaml, "
        f"{first['epochs']} epochs, best epoch on validation NDCG@10 (validation users are "
        "cold-item users). Mean ± std over training seeds.",
        "",
        "| items | warm NDCG@10 | cold NDCG@10 | all NDCG@10 | cold HR@10 | best epoch / epochs "
        "| verdicts | train command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        rs = [r for r in cold if r["variant"] == name]
        if not rs:
            continue
        lines.append(
            f"| {name} | {mean_std(rs, lambda r: r['groups']['warm']['ndcg@10'])} | "
            f"{mean_std(rs, lambda r: r['groups']['cold']['ndcg@10'])} | "
            f"{mean_std(rs, lambda r: r['groups']['all']['ndcg@10'])} | "
            f"{mean_std(rs, lambda r: r['groups']['cold']['hr@10'])} | "
            f"{', '.join(converged(r['train']) for r in rs)} | "
            f"{', '.join(sorted({r['verdict'] for r in rs}))} | `{rs[0]['train_cmd']}` |")
    pop = sp
    lines += ["", f"Popularity: warm {pop['warm']['popularity']['ndcg@10']:.4f}, cold "
              f"{pop['cold']['popularity']['ndcg@10']:.4f}, all "
              f"{pop['all']['popularity']['ndcg@10']:.4f} NDCG@10 (cold items have no training "
              "events, so popularity ranks them last)."]
    return lines


def zeroshot_lines(rows: dict) -> list[str]:
    zs = [r for k, r in rows.items() if k.startswith("zs/")]
    if not zs:
        return ["Not run yet: `python benchmarks/text_transfer.py --part zeroshot`."]
    first = zs[0]
    lines = [
        f"Command: `{first['command'].strip()}` · commit {first['commit']} · machine "
        f"{first['machine']}",
        "",
        "Text-only SASRec (`--items text`: MiniLM vectors + MoE adapter, no id vectors; the "
        "amazon-scientific config for both catalogues), leave-one-out, full ranking over the "
        "target catalogue, seen items filtered. `zero-shot` = the source run's sequence model "
        "and adapter on the target's item text, never trained on the target "
        "(`evaluate --zero-shot`); `fine-tuned` = warm-started from the source run "
        "(`--init-from`) and trained on a share of the target's users (`data."
        "train_user_fraction`); `scratch` = the same share trained from scratch; every "
        "training run has the same epoch budget. Test users: all of the target's.",
        "",
        "| source → target | training on target | users trained on | NDCG@10 | HR@10 | "
        "popularity NDCG@10 | verdicts |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {"zero-shot": 0, "fine-tuned": 1, "scratch": 2, "trained on target": 3}
    keys = sorted({(r["target"], r["kind"], r["source"], r["fraction"]) for r in zs},
                  key=lambda k: (k[0], k[3], order[k[1]]))
    for tgt, kind, src, frac in keys:
        rs = [r for r in zs if (r["target"], r["kind"], r["source"], r["fraction"])
              == (tgt, kind, src, frac)]
        arrow = f"{src} → {tgt}" if src != tgt else f"{tgt} (own)"
        lines.append(
            f"| {arrow} | {kind} | {frac:.0%} | {mean_std(rs, lambda r: r['ndcg@10'])} | "
            f"{mean_std(rs, lambda r: r['hr@10'])} | "
            f"{rs[0]['popularity_ndcg@10']:.4f} | "
            f"{', '.join(sorted({r['verdict'] for r in rs}))} |")
    return lines


def context_lines(rows: dict) -> list[str]:
    cs = [r for k, r in rows.items() if k.startswith("context/")]
    if not cs:
        return ["Not run yet: `python benchmarks/text_transfer.py --part context`."]
    first = cs[0]
    m0 = first["metrics"]
    k = m0["top_k"]
    lines = [
        f"Command: `{first['command'].strip()}` · commit {first['commit']} · machine "
        f"{first['machine']} · verdicts {', '.join(sorted({r['verdict'] for r in cs}))}",
        "",
        f"petgen-wiki: {m0['data']['examples']} users with a target context; per seed "
        f"{m0['data']['test_users']} held-out test users, {m0['data']['valid_users']} "
        "validation users (early stopping on validation cosine), the rest train. Input = the "
        "target context text of the user's last post, history = the earlier posts, target = the "
        "MiniLM vector of the last post. `cosine`: predicted vs real next-post vector; "
        "`next-post hit@10`: the real next post among the held-out users' next posts, ranked by "
        f"the predicted vector; `relevant@{k}`: share of users (with both on-context and other "
        f"history posts) whose top-{k} retrieved history posts include one on the target "
        f"context (PETGEN's relevancy flags). Context vector: {m0['context_dim']} dims.",
        "",
        f"| method | cosine | next-post hit@10 | relevant@{k} |",
        "|---|---|---|---|",
    ]
    for name in m0["methods"]:
        rs = [r["metrics"]["methods"][name] for r in cs]
        rel = (results.mean_std([r[f"relevant@{k}"] for r in rs])
               if f"relevant@{k}" in rs[0] else "— (retrieves nothing)")
        lines.append(f"| {name} | {results.mean_std([r['cosine'] for r in rs])} | "
                     f"{results.mean_std([r['hit@10'] for r in rs])} | {rel} |")
    tr = [r["train"] for r in cs]
    if any("head" not in r for r in cs):
        lines += ["", "These rows were measured with the first aggregator (a plain linear head "
                  "over [u, x]); the residual head of later commits (prediction = weighted "
                  "history mean + a zero-initialised head) is not measured yet: rerun "
                  "`python benchmarks/text_transfer.py --part context --seeds 0 1 2`."]
    lines += ["", "Aggregator training: best epoch / epochs " + ", ".join(
        converged(t) for t in tr) + f"; train command: `{first['cmd']}`."]
    return lines


def table(write: bool = True) -> None:
    rows = results.load_rows(STORE)
    results.publish("text_cache", "Item text vectors: cache hit vs cold computation",
                    cache_lines(rows), write)
    results.publish("text_cold", "Cold-start-aware id+text items (DropoutNet + popularity gate)",
                    cold_lines(rows), write)
    results.publish("text_zeroshot", "Zero-shot transfer between catalogues (text-only models)",
                    zeroshot_lines(rows), write)
    results.publish("text_context", "User context for text generation (Persona-Plug "
                    "aggregator, petgen-wiki)", context_lines(rows), write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["cache", "cold", "zeroshot", "context"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=None,
                    help="variants whose name starts with one of these")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--curve-seeds", type=int, nargs="*", default=[0],
                    help="zeroshot: seeds that also run the fine-tune curve")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--context-dim", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="cache: first N texts (smoke)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    a = ap.parse_args()
    if a.table_only:
        table(not a.no_write)
        return
    results.ensure_quiet(a.no_quiet)
    WORK.mkdir(parents=True, exist_ok=True)
    parts = {"cache": part_cache, "cold": part_cold, "zeroshot": part_zeroshot,
             "context": part_context}
    parts[a.part](a)
    table(not a.no_write)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
