"""`userseq attack run`: adversarial audit of a trained text detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from userseq.core.cli import SetOption, out

attack_app = typer.Typer(no_args_is_help=True,
                         help="Adversarial audit of detectors (PETGEN and baselines).")

SEEDS = ("pretrain.seed", "train.seed", "eval_lm.seed", "sample_seed", "baselines.trigger_seed")


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")


def attack_config(config: Path | None, sets: list[str] | None, options: dict[str, tuple[str, Any]]):
    """The attack config: the YAML file, then `--set`, then the specific options."""
    from userseq.attack.config import AttackConfig
    from userseq.core.cli import parse_set, with_options

    cfg = AttackConfig.from_yaml(config)
    over = parse_set(sets)
    if over:
        cfg = cfg.updated(over, source="--set")
    return with_options(cfg, options)


def _print_summary(m: dict[str, Any], out_dir: Path) -> None:
    c, a, q = m["clean"], m["attacked"], m["quality"]
    rate = "n/a" if m["success_rate"] is None else format(m["success_rate"], ".4f")
    out.print(f"{m['method']} vs {m['detector_model']} ({m['setting']}): accuracy "
              f"{c['accuracy']:.4f} -> {a['accuracy']:.4f}, roc_auc {c['roc_auc']:.4f} -> "
              f"{a['roc_auc']:.4f}, success rate {rate}")
    out.print(f"quality: BLEU-2 {q['bleu2']:.4f}  self-BLEU-3 {q['self_bleu3']:.4f}  perplexity "
              f"{q['perplexity']:.1f}  style {q['style_similarity']:.3f}  context "
              f"{q['context_relevance']:.3f} ({q['similarity']})")
    out.print(f"wrote {out_dir}/metrics.json, report.md, report.html, scores.png and the fitted "
              f"attacker (userseq.Attacker.load('{out_dir}'))")


@attack_app.command("run")
def run(
    detector: Annotated[Path, typer.Option(
        "--detector", help="detector run directory (`userseq detect train`)")],
    data: Annotated[str, typer.Option(
        "--data", "-d", help="petgen-wiki | events file with a text column")],
    out_dir: Annotated[Path, typer.Option(
        "--out", "-o", help="directory for the fitted attacker, metrics.json and the report")],
    method: Annotated[str | None, typer.Option(
        help="petgen | copycat | hotflip | trigger | textbugger | malcom | lm (post texts); "
        "event-gradient | event-transfer (event sequences) [default: the "
        "config's, "
        "petgen]")] = None,
    black_box_surrogate: Annotated[Path | None, typer.Option(
        help="black-box: optimise against this detector run (same split), evaluate on "
        "--detector")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="label table (user_id,label) for an events file")] = None,
    config: Annotated[Path | None, typer.Option(
        help="attack config YAML (see docs/attack.md)")] = None,
    set_: SetOption = None,
    epochs: Annotated[int | None, typer.Option(help="attack training epochs (petgen, lm)")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(
        help="generator MLE pretraining epochs")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="time budget of each training phase")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="reuse pretrained generators / LMs saved in this directory")] = None,
    train_posts: Annotated[bool, typer.Option(
        help="also write train_posts.parquet (train_events.parquet for event attacks) for "
        "`detect train --adversarial`")] = False,
    seed: Annotated[int | None, typer.Option(
        help="seeds the whole attack: its training phases, the trigger search and the sampling "
        "of generated posts")] = None,
    quiet: bool = False,
) -> None:
    """Attack the detector's test users; writes the fitted attacker and OUT/metrics.json,
    generations.parquet, report.md/.html, scores.png."""
    from userseq.attack.estimator import check_method, run_attack
    from userseq.attack.events import EVENT_METHODS

    if method in EVENT_METHODS:  # behaviour sequences (wiki-vandals): see attack/events.py
        _run_events(detector, data, method, out_dir, black_box_surrogate, labels, set_, seed,
                    train_posts)
        return
    if method is not None:
        check_method(method)
    options: dict[str, tuple[str, Any]] = {
        "--epochs": ("train.epochs", epochs),
        "--pretrain-epochs": ("pretrain.epochs", pretrain_epochs),
        **{f"--max-minutes ({k})": (f"{k}.max_minutes", max_minutes)
           for k in ("train", "pretrain", "eval_lm")},
        **{f"--seed ({k})": (k, seed) for k in SEEDS}}
    cfg = attack_config(config, set_, options)
    m = run_attack(detector, data, method, out_dir, surrogate=black_box_surrogate, labels=labels,
                   config=cfg, cache_dir=cache, train_posts=train_posts, quiet=quiet)
    _print_summary(m, out_dir)


def _run_events(detector: Path, data: str, method: str, out_dir: Path, surrogate: Path | None,
                labels: Path | None, sets: list[str] | None, seed: int | None,
                train_events: bool) -> None:
    from userseq.attack.events import run_event_attack
    from userseq.core.cli import parse_set

    over = parse_set(sets)
    if seed is not None:
        over["seed"] = seed
    m = run_event_attack(detector, data, method, out_dir, surrogate=surrogate, labels=labels,
                         overrides=over, train_events=train_events)
    c, a = m["clean"], m["attacked"]
    rate = "n/a" if m["flip_rate"] is None else format(m["flip_rate"], ".4f")
    out.print(f"{method} vs {m['detector_model']} ({m['setting']}): ROC-AUC {c['roc_auc']:.4f} -> "
              f"{a['roc_auc']:.4f}, accuracy {c['accuracy']:.4f} -> {a['accuracy']:.4f}, flip rate "
              f"{rate} ({m['flipped']}/{m['flagged_vandals']} flagged vandals)")
    out.print(f"wrote {out_dir}/metrics.json, {out_dir}/attack_events.parquet")
