"""Long-history CTR on ML-1M (DIN, SIM, TWIN, SDIM, DARE, AW-MoE at history length 100, 1,000 and
all), CTR rows with bootstrap intervals over users and cold/warm users apart, MovieLens rows
re-split so the test set holds every user, and the cost of scoring 1,000 impressions against the
history length. Writes the `ctr_long` section of benchmarks/RESULTS.md.

    python benchmarks/ctr_long.py --part ml1m --models din sim twin sdim dare --lengths 100 all
    python benchmarks/ctr_long.py --part ml1m --models din awmoe --lengths 100 --seeds 42 43 44
    python benchmarks/ctr_long.py --part resplit --datasets ml-latest-small --models din dare
    python benchmarks/ctr_long.py --part cost --lengths 100 1000 10000
    python benchmarks/ctr_long.py --part table      # only rewrite RESULTS.md from the JSON
    python benchmarks/ctr_long.py --part ml1m --smoke   # a few seconds: 200 users, 1 epoch

ML-1M (the staged copy: per-user order, no ratings or timestamps) as CTR, DARE's protocol: every
observed event is a click; per click 2 items the user never watched, drawn by item frequency, are
non-clicks with the same history (everything the user watched before). Each user's last
`--targets-per-user` clicks are targets: the last one tests, the one before validates, the rest
train (`data.split: user`), so all 6,040 users are in the test set. Equivalent CLI run:
`userseq ctr train --data ml-1m --config benchmarks/configs/ctr_long.yaml --model M --set
model.max_len=L --set model.long_len=L --seed S --out RUN`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import (  # noqa: E402
    LoadMonitor,
    ensure_quiet,
    load_rows,
    mean_std,
    provenance,
    publish,
    save_row,
)

STORE = HERE / "ctr_long_runs.json"
LOCK = HERE / "_work" / "ctr_long_runs.lock"
CONFIG = HERE / "configs" / "ctr_long.yaml"
ALL = 100_000  # "all": longer than every ML-1M history (max 2,276 before a target)
EDGES = (20, 50, 100, 1000)  # history-length buckets; 0-19 = cold users


def length_value(x: str) -> int:
    return ALL if x == "all" else int(x)


def length_name(L: int) -> str:
    return "all" if L >= ALL else f"{L:,}"


def setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- data
def ml1m_data(cfg, smoke: bool):
    from userseq.ctr.data import build_ctr_data
    from userseq.data.datasets import load_dataset, load_item_metadata

    log = load_dataset("ml-1m")
    if smoke:
        from userseq.data.eventlog import EventLog

        keep = log.frame.filter(log.frame["user"] < 200)
        log = EventLog.from_frame(keep.select(
            (keep["user"] + 1).alias("user_id"), keep["item"].alias("item_id"),
            keep["timestamp"].alias("timestamp")), source="ml-1m (200 users)")
    return build_ctr_data(log, cfg.data, load_item_metadata("ml-1m"))


def heaviest_user_share(owner: np.ndarray) -> float:
    counts = np.bincount(owner)
    return float(counts.max() / counts.sum())


def evaluate_row(est, data, split: str = "test") -> dict:
    """Test metrics (one scoring pass) with bootstrap intervals over users, AUC per history
    bucket and cold/warm, and the heaviest user's share of the impressions."""
    from userseq.metrics.ctr import bootstrap_ctr, ctr_by_history, ctr_metrics

    s = data.split(split)
    owner = np.searchsorted(data.behaviours.offsets, s.start, side="right")
    t0 = time.perf_counter()
    p = est.predict_proba(data, split)
    m = ctr_metrics(s.label, p, owner)
    m["score_seconds"] = round(time.perf_counter() - t0, 2)
    m["ci95"] = bootstrap_ctr(s.label, p, owner, n_boot=200, seed=0)
    m["by_history"] = ctr_by_history(s.label, p, owner, s.history_lengths, EDGES)
    m["cold_warm"] = ctr_by_history(s.label, p, owner, s.history_lengths, (20,))
    m["users"] = int(len(np.unique(owner)))
    m["heaviest_user_share"] = heaviest_user_share(owner)
    return m


def fit_row(cfg, data, key: str, extra: dict, cli: str) -> dict:
    from userseq.ctr.estimator import CTREstimator

    with LoadMonitor() as mon:
        t0 = time.time()
        est = CTREstimator(config=cfg).fit(data, quiet=True)
        fit_s = time.time() - t0
        test = evaluate_row(est, data, "test")
    tr = est.train_state_
    row = provenance(mon, **extra, cli=cli, fit_seconds=round(fit_s, 1), train=tr,
                     valid_best=tr["best_valid"], test=test,
                     unconverged=bool(tr["best_epoch"] == tr["epochs"]),
                     data={k: data.info.get(k) for k in ("samples", "train_samples",
                                                         "valid_samples", "test_samples",
                                                         "test_users", "split", "label")})
    save_row(STORE, key, row, LOCK)
    print(f"{time.strftime('%H:%M:%S')} {key}: test AUC {test['auc']:.4f} "
          f"[{test['ci95']['auc'][0]:.4f}, {test['ci95']['auc'][1]:.4f}] GAUC {test['gauc']:.4f} "
          f"epochs {tr['epochs']} (best {tr['best_epoch']}) {fit_s:.0f}s {mon.verdict}",
          flush=True)
    return row


def run_ml1m(args) -> None:
    from userseq.ctr.config import CTRConfig

    base = CTRConfig.from_yaml(CONFIG).updated({
        "data.targets_per_user": args.targets_per_user, "train.threads": args.threads,
        **({"train.epochs": 1} if args.smoke else {})})
    data = ml1m_data(base, args.smoke)
    print(f"ml-1m CTR: {data.info['samples']:,} samples, {data.info['test_users']:,} test users",
          flush=True)
    for L in map(length_value, args.lengths):
        for model in args.models:
            for seed in args.seeds:
                cfg = base.updated({"model.name": model, "model.max_len": L,
                                    "model.long_len": L, "train.seed": seed})
                key = f"{'smoke/' if args.smoke else ''}ml1m/{model}/{length_name(L)}/{seed}"
                cli = (f"userseq ctr train --data ml-1m --config benchmarks/configs/ctr_long.yaml "
                       f"--model {model} --set model.max_len={L} --set model.long_len={L} "
                       f"--set data.targets_per_user={args.targets_per_user} --seed {seed} "
                       "--out RUN")
                fit_row(cfg, data, key, {"dataset": "ml-1m", "model": model, "length": L,
                                         "seed": seed, "smoke": args.smoke}, cli)


def run_resplit(args) -> None:
    """MovieLens rated logs (label = rating >= 4): the global time split vs the per-user split."""
    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import build_ctr_data
    from userseq.data.datasets import load_dataset, load_item_metadata

    for ds in args.datasets:
        log, meta = load_dataset(ds), load_item_metadata(ds)
        base = CTRConfig.from_yaml(CONFIG).updated({
            "data.negatives": 0, "data.targets_per_user": None, "data.split": "user",
            "train.threads": args.threads, **({"train.epochs": 1} if args.smoke else {})})
        old = build_ctr_data(log, base.data.model_copy(update={"split": "time"}), meta)
        data = build_ctr_data(log, base.data, meta)
        o = np.searchsorted(old.behaviours.offsets, old.split("test").start, side="right")
        time_split = {"test_users": int(len(np.unique(o))), "test_samples": len(o),
                      "heaviest_user_share": heaviest_user_share(o)}
        for model in args.models:
            for seed in args.seeds:
                L = 2000
                cfg = base.updated({"model.name": model, "model.max_len": 200,
                                    "model.long_len": L, "train.seed": seed})
                key = f"{'smoke/' if args.smoke else ''}resplit/{ds}/{model}/{seed}"
                cli = (f"userseq ctr train --data {ds} --config benchmarks/configs/ctr_long.yaml "
                       f"--model {model} --set data.negatives=0 --set data.split=user "
                       f"--set data.targets_per_user=null --seed {seed} --out RUN")
                fit_row(cfg, data, key, {"dataset": ds, "model": model, "seed": seed,
                                         "smoke": args.smoke, "time_split": time_split}, cli)


def run_splits(args) -> None:
    """Test-set shape of the MovieLens CTR rows (label = rating >= 4) under the global time split
    and the per-user split: users, the heaviest user's share, cold impressions. No training."""
    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import build_ctr_data
    from userseq.data.datasets import load_dataset, load_item_metadata

    for ds in args.datasets:
        log, meta = load_dataset(ds), load_item_metadata(ds)
        base = CTRConfig().data
        row = {"dataset": ds}
        with LoadMonitor() as mon:
            for split in ("time", "user"):
                data = build_ctr_data(log, base.model_copy(update={"split": split}), meta)
                s = data.split("test")
                o = np.searchsorted(data.behaviours.offsets, s.start, side="right")
                row[split] = {"test_users": int(len(np.unique(o))), "test_samples": len(o),
                              "heaviest_user_share": heaviest_user_share(o),
                              "cold_impressions": int((s.history_lengths < 20).sum()),
                              "train_samples": len(data.splits["train"])}
        save_row(STORE, f"{'smoke/' if args.smoke else ''}splits/{ds}", provenance(mon, **row),
                 LOCK)
        print(ds, row, flush=True)


def run_cost(args) -> None:
    """ms to score 1,000 candidates for one history of length L: end to end (encode the history +
    score) and online (the per-user state is cached, as SDIM's BSE service / a DARE key cache
    would hold it). Untrained weights: the cost does not depend on them."""
    import torch

    from userseq.ctr.config import CTRConfig
    from userseq.ctr.data import Behaviours, Samples
    from userseq.ctr.models import build_ctr_model

    rng = np.random.default_rng(0)
    n_items, n_cats, reps = 3416, 19, 3 if args.smoke else 7
    item_cat = np.r_[0, rng.integers(1, n_cats + 1, n_items)]
    for L in map(length_value, args.lengths):
        beh = Behaviours(np.array([0, L]), rng.integers(1, n_items + 1, L), np.ones(L, np.int64),
                         np.arange(L, dtype=np.float64))
        s = Samples(np.array([1]), np.array([1]), np.array([float(L)]), np.array([0]),
                    np.array([L]), np.ones(1, np.float32), np.zeros((1, 0), np.float32))
        cand = torch.from_numpy(rng.integers(1, n_items + 1, 1000))
        for model in args.models:
            if model == "din" and L > 2000 and not args.smoke:
                print(f"cost L={L} din: skipped (O(L) MLP per candidate: minutes per repeat; "
                      "the ctr section measures it)", flush=True)
                continue
            cfg = CTRConfig.from_yaml(CONFIG).updated({"model.name": model, "model.max_len": L,
                                                       "model.long_len": L}).model
            torch.manual_seed(0)
            net = build_ctr_model(cfg, n_items, n_cats, 1, 1).eval()
            cat_t = torch.from_numpy(item_cat)
            cb = {"item": cand, "cat": cat_t[cand], "user": torch.ones(1000, dtype=torch.long),
                  "context": torch.zeros(1000, 0)}

            with torch.no_grad(), LoadMonitor() as mon:
                full, online = time_scoring(net, cfg, beh, s, item_cat, cb, reps)
            row = provenance(mon, model=model, length=L, reps=reps, smoke=args.smoke,
                             threads=args.threads,
                             ms_per_1k=round(1000 * float(np.median(full)), 2),
                             ms_per_1k_online=round(1000 * float(np.median(online)), 2))
            save_row(STORE, f"{'smoke/' if args.smoke else ''}cost/{model}/{L}", row, LOCK)
            print(f"cost L={L} {model}: {row['ms_per_1k']} ms (online {row['ms_per_1k_online']})"
                  f" {mon.verdict}", flush=True)


def time_scoring(net, cfg, beh, s, item_cat, cb, reps: int) -> tuple[list, list]:
    """Seconds per repeat: (encode + score 1,000 candidates, score only), after a warm-up."""
    from userseq.ctr.data import make_batch
    from userseq.ctr.estimator import HISTORY_KEYS

    chunk = net.candidate_chunk(int(s.end[0] - s.start[0]))
    n = len(cb["item"])
    full, online = [], []
    for r in range(reps + 1):
        t0 = time.perf_counter()
        b = make_batch(beh, s, item_cat, cfg.window, cfg.pos_buckets)
        state = net.encode_history({k: b[k] for k in HISTORY_KEYS})
        t1 = time.perf_counter()
        for i in range(0, n, chunk):
            net.score_state(state, {k: v[i:i + chunk] for k, v in cb.items()})
        t2 = time.perf_counter()
        if r:  # the first pass warms up
            full.append(t2 - t0)
            online.append(t2 - t1)
    return full, online


# ---------------------------------------------------------------------- table
def ci(m: dict, k: str) -> str:
    lo, hi = m["ci95"][k]
    return f"{m[k]:.4f} [{lo:.4f}, {hi:.4f}]"


def bucket(m: dict, name: str) -> dict | None:
    return next((b for b in m["by_history"] if b["history"] == name), None)


def agg(rows: list[dict], f) -> str:
    vals = [f(r) for r in rows]
    vals = [v for v in vals if v == v]
    return mean_std(vals)


def render(write: bool) -> None:
    rows = {k: v for k, v in load_rows(STORE).items() if not k.startswith("smoke/")}
    ml = [r for k, r in rows.items() if k.startswith("ml1m/")]
    lines = [
        "Written by `benchmarks/ctr_long.py` from `benchmarks/ctr_long_runs.json` (each row: "
        "command, commit, machine, load verdict). Training settings: "
        "`benchmarks/configs/ctr_long.yaml`. Intervals: 95% percentile bootstrap over users "
        "(200 replicates; a replicate redraws users, keeping all their impressions).",
        "",
        "### ML-1M long-history CTR (sampled negatives, all users tested)",
        "",
        "ML-1M as staged (per-user order, no ratings/timestamps; items with >= 5 ratings). "
        "Every watched movie is a click; per click 2 movies the user never watched, drawn by item "
        "frequency, are non-clicks (DARE's protocol). History = every earlier event of the user "
        "(up to 2,276). Each user's last 4 clicks are targets: the last tests, the one before "
        "validates (early stopping, patience 1), 2 train: 36,240 train / 18,120 valid / 18,120 "
        "test impressions, 6,040 test users. L = behaviours read (DIN/AW-MoE: the last L; "
        "SIM/TWIN/DARE search the last L, top-k 20; SDIM hashes the last L). Only 40 users have "
        "more than 1,000 events, so L = 1,000 and all differ on few users; the `>= 1000` column "
        "is AUC on test impressions whose history holds at least 1,000 events.",
        "",
        "| model | L | seeds | test AUC [95% CI] | GAUC [95% CI] | logloss | AUC hist 20-49 | "
        "AUC hist >= 1000 | epochs (best) | train s | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list] = {}
    for r in ml:
        groups.setdefault((r["model"], r["length"]), []).append(r)
    order = ["din", "sim", "twin", "sdim", "dare", "awmoe"]
    for (model, L), rs in sorted(groups.items(), key=lambda x: (x[0][1], order.index(x[0][0]))):
        rs.sort(key=lambda r: r["seed"])
        t = [r["test"] for r in rs]
        if len(rs) == 1:
            auc_s, gauc_s = ci(t[0], "auc"), ci(t[0], "gauc")
        else:
            auc_s, gauc_s = agg(t, lambda m: m["auc"]), agg(t, lambda m: m["gauc"])
        b2049 = agg(t, lambda m: (bucket(m, "20-49") or {}).get("auc", float("nan")))
        b1k = agg(t, lambda m: (bucket(m, ">=1000") or {}).get("auc", float("nan")))
        ep = ", ".join(f"{r['train']['epochs']} ({r['train']['best_epoch']})"
                       + (" unconverged" if r["unconverged"] else "") for r in rs)
        verdicts = "/".join(sorted({r["verdict"] for r in rs}))
        lines.append(
            f"| {model} | {length_name(L)} | {','.join(str(r['seed']) for r in rs)} | {auc_s} | "
            f"{gauc_s} | {agg(t, lambda m: m['logloss'])} | {b2049} | {b1k} | {ep} | "
            f"{np.mean([r['fit_seconds'] for r in rs]):.0f} | {verdicts} |")
    lines += ["", "One seed: the interval is the bootstrap over users; several seeds: mean ± std "
              "over seeds (the per-seed intervals are in the JSON). 'unconverged': the best "
              "validation epoch was the last one.", ""]

    # goals
    def mean_auc(model, L, key=lambda m: m["auc"]):
        rs = groups.get((model, L), [])
        vals = [key(r["test"]) for r in rs]
        return float(np.mean(vals)) if vals else None

    lines += ["Against the goals:", ""]
    for L in sorted({L for _, L in groups}):
        d, a = mean_auc("din", L), mean_auc("dare", L)
        if d is not None and a is not None:
            lines.append(f"- L = {length_name(L)}: DARE AUC - DIN AUC = {a - d:+.4f} "
                         f"({'holds' if a >= d else 'does not hold'}: DARE >= DIN).")
    aw = groups.get(("awmoe", 100), [])
    dn = groups.get(("din", 100), [])
    if aw and dn:
        for name in ("0-19", "20-49", "50-99"):
            fa = [(bucket(r["test"], name) or {}).get("auc", float("nan")) for r in aw]
            fd = [(bucket(r["test"], name) or {}).get("auc", float("nan")) for r in dn]
            n_imp = (bucket(aw[0]["test"], name) or {}).get("impressions", 0)
            if n_imp:
                lines.append(f"- AW-MoE vs DIN (L = 100), users with {name} history events "
                             f"({n_imp:,} test impressions): AW-MoE {mean_std(fa)}, DIN "
                             f"{mean_std(fd)}.")
        lines.append(f"- AW-MoE vs DIN (L = 100), all users: AW-MoE "
                     f"{mean_std([r['test']['auc'] for r in aw])}, DIN "
                     f"{mean_std([r['test']['auc'] for r in dn])}.")
    lines.append("")

    cost = [r for k, r in rows.items() if k.startswith("cost/")]
    if cost:
        lines += ["### Cost of scoring 1,000 impressions against the history length", "",
                  "One history of length L (random items), 1,000 candidates, untrained weights, "
                  "median of repeats after a warm-up. End to end = encode the history (DIN: "
                  "behaviour embeddings; TWIN/DARE: keys and values; SDIM: hash the behaviours "
                  "into bucket sums) + score; online = score only, with the per-user state "
                  "cached (SDIM's BSE service; a DARE key/value cache).", "",
                  "| model | L | ms per 1k (end to end) | ms per 1k (online) | threads | "
                  "verdict |", "|---|---|---|---|---|---|"]
        for r in sorted(cost, key=lambda r: (order.index(r["model"]), r["length"])):
            lines.append(f"| {r['model']} | {r['length']:,} | {r['ms_per_1k']:.1f} | "
                         f"{r['ms_per_1k_online']:.1f} | {r['threads']} | {r['verdict']} |")
        lines.append("")
        by = {(r["model"], r["length"]): r for r in cost}
        for model in ("sdim", "dare"):
            ls = sorted(L for m, L in by if m == model)
            if len(ls) >= 2:
                lo, hi = by[(model, ls[0])], by[(model, ls[-1])]
                for field, what in (("ms_per_1k_online", "online"), ("ms_per_1k", "end to end")):
                    ratio = hi[field] / lo[field]
                    lines.append(f"- {model} {what}: L = {ls[0]:,} -> {ls[-1]:,} "
                                 f"({ls[-1] // ls[0]}x longer) costs {ratio:.2f}x "
                                 f"({'flat within 20%' if ratio <= 1.2 else 'not flat'}).")
        lines.append("")

    sp = [r for k, r in rows.items() if k.startswith("splits/")]
    if sp:
        lines += ["### MovieLens CTR test sets: global time split vs per-user split", "",
                  "Label = rating >= 4, every rating a sample (the `ctr` section's data). `time`: "
                  "samples at/after the 90% time quantile test (the `ctr` section's rows); "
                  "`user`: each user's last 10% of events test (`data.split: user`). Cold = test "
                  "impressions with fewer than 20 history events. `python benchmarks/ctr_long.py "
                  "--part splits --datasets ml-latest-small ml-100k`.", "",
                  "| dataset | split | test users | test impressions | heaviest user's share | "
                  "cold impressions | train impressions |", "|---|---|---|---|---|---|---|"]
        for r in sorted(sp, key=lambda r: r["dataset"]):
            for split in ("time", "user"):
                x = r[split]
                lines.append(f"| {r['dataset']} | {split} | {x['test_users']:,} | "
                             f"{x['test_samples']:,} | {x['heaviest_user_share']:.1%} | "
                             f"{x['cold_impressions']:,} | {x['train_samples']:,} |")
        lines.append("")
    rs_rows = [r for k, r in rows.items() if k.startswith("resplit/")]
    if rs_rows:
        lines += ["### MovieLens CTR rows re-split: every user in the test set", "",
                  "Label = rating >= 4, history = all earlier ratings. `time` = the global time "
                  "split of the `ctr` section (last 10% of time tests); `user` = the same "
                  "quantiles over each user's own events (each user's last 10% test, the 10% "
                  "before validate). Cold = test impressions with fewer than 20 history events.",
                  "",
                  "| dataset | model | seed | time split: test users / heaviest user share | "
                  "user split: test users / heaviest share | test AUC [95% CI] | GAUC [95% CI] | "
                  "cold AUC (impr.) | warm AUC | epochs (best) | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rs_rows, key=lambda r: (r["dataset"], r["model"], r["seed"])):
            t, ts = r["test"], r["time_split"]
            cold, warm = t["cold_warm"]
            lines.append(
                f"| {r['dataset']} | {r['model']} | {r['seed']} | {ts['test_users']:,} / "
                f"{ts['heaviest_user_share']:.1%} | {t['users']:,} / "
                f"{t['heaviest_user_share']:.1%} | {ci(t, 'auc')} | {ci(t, 'gauc')} | "
                f"{cold['auc']:.4f} ({cold['impressions']:,}) | "
                f"{warm['auc']:.4f} ({warm['impressions']:,}) | {r['train']['epochs']} "
                f"({r['train']['best_epoch']}){' unconverged' if r['unconverged'] else ''} | "
                f"{r['verdict']} |")
        lines.append("")
    dates = sorted({r["date"] for r in rows.values()})
    if dates:
        stops = sorted({r["train"]["stopped"] for r in rows.values() if "train" in r})
        lines.append(f"Rows run {dates[0]} .. {dates[-1]}, commits "
                     f"{', '.join(sorted({r['commit'] for r in rows.values()}))}; training "
                     f"stopped: {'; '.join(stops) or '-'}.")
    publish("ctr_long", "Long-history CTR (ML-1M), CTR intervals, cold/warm users, re-split rows",
            lines, write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["ml1m", "resplit", "splits", "cost", "table"],
                    required=True)
    ap.add_argument("--models", nargs="+", default=["din", "sim", "twin", "sdim", "dare"])
    ap.add_argument("--lengths", nargs="+", default=["100", "1000", "all"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[42])
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small"])
    ap.add_argument("--targets-per-user", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch (rows kept apart)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    args = ap.parse_args()
    if args.part != "table":
        ensure_quiet(args.no_quiet)
        setup_torch(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        {"ml1m": run_ml1m, "resplit": run_resplit, "splits": run_splits,
         "cost": run_cost}[args.part](args)
    render(not args.no_write and not args.smoke)


if __name__ == "__main__":
    main()
