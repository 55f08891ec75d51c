"""Padded tensors from CSR sequences (vectorized; no per-user Python loops)."""

from __future__ import annotations

import numpy as np

from userseq.core import distributed


def pad_left(starts: np.ndarray, ends: np.ndarray, items: np.ndarray, length: int,
             pad: int = 0) -> np.ndarray:
    """Matrix (n, length): row i holds the last `length` items of items[starts[i]:ends[i]],
    left-padded."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    idx = ends[:, None] - length + np.arange(length, dtype=np.int64)[None, :]
    valid = idx >= starts[:, None]
    out = np.full(idx.shape, pad, dtype=np.int64)
    out[valid] = items[idx[valid]]
    return out


def last_window(offsets: np.ndarray, items: np.ndarray, length: int, pad: int = 0) -> np.ndarray:
    """Left-padded matrix (n_seq, length) holding the last `length` items of every CSR sequence."""
    return pad_left(offsets[:-1], offsets[1:], items, length, pad)


def training_windows(offsets: np.ndarray, items: np.ndarray, max_len: int, min_len: int = 2,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Training rows of length max_len + 1 (inputs = row[:-1], next-item targets = row[1:]).

    Every sequence with at least `min_len` items contributes one row, left-padded with 0: its last
    max_len + 1 items, or, with `rng`, a random crop: a sequence longer than the row ends at a
    uniformly drawn position, so over the epochs every part of a long history is trained on (the
    row count, and so the cost of an epoch, stays the same).
    """
    lengths = np.diff(offsets)
    keep = lengths >= min_len
    starts, ends = offsets[:-1][keep], offsets[1:][keep]
    if rng is not None:
        span = max_len + 1
        slack = np.maximum(ends - starts - span, 0)  # how far the window's end can move back
        ends = ends - (rng.random(len(ends)) * (slack + 1)).astype(np.int64)
    return pad_left(starts, ends, items, max_len + 1)


def csr_take(offsets: np.ndarray, items: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Concatenate items[starts[i]:ends[i]] for all i (vectorized)."""
    lengths = (ends - starts).astype(np.int64)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    idx = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return new_offsets, items[idx]


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 32) -> list[np.ndarray]:
    """Shuffled batches of row indices in which rows have similar lengths, so little compute is
    spent on padding: shuffle, cut into buckets of `bucket_batches` batches, sort each bucket by
    length, batch it, then shuffle the batch order. Under data-parallel training every rank draws
    the same batches from the same `rng` and keeps its share of each (`shard_rows`)."""
    order = rng.permutation(len(lengths))
    out = []
    span = batch_size * bucket_batches
    for b in range(0, len(order), span):
        bucket = order[b : b + span]
        bucket = bucket[np.argsort(lengths[bucket], kind="stable")]
        out.extend(bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size))
    rng.shuffle(out)
    return [shard_rows(b) for b in out]


def shard_rows(rows: np.ndarray, rank: int | None = None, world: int | None = None) -> np.ndarray:
    """This rank's share of a global batch under data-parallel training (the DistributedSampler's
    rule, applied per batch): rows[rank::world], so the ranks together train on exactly the
    global batch a single process would see. A batch smaller than the world is repeated to fill
    it (every rank needs a batch, as DistributedSampler pads). Without distribution: `rows`."""
    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    if world == 1:
        return rows
    if len(rows) < world:
        rows = np.resize(rows, world)
    return rows[rank::world]
