"""Text detectors on petgen-wiki with a fixed post count (issue #19, item 1).

petgen-wiki is confounded by post count (benign median 20 posts, malicious 12). Every row here
reads the LAST 8 posts of each user (`detect.data.fix_post_count`; users with fewer are dropped,
counted per class) except the `length (raw)` row, which shows the confound on the untouched data.
Seeded stratified user splits (70/10/20, split seeds 0, 1, 2); hyper-parameters (C of the linear
models) and epochs (neural models) are chosen on validation users; test users are scored once.

Parts:
* `models`: length-only, token-length, TF-IDF+LR, MiniLM+LR, MiniLM+attention, MiniLM+transformer
  and the hierarchical LSTM, per seed.
* `curve`: learning curve (share of the training users) of TF-IDF+LR and MiniLM+LR.
* `noise`: label-noise checks: duplicate posts shared by both classes, and out-of-fold
  confident mistakes of MiniLM+LR (5-fold over all users).
* `table`: the `text-detect` section of RESULTS.md from the committed rows.

    python benchmarks/text_detect.py --part models --seeds 0 1 2
    python benchmarks/text_detect.py --part curve
    python benchmarks/text_detect.py --part noise
    python benchmarks/text_detect.py --part table
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

from userseq.detect.data import load_text_data, stratified_folds, stratified_split  # noqa: E402
from userseq.detect.estimator import UserDetector  # noqa: E402
from userseq.detect.text_baselines import fit_text_baseline  # noqa: E402
from userseq.metrics.classification import best_threshold, binary_metrics  # noqa: E402

STORE = HERE / "text_detect_runs.json"
LOCK = HERE / "_work" / "text_detect.lock"
BASELINES = ("length", "tokens", "tfidf-lr", "minilm-lr")
NEURAL = ("minilm-attn", "minilm", "bow-minilm", "bow-attn", "hlstm", "cnn")
FIXED = 8


def metrics_row(y, s_valid, y_valid, s_test, y_test) -> dict:
    thr = best_threshold(y_valid, s_valid)
    m = binary_metrics(y_test, s_test, thr)
    return {k: float(m[k]) for k in ("roc_auc", "f1", "accuracy", "pr_auc")}


def part_models(a) -> None:
    raw = load_text_data("petgen-wiki", fixed_posts=0)
    data = load_text_data("petgen-wiki", fixed_posts=FIXED)
    y = data.labels
    for seed in a.seeds:
        split = stratified_split(y, 0.1, 0.2, seed)
        rsplit = stratified_split(raw.labels, 0.1, 0.2, seed)
        jobs = [("length (raw)", raw, rsplit, "length")] + [
            (m, data, split, m) for m in a.models if m in BASELINES] + [
            (m, data, split, m) for m in a.models if m in NEURAL]
        for name, d, sp, model in jobs:
            results.log(f"seed {seed}: {name}")
            with results.LoadMonitor() as mon:
                t = time.time()
                extra = {}
                if model in BASELINES:
                    score, extra = fit_text_baseline(model, d, sp.train, sp.valid, seed)
                    sv, st = score(sp.valid), score(sp.test)
                else:
                    over = {"train.seed": seed, "split_seed": seed, "train.threads": 2,
                            "train.max_minutes": a.max_minutes, "fixed_posts": FIXED,
                            "model.max_posts": FIXED, "dataset": "petgen-wiki"}
                    det = UserDetector(model, overrides=over).fit(d, sp, quiet=True)
                    sv, st = det.predict_proba(d, sp.valid), det.predict_proba(d, sp.test)
                    ts = det.train_state_
                    extra = {"epochs": ts["epochs"], "best_epoch": ts["best_epoch"],
                             "stopped": ts["stopped"],
                             "unconverged": ts["best_epoch"] == ts["epochs"]}
                secs = time.time() - t
            row = {"model": name, "seed": seed, "seconds": round(secs, 1),
                   **metrics_row(d.labels, sv, d.labels[sp.valid], st, d.labels[sp.test]),
                   "valid_roc_auc": float(binary_metrics(d.labels[sp.valid], sv)["roc_auc"]),
                   "n_test": len(sp.test), "post_count": d.post_count or {"fixed_posts": 0},
                   **extra, **results.provenance(mon, seeds=[seed], data="petgen-wiki")}
            results.save_row(STORE, f"models/{name}/s{seed}", row, LOCK)
            results.log(f"  roc_auc {row['roc_auc']:.3f} f1 {row['f1']:.3f} ({secs:.0f}s)")


def part_curve(a) -> None:
    data = load_text_data("petgen-wiki", fixed_posts=FIXED)
    y = data.labels
    for seed in a.seeds:
        split = stratified_split(y, 0.1, 0.2, seed)
        rng = np.random.default_rng(seed)
        order = rng.permutation(split.train)
        for share in (0.2, 0.4, 0.6, 0.8, 1.0):
            tr = np.sort(order[: int(round(share * len(order)))])
            for model in ("tfidf-lr", "minilm-lr"):
                with results.LoadMonitor() as mon:
                    score, extra = fit_text_baseline(model, data, tr, split.valid, seed)
                    row = {"model": model, "seed": seed, "share": share, "n_train": len(tr),
                           **metrics_row(y, score(split.valid), y[split.valid],
                                         score(split.test), y[split.test]), **extra}
                row.update(results.provenance(mon, seeds=[seed], data="petgen-wiki"))
                results.save_row(STORE, f"curve/{model}/{share}/s{seed}", row, LOCK)
                results.log(f"{model} share {share} seed {seed}: {row['roc_auc']:.3f}")


def part_noise(a) -> None:
    data = load_text_data("petgen-wiki", fixed_posts=FIXED)
    y = data.labels
    with results.LoadMonitor() as mon:
        owners: dict[str, set[int]] = {}
        for u, ps in enumerate(data.posts):
            for p in ps:
                owners.setdefault(p.strip().lower(), set()).add(int(y[u]))
        both = {p for p, c in owners.items() if len(c) == 2}
        users_with_shared = [u for u, ps in enumerate(data.posts)
                             if any(p.strip().lower() in both for p in ps)]
        seqs: dict[tuple, set[int]] = {}
        for u, ps in enumerate(data.posts):
            seqs.setdefault(tuple(ps), set()).add(int(y[u]))
        # out-of-fold scores of MiniLM+LR (5 folds, C chosen on each fold's validation users)
        oof = np.zeros(len(y))
        for f in stratified_folds(y, 5, 0.1, seed=0):
            score, _ = fit_text_baseline("minilm-lr", data, f.train, f.valid, 0)
            oof[f.test] = score(f.test)
        conf_wrong = ((y == 1) & (oof < 0.1)) | ((y == 0) & (oof > 0.9))
        row = {"users": len(y), "distinct_posts": len(owners),
               "posts_in_both_classes": len(both),
               "users_with_a_post_in_both_classes": len(users_with_shared),
               "identical_sequences_conflicting_labels": sum(len(c) == 2 for c in seqs.values()),
               "oof_roc_auc": float(binary_metrics(y, oof)["roc_auc"]),
               "oof_confident_mistakes": int(conf_wrong.sum()),
               "oof_confident_mistakes_malicious": int((conf_wrong & (y == 1)).sum()),
               "oof_confident_mistakes_benign": int((conf_wrong & (y == 0)).sum()),
               "malicious_scored_below_0.3": int(((y == 1) & (oof < 0.3)).sum()),
               "benign_scored_above_0.7": int(((y == 0) & (oof > 0.7)).sum())}
    row.update(results.provenance(mon, seeds=[0], data="petgen-wiki"))
    results.save_row(STORE, "noise", row, LOCK)
    print(row)


def _ms(vals) -> str:
    return results.mean_std(vals) if vals else "—"


def part_table(a) -> None:
    rows = results.load_rows(STORE)
    models = [r for k, r in rows.items() if k.startswith("models/")]
    lines = [f"Data: petgen-wiki, the last {FIXED} posts of every user (`userseq detect train "
             f"--data petgen-wiki` default, `--fixed-posts`), user-level stratified splits "
             "70/10/20, split seeds as listed; C / epochs / thresholds chosen on validation "
             "users. Rows: `python benchmarks/text_detect.py --part models --seeds 0 1 2` "
             f"(dates: {results.run_dates(models) if models else '—'}).", ""]
    pc = next((r["post_count"] for r in models if r["post_count"].get("fixed_posts")), None)
    if pc:
        d = pc["dropped"]
        lines += [f"Fixed post count: {pc['fixed_posts']} ({pc['keep']}) keeps {pc['users']} "
                  f"users; dropped {d.get('benign')} benign and {d.get('malicious')} "
                  "malicious users with fewer posts.", ""]
    lines += ["| model | data | ROC-AUC | F1 | accuracy | seeds | epochs (best/ran) | verdicts |",
              "|---|---|---:|---:|---:|---|---|---|"]
    order = ["length (raw)", *BASELINES, *NEURAL]
    for name in order:
        rs = [r for r in models if r["model"] == name]
        if not rs:
            continue
        data = "raw (all posts)" if name == "length (raw)" else f"last {FIXED} posts"
        ep = ", ".join(f"{r['best_epoch']}/{r['epochs']}" + (" unconverged" if r.get(
            "unconverged") else "") for r in rs if "epochs" in r) or "—"
        lines.append(f"| {name} | {data} | {_ms([r['roc_auc'] for r in rs])} | "
                     f"{_ms([r['f1'] for r in rs])} | {_ms([r['accuracy'] for r in rs])} | "
                     f"{sorted(r['seed'] for r in rs)} | {ep} | "
                     f"{', '.join(sorted({r.get('verdict', '?') for r in rs}))} |")
    curve = [r for k, r in rows.items() if k.startswith("curve/")]
    if curve:
        lines += ["", "Learning curve (test ROC-AUC vs share of the training users; "
                  "`--part curve`):", "", "| model | " + " | ".join(
                      f"{s:.0%}" for s in (0.2, 0.4, 0.6, 0.8, 1.0)) + " |",
                  "|---|" + "---:|" * 5]
        for model in ("tfidf-lr", "minilm-lr"):
            cells = []
            for s in (0.2, 0.4, 0.6, 0.8, 1.0):
                v = [r["roc_auc"] for r in curve if r["model"] == model and r["share"] == s]
                n = [r["n_train"] for r in curve if r["model"] == model and r["share"] == s]
                cells.append(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
                             f" ({n[0]} users, n={len(v)})" if v else "—")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    noise = rows.get("noise")
    if noise:
        lines += ["", "Label-noise checks (`--part noise`): "
                  f"{noise['posts_in_both_classes']} of {noise['distinct_posts']} distinct posts "
                  f"appear in both classes ({noise['users_with_a_post_in_both_classes']} users "
                  f"hold one); {noise['identical_sequences_conflicting_labels']} identical "
                  "sequences with conflicting labels. Out-of-fold MiniLM+LR (5 folds): ROC-AUC "
                  f"{noise['oof_roc_auc']:.3f}; confident mistakes (p < 0.1 for a malicious "
                  f"user, > 0.9 for a benign one): {noise['oof_confident_mistakes']} "
                  f"({noise['oof_confident_mistakes_malicious']} malicious, "
                  f"{noise['oof_confident_mistakes_benign']} benign); "
                  f"{noise['malicious_scored_below_0.3']} malicious users score < 0.3 and "
                  f"{noise['benign_scored_above_0.7']} benign users > 0.7."]
    results.publish("text-detect", "Text detectors on petgen-wiki, fixed post count "
                    "(issue #19)", lines, write=not a.no_write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["models", "curve", "noise", "table"], default="models")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--models", nargs="*", default=[*BASELINES, *NEURAL])
    ap.add_argument("--max-minutes", type=float, default=1.5)
    ap.add_argument("--no-quiet", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if a.part != "table":
        results.ensure_quiet(a.no_quiet)
    {"models": part_models, "curve": part_curve, "noise": part_noise, "table": part_table}[
        a.part](a)
    if a.part != "table":
        part_table(a)


if __name__ == "__main__":
    main()
