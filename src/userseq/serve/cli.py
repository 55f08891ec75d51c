"""`userseq index` and `userseq serve` (registered into the main typer app by `register`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from userseq.errors import UserseqError

out = Console()
err = Console(stderr=True)

RunDirArg = Annotated[Path, typer.Argument(help="run directory created by `userseq train`")]


def index_config(config: Path | None, **options: Any) -> Any:
    """IndexConfig from an optional YAML file (IndexConfig keys, or under an `index:` section) and options."""
    from userseq.index.vector import IndexConfig

    base: dict[str, Any] = {}
    if config is not None:
        import yaml

        if not config.is_file():
            raise UserseqError(f"--config {config}: file not found.")
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserseqError(f"--config {config}: not valid YAML ({str(e).splitlines()[0]}).") from None
        if not isinstance(data, dict):
            raise UserseqError(f"--config {config}: expected a mapping of index settings.")
        base = data.get("index", data)
    return IndexConfig.from_options(base, **options)


def print_manifest(manifest: dict[str, Any], title: str) -> None:
    k = manifest.get("recall_k", 100)
    t = Table("index", "kind", "metric", "vectors", "dim", f"recall@{k} vs exact", "query ms (1 query)",
              "build s", title=title)
    for name, what in (("items", "items: recommend (dot)"), ("items_cos", "items: similar (cosine)"),
                       ("users", "users: similar (cosine)")):
        m = manifest.get(name)
        if m:
            t.add_row(what, m["kind"], m["metric"], f"{m['n']:,}", str(m["dim"]), f"{m[f'recall@{k}']:.4f}",
                      f"{m['query_ms']:.3f}", f"{m.get('build_seconds', 0):.1f}")
    out.print(t)


def register(app: typer.Typer) -> None:
    @app.command("index")
    def index_cmd(
        run_dir: RunDirArg,
        kind: Annotated[str | None, typer.Option(help="auto | exact | flat | hnsw | ivfpq (auto: by size)")] = None,
        config: Annotated[Path | None, typer.Option(help="YAML with index settings (see docs/serving.md)")] = None,
        users: Annotated[bool, typer.Option(help="also index user embeddings (similar users)")] = True,
        chunk_size: Annotated[int, typer.Option(help="users encoded per chunk (bounded memory)")] = 65_536,
        ef_search: Annotated[int | None, typer.Option(help="HNSW query beam width")] = None,
        nprobe: Annotated[int | None, typer.Option(help="IVF lists probed per query")] = None,
        quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    ) -> None:
        """Build the ANN indexes of a run (items, similar items, similar users) into RUN_DIR/index."""
        from userseq.index.run import RunIndex
        from userseq.tasks.nextitem import NextItemRecommender

        if chunk_size <= 0:
            raise UserseqError(f"--chunk-size must be a positive integer (got {chunk_size}).")
        cfg = index_config(config, kind=kind, ef_search=ef_search, nprobe=nprobe)
        rec = NextItemRecommender.load(run_dir)
        with _progress(quiet) as say:
            index = RunIndex.build(rec, run_dir, cfg, users=users, chunk_size=chunk_size, progress=say)
        print_manifest(index.manifest, f"index of {run_dir}")
        out.print(f"wrote {run_dir / 'index'} in {index.manifest['build_seconds']:.1f}s")

    @app.command("serve")
    def serve_cmd(
        run_dir: RunDirArg,
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port")] = 8000,
        items: Annotated[Path | None, typer.Option(
            help="item metadata (CSV/Parquet: item_id, title[, genres]); default: the named dataset's")] = None,
        max_batch: Annotated[int, typer.Option(help="most histories encoded in one forward pass")] = 64,
        max_body_bytes: Annotated[int, typer.Option(help="larger request bodies answer 413")] = 1 << 20,
        threads: Annotated[int | None, typer.Option(help="torch threads for encoding (default 1)")] = 1,
        log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
        switch_interval: Annotated[float | None, typer.Option(
            help="Python GIL switch interval in seconds (default: Python's 0.005)")] = None,
        detector: Annotated[Path | None, typer.Option(
            help="a detector run (`userseq detect train`) answering POST /classify")] = None,
    ) -> None:
        """Serve a run over HTTP: /recommend, /embed, /items/{id}/similar, /users/{id}/similar,
        /classify (with --detector), the web page at /, the OpenAPI schema at /docs."""
        try:
            import uvicorn
        except ImportError:
            raise UserseqError("the HTTP service needs the serve extra: pip install 'userseq[serve]'.") from None
        if not 0 < port < 65536:
            raise UserseqError(f"--port must be in 1..65535 (got {port}).")
        if max_batch <= 0 or max_body_bytes <= 0:
            raise UserseqError("--max-batch and --max-body-bytes must be positive.")
        import torch

        from userseq.serve.app import create_app
        from userseq.serve.service import Service

        if threads:
            torch.set_num_threads(threads)
            try:
                import faiss

                faiss.omp_set_num_threads(threads)  # one query at a time: extra threads only add overhead
            except ImportError:
                pass
            try:  # numpy's and faiss's BLAS pools: idle threads spin and steal the cores under load
                from threadpoolctl import threadpool_limits

                threadpool_limits(threads)
            except ImportError:
                pass
        from userseq.serve.classify import DetectorService

        classifier = DetectorService.from_run(detector) if detector is not None else None
        service = Service.from_run(run_dir, items, max_batch=max_batch, log=lambda m: err.print(m))
        app = create_app(service, max_body_bytes, classifier)
        import gc

        gc.collect()
        gc.freeze()  # the loaded run's objects never become garbage: keep them out of every GC pass
        if switch_interval:  # the event loop and the encoding thread share the GIL
            sys.setswitchinterval(switch_interval)
        m = service.index.manifest["items"]
        err.print(f"serving {run_dir} ({len(service.items):,} items, {len(service.users):,} users, "
                  f"{m['kind']} index) on http://{host}:{port}/  (API docs: /docs)")
        if classifier is not None:
            err.print(f"POST /classify: detector {detector} ({classifier.model}, reads {classifier.info()['reads']})")
        try:
            uvicorn.run(app, host=host, port=port, log_level=log_level)
        finally:
            service.close()


class _progress:
    """A rich progress bar fed by `say(what, done, total)`; silent when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self):
        if self.quiet:
            return lambda what, done, total: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                            TimeElapsedColumn(), console=err, transient=True)
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
