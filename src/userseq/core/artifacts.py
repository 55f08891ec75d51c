"""Run-directory files: safetensors tensors, id maps as Parquet, JSON, data fingerprints.

No pickle anywhere: everything a run directory holds is safetensors, Parquet, YAML or JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from userseq.core.errors import ArtifactError

COMPLETE_FILE = "COMPLETE"  # the completion marker of a run directory: written last by `save`


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write a file atomically: yield a temporary name next to `path`, rename it over `path` when
    the block succeeds (a reader sees the old file or the new one, never half of one); remove the
    temporary file when it fails."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: str | Path) -> None:
    """`Path.write_text`, atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """`DataFrame.write_parquet`, atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def file_digest(path: str | Path) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex digest} of a file (what a run's manifest records per file)."""
    h = hashlib.sha256()
    p = Path(path)
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": p.stat().st_size, "sha256": h.hexdigest()}


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors. One that shares memory with an earlier one (tied weights, a
    view) is written as a copy: safetensors stores every name on its own."""
    cpu: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        ptr = v.untyped_storage().data_ptr()
        cpu[k] = v.clone() if ptr in storages else v
        storages.add(ptr)
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; a missing, truncated or corrupt file gives an ArtifactError."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: file not found. Is this a userseq run directory (created by "
                            "`userseq train`)?")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(
            f"{p}: corrupt or truncated checkpoint ({str(e).splitlines()[0]}). Retrain, or restore "
            "the file from a backup."
        ) from None
    return tensors, meta


def save_ids(series: pl.Series, path: str | Path) -> None:
    write_parquet(pl.DataFrame({"index": np.arange(len(series)), "id": series}), path)


def load_ids(path: str | Path) -> pl.Series:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: id map not found; the run directory is incomplete.")
    try:
        return pl.read_parquet(p)["id"]
    except Exception as e:  # polars/arrow raise several types for corrupt files
        raise ArtifactError(f"{p}: corrupt id map ({str(e).splitlines()[0]}).") from None


def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n", path)


def read_json(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: not found.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: not valid JSON ({e}).") from None


def fingerprint(*arrays: np.ndarray, extra: str = "") -> str:
    """A short, stable hash of arrays (the data a model was trained on)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    h.update(extra.encode())
    return h.hexdigest()[:16]
