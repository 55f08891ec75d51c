"""`userseq index RUN`: build the ANN indexes of a run (registered by `userseq.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from userseq.core.cli import RunDirArg, err, out
from userseq.core.errors import UserseqError


def index_config(config: Path | None, **options: Any) -> Any:
    """IndexConfig from an optional YAML file (IndexConfig keys, or under an `index:` section)
    and options."""
    from userseq.index.vector import IndexConfig

    base: dict[str, Any] = {}
    if config is not None:
        import yaml

        if not config.is_file():
            raise UserseqError(f"--config {config}: file not found.")
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserseqError(f"--config {config}: not valid YAML "
                               f"({str(e).splitlines()[0]}).") from None
        if not isinstance(data, dict):
            raise UserseqError(f"--config {config}: expected a mapping of index settings.")
        base = data.get("index", data)
    return IndexConfig.from_options(base, **options)


def print_manifest(manifest: dict[str, Any], title: str) -> None:
    k = manifest.get("recall_k", 100)
    t = Table("index", "kind", "metric", "vectors", "dim", f"recall@{k} vs exact",
              "query ms (1 query)", "build s", title=title)
    for name, what in (("items", "items: recommend (dot)"),
                       ("items_cos", "items: similar (cosine)"),
                       ("users", "users: similar (cosine)")):
        m = manifest.get(name)
        if m:
            t.add_row(what, m["kind"], m["metric"], f"{m['n']:,}", str(m["dim"]),
                      f"{m[f'recall@{k}']:.4f}", f"{m['query_ms']:.3f}",
                      f"{m.get('build_seconds', 0):.1f}")
    out.print(t)


def index_cmd(
    run_dir: RunDirArg,
    kind: Annotated[str | None, typer.Option(
        help="auto | exact | flat | hnsw | ivfpq (auto: by size)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML with index settings (see docs/serving.md)")] = None,
    users: Annotated[bool, typer.Option(help="also index user embeddings (similar users)")] = True,
    chunk_size: Annotated[int, typer.Option(
        help="users encoded per chunk (bounded memory)")] = 65_536,
    ef_search: Annotated[int | None, typer.Option(help="HNSW query beam width")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists probed per query")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Build the ANN indexes of a run (items, similar items, similar users) into RUN_DIR/index."""
    from userseq.core.estimator import Estimator
    from userseq.index.run import RunIndex

    if chunk_size <= 0:
        raise UserseqError(f"--chunk-size must be a positive integer (got {chunk_size}).")
    cfg = index_config(config, kind=kind, ef_search=ef_search, nprobe=nprobe)
    rec = Estimator.load(run_dir)  # the index package sits below the task packages: no import
    if rec.task != "nextitem":
        raise UserseqError(f"{run_dir}: a '{rec.task}' run; `userseq index` indexes the user and "
                           "item embeddings of a next-item run (`userseq train`).")
    with _progress(quiet) as say:
        index = RunIndex.build(rec, run_dir, cfg, users=users, chunk_size=chunk_size, progress=say)
    print_manifest(index.manifest, f"index of {run_dir}")
    out.print(f"wrote {run_dir / 'index'} in {index.manifest['build_seconds']:.1f}s")



class _progress:
    """A rich progress bar fed by `say(what, done, total)`; silent when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self):
        if self.quiet:
            return lambda what, done, total: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed:,}/{task.total:,}"), TimeElapsedColumn(),
                            console=err, transient=True)
        self.bar.start()
        self.tasks: dict[str, Any] = {}

        def say(what: str, done: int, total: int) -> None:
            if what not in self.tasks:
                self.tasks[what] = self.bar.add_task(what, total=total)
            self.bar.update(self.tasks[what], completed=done)

        return say

    def __exit__(self, *exc: Any) -> None:
        if not self.quiet:
            self.bar.stop()


def register(app: typer.Typer) -> None:
    app.command("index")(index_cmd)
