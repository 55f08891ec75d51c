"""Detection benchmark: wiki-vandals (event sequences) and petgen-wiki (post texts).

Every row uses the same seeded, stratified user split (70/10/20, seed 0); neural models pick
their epoch on validation ROC-AUC and their decision thresholds on validation users; test users
are touched once. Writes the `detect` section of benchmarks/RESULTS.md and, per row, a JSON file
under benchmarks/_work/detect/.

    nice -n 10 python benchmarks/detect.py                          # everything
    nice -n 10 python benchmarks/detect.py --only wiki --models gru logreg pages
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import machine_description, update_section  # noqa: E402

from userseq.core.artifacts import write_json  # noqa: E402
from userseq.core.errors import ConfigError  # noqa: E402
from userseq.detect.baselines import fit_baseline  # noqa: E402
from userseq.detect.data import (  # noqa: E402
    load_petgen_wiki,
    load_wiki_vandals,
    stratified_folds,
    stratified_split,
)
from userseq.detect.estimator import UserDetector, train_and_evaluate  # noqa: E402
from userseq.metrics.classification import best_threshold, binary_metrics  # noqa: E402

WORK = HERE / "_work" / "detect"
KS = [1, 2, 5, 10]
WIKI_BASELINES = {"logreg": "baseline logreg", "gbdt": "baseline gbdt", "pages": "baseline pages",
                  "gbdt-prefix": "baseline gbdt-prefix (one GBDT per k, + page vandal rate)",
                  "gbdt-prefix-name": "baseline gbdt-prefix-name (+ user-name features: not "
                                      "behaviour)"}
WIKI_NEURAL = {"gru": {"model.max_len": 50, "train.batch_size": 256, "train.epochs": 6,
                       "train.patience": 2},
               "transformer": {"model.max_len": 50, "train.batch_size": 256, "train.epochs": 6,
                               "train.patience": 2, "model.layers": 2}}
# text models run with their defaults (detect/models.py DETECT_MODELS, chosen on validation
# users)
TEXT_NEURAL = ("hlstm", "cnn", "minilm")
ORDER = ("wiki-logreg", "wiki-gbdt", "wiki-pages", "wiki-gbdt-prefix", "wiki-gbdt-prefix-name",
         "wiki-gru", "wiki-transformer", "wiki-leak-gbdt", "petgen-tfidf", "petgen-hlstm",
         "petgen-cnn", "petgen-minilm")


def baseline_row(name, data, split, leak=False):
    t = time.time()
    score = fit_baseline(name, data, split.train)
    y = data.labels
    res = {"test": None, "first_k": {}}
    for k in [*KS, None]:
        thr = best_threshold(y[split.valid], score(split.valid, k))
        m = binary_metrics(y[split.test], score(split.test, k), thr)
        res["first_k"][str(k or "all")] = m
    res["test"] = res["first_k"]["all"]
    res["seconds"] = time.time() - t
    return res


def baseline_cv(name, data, folds=5):
    """Stratified k-fold test metrics (mean, std) of a baseline, as `userseq detect train --folds`
    reports them."""
    y, runs = data.labels, []
    for f in stratified_folds(data.labels, folds, 0.1, seed=0):
        score = fit_baseline(name, data, f.train)
        runs.append(binary_metrics(y[f.test], score(f.test),
                                   best_threshold(y[f.valid], score(f.valid))))
    test = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    test.update({f"{k}_std": float(np.std([r[k] for r in runs])) for k in runs[0] if k != "n"})
    return {"folds": folds, "test": test}


def cv_line():
    """One line with the petgen-wiki 5-fold cross-validation results that exist under WORK."""
    parts = []
    for name in ("tfidf", *TEXT_NEURAL):
        f = WORK / f"cv-petgen-{name}" / "metrics.json"
        if f.exists():
            t = json.loads(f.read_text())["test"]
            parts.append(f"{name} ROC-AUC {t['roc_auc']:.3f} ± {t['roc_auc_std']:.3f}, "
                         f"accuracy {t['accuracy']:.3f}")
    if not parts:
        return ""
    return ("petgen-wiki, 5-fold cross-validation (same stratified folds, seed 0; neural models "
            "with `userseq detect train --data petgen-wiki --model M --folds 5 --threads 1 "
            "--max-minutes 10 --out benchmarks/_work/detect/cv-petgen-M`): "
            + "; ".join(parts) + ".")


def first_edit_line(order):
    """The best first-edit accuracy without leakage: behaviour only, and with user-name features."""
    acc = {}
    for k in order:
        f = WORK / f"{k}.json"
        if k.startswith("wiki-") and "leak" not in k and f.exists():
            acc[k] = json.loads(f.read_text())["first_k"]["1"]["accuracy"]
    behaviour = {k: v for k, v in acc.items() if not k.endswith("-name")}
    if not behaviour:
        return ""
    best = max(behaviour, key=behaviour.get)
    line = (f"Best first-edit accuracy without leakage columns: {behaviour[best]:.4f} ({best}; "
            "target 0.80, VEWS 0.774)")
    named = {k: v for k, v in acc.items() if k.endswith("-name")}
    if named:
        k = max(named, key=named.get)
        line += f"; {named[k]:.4f} when the account name's features are added ({k})"
    return line + "."


def neural_row(name, data, over, max_minutes, dataset):
    t = time.time()
    det = UserDetector(name, overrides={**over, "train.max_minutes": max_minutes,
                                        "train.threads": 1, "dataset": dataset, "first_k": KS})
    m = train_and_evaluate(data, det, WORK / f"{dataset}-{name}", quiet=True)
    m["seconds"] = time.time() - t
    return m


def fmt_row(dataset, label, m, seconds, load):
    t, fk = m["test"], m["first_k"]
    return (f"| {dataset} | {label} | {t['accuracy']:.4f} | {t['roc_auc']:.4f} "
            f"| {t['pr_auc']:.4f} | {t['f1']:.4f} "
            f"| {t['tpr@fpr0.05']:.3f} | {fk['1']['accuracy']:.4f} | {fk['2']['accuracy']:.4f} "
            f"| {fk['5']['accuracy']:.4f} | {fk['10']['accuracy']:.4f} | {seconds:.0f} "
            f"| {load:.1f} |")


def record(rows, key, dataset, label, m, command):
    """Keep one finished row: its metrics JSON, its table line (also in row-<key>.json)."""
    load = os.getloadavg()[0]
    rows[key] = {"line": fmt_row(dataset, label, m, m.get("seconds", 0), load), "command": command}
    write_json(m, WORK / f"{key}.json")
    (WORK / f"row-{key}.json").write_text(json.dumps(rows[key], indent=1))
    print(rows[key]["line"], flush=True)


def run_wiki(args, rows, want) -> None:
    data = load_wiki_vandals()
    split = stratified_split(data.labels, 0.1, 0.2, seed=0)
    for name, label in WIKI_BASELINES.items():
        if want(name):
            record(rows, f"wiki-{name}", "wiki-vandals", label, baseline_row(name, data, split),
                   f"python benchmarks/detect.py --only wiki --models {name}")
    for name, over in WIKI_NEURAL.items():
        if want(name):
            m = neural_row(name, data, over, args.max_minutes, "wiki-vandals")
            record(rows, f"wiki-{name}", "wiki-vandals", f"{name} (events)", m,
                   f"python benchmarks/detect.py --only wiki --models {name} "
                   f"--max-minutes {args.max_minutes:g} (settings: {json.dumps(over)})")
    if want("leak"):
        leak = load_wiki_vandals(with_leakage=True)
        record(rows, "wiki-leak-gbdt", "wiki-vandals", "**LEAKAGE** gbdt + revert/STiKi columns",
               baseline_row("gbdt", leak, split),
               "python benchmarks/detect.py --only wiki --models leak")


def run_petgen(args, rows, want) -> None:
    data = load_petgen_wiki()
    split = stratified_split(data.labels, 0.1, 0.2, seed=0)
    if want("tfidf"):
        record(rows, "petgen-tfidf", "petgen-wiki", "baseline tfidf",
               baseline_row("tfidf", data, split),
               "python benchmarks/detect.py --only petgen --models tfidf")
        (WORK / "cv-petgen-tfidf").mkdir(exist_ok=True)
        write_json(baseline_cv("tfidf", data), WORK / "cv-petgen-tfidf" / "metrics.json")
    for name in TEXT_NEURAL:
        if want(name):
            try:
                m = neural_row(name, data, {}, args.max_minutes, "petgen-wiki")
            except ConfigError as e:  # minilm without its optional packages
                print(f"{name}: skipped ({e})", flush=True)
                continue
            record(rows, f"petgen-{name}", "petgen-wiki", f"{name} (posts)", m,
                   f"userseq detect train --data petgen-wiki --model {name} --threads 1 "
                   f"--max-minutes {args.max_minutes:g}")


def section_body(rows, order) -> str:
    header = ("| data | model | acc | ROC-AUC | PR-AUC | F1 | TPR@FPR5% | acc first 1 | first 2 "
              "| first 5 | first 10 | seconds | load avg |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    return "\n".join([
        f"Machine: {machine_description()} (shared; `load avg` = 1-min load average when the row "
        "finished). Split: stratified by user, 70/10/20, seed 0 (one split, not "
        "cross-validation); thresholds and epochs chosen on validation users. `first k` = each "
        "test user scored from their first k events (posts); 'acc' uses all events (the first "
        "max_len=50 for the neural event models).",
        "", header, *[rows[k]["line"] for k in order], "",
        "VEWS (Kumar et al. 2015) reports 87.82% accuracy (10-fold CV, no revert information) and "
        "77.4% from the first edit. " + first_edit_line(order) + " The gbdt-prefix rows train one "
        "model per prefix length k and add the page vandal rate among training users "
        "(docs/detection.md). The LEAKAGE row uses after-the-fact columns (isReverted, "
        "cluebotRevert, STiKi) and is not early detection.", "",
        "petgen-wiki: hlstm and cnn run with their per-model defaults, chosen on the 80 validation "
        "users (detect/models.py DETECT_MODELS; earlier rows at 0.49/0.61 ROC-AUC had stopped "
        "after 4-5 epochs under a 4-minute budget on a starved CPU, on the loss plateau of the "
        "first ~5 epochs). They now train to convergence (training loss near 0, best validation "
        "epoch kept), but word-level models learned from 556 training users overfit, and they "
        "still trail TF-IDF + logistic regression; on the seed-0 split every model scores clearly "
        "higher on its 80 validation users than on its 158 test users, so single-split "
        "differences of a few hundredths are noise. "
        + cv_line(), "", "Commands:", "",
        *[f"- {k}: `{rows[k]['command']}`" for k in order],
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["wiki", "petgen"], default=None)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--table-only", action="store_true",
                    help="rewrite RESULTS.md from the recorded rows")
    ap.add_argument("--max-minutes", type=float, default=12.0,
                    help="training budget per neural model")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    # legacy single file; rows now live in row-<key>.json (parallel runs)
    rows_file = WORK / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else {}

    def want(name):
        return args.models is None or name in args.models

    if args.only in (None, "wiki") and not args.table_only:
        run_wiki(args, rows, want)
    if args.only in (None, "petgen") and not args.table_only:
        run_petgen(args, rows, want)

    for f in WORK.glob("row-*.json"):  # rows written by other (parallel) runs
        rows[f.stem[4:]] = json.loads(f.read_text())
    order = [k for k in ORDER if k in rows]
    update_section("detect", "Malicious-user detection (wiki-vandals, petgen-wiki)",
                   section_body(rows, order))


if __name__ == "__main__":
    main()
