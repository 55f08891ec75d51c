"""Batch embedding of users from partitioned Parquet events: `userseq embed RUN --input DIR
--out DIR --engine local|ray`.

The input is a directory of Parquet files (any nesting, e.g. `date=.../part-*.parquet`) with the
run's user, item and timestamp columns. Each user's history is their events in the input, ordered
by timestamp (ties by item id); items outside the run's catalogue are skipped, and a user with no
catalogue item is not written. The output is a directory of Parquet files with `user_id` and
`embedding` (float32 list), one row per user.

Both engines run the same `UserEmbedder` on groups of complete users, so their rows are equal:

- `local` (default): one process reads the events, sorts them by user and embeds `chunk_size`
  users at a time, writing one Parquet file per chunk (memory: the events plus one chunk).
- `ray`: Ray Data reads the files in parallel, hash-partitions the events by user (every user's
  events land in one block), and `map_batches` runs `UserEmbedder` in a pool of actors that each
  load the model once; Ray Data restarts a dead actor and retries its batch (its defaults for actor
  pools), and the blocks are written
  as partitioned Parquet. `ray.init` joins `--ray-address` (or RAY_ADDRESS), else starts a local
  Ray with `workers` + 1 CPUs (each actor holds one CPU; the read, shuffle and write tasks need one
  more, or they wait forever behind the actors). The run's files are sent to the actors through
  Ray's object store, so workers on other machines need no shared file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import ConfigError, DataError, UserseqError
from userseq.data.eventlog import lookup_ids

ENGINES = ("local", "ray")
# what NextItemRecommender.load needs of a run directory (not checkpoints or indexes)
_SKIP = {"checkpoint.safetensors", "best.safetensors", "trainer_state.json"}


class UserEmbedder:
    """Embeds groups of complete users: the callable class of the Ray engine (loaded once per
    actor), also used in-process by the local engine. Input: a table of events with the run's
    user/item/timestamp columns; output: a table of `user_id`, `embedding`."""

    def __init__(self, run: Any) -> None:
        """`run`: a run directory, or its files ({name: bytes}, or a Ray ObjectRef to them)."""
        from userseq.nextitem.estimator import NextItemRecommender

        if type(run).__name__ == "ObjectRef":  # the Ray engine's copy of the run's files
            import ray

            run = ray.get(run)
        if isinstance(run, dict):  # the run's files, shipped through Ray's object store
            with tempfile.TemporaryDirectory(prefix="userseq-run-") as tmp:
                for name, data in run.items():
                    (Path(tmp) / name).write_bytes(data)
                self.rec = NextItemRecommender.load(tmp)
        else:
            self.rec = NextItemRecommender.load(run)
        d = self.rec.config.data
        self.cols = (d.user_col, d.item_col, d.timestamp_col)

    def __call__(self, events: Any) -> Any:
        """A pyarrow.Table (Ray) or Polars frame of events -> the same kind of table of users."""
        arrow = not isinstance(events, pl.DataFrame)
        out = self.embed(pl.from_arrow(events) if arrow else events)
        return out.to_arrow() if arrow else out

    def embed(self, events: pl.DataFrame) -> pl.DataFrame:
        u, i, t = self.cols
        rec = self.rec
        f = events.select(u, i, t).sort([u, t, i])
        idx = lookup_ids(rec.item_ids_, f[i], offset=1)  # unknown items: 0
        f = f.select(u).with_columns(pl.Series("idx", idx.astype(np.int32))).filter(
            pl.col("idx") > 0)
        groups = f.group_by(u, maintain_order=True).agg(pl.col("idx"))
        offsets = np.zeros(len(groups) + 1, dtype=np.int64)
        np.cumsum(groups["idx"].list.len().to_numpy(), out=offsets[1:])
        items = groups["idx"].explode().to_numpy().astype(np.int32, copy=False)
        dim = rec.encoder_.dim
        vec = (rec.encode(offsets, items).numpy().astype(np.float32, copy=False) if len(groups)
               else np.zeros((0, dim), dtype=np.float32))
        return pl.DataFrame({"user_id": groups[u], "embedding": vec})


def parquet_files(input_dir: str | Path) -> list[Path]:
    d = Path(input_dir)
    if not d.is_dir():
        raise DataError(f"--input {d}: not a directory; pass a directory of Parquet files "
                        "(partitioned events).")
    files = sorted(p for p in d.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"--input {d}: no *.parquet files in it (searched sub-directories too).")
    return files


def check_columns(files: list[Path], cols: tuple[str, str, str]) -> None:
    names = pl.scan_parquet(files[0]).collect_schema().names()
    missing = [c for c in cols if c not in names]
    if missing:
        raise DataError(f"{files[0]}: column(s) {missing} missing; the run reads events with "
                        f"user/item/timestamp columns {list(cols)} (data.user_col, "
                        f"data.item_col, data.timestamp_col of its config); found {names}.")


def embed_local(run_dir: str | Path, input_dir: str | Path, out_dir: str | Path,
                chunk_size: int = 65_536) -> dict[str, int]:
    """The local engine; returns {"users": written, "skipped": users with no catalogue item,
    "files": Parquet files written}."""
    emb = UserEmbedder(run_dir)
    u, i, t = emb.cols
    files = parquet_files(input_dir)
    check_columns(files, emb.cols)
    events = pl.scan_parquet(files).select(u, i, t).collect().sort(u)
    users, starts = np.unique(events[u].to_numpy(), return_index=True) if events.height else (
        np.array([]), np.array([], dtype=np.int64))
    order = np.argsort(starts)
    starts = np.append(starts[order], events.height)
    out = _fresh_dir(out_dir)
    written = n_files = 0
    for c in range(0, len(users), chunk_size):
        lo, hi = int(starts[c]), int(starts[min(c + chunk_size, len(users))])
        part = emb.embed(events.slice(lo, hi - lo))
        part.write_parquet(out / f"part-{n_files:05d}.parquet")
        written, n_files = written + part.height, n_files + 1
    return {"users": written, "skipped": len(users) - written, "files": n_files}


def embed_ray(run_dir: str | Path, input_dir: str | Path, out_dir: str | Path,
              workers: int = 2, chunk_size: int = 65_536, address: str | None = None,
              partitions: int | None = None,
              embedder: type[UserEmbedder] = UserEmbedder) -> dict[str, int]:
    """The Ray engine (needs `pip install userseq[ray]`); returns {"users": written, "files"}.
    `embedder`: the actors' callable class (a subclass may post-process the vectors)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'userseq[ray]' (or use --engine "
                          "local).") from None
    if workers < 1:
        raise ConfigError(f"--workers must be a positive integer (got {workers}).")
    probe = UserEmbedder(run_dir)  # fails early, with the usual errors, on a bad run
    files = parquet_files(input_dir)
    check_columns(files, probe.cols)
    u, i, t = probe.cols
    del probe
    out = _fresh_dir(out_dir)
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if not address:  # the actors' CPUs, plus one for reading, shuffling and writing
            kwargs["num_cpus"] = workers + 1
        ray.init(address=address, **kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        run_ref = ray.put(_run_files(run_dir))
        ds = ray.data.read_parquet([str(f) for f in files]).select_columns([u, i, t])
        # every user's events in one block: a hash shuffle on the user column
        n_blocks = partitions or max(2 * workers, -(-sum(f.stat().st_size for f in files)
                                                     // (32 * 2**20)))
        ds = ds.repartition(n_blocks, keys=[u])
        ds = ds.map_batches(embedder, fn_constructor_args=(run_ref,), batch_size=None,
                            batch_format="pyarrow", concurrency=workers, num_cpus=1)
        ds.write_parquet(str(out))
    finally:
        if started:
            ray.shutdown()
    written = sum(pl.scan_parquet(p).select(pl.len()).collect().item()
                  for p in out.rglob("*.parquet"))
    return {"users": int(written), "files": len(list(out.rglob("*.parquet")))}


def _run_files(run_dir: str | Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(run_dir).iterdir()
            if p.is_file() and p.name not in _SKIP}


def _fresh_dir(out_dir: str | Path) -> Path:
    """An empty output directory: a directory of an earlier embedding (Parquet files only) is
    replaced; anything else is an error."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise UserseqError(f"--out {out}: exists and is not a directory; with --input, "
                               "--out is a directory of Parquet files.")
        other = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"]
        if other:
            raise UserseqError(f"--out {out}: holds files other than Parquet ({other[0].name}); "
                               "choose an empty or new directory.")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out
