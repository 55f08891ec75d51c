"""Training batches: length bucketing (`train.bucket_batches`)."""

import numpy as np

from userseq.data.batches import length_bucketed_batches


def test_bucket_batches_one_gives_plain_shuffled_batches():
    """train.bucket_batches=1: each batch is a consecutive chunk of one permutation (no sorting
    across batches), as a plain shuffled loader would give."""
    lengths = np.arange(100) % 17
    batches = length_bucketed_batches(lengths, 10, np.random.default_rng(3), bucket_batches=1)
    order = np.random.default_rng(3).permutation(100)
    chunks = {frozenset(order[i : i + 10].tolist()) for i in range(0, 100, 10)}
    assert {frozenset(b.tolist()) for b in batches} == chunks
    sorted_ = length_bucketed_batches(lengths, 10, np.random.default_rng(3))  # default: 32
    spreads = [np.ptp(lengths[b]) for b in sorted_]
    assert max(spreads) <= 2  # bucketed batches hold similar lengths
