"""The attack report: Markdown + HTML tables, a score plot and example generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import ConfigError
from userseq.detect.cluster import markdown_html

QUALITY_ROWS = (
    ("bleu2", "BLEU-2 vs real final post"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"),
    ("self_bleu3", "self-BLEU-3 (lower = more diverse)"),
    ("perplexity", "perplexity (separate LM)"),
    ("style_similarity", "style similarity to history"), ("context_relevance", "context relevance"),
    ("oov_token_share", "out-of-vocabulary token share"),
    ("degenerate_share", "degenerate post share"), ("mean_tokens", "mean tokens per post"))
EFFICACY_ROWS = (("clean", "clean (real final posts)"),
                 ("attacked", "attacked (malicious users post the generated text)"),
                 ("attacked_all", "every test user posts the generated text"))


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _score_histogram(ax, mal: pl.DataFrame, ben: pl.DataFrame, threshold: float,
                     title: str) -> None:
    bins = np.linspace(0, 1, 26)
    ax.hist(mal["score_clean"].to_numpy(), bins=bins, alpha=0.6,
            label="malicious, real final post", color="tab:red")
    ax.hist(mal["score_attacked"].to_numpy(), bins=bins, alpha=0.6,
            label="malicious, generated post", color="tab:purple")
    ax.hist(ben["score_clean"].to_numpy(), bins=bins, histtype="step", lw=2,
            label="benign, real final post", color="tab:blue")
    ax.axvline(threshold, color="k", ls="--", label="threshold")
    ax.set_xlabel("detector P(malicious)")
    ax.set_ylabel("test users")
    ax.legend(fontsize=8)
    ax.set_title(title)


def _score_scatter(ax, mal: pl.DataFrame, threshold: float) -> None:
    c, a = mal["score_clean"].to_numpy(), mal["score_attacked"].to_numpy()
    ax.scatter(c, a, s=10, color="tab:red")
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    ax.axhline(threshold, color="k", ls="--")
    ax.axvline(threshold, color="k", ls="--")
    ax.set_xlabel("score with the real final post")
    ax.set_ylabel("score with the generated post")
    ax.set_title("malicious test users (below the diagonal = attack helped)")


def plot_scores(gens: pl.DataFrame, threshold: float, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the attack report plot needs matplotlib: pip install matplotlib"
                          ) from None
    mal = gens.filter(pl.col("label") == 1)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    _score_histogram(ax[0], mal, gens.filter(pl.col("label") == 0), threshold, title)
    _score_scatter(ax[1], mal, threshold)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _efficacy_lines(m: dict[str, Any]) -> list[str]:
    setting = m["setting"] + (f" (surrogate {m['surrogate']})" if m.get("surrogate") else "")
    lines = [f"# Attack report: {m['method']} vs {m['detector_model']}", "",
             f"Detector run `{m['detector']}`, {setting}. Test users: {m['split']['test']} "
             f"({m['malicious']} malicious). Threshold {m['threshold']:.4f} (chosen on validation "
             "users).", "", "![scores](scores.png)", "",
             "| sequences | accuracy | F1 | ROC-AUC | precision | recall |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, name in EFFICACY_ROWS:
        r = m[key]
        lines.append(f"| {name} | {_f(r['accuracy'])} | {_f(r['f1'])} | {_f(r['roc_auc'])} | "
                     f"{_f(r['precision'])} | {_f(r['recall'])} |")
    ms = m["mean_score_malicious"]
    lines += ["", f"Attack success rate: {_f(m['success_rate'])} of the "
              f"{m['malicious_flagged_clean']} malicious users flagged on the clean sequence are "
              f"no longer flagged. Mean P(malicious) of malicious users: {ms['clean']:.4f} -> "
              f"{ms['attacked']:.4f}."]
    return lines


def _quality_lines(m: dict[str, Any]) -> list[str]:
    lines = ["", f"## Text quality ({m['quality']['similarity']})", "",
             "| metric | generated | real final posts |", "|---|---:|---:|"]
    for key, name in QUALITY_ROWS:
        lines.append(f"| {name} | {_f(m['quality'].get(key))} | "
                     f"{_f(m['quality_real_final_posts'].get(key))} |")
    if m["attack"].get("trigger"):
        lines += ["", f"Universal trigger: `{m['attack']['trigger']}`"]
    return lines


def _example_lines(gens: pl.DataFrame, n_examples: int) -> list[str]:
    lines = ["", "## Example generations", ""]
    for label, name in ((1, "malicious"), (0, "benign")):
        sub = gens.filter(pl.col("label") == label)
        if label == 1:  # the largest score drops first
            drop = (pl.col("score_clean") - pl.col("score_attacked")).alias("drop")
            sub = sub.with_columns(drop).sort("drop", descending=True)
        for r in sub.head(n_examples).iter_rows(named=True):
            lines += [f"- {name} user {r['user_id']}: score {r['score_clean']:.3f} -> "
                      f"{r['score_attacked']:.3f}; context: {r['context'][:120]!r}; real final "
                      f"post: {r['real_final'][:160]!r}; generated: {r['generated'][:160]!r}"]
    return lines


def report_markdown(m: dict[str, Any], gens: pl.DataFrame, n_examples: int) -> str:
    lines = _efficacy_lines(m) + _quality_lines(m) + _example_lines(gens, n_examples)
    return "\n".join(lines) + "\n"


def write_report(m: dict[str, Any], gens: pl.DataFrame, out: Path, n_examples: int) -> None:
    title = f"{m['method']} vs {m['detector_model']} ({m['setting']})"
    plot_scores(gens, m["threshold"], out / "scores.png", title)
    md = report_markdown(m, gens, n_examples)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(markdown_html(md, title=f"attack report: {m['method']}"))
