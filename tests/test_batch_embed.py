"""`userseq embed RUN --input DIR --out DIR --engine local|ray`: batch embedding of the users of
partitioned Parquet events (nextitem/batch.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import synthetic_events

from userseq.data.eventlog import EventLog
from userseq.nextitem.estimator import NextItemRecommender


@pytest.fixture(scope="module")
def run_and_events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    frame = synthetic_events(n_users=40, n_items=30, length=12)
    rec = NextItemRecommender("sasrec", overrides={
        "model.dim": 16, "model.max_len": 8, "train.epochs": 1, "train.device": "cpu"})
    rec.fit(EventLog.from_frame(frame), run_dir=tmp / "run", quiet=True)
    # new events: the training users' histories, a user with an unknown item mixed in, a user
    # with only unknown items; split over two partitions, a user's events in both of them
    extra = pl.DataFrame({"user_id": ["new", "new", "ghost"], "item_id": ["i3", "zzz", "zzz"],
                          "timestamp": [1, 2, 3]})
    events = pl.concat([frame, extra.with_columns(pl.col("timestamp").cast(frame["timestamp"]
                                                                         .dtype))])
    events = events.sample(fraction=1.0, shuffle=True, seed=1)
    for k, part in enumerate((events.head(200), events.slice(200))):
        d = tmp / "events" / f"day={k}"
        d.mkdir(parents=True)
        part.write_parquet(d / "part-0.parquet")
    return rec, tmp / "run", tmp / "events", tmp


def _read(out_dir) -> pl.DataFrame:
    return pl.read_parquet(sorted(out_dir.rglob("*.parquet"))).sort("user_id")


def test_local_engine_embeds_every_user_once_from_their_events(run_and_events, cli):
    rec, run, events, tmp = run_and_events
    r = cli("embed", run, "--input", events, "--out", tmp / "local", "--chunk-size", "16")
    assert r.code == 0, r.output
    said = " ".join(r.stdout.split())
    assert "wrote 41 user embeddings" in said and "(3 Parquet files, engine local" in said
    assert "1 users without a catalogue item skipped" in said
    got = _read(tmp / "local")
    assert got["user_id"].n_unique() == got.height == 41 and "ghost" not in got["user_id"]
    # a training user's row equals the run's own user embedding (same full history)
    want = dict(zip(rec.user_ids.to_list(), rec.user_embeddings(), strict=True))
    emb = np.stack(got.filter(pl.col("user_id") != "new")["embedding"].to_numpy())
    ids = got.filter(pl.col("user_id") != "new")["user_id"].to_list()
    np.testing.assert_allclose(emb, np.stack([want[u] for u in ids]), atol=1e-5)
    # "new" is embedded from its one catalogue item (the unknown "zzz" is skipped)
    new = np.asarray(got.filter(pl.col("user_id") == "new")["embedding"][0])
    offsets, items = rec.history_indices([["i3"]])
    np.testing.assert_allclose(new, rec.encode(offsets, items)[0].numpy(), atol=1e-5)


def test_bad_input_names_the_option(run_and_events, cli, tmp_path):
    _, run, events, _ = run_and_events
    r = cli("embed", run, "--input", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.code == 2 and "--input" in r.error and "not a directory" in r.error
    r = cli("embed", run, "--out", tmp_path / "o.parquet", "--engine", "ray")
    assert r.code == 2 and "--engine ray needs --input DIR" in r.error
    r = cli("embed", run, "--input", events, "--out", tmp_path / "o", "--engine", "spark")
    assert r.code == 2 and "--engine spark: unknown engine; choose local or ray." in r.error
    bad = tmp_path / "bad"
    bad.mkdir()
    pl.DataFrame({"user": ["a"], "item_id": ["i1"], "timestamp": [1]}).write_parquet(
        bad / "p.parquet")
    r = cli("embed", run, "--input", bad, "--out", tmp_path / "o")
    assert r.code == 2 and "column(s) ['user_id'] missing" in r.error


def test_ray_engine_equals_the_local_engine_row_for_row(run_and_events):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'userseq[ray]'")
    from userseq.nextitem.batch import embed_local, embed_ray

    _, run, events, tmp = run_and_events
    local = embed_local(run, events, tmp / "l2")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20)
    try:
        res = embed_ray(run, events, tmp / "ray", workers=1)
    finally:
        ray.shutdown()
    assert res["users"] == local["users"] == 41
    a, b = _read(tmp / "l2"), _read(tmp / "ray")
    assert a["user_id"].to_list() == b["user_id"].to_list()  # every user exactly once
    np.testing.assert_array_equal(np.stack(a["embedding"].to_numpy()),
                                  np.stack(b["embedding"].to_numpy()))


class _DiesOnce:
    """Mixed into the embedder: the first call anywhere kills its actor (a marker file says it
    happened), as a crashed machine would."""

    marker = ""

    def __call__(self, events):
        import os
        from pathlib import Path

        if not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            os._exit(1)
        return super().__call__(events)


@pytest.mark.slow
def test_ray_retries_a_dead_worker_and_writes_every_user_once(run_and_events, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'userseq[ray]'")
    import sys

    from ray import cloudpickle

    from userseq.nextitem.batch import UserEmbedder, embed_local, embed_ray

    _, run, events, _ = run_and_events
    flaky = type("FlakyEmbedder", (_DiesOnce, UserEmbedder), {"marker": str(tmp_path / "m")})
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import it
    embed_local(run, events, tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 2**20)
    try:
        res = embed_ray(run, events, tmp_path / "ray", workers=1, embedder=flaky)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (tmp_path / "m").read_text() == "died"
    a, b = _read(tmp_path / "local"), _read(tmp_path / "ray")
    assert res["users"] == a.height == 41
    assert a["user_id"].to_list() == b["user_id"].to_list()  # every user exactly once
    np.testing.assert_array_equal(np.stack(a["embedding"].to_numpy()),
                                  np.stack(b["embedding"].to_numpy()))
