"""`userseq attack run`: adversarial audit of a trained text detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

attack_app = typer.Typer(no_args_is_help=True, help="Adversarial audit of detectors (PETGEN and baselines).")
out = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")


@attack_app.command("run")
def run(
    detector: Annotated[Path, typer.Option("--detector", help="detector run directory (`userseq detect train`)")],
    data: Annotated[str, typer.Option("--data", "-d", help="petgen-wiki | events file with a text column")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="directory for metrics.json and the report")],
    method: Annotated[str, typer.Option(help="petgen | copycat | hotflip | trigger | textbugger | lm")] = "petgen",
    black_box_surrogate: Annotated[Path | None, typer.Option(
        help="black-box: optimise against this detector run (same split), evaluate on --detector")] = None,
    labels: Annotated[Path | None, typer.Option(help="label table (user_id,label) for an events file")] = None,
    config: Annotated[Path | None, typer.Option(help="attack config YAML (see docs/attack.md)")] = None,
    epochs: Annotated[int | None, typer.Option(help="attack training epochs (petgen, lm)")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(help="generator MLE pretraining epochs")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="time budget of each training phase")] = None,
    cache: Annotated[Path | None, typer.Option(help="reuse pretrained generators / LMs saved in this directory")] = None,
    train_posts: Annotated[bool, typer.Option(help="also write train_posts.parquet for `detect train --adversarial`")] = False,
    seed: int = 0,
    quiet: bool = False,
) -> None:
    """Attack the detector's test users; writes OUT/metrics.json, generations.parquet, report.md/.html, scores.png."""
    from userseq.attack.config import parse_attack_config
    from userseq.attack.estimator import check_method, run_attack
    from userseq.core.config import read_yaml_mapping
    from userseq.core.errors import UserseqError

    check_method(method)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserseqError(f"--out {out_dir}: exists and is not a directory.")
    cfg = parse_attack_config(read_yaml_mapping(config), str(config)) if config else None
    over = {"train.epochs": epochs, "pretrain.epochs": pretrain_epochs, "train.max_minutes": max_minutes,
            "pretrain.max_minutes": max_minutes, "eval_lm.max_minutes": max_minutes, "seed": seed}
    m = run_attack(detector, data, method, out_dir, surrogate=black_box_surrogate, labels=labels, config=cfg,
                   overrides=over, cache_dir=cache, train_posts=train_posts, quiet=quiet)
    c, a = m["clean"], m["attacked"]
    out.print(f"{method} vs {m['detector_model']} ({m['setting']}): accuracy {c['accuracy']:.4f} -> {a['accuracy']:.4f}, "
              f"roc_auc {c['roc_auc']:.4f} -> {a['roc_auc']:.4f}, success rate "
              f"{'n/a' if m['success_rate'] is None else format(m['success_rate'], '.4f')}")
    q = m["quality"]
    out.print(f"quality: BLEU-2 {q['bleu2']:.4f}  self-BLEU-3 {q['self_bleu3']:.4f}  perplexity {q['perplexity']:.1f}  "
              f"style {q['style_similarity']:.3f}  context {q['context_relevance']:.3f} ({q['similarity']})")
    out.print(f"wrote {out_dir}/metrics.json, report.md, report.html, scores.png")
