"""The attack report: Markdown + HTML tables, a score plot and example generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import ConfigError
from userseq.detect.cluster import markdown_html

QUALITY_ROWS = (("bleu2", "BLEU-2 vs real final post"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"),
                ("self_bleu3", "self-BLEU-3 (lower = more diverse)"), ("perplexity", "perplexity (separate LM)"),
                ("style_similarity", "style similarity to history"), ("context_relevance", "context relevance"),
                ("oov_token_share", "out-of-vocabulary token share"), ("degenerate_share", "degenerate post share"),
                ("mean_tokens", "mean tokens per post"))


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def plot_scores(gens: pl.DataFrame, threshold: float, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the attack report plot needs matplotlib: pip install matplotlib") from None
    mal = gens.filter(pl.col("label") == 1)
    ben = gens.filter(pl.col("label") == 0)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(0, 1, 26)
    ax[0].hist(mal["score_clean"].to_numpy(), bins=bins, alpha=0.6, label="malicious, real final post", color="tab:red")
    ax[0].hist(mal["score_attacked"].to_numpy(), bins=bins, alpha=0.6, label="malicious, generated post",
               color="tab:purple")
    ax[0].hist(ben["score_clean"].to_numpy(), bins=bins, histtype="step", lw=2, label="benign, real final post",
               color="tab:blue")
    ax[0].axvline(threshold, color="k", ls="--", label="threshold")
    ax[0].set_xlabel("detector P(malicious)")
    ax[0].set_ylabel("test users")
    ax[0].legend(fontsize=8)
    ax[0].set_title(title)
    c, a = mal["score_clean"].to_numpy(), mal["score_attacked"].to_numpy()
    ax[1].scatter(c, a, s=10, color="tab:red")
    ax[1].plot([0, 1], [0, 1], color="grey", lw=1)
    ax[1].axhline(threshold, color="k", ls="--")
    ax[1].axvline(threshold, color="k", ls="--")
    ax[1].set_xlabel("score with the real final post")
    ax[1].set_ylabel("score with the generated post")
    ax[1].set_title("malicious test users (below the diagonal = attack helped)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_markdown(m: dict[str, Any], gens: pl.DataFrame, n_examples: int) -> str:
    setting = m["setting"] + (f" (surrogate {m['surrogate']})" if m.get("surrogate") else "")
    lines = [f"# Attack report: {m['method']} vs {m['detector_model']}", "",
             f"Detector run `{m['detector']}`, {setting}. Test users: {m['split']['test']} "
             f"({m['malicious']} malicious). Threshold {m['threshold']:.4f} (chosen on validation users).", "",
             "![scores](scores.png)", "",
             "| sequences | accuracy | F1 | ROC-AUC | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
    for key, name in (("clean", "clean (real final posts)"), ("attacked", "attacked (malicious users post the generated text)"),
                      ("attacked_all", "every test user posts the generated text")):
        r = m[key]
        lines.append(f"| {name} | {_f(r['accuracy'])} | {_f(r['f1'])} | {_f(r['roc_auc'])} | {_f(r['precision'])} "
                     f"| {_f(r['recall'])} |")
    ms = m["mean_score_malicious"]
    lines += ["", f"Attack success rate: {_f(m['success_rate'])} of the {m['malicious_flagged_clean']} malicious users "
              f"flagged on the clean sequence are no longer flagged. Mean P(malicious) of malicious users: "
              f"{ms['clean']:.4f} -> {ms['attacked']:.4f}.", "",
              f"## Text quality ({m['quality']['similarity']})", "",
              "| metric | generated | real final posts |", "|---|---:|---:|"]
    for key, name in QUALITY_ROWS:
        lines.append(f"| {name} | {_f(m['quality'].get(key))} | {_f(m['quality_real_final_posts'].get(key))} |")
    if m["attack"].get("trigger"):
        lines += ["", f"Universal trigger: `{m['attack']['trigger']}`"]
    lines += ["", "## Example generations", ""]
    for label, name in ((1, "malicious"), (0, "benign")):
        sub = gens.filter(pl.col("label") == label)
        if label == 1:  # the largest score drops first
            sub = sub.with_columns((pl.col("score_clean") - pl.col("score_attacked")).alias("drop")).sort(
                "drop", descending=True)
        for r in sub.head(n_examples).iter_rows(named=True):
            lines += [f"- {name} user {r['user_id']}: score {r['score_clean']:.3f} -> {r['score_attacked']:.3f}; "
                      f"context: {r['context'][:120]!r}; real final post: {r['real_final'][:160]!r}; "
                      f"generated: {r['generated'][:160]!r}"]
    return "\n".join(lines) + "\n"


def write_report(m: dict[str, Any], gens: pl.DataFrame, out: Path, n_examples: int) -> None:
    plot_scores(gens, m["threshold"], out / "scores.png", f"{m['method']} vs {m['detector_model']} ({m['setting']})")
    md = report_markdown(m, gens, n_examples)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(markdown_html(md, title=f"attack report: {m['method']}"))
