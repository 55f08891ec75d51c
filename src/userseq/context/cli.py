"""`userseq context train ...` and `userseq context RUN --user U --input TEXT` (registered by
`userseq.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from userseq.core.cli import OverwriteOpt, SetOption, check_out_dir, err, out, parse_set
from userseq.core.errors import UserseqError

Opt = typer.Option


def context(
    target: Annotated[str, typer.Argument(
        help="`train` (train an aggregator), or a run directory of `userseq context train`")],
    data: Annotated[str | None, Opt("--data", "-d", help="train: petgen-wiki (default) or a "
                                    "JSONL file with user_id, posts, context")] = None,
    out_dir: Annotated[Path | None, Opt("--out", "-o", help="train: run directory to write")
                       ] = None,
    context_dim: Annotated[int | None, Opt(help="train: size of the exported user vector (the "
                                                "soft-prompt slot)")] = None,
    top_k: Annotated[int | None, Opt("--k", help="history items returned as context")] = None,
    epochs: Annotated[int | None, Opt(help="train: maximum epochs")] = None,
    seed: Annotated[int | None, Opt(help="train: seeds training and the held-out users")] = None,
    text_model: Annotated[str | None, Opt(help="train: a local sentence-transformers "
                                               "directory (default: the offline MiniLM)")] = None,
    overrides: SetOption = None,
    overwrite: OverwriteOpt = False,
    user: Annotated[str | None, Opt("--user", "-u", help="query: a user of the run's data")
                    ] = None,
    history: Annotated[Path | None, Opt(help="query: a JSON file with a list of history texts "
                                             "(oldest first), instead of --user")] = None,
    input_text: Annotated[str | None, Opt("--input", help="query: the current input text "
                                                          "(e.g. the article or item)")] = None,
    quiet: Annotated[bool, Opt(help="no progress bar")] = False,
) -> None:
    """Persona-Plug user context: train an input-aware aggregator on users' post histories, or
    ask a trained run for one user's retrieved context and context vector (JSON on stdout)."""
    if target == "train":
        _train(data, out_dir, context_dim, top_k, epochs, seed, text_model, overrides, overwrite,
               quiet)
        return
    if any(v is not None for v in (data, out_dir, context_dim, epochs, seed, text_model)) or \
            overrides:
        raise UserseqError("--data/--out/--context-dim/--epochs/--seed/--text-model/--set belong "
                           "to `userseq context train`; a query takes RUN --user U (or "
                           "--history FILE) --input TEXT [--k K].")
    _query(Path(target), user, history, input_text, top_k)


def _train(data: str | None, out_dir: Path | None, context_dim: int | None, top_k: int | None,
           epochs: int | None, seed: int | None, text_model: str | None,
           overrides: list[str] | None, overwrite: bool, quiet: bool) -> None:
    from userseq.context.estimator import UserContext
    from userseq.items.text import TEXT_ENCODERS, check_encoder

    if out_dir is None:
        raise UserseqError("context train needs --out RUN_DIR.")
    check_out_dir(out_dir, False, overwrite)
    if text_model is not None and text_model not in TEXT_ENCODERS:
        check_encoder(text_model)
        text_model = str(Path(text_model).expanduser().resolve())
    dataset = None
    if data is not None and data != "petgen-wiki":
        if not Path(data).is_file():
            raise UserseqError(f"--data {data}: not 'petgen-wiki' and no such file; pass a JSONL "
                               "file with user_id, posts and context per line.")
        dataset = str(Path(data).resolve())
    sets: dict[str, Any] = parse_set(overrides)
    for key, value in (("model.context_dim", context_dim), ("model.top_k", top_k),
                       ("train.epochs", epochs), ("train.seed", seed),
                       ("data.split_seed", seed), ("model.text_encoder", text_model),
                       ("dataset", dataset)):
        if value is not None:
            sets[key] = value
    # --overwrite: the old run goes only once the data is read and valid (bad data keeps it)
    ctx = UserContext(overrides=sets).fit(
        run_dir=out_dir, quiet=quiet,
        before_write=lambda: check_out_dir(out_dir, False, overwrite, delete=True))
    t = ctx.metrics_["test"]
    k = ctx.config.model.top_k
    for name, m in ctx.metrics_["methods"].items():
        rel = m.get(f"relevant@{k}")
        out.print(f"{name:>24}: cosine {m['cosine']:.4f}  next-post hit@10 {m['hit@10']:.4f}"
                  + (f"  relevant@{k} {rel:.4f}" if rel is not None else ""))
    err.print(f"test users {int(t['candidates'])}; saved run to {out_dir}")


def _query(run_dir: Path, user: str | None, history: Path | None, input_text: str | None,
           k: int | None) -> None:
    from userseq.context.estimator import UserContext

    if input_text is None:
        raise UserseqError("give --input TEXT: the text the user is responding to.")
    if (user is None) == (history is None):
        raise UserseqError("give exactly one of --user U (a user of the run's data) and "
                           "--history FILE (a JSON list of texts, oldest first).")
    texts = None
    if history is not None:
        try:
            texts = json.loads(history.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserseqError(f"--history {history}: not a readable UTF-8 JSON file "
                               f"({type(e).__name__}).") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise UserseqError(f"--history {history}: expected a JSON list of strings.")
    ctx = UserContext.load(run_dir)
    res = ctx.context(input_text, user=user, history=texts, k=k)
    out.print_json(json.dumps(res))


def register(app: typer.Typer) -> None:
    app.command("context")(context)
