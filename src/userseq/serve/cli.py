"""`userseq serve RUN` (the HTTP service) and `userseq ctr serve CTR_RUN` (a CTR-only service);
registered by `userseq.cli`. Serving sits above the task packages, so the `ctr serve` command is
added to the `ctr` group from here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from userseq.core.cli import err, out
from userseq.core.errors import UserseqError

Host = Annotated[str, typer.Option(help="address to listen on")]


def serve_cmd(
    run_dir: Annotated[Path | None, typer.Argument(
        help="run directory created by `userseq train` (the retrieval run); omit it to serve "
             "`--detector` alone")] = None,
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    items: Annotated[Path | None, typer.Option(
        help="item metadata (CSV/Parquet: item_id, title[, genres]); default: the named "
             "dataset's")] = None,
    max_batch: Annotated[int, typer.Option(
        help="most histories encoded in one forward pass")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies answer 413")] = 1 << 20,
    max_in_flight: Annotated[int, typer.Option(
        help="requests handled at once; more answer 503 with Retry-After (0: no limit)")] = 32,
    threads: Annotated[int | None, typer.Option(
        help="torch threads for encoding (default 1)")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
    switch_interval: Annotated[float | None, typer.Option(
        help="Python GIL switch interval in seconds (default: Python's 0.005)")] = None,
    detector: Annotated[Path | None, typer.Option(
        help="a detector run (`userseq detect train`) answering POST /classify")] = None,
    ctr: Annotated[Path | None, typer.Option(
        help="a CTR run (`userseq ctr train`) answering POST /score")] = None,
    context: Annotated[Path | None, typer.Option(
        help="a context run (`userseq context train`) answering POST /context")] = None,
    ranker: Annotated[Path | None, typer.Option(
        help="a ranking run (`userseq ctr train` on the same items as RUN) answering POST /rank "
             "(retrieve with RUN, rank with this run) and POST /score")] = None,
    min_item_overlap: Annotated[float, typer.Option(
        help="--ranker: refuse to start when the ranker knows less than this share of RUN's "
             "items")] = 0.5,
    state_dir: Annotated[Path | None, typer.Option(
        help="where POST /users/{id}/events keeps per-user streaming state (SQLite; ssm and "
             "gru4rec runs); default RUN/stream")] = None,
    engine: Annotated[str, typer.Option(
        help="torch | onnx: onnxruntime encodes users and scores /score (exports "
             "RUN/model.onnx on first use)")] = "torch",
) -> None:
    """Serve a run over HTTP: /recommend, /embed, /items/{id}/similar, /users/{id}/similar,
    /explain, /classify (with --detector), /score and /rank (with --ranker), the web page at /,
    the OpenAPI schema at /docs. `userseq serve --detector DETECT_RUN` serves /classify alone."""
    uvicorn = _uvicorn()
    _check_port(port)
    if not 0 <= min_item_overlap <= 1:
        raise UserseqError(f"--min-item-overlap must be in [0, 1] (got {min_item_overlap}).")
    if run_dir is None:
        if detector is None:
            raise UserseqError("give a run directory (`userseq serve RUN`) or a detector run "
                               "(`userseq serve --detector DETECT_RUN`).")
        if ctr is not None or ranker is not None:
            raise UserseqError("--ranker/--ctr need a retrieval run: `userseq serve RUN --ranker "
                               "CTR_RUN` (or `userseq ctr serve CTR_RUN` for /score alone).")
        return _serve_detector(detector, host, port, max_body_bytes, max_in_flight, threads,
                               log_level, uvicorn)
    if max_batch <= 0 or max_body_bytes <= 0:
        raise UserseqError("--max-batch and --max-body-bytes must be positive.")
    if max_in_flight < 0:
        raise UserseqError(f"--max-in-flight must be 0 (no limit) or positive (got "
                           f"{max_in_flight}).")
    _limit_threads(threads)
    if _task(run_dir) == "generative":
        if detector is not None or ctr is not None or ranker is not None:
            raise UserseqError("--detector/--ctr/--ranker: a generative run is served on its "
                               "own; serve the detector or CTR run next to a next-item run.")
        return _serve_generative(run_dir, host, port, max_body_bytes, log_level, uvicorn)
    from userseq.serve.app import create_app
    from userseq.serve.routes import rank as rank_routes
    from userseq.serve.routes.ctr import CTRService
    from userseq.serve.routes.detect import DetectorService
    from userseq.serve.service import Service

    classifier = DetectorService.from_run(detector) if detector is not None else None
    service = Service.from_run(run_dir, items, max_batch=max_batch, log=lambda m: err.print(m),
                               state_dir=state_dir)
    if ctr is not None and ranker is not None:
        raise UserseqError("give --ranker (serves /rank and /score) or --ctr (/score only), not "
                           "both.")
    scorer = CTRService.from_run(ctr) if ctr is not None else None
    joined = None
    if ranker is not None:
        try:
            scorer, joined = rank_routes.load(service, ranker, min_item_overlap)
        except UserseqError:
            service.close()
            raise
    from userseq.serve.engines import apply_engine

    apply_engine(engine, service, scorer)
    app = create_app(service, max_body_bytes, classifier, scorer, max_in_flight=max_in_flight,
                     ranker=joined)
    if context is not None:
        from userseq.serve.routes.context import ContextService

        app.state.context = ContextService.from_run(context)
        err.print(f"POST /context: context run {context}")
    import gc

    gc.collect()
    gc.freeze()  # the loaded run's objects never become garbage: keep them out of every GC pass
    if switch_interval:  # the event loop and the encoding thread share the GIL
        sys.setswitchinterval(switch_interval)
    m = service.index.manifest["items"]
    err.print(f"serving {run_dir} ({len(service.items):,} items, {len(service.users):,} users, "
              f"{m['kind']} index) on http://{host}:{port}/  (API docs: /docs)")
    if classifier is not None:
        err.print(f"POST /classify: detector {detector} ({classifier.model}, reads "
                  f"{classifier.info()['reads']})")
    if scorer is not None and joined is None:
        err.print(f"POST /score: CTR model {ctr} ({scorer.model}, {scorer.n_items:,} items)")
    if joined is not None:
        err.print(f"POST /rank and /score: ranking run {ranker} ({joined.ranker.model}, "
                  f"{joined.ranker.n_items:,} items; {joined.shared:,} of the retrieval run's "
                  f"{len(service.items):,} items shared, {joined.overlap:.1%})")
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        service.close()
        if joined is not None:
            joined.close()


def _serve_detector(detector: Path, host: str, port: int, max_body_bytes: int,
                    max_in_flight: int, threads: int | None, log_level: str,
                    uvicorn: Any) -> None:
    from userseq.serve.app import create_detector_app
    from userseq.serve.routes.detect import DetectorService

    if max_body_bytes <= 0 or max_in_flight < 0:
        raise UserseqError("--max-body-bytes must be positive and --max-in-flight >= 0.")
    _limit_threads(threads)
    classifier = DetectorService.from_run(detector)
    app = create_detector_app(classifier, max_body_bytes, max_in_flight)
    err.print(f"serving detector {detector} ({classifier.model}, reads "
              f"{classifier.info()['reads']}) on http://{host}:{port}/  (POST /classify; API "
              "docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _task(run_dir: Path) -> str:
    from userseq.core.errors import ArtifactError
    from userseq.core.estimator import read_manifest

    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir}: run directory not found.")
    return read_manifest(run_dir)["task"]


def _serve_generative(run_dir: Path, host: str, port: int, max_body_bytes: int, log_level: str,
                      uvicorn: Any) -> None:
    from userseq.serve.app import create_generative_app
    from userseq.serve.routes.generative import GenerativeService

    service = GenerativeService.from_run(run_dir)
    app = create_generative_app(service, max_body_bytes)
    err.print(f"serving generative run {run_dir} ({len(service.items):,} items, "
              f"{len(service.users):,} users) on http://{host}:{port}/  (POST /recommend; API "
              "docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def ctr_serve_cmd(
    run_dir: Annotated[Path, typer.Argument(help="run directory created by `userseq ctr train`")],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8001,
    engine: Annotated[str, typer.Option(
        help="torch | onnx (onnxruntime; exports RUN/model.onnx on first use)")] = "torch",
) -> None:
    """Serve POST /score (click probabilities of candidates for a user or history) over HTTP."""
    uvicorn = _uvicorn()
    _check_port(port)
    from userseq.serve.app import create_ctr_app
    from userseq.serve.engines import apply_engine
    from userseq.serve.routes.ctr import CTRService

    scorer = CTRService.from_run(run_dir)
    apply_engine(engine, scorer=scorer)
    app = create_ctr_app(scorer)
    out.print(f"serving {run_dir} ({scorer.model}) on http://{host}:{port}  (POST /score)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def explain_cmd(
    run_dir: Annotated[Path, typer.Argument(help="run directory created by `userseq train`")],
    user: Annotated[str | None, typer.Option(help="a training user id")] = None,
    history: Annotated[str | None, typer.Option(
        help="item ids, comma-separated, oldest first (appended to --user's history)")] = None,
    item: Annotated[str | None, typer.Option(
        help="explain this item (default: the user's top --items recommendations)")] = None,
    top: Annotated[int, typer.Option(help="concepts per list")] = 5,
    items: Annotated[int, typer.Option(help="recommendations explained without --item")] = 3,
    fit: Annotated[bool, typer.Option(
        help="(re)fit the concept map and save it in RUN (done anyway when RUN has none)")] = False,
    concepts: Annotated[Path | None, typer.Option(
        help="concept labels: CSV/Parquet (item_id + concepts/genres column, lists or "
             "'|'-joined) or JSON {item_id: [concept, ...]} (S3-Rec item2attributes); default: "
             "the dataset's genres")] = None,
    concept_column: Annotated[str | None, typer.Option(
        help="the concept column of --concepts (default: concepts, genres, categories, ...)")
    ] = None,
    holdout: Annotated[float, typer.Option(
        help="share of labelled items held out for the reported accuracy")] = 0.2,
    min_items: Annotated[int, typer.Option(help="drop concepts on fewer items")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the held-out split and the map")] = 0,
) -> None:
    """Explain a user with the SESA concept head: their top concepts and the concepts they share
    with an item (--item) or with their top recommendations. Prints JSON. Fits the concept map on
    the run's item embeddings first when RUN has none (or with --fit), reporting its held-out
    accuracy."""
    import json

    from userseq.nextitem.concepts import ConceptHead, explain_history, fit_run_concepts
    from userseq.nextitem.estimator import NextItemRecommender

    if top < 1 or items < 1:
        raise UserseqError("--top and --items must be positive.")
    rec = NextItemRecommender.load(run_dir)
    if fit or not ConceptHead.exists(run_dir):
        labels, source = _concept_labels(rec, concepts, concept_column)
        head = fit_run_concepts(rec, labels, holdout=holdout, min_items=min_items, seed=seed,
                                source=source)
        head.save(run_dir)
        m = head.metrics
        err.print(f"concept map: {m['concepts']} concepts from {source}, fitted on "
                  f"{m['items_train']:,} items; held-out {m['items_heldout']:,} items: top-1 "
                  f"accuracy {m['top1_accuracy']:.3f} (most-frequent baseline "
                  f"{m['top1_baseline']:.3f}), micro F1 {m['f1']:.3f} (baseline "
                  f"{m['baseline_f1']:.3f}); saved in {run_dir}")
    else:
        head = ConceptHead.load(run_dir)
    if user is None and history is None:
        if not fit:
            raise UserseqError("give --user and/or --history (or --fit alone to fit the map).")
        out.print_json(json.dumps({"concepts": head.names, "metrics": head.metrics}))
        return
    seq = _explain_history(rec, user, history)
    rows = None
    if item is not None:
        from userseq.serve.service import IdMap

        row = IdMap(rec.item_ids, "item").row(item)
        if row is None:
            raise UserseqError(f"--item {item!r}: not in the run's catalogue.")
        rows = [row]
    e = explain_history(rec, head, seq, rows, top, items)
    ids = rec.item_ids.to_list()
    for d in e["items"]:
        d["item_id"] = ids[d.pop("row")]
    out.print_json(json.dumps({"user": user, "history_length": len(seq), **e}, default=str))


def _concept_labels(rec: Any, concepts: Path | None, column: str | None
                    ) -> tuple[dict, str]:
    from userseq.nextitem.concepts import read_concepts
    from userseq.serve.service import load_item_meta

    if concepts is not None:
        return read_concepts(concepts, column), concepts.name
    meta = load_item_meta(None, rec)
    if meta is None or "genres" not in meta.columns:
        raise UserseqError(f"the run's dataset ({rec.config.dataset}) has no item genres: give "
                           "the concept labels with --concepts FILE (item_id + concepts).")
    return read_concepts(meta, "genres"), f"{rec.config.dataset} genres"


def _explain_history(rec: Any, user: str | None, history: str | None) -> Any:
    import numpy as np

    from userseq.serve.service import IdMap

    parts = []
    if user is not None:
        row = IdMap(rec.user_ids, "user").row(user)
        if row is None:
            raise UserseqError(f"--user {user!r}: not a training user of this run; give "
                               "--history instead.")
        offsets, flat = rec.histories_
        parts.append(flat[offsets[row] : offsets[row + 1]].astype(np.int64))
    if history is not None:
        ids = [v.strip() for v in history.split(",") if v.strip()]
        if not ids:
            raise UserseqError("--history is empty; give item ids separated by commas.")
        rows, bad = IdMap(rec.item_ids, "item").rows(ids)
        if bad:
            raise UserseqError(f"--history: unknown item id(s) {bad[:10]}: not in the run's "
                               "catalogue.")
        parts.append(rows + 1)
    return np.concatenate(parts)


def _uvicorn() -> Any:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as e:
        raise UserseqError(f"the HTTP service needs the serve extra ({e.name} is missing): "
                           "pip install 'userseq[serve]'.") from None
    return uvicorn


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise UserseqError(f"--port must be in 1..65535 (got {port}).")


def _limit_threads(threads: int | None) -> None:
    """One query at a time: extra threads only add overhead, and idle BLAS threads spin and steal
    the cores under load."""
    if not threads:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    try:  # numpy's and faiss's BLAS pools
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


def register(app: typer.Typer) -> None:
    """`userseq serve`, and `serve` in the `userseq ctr` group (registered before this module)."""
    app.command("serve")(serve_cmd)
    app.command("explain")(explain_cmd)
    for group in app.registered_groups:
        if group.name == "ctr" and group.typer_instance is not None:
            group.typer_instance.command("serve")(ctr_serve_cmd)
