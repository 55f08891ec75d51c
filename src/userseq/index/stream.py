"""Stream user embeddings chunk by chunk: to Parquet (row groups) and/or a memory-mapped .npy.

Memory stays bounded by the chunk size (plus the model and the history CSR the run already
holds): one chunk of users is encoded, written, and dropped before the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import UserseqError
from userseq.data.batches import csr_take

DEFAULT_CHUNK = 65_536


def iter_user_vectors(rec: Any, chunk_size: int = DEFAULT_CHUNK,
                      rows: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (user rows, float32 vectors) for the run's training users (or `rows` of them), in
    order."""
    if chunk_size <= 0:
        raise UserseqError(f"chunk size must be a positive integer (got {chunk_size}).")
    offsets, items = rec.histories_
    n = len(offsets) - 1
    all_rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    for lo in range(0, len(all_rows), chunk_size):
        r = all_rows[lo : lo + chunk_size]
        off, it = csr_take(offsets, items, offsets[r], offsets[r + 1])
        yield r, rec.encode(off, it).numpy().astype(np.float32, copy=False)


def write_user_embeddings(rec: Any, out_path: str | Path | None, chunk_size: int = DEFAULT_CHUNK,
                          vectors_path: str | Path | None = None,
                          progress: Callable[[int], None] | None = None) -> int:
    """Encode every training user once, writing Parquet row groups (`user_id`, `embedding`) to
    `out_path` and/or rows of a float32 `.npy` at `vectors_path`. Returns the number of users.
    `progress(n_done)` is called after each chunk."""
    import pyarrow.parquet as pq

    n = len(rec.user_ids)
    dim = rec.encoder_.dim
    writer = None
    mm = None
    tmp = Path(str(out_path) + ".part") if out_path is not None else None
    if vectors_path is not None:
        Path(vectors_path).parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(str(vectors_path), mode="w+", dtype=np.float32,
                                       shape=(n, dim))
    done = 0
    try:
        for r, vec in iter_user_vectors(rec, chunk_size):
            if tmp is not None:
                frame = pl.DataFrame({"user_id": rec.user_ids.gather(r), "embedding": vec})
                table = frame.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
            if mm is not None:
                mm[r[0] : r[-1] + 1] = vec
            done += len(r)
            if progress is not None:
                progress(done)
    except BaseException:
        if writer is not None:
            writer.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
        tmp.replace(out_path)  # a complete file or none: never a half-written Parquet
    if mm is not None:
        mm.flush()
        del mm
    return done
