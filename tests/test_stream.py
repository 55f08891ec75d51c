"""Streaming user state (recurrent encoders): update == re-encoding, O(new events), bad events
rejected without touching the state, safetensors round trip; and the HTTP route."""

import numpy as np
import polars as pl
import pytest
import torch

from userseq import EventLog, NextItemRecommender
from userseq.core.errors import UserseqError
from userseq.nextitem.stream import UserState


def _log(n_users=60, n_items=25, length=10):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{(s + t) % n_items}", t)
            for u, s in enumerate(rng.integers(0, n_items, n_users)) for t in range(length)]
    return EventLog.from_frame(pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"],
                                            orient="row"))


@pytest.fixture(scope="module", params=["ssm", "gru4rec"])
def rec(request):
    return NextItemRecommender(request.param, overrides={
        "model.dim": 16, "model.max_len": 40, "train.epochs": 2, "train.batch_size": 32,
        "eval.ks": [10]}).fit(_log(), quiet=True)


def test_update_equals_reencoding_the_history(rec):
    state = rec.user_state(["u0", "u1"])
    assert list(state.n_events) == [10, 10]
    new = [["i3", "i4", "i5"], ["i7"]]
    after = rec.update(state, new)
    assert list(after.n_events) == [13, 11] and list(state.n_events) == [10, 10]  # not modified
    offsets, items = rec.histories_
    full = [list(rec.item_ids.gather(items[offsets[u] : offsets[u + 1]] - 1)) + n
            for u, n in zip((0, 1), new, strict=True)]
    off, idx = rec.history_indices(full)
    expected = rec.encode(off, idx)
    assert (after.vector - expected).abs().max() <= 1e-4
    # the same vectors from a history given explicitly, and in two updates instead of one
    torch.testing.assert_close(rec.user_state(histories=full).vector, after.vector, atol=1e-5,
                               rtol=1e-5)
    twice = rec.update(rec.update(state, [new[0][:1], []]), [new[0][1:], new[1]])
    torch.testing.assert_close(twice.vector, after.vector, atol=1e-5, rtol=1e-5)
    top = rec.recommend_state(after, k=5, ids=["u0", "u1"])
    ref = rec.recommend_history(full, k=5, filter_seen=False, ids=["u0", "u1"])
    assert top["item_id"].to_list() == ref["item_id"].to_list()
    np.testing.assert_allclose(top["score"].to_numpy(), ref["score"].to_numpy(), atol=1e-4)
    excl = rec.recommend_state(after, k=5, exclude=[top["item_id"].to_list()[:2], []])
    assert not set(top["item_id"].to_list()[:2]) & set(excl.filter(pl.col("user_id") == 0)
                                                      ["item_id"].to_list())


def test_new_user_state_and_bad_events(rec):
    empty = rec.user_state()
    assert list(empty.n_events) == [0] and torch.all(empty.vector == 0)
    with pytest.raises(UserseqError, match="state #0 has no events yet"):
        rec.recommend_state(empty)
    with pytest.raises(UserseqError, match=r"unknown item id\(s\) \['nope'\] in new_events\[0\]"):
        rec.update(empty, [["i1", "nope"]])
    with pytest.raises(UserseqError, match="new_events has 2 lists but the state holds 1 users"):
        rec.update(empty, [["i1"], ["i2"]])
    with pytest.raises(UserseqError, match=r"unknown user\(s\) \['zz'\]"):
        rec.user_state(["zz"])
    one = rec.update(empty, [["i1", "i2"]])
    again = UserState.from_tensors(one.to_tensors())
    torch.testing.assert_close(rec.update(again, [["i3"]]).vector,
                               rec.update(one, [["i3"]]).vector)


def test_attention_encoders_have_no_streaming_state():
    sas = NextItemRecommender("sasrec", overrides={"model.dim": 8, "model.max_len": 10,
                                                   "train.epochs": 1}).fit(_log(), quiet=True)
    with pytest.raises(UserseqError, match="encoder 'sasrec' has no recurrent state"):
        sas.user_state(["u0"])
