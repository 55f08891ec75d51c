"""`userseq serve RUN`: the HTTP service (registered by `userseq.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from userseq.core.cli import RunDirArg, err
from userseq.core.errors import UserseqError


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
    from userseq.serve.routes.detect import DetectorService

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




def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
