"""`userseq compress RUN --method int8|pq --out RUN2`: post-training quantization of a run's item
table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from userseq.core.errors import UserseqError

FP32 = 4


def compress_run(run_dir: str | Path, method: str, out_dir: str | Path,
                 compression: float | None = None, subquantizers: int | None = None) -> Any:
    """Quantize every item vector of a saved run (the catalogue and special tokens, whatever the
    representation: id table, text adapter, hashed table) and save the result as a new run whose
    model stores only the codes. Returns the new recommender (not yet evaluated)."""
    import torch

    from userseq.items.factory import special_tokens, table_report
    from userseq.nextitem.estimator import NextItemRecommender

    if method not in ("int8", "pq"):
        raise UserseqError(f"--method {method}: use int8 or pq.")
    if Path(out_dir).resolve() == Path(run_dir).resolve():
        raise UserseqError(f"--out {out_dir}: must differ from the run being compressed.")
    rec = NextItemRecommender.load(run_dir)
    cfg = rec.config.model
    if cfg.quantize != "none":
        raise UserseqError(f"{run_dir}: already quantized ({cfg.quantize}); compress the original "
                           "run instead.")
    enc = rec.encoder_
    enc.eval()
    n = len(rec.item_ids)
    before = table_report(enc.items, cfg)
    with torch.no_grad():
        rows = torch.arange(n + 1 + special_tokens(cfg), device=rec.device_)
        matrix = enc.items(rows).float().cpu()
    table, m = _quantize(matrix, method, n, cfg.dim, compression, subquantizers)
    rec.set_params(**{"model.quantize": method, "model.pq_subquantizers": m})
    enc.items = table.to(rec.device_)
    after = table_report(table, rec.config.model)
    rec.item_info_ = {**rec.item_info_, "compressed": {
        "from": str(Path(run_dir).resolve()), "method": method, "pq_subquantizers": m,
        "bytes_before": before["item_table_bytes"], "bytes_after": after["item_table_bytes"]}}
    rec.save(out_dir)
    return rec


def _quantize(matrix: Any, method: str, n: int, d: int, compression: float | None,
              subquantizers: int | None) -> tuple[Any, int | None]:
    """The quantized table of `matrix` ((n + 1 + special, d)) and the PQ sub-quantizers (None for
    int8)."""
    from userseq.items.compressed import QuantizedTable, quantize_int8, quantize_pq

    if method == "int8":
        if compression is not None or subquantizers is not None:
            raise UserseqError("--method int8 has a fixed ratio (1 byte per value plus a scale per "
                               "row); --compression / --subquantizers are for pq.")
        codes, scale = quantize_int8(matrix)
        return QuantizedTable(n, d, "int8", codes, scale=scale), None
    m = subquantizers
    if m is None:
        ratio = compression or 8.0
        m = round(FP32 * d / ratio)  # PQ with 8-bit codes: M bytes per vector instead of 4 d
        if m < 1 or m > d or d % m:
            raise UserseqError(f"--compression {ratio}: PQ stores M one-byte codes per vector "
                               f"(ratio 4*dim/M = {FP32 * d}/M) and M must divide dim {d}, so "
                               "ratios below 4 are not possible; choose e.g. 4, 8, 16, 32 or "
                               "pass --subquantizers.")
    codes, centroids = quantize_pq(matrix, m, train_rows=slice(1, n + 1))
    return QuantizedTable(n, d, "pq", codes, centroids=centroids), m
