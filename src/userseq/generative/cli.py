"""`userseq semantic-ids fit` and `userseq generative train|evaluate` (registered by
`userseq.cli`).

Training has its own group (`userseq generative train`) rather than `userseq train --model
generative`: `train` belongs to the next-item package, and a task package never imports a sibling.
Recommending needs no new command: `userseq recommend RUN` loads any run by its task and passes
`--decode beam|diverse --beams B --groups G --diversity λ` to a generative run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from userseq.core.cli import DataArg, RunDirArg, SetOption, err, out, parse_set, with_options
from userseq.core.errors import UserseqError

Opt = typer.Option
VectorsOpt = Annotated[str | None, Opt(
    "--vectors", help="item vectors: text (MiniLM over the item text) | run:RUN_DIR (a next-item "
    "run's item embeddings) | file:PATH (Parquet item_id + embedding)")]
QuietOpt = Annotated[bool, Opt(help="no progress bar")]


def _dataset(data: str) -> str:
    from userseq.data.datasets import is_dataset_name

    named = is_dataset_name(data) or not Path(data).exists()
    return data if named else str(Path(data).resolve())


def _vectors(vectors: str | None) -> str | None:
    """Paths inside run:/file: are recorded absolute (the config is read from anywhere)."""
    if vectors and vectors.startswith(("run:", "file:")):
        kind, _, path = vectors.partition(":")
        return f"{kind}:{Path(path).resolve()}"
    return vectors


def _config(config: Path | None, overrides: list[str] | None,
            options: dict[str, tuple[str, Any]]) -> Any:
    from userseq.generative.config import GenerativeConfig

    cfg = GenerativeConfig.from_yaml(config)
    sets = parse_set(overrides)
    if sets:
        cfg = cfg.updated(sets, source="--set")
    return with_options(cfg, options)


def _print_report(report: dict[str, Any], title: str) -> None:
    t = Table("figure", "value", title=title)
    usage = ", ".join(f"{u:.1%}" for u in report["codebook_usage"])
    t.add_row("items", f"{report['vectors']:,}")
    t.add_row("codes", f"{report['levels']} levels x {report['codebook_size']} + collision code")
    t.add_row("codebook usage per level", usage)
    t.add_row("collision rate (before the extra code)", f"{report['collision_rate']:.2%}")
    t.add_row("largest collision code", str(report["max_collision_code"]))
    t.add_row("relative reconstruction error", f"{report['relative_reconstruction_error']:.4f}")
    out.print(t)


# ---------------------------------------------------------------------- semantic-ids fit
def fit_semantic_ids(
    data: DataArg,
    out_dir: Annotated[Path, Opt("--out", "-o", help="directory to write the tokenizer and "
                                                      "item codes to")],
    vectors: VectorsOpt = None,
    item_text: Annotated[str | None, Opt(help="item table (item_id + text) for --vectors text")
                         ] = None,
    levels: Annotated[int | None, Opt(help="codes per item before the collision code")] = None,
    codebook_size: Annotated[int | None, Opt(help="codes per level")] = None,
    epochs: Annotated[int | None, Opt(help="RQ-VAE training epochs")] = None,
    seed: Annotated[int | None, Opt(help="seed of the RQ-VAE")] = None,
    config: Annotated[Path | None, Opt(help="YAML config (its semantic_ids/items/data sections)")
                      ] = None,
    overrides: SetOption = None,
) -> None:
    """Learn item semantic IDs (RQ-VAE + collision code) and write OUT/item_semantic_ids.parquet
    with the tokenizer; `userseq generative train --semantic-ids OUT` reuses them."""
    from userseq.data.load import load_events
    from userseq.generative.semantic_ids import fit_item_ids, item_vectors

    cfg = _config(config, overrides, {
        "--vectors": ("items.source", _vectors(vectors)),
        "--item-text": ("data.item_text", item_text and str(Path(item_text).resolve())),
        "--levels": ("semantic_ids.levels", levels),
        "--codebook-size": ("semantic_ids.codebook_size", codebook_size),
        "--epochs": ("semantic_ids.epochs", epochs), "--seed": ("semantic_ids.seed", seed),
    })
    log = load_events(data, cfg.data)
    t0 = time.time()
    vecs, info = item_vectors(cfg.items.source, log.item_ids, _dataset(data), cfg.data.item_text)
    sid = fit_item_ids(vecs, log.item_ids, cfg.semantic_ids, info)
    sid.save(out_dir)
    _print_report(sid.report, f"semantic IDs of {log.n_items:,} items ({time.time() - t0:.1f}s)")
    out.print(f"wrote {out_dir}")


# ---------------------------------------------------------------------- generative train
def train(
    data: DataArg,
    out_dir: Annotated[Path, Opt("--out", "-o", help="run directory to write")],
    config: Annotated[Path | None, Opt(help="YAML config (sections data, items, semantic_ids, "
                                            "model, train, decode, eval)")] = None,
    overrides: SetOption = None,
    semantic_ids: Annotated[Path | None, Opt(help="item semantic IDs from `userseq semantic-ids "
                                                  "fit` (default: fitted here)")] = None,
    vectors: VectorsOpt = None,
    item_text: Annotated[str | None, Opt(help="item table (item_id + text) for --vectors text")
                         ] = None,
    preferences: Annotated[Path | None, Opt(help="user preference texts (user_id, preference); "
                                                 "turns on the preference slot")] = None,
    epochs: Annotated[int | None, Opt(help="maximum epochs")] = None,
    max_minutes: Annotated[float | None, Opt(help="training time budget in minutes")] = None,
    seed: Annotated[int | None, Opt(help="seed of training")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
    resume: Annotated[bool, Opt(help="continue from OUT/checkpoint.safetensors")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a generative recommender (semantic IDs + encoder-decoder), evaluate it with
    trie-constrained beam search and save the run."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split, split_options
    from userseq.generative.estimator import GenerativeRecommender

    if semantic_ids is not None and not semantic_ids.is_dir():
        raise UserseqError(f"--semantic-ids {semantic_ids}: directory not found; create it with "
                           "`userseq semantic-ids fit --data ... --out DIR`.")
    if preferences is not None and not preferences.is_file():
        raise UserseqError(f"--preferences {preferences}: file not found; give a table with "
                           "user_id and preference columns.")
    cfg = _config(config, overrides, {
        "--vectors": ("items.source", _vectors(vectors)),
        "--item-text": ("data.item_text", item_text and str(Path(item_text).resolve())),
        "--epochs": ("train.epochs", epochs), "--max-minutes": ("train.max_minutes", max_minutes),
        "--seed": ("train.seed", seed), "--device": ("train.device", device),
        "--data": ("dataset", _dataset(data)),
        "--preferences": ("preferences", preferences and str(preferences.resolve())),
        "--preference-slot": ("model.preference", True if preferences else None),
    })
    t0 = time.time()
    log = load_events(data, cfg.data)
    err.print(f"loaded {log.source}: {log.n_users:,} users, {log.n_items:,} items, "
              f"{log.n_events:,} events ({time.time() - t0:.1f}s)")
    sp = make_split(log, cfg.data.split, **split_options(cfg.data))
    rec = GenerativeRecommender(config=cfg).fit(log, sp, run_dir=out_dir, resume=resume,
                                                semantic_ids=semantic_ids, quiet=quiet)
    _print_report(rec.semantic_ids_.report, "semantic IDs")
    _print_metrics(rec, out_dir)


def _print_metrics(rec: Any, run_dir: Path) -> None:
    from userseq.core.artifacts import read_json

    m = read_json(Path(run_dir) / "metrics.json")
    keys = [k for k in m["test"] if k.startswith(("recall@", "ndcg@"))]
    t = Table("split", *keys, title=f"generative ({m['decode']['method']}, "
                                     f"{m['decode']['beams']} beams)")
    for name in ("valid", "test"):
        t.add_row(name, *(f"{m[name][k]:.4f}" for k in keys))
    pop = m["baselines"]["popularity"]
    t.add_row("test: popularity", *(f"{pop.get(k.replace('recall', 'hr'), 0):.4f}" for k in keys))
    out.print(t)
    tr = m.get("train") or {}
    out.print(f"epochs {tr.get('epochs')} (best {tr.get('best_epoch')}), {tr.get('seconds')}s; "
              f"saved run to {run_dir}")


def evaluate(
    run_dir: RunDirArg,
    decode: Annotated[str | None, Opt(help="beam | diverse")] = None,
    beams: Annotated[int | None, Opt(help="beams B")] = None,
    groups: Annotated[int | None, Opt(help="Diverse Beam Search groups G (divides B)")] = None,
    diversity: Annotated[float | None, Opt(help="Diverse Beam Search Hamming penalty λ")] = None,
    split: Annotated[str, Opt(help="valid | test")] = "test",
) -> None:
    """Recall/NDCG of a generative run's decoded lists on its own data (any decoding)."""
    from userseq.data.load import load_events
    from userseq.data.split import make_split, split_options
    from userseq.generative.estimator import GenerativeRecommender

    if split not in ("valid", "test"):
        raise UserseqError(f"--split {split}: expected valid or test.")
    rec = GenerativeRecommender.load(run_dir)
    cfg = rec.config
    log = load_events(cfg.dataset, cfg.data)
    sp = make_split(log, cfg.data.split, **split_options(cfg.data))
    s = rec.settings(decode, beams, groups, diversity)
    m = rec.evaluate(getattr(sp, split), settings=s)
    keys = [k for k in m if k.startswith(("recall@", "ndcg@", "coverage@"))]
    t = Table(*keys, title=f"{run_dir} ({split}; beams {s.beams}, groups {s.groups}, "
                           f"λ {s.diversity})")
    t.add_row(*(f"{m[k]:.4f}" for k in keys))
    out.print(t)


def register(app: typer.Typer) -> None:
    sid = typer.Typer(no_args_is_help=True, help="Semantic IDs: short code tuples of items "
                                                 "(RQ-VAE + collision code).")
    sid.command("fit")(fit_semantic_ids)
    app.add_typer(sid, name="semantic-ids")
    gen = typer.Typer(no_args_is_help=True, help="Generative retrieval: decode the next item's "
                                                 "semantic ID (beam / Diverse Beam Search).")
    gen.command("train")(train)
    gen.command("evaluate")(evaluate)
    app.add_typer(gen, name="generative")
