"""Seeded synthetic event logs for benchmarks and tests.

The data imitate a real interaction log closely enough to exercise the `EventLog` pipeline:

* `user_id` and `item_id` are sparse, non-contiguous int64 ids (so the id maps do real work);
* every user has at least one event; events per user follow a heavy-tailed (log-normal) activity
  distribution, normalised so that the total is exactly `n_events`;
* item popularity is Zipf-like: the item of popularity rank k is drawn with probability
  proportional to 1 / (k + 1) ** zipf_a; ranks are mapped to ids by a random permutation;
* `timestamp` (int64 Unix seconds) is non-decreasing within a user: a random start time plus
  exponential gaps; about `tie_rate` of the gaps are 0 (same-second events, as in real logs),
  which exercises the stable tie-break on the input row;
* rows come in user blocks, the blocks in random user order: a user's events are contiguous and
  chronological in the file, but the file is not sorted by user id (the reader has to sort).

Generation runs in chunks of about `chunk_events` rows with numpy and a pyarrow writer, so memory
stays bounded (about 100 MB of working memory per million rows of chunk, plus O(n_users + n_items))
whatever `n_events` is. The output is a pure function of the arguments (including `chunk_events`).

    python benchmarks/synthetic.py events.parquet --events 1000000 --users 10000 --items 50000
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())])
T0 = 1_600_000_000  # 2020-09-13; start of the synthetic time range (Unix seconds)
START_SPAN = 365 * 86_400  # users start uniformly within one year
MEAN_GAP = 3_600  # mean seconds between a user's consecutive events


def _sparse_ids(rng: np.random.Generator, n: int, base: int) -> np.ndarray:
    """n distinct, non-contiguous int64 ids in random order."""
    ids = base + np.cumsum(rng.integers(1, 64, size=n, dtype=np.int64))
    rng.shuffle(ids)
    return ids


def iter_chunks(
    n_events: int,
    n_users: int,
    n_items: int,
    seed: int = 0,
    *,
    zipf_a: float = 1.0,
    user_sigma: float = 1.0,
    tie_rate: float = 0.02,
    chunk_events: int = 2_000_000,
) -> Iterator[pa.Table]:
    """Yield the synthetic log as pyarrow tables of roughly `chunk_events` rows (whole user
    blocks)."""
    if n_users < 1 or n_items < 1:
        raise ValueError("n_users and n_items must be >= 1")
    if n_events < n_users:
        raise ValueError(f"n_events ({n_events}) must be >= n_users ({n_users}): "
                         "every user has an event")
    rng = np.random.default_rng(seed)
    user_ids = _sparse_ids(rng, n_users, base=1_000_000)
    item_by_rank = _sparse_ids(rng, n_items, base=10_000_000_000)

    # events per user: 1 + multinomial share of the rest, with log-normal activity weights
    weights = rng.lognormal(0.0, user_sigma, size=n_users)
    counts = 1 + rng.multinomial(n_events - n_users, weights / weights.sum())
    del weights
    starts = T0 + rng.integers(0, START_SPAN, size=n_users, dtype=np.int64)

    # Zipf-like item popularity, sampled by inverse CDF
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** zipf_a)
    cdf /= cdf[-1]

    order = rng.permutation(n_users)  # file order of the user blocks
    ends = np.cumsum(counts[order])
    lo = 0
    while lo < n_users:
        done = int(ends[lo - 1]) if lo else 0
        hi = int(np.searchsorted(ends, done + chunk_events, side="right"))
        hi = max(hi, lo + 1)  # a single very active user may exceed chunk_events
        users = order[lo:hi]
        c = counts[users]
        m = int(c.sum())
        seg = np.zeros(len(users), dtype=np.int64)
        np.cumsum(c[:-1], out=seg[1:])  # first row of each user block within the chunk

        gaps = np.ceil(rng.exponential(MEAN_GAP, size=m)).astype(np.int64)
        gaps[rng.random(m) < tie_rate] = 0
        gaps[seg] = 0
        csum = np.cumsum(gaps)
        ts = csum - np.repeat(csum[seg], c) + np.repeat(starts[users], c)
        del gaps, csum

        ranks = np.searchsorted(cdf, rng.random(m), side="right")
        np.minimum(ranks, n_items - 1, out=ranks)  # guards against cdf[-1] rounding
        items = item_by_rank[ranks]
        del ranks

        yield pa.Table.from_arrays(
            [pa.array(np.repeat(user_ids[users], c)), pa.array(items), pa.array(ts)], schema=SCHEMA
        )
        lo = hi


def write_synthetic_events(
    path: str | os.PathLike,
    n_events: int,
    n_users: int,
    n_items: int,
    seed: int = 0,
    fmt: str = "parquet",
    **options,
) -> Path:
    """Write a synthetic log (columns user_id, item_id, timestamp; all int64) to `path`.

    fmt: "parquet" (snappy, row groups of <= 1Mi rows) or "csv". The file is written under a
    temporary name and renamed when complete, so an existing `path` is always a whole file.
    Options are passed to `iter_chunks` (zipf_a, user_sigma, tie_rate, chunk_events).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    meta = {
        b"userseq.synthetic": (
            f"n_events={n_events} n_users={n_users} n_items={n_items} seed={seed} "
            + " ".join(f"{k}={v}" for k, v in sorted(options.items()))
        ).strip().encode()
    }
    chunks = iter_chunks(n_events, n_users, n_items, seed, **options)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(tmp, SCHEMA.with_metadata(meta), compression="snappy") as writer:
            for table in chunks:
                writer.write_table(table, row_group_size=1 << 20)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        with pcsv.CSVWriter(tmp, SCHEMA) as writer:
            for table in chunks:
                writer.write_table(table)
    else:
        raise ValueError(f"unknown fmt {fmt!r}; use 'parquet' or 'csv'")
    os.replace(tmp, path)
    return path


def synthetic_frame(n_events: int = 10_000, n_users: int = 200, n_items: int = 1_000,
                    seed: int = 0, **options):
    """The same synthetic log as a Polars DataFrame (for tests and small examples)."""
    import polars as pl

    options.setdefault("chunk_events", 2_000_000)
    table = pa.concat_tables(iter_chunks(n_events, n_users, n_items, seed, **options))
    return pl.from_arrow(table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fmt", choices=["parquet", "csv"], default="parquet")
    a = ap.parse_args(argv)
    out = write_synthetic_events(a.path, a.events, a.users, a.items, a.seed, fmt=a.fmt)
    print(f"wrote {out} ({out.stat().st_size / 1e6:,.1f} MB)")


if __name__ == "__main__":
    main()
