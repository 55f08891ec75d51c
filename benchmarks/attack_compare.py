"""Attack comparison and defences on petgen-wiki with a fixed post count (issue #19, items 2-4).

Per split seed (stratified 70/10/20 user split of the last-8-posts data, `fix_post_count`):

1. Detectors trained on the training users (epochs on validation users): the SOURCE (default
   bow-minilm, a token model: gradients for petgen / malcom / hotflip / trigger, score queries for
   textbugger) and unseen TARGET architectures (default minilm, minilm-attn, cnn). A length-only
   row (logistic regression on the post count) is part of every table: it is 0.5 by
   construction once the count is fixed.
2. Every method (copycat, hotflip, trigger, textbugger, malcom, petgen) is fitted against the
   source on training users and writes one post per test user. Each post set is scored by every
   detector: on the source it is the WHITE-BOX row; on the other detectors it is the BLACK-BOX row
   (the attacker's surrogate = the source, trained on the same split; the target is never
   queried). petgen runs the published design (transformer decoder, relativistic GAN term, exp
   temperature annealing, the four switchable terms) under a CPU time cap (see the table).
3. Text quality of each post set: BLEU-2..4 against the real final posts, self-BLEU-3,
   perplexity under a separately trained LM, MiniLM cosine to the user's history (style) and to
   the target context.
4. Defences: (a) adversarial training: the source retrained with one attack post per malicious
   training user (methods round robin) appended to a copy of the user; then hotflip and petgen
   are fitted again against the retrained detector (adaptive white-box, `--adaptive`) and every
   method's old posts are scored too (non-adaptive); (b) an ensemble of the source and the
   target detectors (mean score, threshold on validation users), scored on every method's posts
   (black-box).

Rows go to benchmarks/attack_compare_runs.json; the `attack-compare` section of RESULTS.md is
rendered from them (`--part table`).

    python benchmarks/attack_compare.py --seed 0      # one seed per invocation (< 6 min)
    python benchmarks/attack_compare.py --part table
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

from userseq.attack.data import attack_users  # noqa: E402
from userseq.attack.estimator import Attacker, efficacy, reference_quality  # noqa: E402
from userseq.attack.petgen import cached_generator  # noqa: E402
from userseq.attack.quality import SentenceVectors  # noqa: E402
from userseq.attack.target import TargetDetector, TargetEnsemble  # noqa: E402
from userseq.detect.augment import adversarial_augment  # noqa: E402
from userseq.detect.data import load_text_data, stratified_split  # noqa: E402
from userseq.detect.estimator import UserDetector  # noqa: E402
from userseq.metrics.classification import wilson_interval  # noqa: E402

STORE = Path(os.environ.get("ATTACK_COMPARE_STORE", HERE / "attack_compare_runs.json"))
LOCK = HERE / "_work" / "attack_compare.lock"
WORK = HERE / "_work" / "attack_compare"
METHODS = ("copycat", "hotflip", "trigger", "textbugger", "malcom", "petgen")
FIXED = 8
# the published design (benchmarks/configs/petgen_published.yaml) under CPU time caps
PUBLISHED = {"generator.decoder": "transformer", "generator.layers": 2, "generator.hidden": 128,
             "generator.emb_dim": 64, "losses.gan": 1.0, "tau_schedule": "exp",
             "tau_max": 100.0}


def budget(a) -> dict:
    return {**PUBLISHED, "pretrain.epochs": 200, "pretrain.max_minutes": a.pretrain_minutes,
            "pretrain.patience": 5, "train.epochs": a.attack_epochs,
            "train.max_minutes": a.attack_minutes, "train.patience": 200,
            "eval_lm.epochs": 200, "eval_lm.max_minutes": a.pretrain_minutes,
            "eval_lm.patience": 5, "pretrain.threads": 2, "train.threads": 2,
            "eval_lm.threads": 2}


def train_detector(name: str, data, split, seed: int, minutes: float, augment=None):
    over = {"train.seed": seed, "split_seed": seed, "train.threads": 2,
            "train.max_minutes": minutes, "fixed_posts": FIXED, "model.max_posts": FIXED,
            "dataset": "petgen-wiki"}
    det = UserDetector(name, overrides=over).fit(data, split, quiet=True, augment=augment)
    return TargetDetector(det, name)


def strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "scores"}


def run_seed(a) -> None:
    seed = a.seed
    data = load_text_data("petgen-wiki", fixed_posts=FIXED)
    split = stratified_split(data.labels, 0.1, 0.2, seed)
    test, tr, va = (np.asarray(x) for x in (split.test, split.train, split.valid))
    y = data.labels
    work = WORK / f"s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    over = budget(a)
    with results.LoadMonitor() as mon:
        t0 = time.time()
        dets = {}
        for name in [a.source, *a.targets]:
            results.log(f"seed {seed}: detector {name}")
            dets[name] = train_detector(name, data, split, seed, a.detector_minutes)
        src = dets[a.source]
        users = attack_users(data, src.max_posts)
        vectors = SentenceVectors("auto", [p for u in tr for p in data.posts[u]])
        cfg = Attacker(overrides=over).config
        eval_lm = cached_generator(work / "cache", users, src.vocab, tr, va, cfg.generator,
                                   cfg.eval_lm.model_copy(update={"seed": cfg.eval_lm.seed + 1}),
                                   src.max_tokens, False, quiet=True)
        detector_rows = {n: {k: d.det.train_state_.get(k) for k in ("epochs", "best_epoch",
                                                                    "best_valid_roc_auc")}
                         for n, d in dets.items()}
        fitted, rows = {}, []
        for method in a.methods:
            results.log(f"seed {seed}: {method}")
            t = time.time()
            att = Attacker(method, overrides=over).fit(data, src, split, cache_dir=work / "cache",
                                                       quiet=True)
            posts = att.generate(test)
            secs = time.time() - t
            fitted[method] = (att, posts)
            q = att.quality(test, posts, vectors, eval_lm, eval_lm.max_tokens)
            for tname, tdet in dets.items():
                r = strip(efficacy(tdet, att.users_, test, posts))
                rows.append({"method": method, "source": a.source, "target": tname,
                             "setting": "white-box" if tdet is src else "black-box (surrogate "
                             f"{a.source}, same split)", "fit_seconds": round(secs, 1), **r})
            results.save_row(STORE, f"quality/{method}/s{seed}", {
                "method": method, "seed": seed, **q, "info": att.info_,
                "examples": [{"user": users.user_ids[i], "label": int(y[i]),
                              "context": users.contexts[i][:100], "real": users.final[i][:200],
                              "generated": p[:200]}
                             for i, p in list(zip(test, posts, strict=True)) if y[i] == 1][:4]},
                LOCK)
        ref = reference_quality(fitted[a.methods[0]][0], test, vectors, eval_lm)
        # defence (b): ensemble of all detectors (query access only: black-box)
        ens = TargetEnsemble(list(dets.values()), "ensemble")
        ens.calibrate(users, va)
        for method, (att, posts) in fitted.items():
            rows.append({"method": method, "source": a.source, "target": "ensemble",
                         "setting": "black-box (surrogate, ensemble defence)",
                         **strip(efficacy(ens, att.users_, test, posts))})
        # defence (a): adversarial training of the source
        mal_train = tr[y[tr] == 1]
        train_posts = {m: att.generate(mal_train) for m, (att, _) in fitted.items()}
        ms = list(fitted)
        adv = pl.DataFrame({"user_id": [users.user_ids[u] for u in mal_train],
                            "post": [train_posts[ms[k % len(ms)]][k]
                                     for k in range(len(mal_train))]})
        results.log(f"seed {seed}: adversarial training of {a.source}")
        hard = train_detector(a.source, data, split, seed, a.detector_minutes,
                              augment=lambda d, sp: adversarial_augment(d, sp, adv, 1.0, seed))
        for method, (att, posts) in fitted.items():
            rows.append({"method": method, "source": a.source, "target": f"{a.source}+adv",
                         "setting": "non-adaptive (old posts) vs adversarially trained",
                         **strip(efficacy(hard, att.users_, test, posts))})
            if method in a.adaptive:
                results.log(f"seed {seed}: adaptive {method}")
                # the retrained detector has its own vocabulary: the generator is pretrained again
                again = Attacker(method, overrides=over).fit(
                    data, hard, split, cache_dir=work / "cache", quiet=True)
                rows.append({"method": method, "source": f"{a.source}+adv",
                             "target": f"{a.source}+adv",
                             "setting": "adaptive white-box vs adversarially trained",
                             **strip(efficacy(hard, again.users_, test, again.generate(test)))})
        seconds = time.time() - t0
    prov = results.provenance(mon, seeds=[seed], data="petgen-wiki")
    for r in rows:
        results.save_row(STORE, f"efficacy/{r['method']}/{r['source']}/{r['target']}/s{seed}",
                         {**r, "seed": seed, **prov}, LOCK)
    results.save_row(STORE, f"seed/s{seed}", {
        "seed": seed, "seconds": round(seconds, 1), "detectors": detector_rows,
        "reference_quality": ref, "adv_copies": len(adv), "ensemble_threshold": ens.threshold,
        "post_count": data.post_count, "n_test": len(test),
        "budget": over, **prov}, LOCK)
    results.log(f"seed {seed}: done in {seconds / 60:.1f} min ({mon.verdict})")


# ---------------------------------------------------------------------- table
def _f(x, d=3):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _ms(vals, d=3):
    v = [float(x) for x in vals if x is not None and np.isfinite(x)]
    if not v:
        return "n/a"
    return f"{np.mean(v):.{d}f} ± {np.std(v, ddof=1):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f}"


def efficacy_table(rows: list[dict], targets: list[str]) -> list[str]:
    lines = ["| method | target | setting | ROC-AUC clean → attacked | F1 clean → attacked | "
             "flipped / flagged before (all seeds) | flip rate [95% CI] | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for target in targets:
            rs = [r for r in rows if r["method"] == method and r["target"] == target]
            for setting in sorted({r["setting"] for r in rs}):
                s = [r for r in rs if r["setting"] == setting]
                k = sum(r["malicious_flipped"] for r in s)
                n = sum(r["malicious_flagged_clean"] for r in s)
                lo, hi = wilson_interval(k, n)
                lines.append(
                    f"| {method} | {target} | {setting} | "
                    f"{_ms([r['clean']['roc_auc'] for r in s])} → "
                    f"{_ms([r['attacked']['roc_auc'] for r in s])} | "
                    f"{_ms([r['clean']['f1'] for r in s])} → "
                    f"{_ms([r['attacked']['f1'] for r in s])} | {k} / {n} | "
                    f"{_f(k / n if n else None)} [{_f(lo)}, {_f(hi)}] | "
                    f"{sorted(r['seed'] for r in s)} |")
    return lines


def part_table(a) -> None:
    rows = results.load_rows(STORE)
    eff = [r for k, r in rows.items() if k.startswith("efficacy/")]
    seeds = [r for k, r in rows.items() if k.startswith("seed/")]
    qual = [r for k, r in rows.items() if k.startswith("quality/")]
    if not eff:
        return
    src = eff[0]["source"]
    plain = [t for t in dict.fromkeys(r["target"] for r in eff)
             if t != "ensemble" and not t.endswith("+adv")]
    verdicts = sorted({r.get("verdict", "?") for r in eff})
    lines = [f"Data: petgen-wiki, last {FIXED} posts per user (683 users; dropped 41 benign and "
             "70 malicious with fewer posts); stratified user splits 70/10/20 with split seeds "
             f"{sorted(s['seed'] for s in seeds)}; 137 test users per seed. Attacks are fitted "
             f"on training users against the source detector `{src}` (epochs on validation "
             "users); every test user's last post is replaced by the generated one for the "
             "malicious users ('attacked'). Commands: `python benchmarks/attack_compare.py "
             "--seed S`, then `--part table`. Quiet-run verdicts: "
             f"{', '.join(verdicts)}; dates {results.run_dates(eff)}.", ""]
    lines += ["Detectors (clean test ROC-AUC, mean ± std over seeds; `length` = logistic "
              "regression on the post count, 0.5 by construction with the count fixed):", "",
              "| detector | clean ROC-AUC | clean F1 | epochs best/ran |", "|---|---:|---:|---|"]
    lines.append("| length | 0.500 | 0.000 | — |")
    for t in plain + ["ensemble", f"{src}+adv"]:
        rs = [r for r in eff if r["target"] == t and r["method"] == eff[0]["method"]
              and not r["setting"].startswith("adaptive")]
        ep = ", ".join(f"{s['detectors'][t]['best_epoch']}/{s['detectors'][t]['epochs']}"
                       for s in seeds if t in s["detectors"]) or "—"
        lines.append(f"| {t} | {_ms([r['clean']['roc_auc'] for r in rs])} | "
                     f"{_ms([r['clean']['f1'] for r in rs])} | {ep} |")
    b = seeds[0]["budget"]
    lines += ["", f"PETGEN / MALCOM budget (CPU, no GPU): MLE pretraining capped at "
              f"{b['pretrain.max_minutes']} min (early stop after 5 epochs without validation "
              f"gain), attack training {b['train.epochs']} epochs capped at "
              f"{b['train.max_minutes']} min; the published schedule (200 + 200 epochs, "
              "`benchmarks/configs/petgen_published.yaml`) did not fit. Validation NLL per "
              "pretraining epoch (seed, method: curve, best epoch / epochs, stopped by):", ""]
    for q in sorted(qual, key=lambda q: (q["seed"], q["method"])):
        pre = q["info"].get("pretrain")
        if pre and q["method"] in ("petgen", "malcom"):
            curve = ", ".join(f"{v:.2f}" for v in pre.get("valid_nll_curve", []))
            lines.append(f"- s{q['seed']} {q['method']}: [{curve}], best "
                         f"{pre.get('best_epoch')}/{pre.get('epochs')}, "
                         f"{'unconverged' if pre.get('unconverged') else 'converged (patience)'}"
                         f", stopped: {pre.get('stopped')}")
    lines += ["", "### Efficacy: white box (on the source) and black box (transfer to unseen "
              "architectures)", "",
              "Flip rate = malicious test users flagged on their real sequence that the attack "
              "gets unflagged, pooled over seeds with a Wilson 95% interval; the denominator is "
              "the number flagged before the attack.", ""]
    lines += efficacy_table(eff, plain)
    lines += ["", "### Text quality (test users, mean ± std over seeds)", "",
              "| method | BLEU-2 | BLEU-3 | BLEU-4 | self-BLEU-3 | perplexity | MiniLM sim. to "
              "history | MiniLM sim. to context | degenerate share |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in METHODS:
        qs = [q for q in qual if q["method"] == method]
        if qs:
            lines.append(f"| {method} | " + " | ".join(_ms([q[k] for q in qs], 3 if k !=
                                                            "perplexity" else 1) for k in (
                "bleu2", "bleu3", "bleu4", "self_bleu3", "perplexity", "style_similarity",
                "context_relevance", "degenerate_share")) + " |")
    refs = [s["reference_quality"] for s in seeds]
    lines.append("| real final posts | — | — | — | " + " | ".join(_ms([r[k] for r in refs], 3 if
                 k != "perplexity" else 1) for k in ("self_bleu3", "perplexity",
                 "style_similarity", "context_relevance", "degenerate_share")) + " |")
    lines += ["", "### Where each attack wins", ""] + wins(eff, qual, plain)
    lines += ["", "### Defences", "",
              f"(a) adversarial training: `{src}` retrained with attack posts of the malicious "
              "training users appended to copies of them (methods round robin); (b) ensemble "
              "of all detectors above (mean P(malicious), threshold on validation users).", ""]
    lines += defence_summary(eff, src, plain)
    lines += ["", "All defence rows:", ""]
    lines += efficacy_table(eff, ["ensemble", f"{src}+adv"])
    lines += ["", "### Example generated posts (malicious test users, seed 0)", ""]
    for q in sorted(qual, key=lambda q: q["method"]):
        if q["seed"] != 0:
            continue
        for e in q.get("examples", [])[:2]:
            lines.append(f"- **{q['method']}** (user {e['user']}; context "
                         f"'{e['context'][:60]}'): real: \"{e['real'][:140]}\" → generated: "
                         f"\"{e['generated'][:140]}\"")
    lines += ["", "Figure: `benchmarks/attack_compare.png`; the same tables as HTML: "
              "`benchmarks/attack_compare.html`. The older `attack` section of this file predates "
              "the fixed post count (its detectors read the confounded data)."]
    results.publish("attack-compare", "Attack comparison and defences on petgen-wiki, fixed "
                    "post count (issue #19)", lines, write=not a.no_write)
    if not a.no_write:
        from userseq.detect.cluster import markdown_html

        title = "Attack comparison and defences on petgen-wiki (issue #19)"
        (HERE / "attack_compare.html").write_text(
            markdown_html("# " + title + "\n\n![figure](attack_compare.png)\n\n"
                          + "\n".join(lines) + "\n", title=title))
        plot(eff, plain + ["ensemble", f"{src}+adv"], HERE / "attack_compare.png")


def plot(eff: list[dict], targets: list[str], path: Path) -> None:
    """Per target: mean ROC-AUC drop of each method (bars) and the pooled flip rate with its
    Wilson interval (points), non-adaptive rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    width = 0.8 / len(targets)
    x = np.arange(len(METHODS))
    for j, t in enumerate(targets):
        drops, rates, los, his = [], [], [], []
        for m in METHODS:
            rs = [r for r in eff if r["method"] == m and r["target"] == t
                  and not r["setting"].startswith("adaptive")]
            drops.append(np.mean([r["clean"]["roc_auc"] - r["attacked"]["roc_auc"] for r in rs])
                         if rs else np.nan)
            k = sum(r["malicious_flipped"] for r in rs)
            n = sum(r["malicious_flagged_clean"] for r in rs)
            lo, hi = wilson_interval(k, n)
            rate = k / n if n else np.nan
            rates.append(rate)
            los.append(max(rate - lo, 0.0) if n else 0.0)
            his.append(max(hi - rate, 0.0) if n else 0.0)
        axes[0].bar(x + j * width, drops, width, label=t)
        axes[1].errorbar(x + j * width, rates, yerr=[los, his], fmt="o", capsize=3, label=t)
    for ax, ylabel in ((axes[0], "test ROC-AUC drop (clean - attacked)"),
                       (axes[1], "flip rate of flagged malicious users (95% CI)")):
        ax.set_xticks(x + 0.4 - width / 2, METHODS)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="grey", lw=1)
        ax.legend(fontsize=8)
    fig.suptitle("petgen-wiki, last 8 posts; attacks fitted against the source detector")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def defence_summary(eff: list[dict], src: str, plain: list[str]) -> list[str]:
    """Per attack: ROC-AUC / flip rate before and after each defence (means over seeds; flip
    rates pooled)."""

    def cell(rows: list[dict]) -> str:
        if not rows:
            return "—"
        k = sum(r["malicious_flipped"] for r in rows)
        n = sum(r["malicious_flagged_clean"] for r in rows)
        return (f"{_ms([r['attacked']['roc_auc'] for r in rows])} / "
                f"{_f(k / n if n else None)} ({k}/{n})")

    def pick(method: str, target: str, prefix: str) -> list[dict]:
        return [r for r in eff if r["method"] == method and r["target"] == target
                and r["setting"].startswith(prefix)]

    members = [t for t in plain if t != src]
    clean = {t: _ms([r["clean"]["roc_auc"] for r in eff if r["target"] == t
                     and r["method"] == METHODS[0] and not r["setting"].startswith("adaptive")])
             for t in [src, f"{src}+adv", "ensemble", *members]}
    lines = ["Clean test ROC-AUC: " + ", ".join(f"{t} {v}" for t, v in clean.items()) + ".", "",
             "Attacked ROC-AUC / flip rate (flipped/flagged) per attack, before and after each "
             "defence:", "",
             f"| method | {src} (white-box, before) | {src}+adv, same posts | {src}+adv, "
             "adaptive re-fit | strongest member, black-box (before) | ensemble (after) |",
             "|---|---|---|---|---|---|"]
    # the ensemble against its strongest member (highest mean clean ROC-AUC)
    strength = {t: np.mean([r["clean"]["roc_auc"] for r in eff if r["target"] == t])
                for t in members}
    best = max(strength, key=strength.get) if strength else None
    for m in METHODS:
        singles = {t: pick(m, t, "black-box") for t in members}
        lines.append(f"| {m} | {cell(pick(m, src, 'white-box'))} | "
                     f"{cell(pick(m, f'{src}+adv', 'non-adaptive'))} | "
                     f"{cell(pick(m, f'{src}+adv', 'adaptive'))} | "
                     f"{best}: {cell(singles.get(best, []))} | "
                     f"{cell(pick(m, 'ensemble', 'black-box'))} |")
    return lines


def wins(eff: list[dict], qual: list[dict], targets: list[str]) -> list[str]:
    """Per column: the best method (largest mean ROC-AUC drop; highest quality)."""
    out = []
    for t in targets:
        drops = {}
        for m in METHODS:
            rs = [r for r in eff if r["method"] == m and r["target"] == t
                  and not r["setting"].startswith("adaptive")]
            if rs:
                drops[m] = np.mean([r["clean"]["roc_auc"] - r["attacked"]["roc_auc"] for r in rs])
        if drops:
            best = max(drops, key=drops.get)
            setting = "white-box" if t == eff[0]["source"] else "black-box"
            out.append(f"- {setting} on {t}: {best} (ROC-AUC drop {drops[best]:.3f}; petgen "
                       f"{drops.get('petgen', float('nan')):.3f})")
    for key, name, sign in (("bleu2", "BLEU-2", 1), ("style_similarity", "style similarity", 1),
                            ("perplexity", "perplexity (lower)", -1),
                            ("self_bleu3", "diversity (lower self-BLEU)", -1)):
        means = {m: np.mean([q[key] for q in qual if q["method"] == m]) for m in METHODS
                 if any(q["method"] == m for q in qual)}
        if means:
            best = max(means, key=lambda m: sign * means[m])
            out.append(f"- {name}: {best} ({means[best]:.3f}; petgen "
                       f"{means.get('petgen', float('nan')):.3f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["run", "table"], default="run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="bow-minilm")
    ap.add_argument("--targets", nargs="*", default=["minilm", "minilm-attn", "bow-attn"])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--adaptive", nargs="*", default=["hotflip", "petgen"])
    ap.add_argument("--detector-minutes", type=float, default=0.4)
    ap.add_argument("--pretrain-minutes", type=float, default=0.35)
    ap.add_argument("--attack-minutes", type=float, default=0.25)
    ap.add_argument("--attack-epochs", type=int, default=8)
    ap.add_argument("--no-quiet", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if a.part == "run":
        results.ensure_quiet(a.no_quiet)
        run_seed(a)
    part_table(a)


if __name__ == "__main__":
    main()
