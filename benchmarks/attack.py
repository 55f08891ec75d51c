"""Adversarial audit benchmark on petgen-wiki: methods x detectors x white/black box, text quality,
defence.

Detector runs (hlstm, cnn, minilm) are read from --det-dir (DIR/det-NAME, made by `userseq detect
train`; missing ones are trained here with --train-minutes each, not counted in the audit time).
Then, with one progress bar:

* every attack method is fitted against each token detector (hlstm, cnn: gradients or score queries,
  training users only) and writes one post per test user; each post set is scored by every detector:
  source == target is the white-box row, the others are black-box transfer rows (the source is the
  surrogate). copycat and lm do not look at any detector; textbugger also queries minilm directly.
* text quality of every post set (BLEU, self-BLEU, perplexity under one separately trained LM,
  MiniLM style / context cosine, OOV and degenerate shares).
* defence: hlstm retrained with attack posts (one per malicious training user, methods mixed round
  robin) appended to copies of malicious training users; then every method attacks it again
  (adaptive, white-box) and the table shows clean and attacked accuracy before / after.

Writes the `attack` section of benchmarks/RESULTS.md, benchmarks/attack_audit.png and per-row JSON
under benchmarks/_work/attack/.

    python benchmarks/attack.py               # resumable: finished jobs are kept in
                                              # benchmarks/_work/attack/jobs/
    python benchmarks/attack.py --table-only  # RESULTS.md + figure from what has finished
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import machine_description, update_section  # noqa: E402

from userseq.attack.config import METHODS  # noqa: E402
from userseq.attack.estimator import (  # noqa: E402
    Attacker,
    efficacy,
    reference_quality,
    run_split,
    same_split,
)
from userseq.attack.petgen import cached_generator  # noqa: E402
from userseq.attack.quality import SentenceVectors  # noqa: E402
from userseq.attack.target import TargetDetector  # noqa: E402
from userseq.core.artifacts import write_json  # noqa: E402
from userseq.detect.augment import adversarial_augment  # noqa: E402
from userseq.detect.data import load_petgen_wiki  # noqa: E402
from userseq.detect.estimator import UserDetector, train_and_evaluate  # noqa: E402

WORK = HERE / "_work" / "attack"
DETECTORS = ("hlstm", "cnn", "minilm")
SOURCES = ("hlstm", "cnn")  # token detectors: gradients for petgen / hotflip / trigger
DETECTOR_FREE = ("copycat", "lm")


def train_detector(name: str, data, out: Path, minutes: float, augment=None) -> None:
    det = UserDetector(name, overrides={"train.epochs": 30, "train.batch_size": 32,
                                        "train.max_minutes": minutes, "train.patience": 6,
                                        "dataset": "petgen-wiki"})
    train_and_evaluate(data, det, out, quiet=True, augment=augment)


def fmt(x, d=3):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--det-dir", type=Path, default=WORK)
    ap.add_argument("--detectors", nargs="*", default=list(DETECTORS))
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--train-minutes", type=float, default=10.0,
                    help="budget of a missing detector's training")
    ap.add_argument("--defence-minutes", type=float, default=4.0,
                    help="budget of the adversarially trained hlstm")
    ap.add_argument("--no-defence", action="store_true")
    ap.add_argument("--overrides", type=json.loads, default={},
                    help="attack config overrides (JSON)")
    ap.add_argument("--table-only", action="store_true",
                    help="rewrite RESULTS.md and the figure from audit.json")
    return ap.parse_args()


def load_detectors(args: argparse.Namespace, data) -> tuple[dict, object]:
    """The detectors of `args` (trained first where missing) and their common user split."""
    for name in args.detectors:
        d = args.det_dir / f"det-{name}"
        if not (d / "model.safetensors").is_file():
            print(f"training detector {name} ({args.train_minutes:g} min budget) -> {d}",
                  flush=True)
            train_detector(name, data, d, args.train_minutes)
    dets = {n: TargetDetector.load(args.det_dir / f"det-{n}") for n in args.detectors}
    split = run_split(args.det_dir / f"det-{args.detectors[0]}", data, dets[args.detectors[0]])
    for n in args.detectors[1:]:
        same_split(split, run_split(args.det_dir / f"det-{n}", data, dets[n]), n)
    return dets, split


def plan_jobs(args: argparse.Namespace, dets: dict, sources: list[str]):
    """(method, source) fits: those against the first source, the others, and the defence's.

    copycat and lm are detector-independent. hlstm-source jobs and the defence come first; every
    finished job is saved under WORK/jobs/ and skipped when the script runs again (resumable).
    """
    jobs = [(m, s) for s in sources for m in args.methods
            if m not in DETECTOR_FREE or s == sources[0]]
    if "minilm" in dets and "textbugger" in args.methods:
        jobs.append(("textbugger", "minilm"))
    first = [j for j in jobs if j[1] == sources[0]]
    rest = [j for j in jobs if j[1] != sources[0]]
    no_defence = args.no_defence or "hlstm" not in dets
    defence_jobs = [] if no_defence else [(m, "hlstm-adv") for m in args.methods]
    return first, rest, defence_jobs


class Audit:
    """One audit run: the detectors, their split, the shared LMs and the progress bar its jobs
    share."""

    def __init__(self, args: argparse.Namespace, data, dets: dict, split) -> None:
        self.args, self.data, self.dets, self.split = args, data, dets, split
        self.sources = [s for s in SOURCES if s in dets]
        self.vocab = dets[self.sources[0]].vocab
        for s in self.sources[1:]:
            # one pretrained generator serves both
            dets[s].check_vocab(self.vocab, f"{self.sources[0]} detector")
        self.test = np.asarray(split.test)
        self.tr, self.va = np.asarray(split.train), np.asarray(split.valid)
        self.y = data.labels
        self.mal_train = self.tr[self.y[self.tr] == 1]
        self.first, self.rest, self.defence_jobs = plan_jobs(args, dets, self.sources)
        self.jobdir = WORK / "jobs"
        self.jobdir.mkdir(parents=True, exist_ok=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn())
        self.t0 = time.time()
        self.fitted: dict[str, tuple] = {}

    def log(self, msg: str) -> None:
        """One line per step as well (logs, CI: the bar itself draws on a terminal only)."""
        if not self.progress.console.is_terminal:
            self.progress.console.print(f"[{(time.time() - self.t0) / 60:5.1f} min] {msg}",
                                        highlight=False)

    def prepare(self) -> None:
        """The progress bar's task, the sentence vectors, the pretrained generator and the
        perplexity LM shared by every job."""
        total = len(self.first) + len(self.rest) + len(self.defence_jobs) + 2
        self.task = self.progress.add_task("attack audit", total=total)
        self.progress.update(self.task, description="shared LMs + sentence vectors")
        cfg = self.cfg = Attacker(config=None, overrides=self.args.overrides).config
        self.vectors = SentenceVectors(cfg.quality_embedding,
                                       [p for u in self.tr for p in self.data.posts[u]])
        from userseq.attack.data import attack_users

        src = self.dets[self.sources[0]]
        self.users = attack_users(self.data, src.max_posts)
        self.cache = WORK / "cache"
        self.pretrained = cached_generator(self.cache, self.users, self.vocab, self.tr, self.va,
                                           cfg.generator, cfg.pretrain, src.max_tokens, True,
                                           quiet=True)
        eval_cfg = cfg.eval_lm.model_copy(update={"seed": cfg.eval_lm.seed + 1})
        self.eval_lm = cached_generator(self.cache, self.users, self.vocab, self.tr, self.va,
                                        cfg.generator, eval_cfg, src.max_tokens, False, quiet=True)
        self.progress.advance(self.task)
        self.log(f"pretrained generator {self.pretrained.train_state}, "
                 f"eval LM {self.eval_lm.train_state}")

    def assemble(self) -> dict:
        return assemble(self.args, self.dets, self.test, self.y, self.pretrained, self.eval_lm,
                        self.jobdir, self.cfg)

    def fit(self, method: str, src):
        """The fitted attacker and its test posts (detector-free methods: the same posts
        again)."""
        if method in DETECTOR_FREE and method in self.fitted:
            return self.fitted[method]
        pretrained = self.pretrained if src.white_box and src.vocab == self.vocab else None
        att = Attacker(method, overrides=self.args.overrides).fit(
            self.data, src, self.split, cache_dir=self.cache, quiet=True,
            pretrained=pretrained)  # else its own
        posts = att.generate(self.test)
        self.fitted[method] = (att, posts)
        return att, posts

    def examples(self, posts: list[str]) -> list[dict]:
        users, y = self.users, self.y
        return [{"user": users.user_ids[i], "label": int(y[i]), "context": users.contexts[i][:100],
                 "real": users.final[i][:160], "generated": p[:160]}
                for i, p in list(zip(self.test, posts, strict=True))[:40:8]]

    def run_job(self, method: str, src, targets: dict, label: str, train_posts: bool = False):
        """Fit, generate, score and rate one post set; the saved job is reused on a rerun."""
        key = f"{method}@{label}"
        path = self.jobdir / f"{key}.json"
        if path.is_file():
            self.progress.advance(self.task)
            return json.loads(path.read_text())
        self.progress.update(self.task, description=f"{method} via {label}")
        t, c = time.time(), time.process_time()
        att, posts = self.fit(method, src)
        fit_seconds = time.time() - t
        test = self.test
        job = {"key": key, "fit_seconds": fit_seconds, "rows": [],
               "quality": att.quality(test, posts, self.vectors, self.eval_lm,
                                      self.eval_lm.max_tokens),
               "reference": reference_quality(att, test, self.vectors, self.eval_lm),
               "examples": self.examples(posts)}
        for tname, tdet in targets.items():
            r = efficacy(tdet, att.users_, test, posts)
            r.pop("scores")
            setting = ("detector-free" if method in DETECTOR_FREE
                       else "white-box" if src is tdet else "black-box")
            job["rows"].append({"method": method, "source": label, "target": tname,
                                "setting": setting, "seconds": fit_seconds, **r,
                                "info": att.info_})
        if train_posts:
            pl.DataFrame({"user_id": [self.users.user_ids[u] for u in self.mal_train],
                          "post": att.generate(self.mal_train)}).write_parquet(
                self.jobdir / f"{method}-train.parquet")
        job["seconds"], job["cpu_seconds"] = time.time() - t, time.process_time() - c
        write_json(job, path)
        write_json(self.assemble(), WORK / "audit.json")
        self.log(f"{key}: {job['seconds']:.0f}s ({job['cpu_seconds']:.0f} CPU s); " + ", ".join(
            f"{o['target']} acc {o['clean']['accuracy']:.3f}->{o['attacked']['accuracy']:.3f}"
            for o in job["rows"]))
        self.progress.advance(self.task)
        return job

    def targets_of(self, s: str) -> dict:
        return {s: self.dets[s]} if s == "minilm" else self.dets

    def train_defence(self, adv_dir: Path) -> None:
        """hlstm retrained with one attack post per malicious training user, methods mixed round
        robin."""
        methods = self.args.methods
        tps = {m: pl.read_parquet(self.jobdir / f"{m}-train.parquet")["post"].to_list()
               for m in methods}
        posts = pl.DataFrame({"user_id": [self.users.user_ids[u] for u in self.mal_train],
                              "post": [tps[methods[k % len(methods)]][k]
                                       for k in range(len(self.mal_train))]})

        def augment(d, sp):
            return adversarial_augment(d, sp, posts, 1.0, 0)

        t, c = time.time(), time.process_time()
        train_detector("hlstm", self.data, adv_dir, self.args.defence_minutes, augment=augment)
        write_json({"seconds": time.time() - t, "cpu_seconds": time.process_time() - c},
                   self.jobdir / "defence-training.json")

    def defence(self) -> None:
        """The adversarially trained hlstm, then every method attacking it again."""
        adv_dir = WORK / "det-hlstm-adv"
        if not (adv_dir / "model.safetensors").is_file():
            self.progress.update(self.task, description="adversarial training of hlstm")
            self.train_defence(adv_dir)
        self.progress.advance(self.task)
        adv = TargetDetector.load(adv_dir)
        order = sorted(self.defence_jobs, key=lambda j: (j[0] != "petgen", j[0] == "textbugger"))
        for method, _ in order:
            self.run_job(method, adv, {"hlstm-adv": adv}, "hlstm-adv")

    def run(self) -> None:
        """Every job, in order: the first source's, the defence, the other sources'."""
        self.prepare()
        for method, s in self.first:
            self.run_job(method, self.dets[s], self.targets_of(s),
                         "-" if method in DETECTOR_FREE else s,
                         train_posts=bool(self.defence_jobs))
        if self.defence_jobs:
            self.defence()
        for method, s in self.rest:
            self.run_job(method, self.dets[s], self.targets_of(s), s)


def main() -> None:
    args = parse_args()
    if args.table_only:
        result = json.loads((WORK / "audit.json").read_text())
        plot(result, HERE / "attack_audit.png")
        write_results(result, args)
        return
    torch.set_num_threads(2)
    WORK.mkdir(parents=True, exist_ok=True)
    data = load_petgen_wiki()
    dets, split = load_detectors(args, data)
    audit = Audit(args, data, dets, split)
    with audit.progress:
        audit.run()
    result = audit.assemble()
    write_json(result, WORK / "audit.json")
    plot(result, HERE / "attack_audit.png")
    write_results(result, args)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, target in zip(axes, ("hlstm", "cnn"), strict=True):
        for x in r["rows"]:
            if x["target"] != target:
                continue
            key = f"{x['method']}@{x['source']}"
            q = r["quality"][key]
            marker = {"white-box": "o", "black-box": "^", "detector-free": "s"}[x["setting"]]
            ax.scatter(q["style_similarity"], x["attacked"]["accuracy"], marker=marker, s=50)
            ax.annotate(f"{x['method']} ({x['source']})",
                        (q["style_similarity"], x["attacked"]["accuracy"]),
                        fontsize=7, rotation=20)
        clean = next((x["clean"]["accuracy"] for x in r["rows"] if x["target"] == target), None)
        if clean is not None:
            ax.axhline(clean, color="grey", ls="--", label="clean accuracy")
        ax.set_xlabel("style similarity to the user's history (MiniLM cosine)")
        ax.set_ylabel("accuracy under attack (lower = stronger)")
        ax.set_title(f"target {target}: o white-box, ^ black-box, s no detector")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def assemble(args, dets, test, y, pretrained, eval_lm, jobdir: Path, cfg) -> dict:
    """audit.json content from the saved jobs (also after a partial run)."""
    jobs = {p.stem: json.loads(p.read_text()) for p in sorted(jobdir.glob("*@*.json"))}
    rows = [r for j in jobs.values() for r in j["rows"] if r["source"] != "hlstm-adv"]
    defence = []
    for key, j in jobs.items():
        if key.endswith("@hlstm-adv"):
            m = key.split("@")[0]
            before = next((r for r in rows if r["method"] == m and r["target"] == "hlstm"
                           and r["source"] in ("hlstm", "-")), None)
            if before is not None:
                defence.append({"method": m, "before": before, "after": j["rows"][0]})
    ref = next(iter(jobs.values()))["reference"] if jobs else None
    dt = jobdir / "defence-training.json"
    lm_seconds = pretrained.train_state.get("seconds", 0) + eval_lm.train_state.get("seconds", 0)
    detectors = {n: json.loads((args.det_dir / f"det-{n}" / "metrics.json").read_text())["test"]
                 for n in dets}
    result = {"n_test": len(test), "n_malicious_test": int(y[test].sum()), "rows": rows,
              "quality": {k: j["quality"] for k, j in jobs.items()}, "quality_real": ref,
              "defence": defence,
              "examples": {k: j["examples"] for k, j in jobs.items()},
              "audit_seconds": sum(j["seconds"] for j in jobs.values()),
              "audit_cpu_seconds": sum(j["cpu_seconds"] for j in jobs.values()),
              "lm_seconds": lm_seconds,
              "load": os.getloadavg()[0], "jobs_done": len(jobs),
              "detectors": detectors, "config": cfg.model_dump(mode="json")}
    if defence and dt.is_file():
        t = json.loads(dt.read_text())
        adv_metrics = WORK / "det-hlstm-adv" / "metrics.json"
        result["defence_detector"] = json.loads(adv_metrics.read_text())["test"]
        result["defence_training_seconds"] = t["seconds"]
        result["audit_seconds"] += t["seconds"]
        result["audit_cpu_seconds"] += t["cpu_seconds"]
    return result


def _summary_lines(r: dict) -> list[str]:
    """Machine, data, audit time and the detectors' clean test metrics."""
    return [
        f"Machine: {machine_description()} (shared with other jobs; 1-min load average at the "
        f"end: {r['load']:.1f}). "
        "Data: petgen-wiki (794 users), the detectors' stratified user split (70/10/20, seed 0): "
        "the attacks are "
        "fitted on training users (epochs chosen on validation users) and write one post per test "
        "user "
        f"({r['n_malicious_test']} malicious of {r['n_test']}). Figure: "
        "`benchmarks/attack_audit.png`. "
        f"Audit time (sum over the {r['jobs_done']} jobs and the defence training, a resumable "
        "run): "
        f"{r['audit_seconds'] / 60:.1f} min wall, {r['audit_cpu_seconds'] / 60:.1f} min of "
        "process CPU time "
        f"(torch on 2 threads), plus {r['lm_seconds'] / 60:.1f} min of generator and "
        "perplexity-LM pretraining "
        "(3-min budgets each; cached). The detectors were trained before it.", "",
        "Detectors (clean test metrics, threshold chosen on validation users):", "",
        "| detector | accuracy | F1 | ROC-AUC |", "|---|---:|---:|---:|",
        *[f"| {n} | {fmt(m['accuracy'])} | {fmt(m['f1'])} | {fmt(m['roc_auc'])} |"
          for n, m in r["detectors"].items()],
    ]


def _efficacy_lines(r: dict) -> list[str]:
    lines = [
        "", "### Efficacy (test users; 'attacked' = malicious users post the generated text)", "",
        "`success` = share of the malicious users flagged on the clean sequence that are no "
        "longer flagged; "
        "`P(mal)` = mean detector score of malicious users, clean -> attacked. Source = the "
        "detector the attack "
        "was optimised against (white-box when it is the target; black-box transfer otherwise; "
        "copycat and lm use "
        "no detector).", "",
        "| method | source | target | setting | acc clean | acc attacked | F1 attacked "
        "| ROC-AUC clean | "
        "ROC-AUC attacked | success | P(mal) clean -> attacked | fit+generate s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for x in r["rows"]:
        ms = x["mean_score_malicious"]
        lines.append(f"| {x['method']} | {x['source']} | {x['target']} | {x['setting']} "
                     f"| {fmt(x['clean']['accuracy'])} "
                     f"| {fmt(x['attacked']['accuracy'])} | {fmt(x['attacked']['f1'])} "
                     f"| {fmt(x['clean']['roc_auc'])} "
                     f"| {fmt(x['attacked']['roc_auc'])} | {fmt(x['success_rate'])} "
                     f"| {ms['clean']:.3f} -> "
                     f"{ms['attacked']:.3f} | {x['seconds']:.0f} |")
    return lines


def _quality_lines(r: dict) -> list[str]:
    sim = (r["quality_real"] or {}).get("similarity", "")
    lines = ["", f"### Text quality (test users; similarity: {sim})", "",
             "| posts | BLEU-2 | BLEU-3 | BLEU-4 | self-BLEU-3 | perplexity | style | context "
             "| OOV share | "
             "degenerate | tokens |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, v in [("real final posts", r["quality_real"]), *r["quality"].items()]:
        if v is None:
            continue
        lines.append(f"| {key} | {fmt(v['bleu2'])} | {fmt(v['bleu3'])} | {fmt(v['bleu4'])} "
                     f"| {fmt(v['self_bleu3'])} "
                     f"| {fmt(v['perplexity'], 1)} | {fmt(v['style_similarity'])} "
                     f"| {fmt(v['context_relevance'])} "
                     f"| {fmt(v['oov_token_share'])} | {fmt(v['degenerate_share'])} "
                     f"| {fmt(v['mean_tokens'], 1)} |")
    return lines


def _defence_lines(r: dict, args) -> list[str]:
    dd = r["defence_detector"]
    lines = ["", "### Defence: adversarial training of hlstm", "",
             f"hlstm retrained ({args.defence_minutes:g}-min budget, "
             f"{r['defence_training_seconds']:.0f} s) with one "
             "attack post per malicious training user (methods mixed round robin, posts from the "
             "attacks on the "
             f"original hlstm) appended to a copy of the user. Clean test: accuracy "
             f"{fmt(dd['accuracy'])}, "
             f"ROC-AUC {fmt(dd['roc_auc'])}. 'after' = the attack re-fitted against the retrained "
             "detector "
             "(adaptive, white-box).", "",
             "| method | acc clean before | acc attacked before | success before "
             "| acc clean after | "
             "acc attacked after | success after |", "|---|---:|---:|---:|---:|---:|---:|"]
    for d in r["defence"]:
        b, a = d["before"], d["after"]
        lines.append(f"| {d['method']} | {fmt(b['clean']['accuracy'])} "
                     f"| {fmt(b['attacked']['accuracy'])} "
                     f"| {fmt(b['success_rate'])} | {fmt(a['clean']['accuracy'])} "
                     f"| {fmt(a['attacked']['accuracy'])} "
                     f"| {fmt(a['success_rate'])} |")
    return lines


def write_results(r: dict, args) -> None:
    lines = [*_summary_lines(r), *_efficacy_lines(r), *_quality_lines(r)]
    if r["defence"]:
        lines += _defence_lines(r, args)
    lines += ["", "Command: `python benchmarks/attack.py` (resumable: finished jobs are kept in "
              "benchmarks/_work/attack/jobs/; detector runs: `userseq detect train --data "
              "petgen-wiki --model NAME --epochs 30 --batch-size 32 --max-minutes M "
              "--out benchmarks/_work/attack/det-NAME`). "
              "Per-run CLI: `userseq attack run --detector RUN --data petgen-wiki --method petgen "
              "[--black-box-surrogate "
              "RUN2] --out DIR`."]
    update_section("attack", "Adversarial audit (petgen-wiki): PETGEN vs five baselines, "
                   "transfer, defence", "\n".join(lines))


if __name__ == "__main__":
    main()
