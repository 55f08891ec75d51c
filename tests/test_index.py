"""ANN indexes: recall against exact search, persistence, kind selection, run indexes, CLI,
streaming embed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'userseq[serve]')")

from serve_support import fresh_run, trained_run  # noqa: E402

from userseq.core.errors import ArtifactError, ConfigError, UserseqError  # noqa: E402
from userseq.index import (  # noqa: E402
    IndexConfig,
    RunIndex,
    VectorIndex,
    exact_search,
    recall_at_k,
)
from userseq.index import vector as vector_mod  # noqa: E402


@pytest.fixture(scope="module")
def clustered():
    """Clustered vectors with varying norms (like popularity-scaled item embeddings) and queries."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 16))
    x = centres[rng.integers(0, 50, 6000)] + 0.5 * rng.standard_normal((6000, 16))
    x *= rng.lognormal(0, 0.3, (6000, 1))
    q = x[:60] + 0.3 * rng.standard_normal((60, 16))
    return x.astype(np.float32), q.astype(np.float32)


def test_exact_search_matches_brute_force(clustered):
    x, q = clustered
    s, i = exact_search(x, q, 5)
    ref = q @ x.T
    np.testing.assert_array_equal(i, np.argsort(-ref, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(s, np.take_along_axis(ref, i, 1), rtol=1e-5)
    assert recall_at_k(i, i) == 1.0
    assert recall_at_k(np.array([[0, 1, -1]]), np.array([[0, 2, 3]])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind,metric,min_recall", [
    ("exact", "ip", 1.0), ("flat", "ip", 1.0), ("flat", "cosine", 1.0),
    ("hnsw", "ip", 0.9), ("hnsw", "cosine", 0.95), ("ivfpq", "ip", 0.85), ("ivfpq", "cosine", 0.85),
])
def test_recall_and_round_trip(clustered, tmp_path, kind, metric, min_recall):
    x, q = clustered
    cfg = IndexConfig(kind=kind, nlist=32, nprobe=16, train_sample=6000)
    index = VectorIndex.build(x, metric, cfg)
    assert index.kind == kind and index.n == len(x) and index.dim == 16
    s, i = index.search(q, 50)
    es, ei = exact_search(x, q, 50, metric)
    assert recall_at_k(i, ei) >= min_recall
    # scores are the true inner products (or cosines) of the returned rows
    xq = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    qq = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    rows = i[:, :5]
    true = np.einsum("qd,qkd->qk", qq, xq[rows])
    np.testing.assert_allclose(s[:, :5], true, rtol=2e-3, atol=2e-3)
    index.save(tmp_path / "ix")
    again = VectorIndex.load(tmp_path / "ix")
    s2, i2 = again.search(q, 50)
    np.testing.assert_array_equal(i2, i)
    np.testing.assert_allclose(s2, s, rtol=1e-6)


def test_centred_cosine(clustered):
    x, q = clustered
    shift = np.full(16, 25.0, np.float32)  # a direction every vector shares
    centre = (x + shift).mean(0)
    index = VectorIndex.build(x + shift, "cosine", IndexConfig(kind="flat"), center=centre)
    _, i = index.search(q + shift, 10)
    _, ref = exact_search(x + shift - centre, q + shift - centre, 10, "cosine")
    np.testing.assert_array_equal(i, ref)


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw", "ivfpq"])
def test_chunked_build_equals_the_whole_matrix(clustered, kind):
    """build_chunks over raw (uncentred) chunks == build over the whole matrix; IVF-PQ trains on
    the given sample or, without one, on the first chunks: the same rows give the same index."""
    x, q = clustered
    centre = x.mean(0)
    cfg = IndexConfig(kind=kind, nlist=16, nprobe=16, train_sample=2500)

    def chunks():
        return (x[i : i + 700] for i in range(0, len(x), 700))

    whole = VectorIndex.build(x, "cosine", cfg.model_copy(update={"train_sample": 10_000}),
                              center=centre)
    chunked = VectorIndex.build_chunks(chunks, len(x), 16, "cosine", cfg, center=centre)
    assert chunked.n == len(x) and chunked.info["n"] == len(x)
    _, i = chunked.search(q, 20)
    if kind == "ivfpq":
        sampled = VectorIndex.build_chunks(chunks, len(x), 16, "cosine", cfg, center=centre,
                                           sample=x[:2500])
        assert chunked.info["train_rows"] == sampled.info["train_rows"] == 2500
        np.testing.assert_array_equal(sampled.search(q, 20)[1], i)
        _, exact_i = exact_search(x - centre, q - centre, 20, "cosine")
        assert recall_at_k(i, exact_i) >= 0.8
    else:
        np.testing.assert_array_equal(i, whole.search(q, 20)[1])
    with pytest.raises(UserseqError, match="expected 6001 vectors but the chunks gave 6000"):
        VectorIndex.build_chunks(chunks, len(x) + 1, 16, "cosine", cfg, center=centre)


def test_short_catalogue_pads_results():
    x = np.eye(3, dtype=np.float32)
    s, i = VectorIndex.build(x, "ip", IndexConfig(kind="flat")).search(x[:1], 5)
    assert i.shape == (1, 5) and list(i[0, 3:]) == [-1, -1] and np.isneginf(s[0, 3:]).all()
    assert i[0, 0] == 0


def test_auto_kind_by_size(monkeypatch):
    cfg = IndexConfig(flat_max=100, hnsw_max=1000)
    assert (cfg.resolve(100), cfg.resolve(101), cfg.resolve(1001)) == ("flat", "ivfpq", "ivfpq")
    kinds = tuple(cfg.resolve(n, "cosine") for n in (100, 101, 1001))
    assert kinds == ("flat", "hnsw", "ivfpq")
    monkeypatch.setattr(vector_mod, "faiss_available", lambda: False)
    assert cfg.resolve(10**7) == "exact"  # no faiss: the exact torch fallback
    with pytest.raises(UserseqError, match="needs faiss"):
        IndexConfig(kind="hnsw").resolve(10)
    index = VectorIndex.build(np.eye(4, dtype=np.float32), "ip", cfg)
    assert index.kind == "exact"


def test_bad_config_and_files(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        IndexConfig.from_options(kind="annoy")
    with pytest.raises(ConfigError, match="ef_search"):
        IndexConfig.from_options({"ef_search": 0})
    with pytest.raises(ArtifactError, match="not found"):
        VectorIndex.load(tmp_path / "missing")
    index = VectorIndex.build(np.eye(4, dtype=np.float32), "ip", IndexConfig(kind="flat"))
    index.save(tmp_path / "ix")
    (tmp_path / "ix").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupt index"):
        VectorIndex.load(tmp_path / "ix")
    with pytest.raises(UserseqError, match="zero vectors"):
        VectorIndex.build(np.zeros((0, 4), np.float32))


# ---------------------------------------------------------------------- run indexes
def test_run_index_build_load_and_staleness(tmp_path):
    from userseq import NextItemRecommender

    run = fresh_run(tmp_path)
    rec = NextItemRecommender.load(run)
    built = RunIndex.build(rec, run, chunk_size=7)  # several chunks for 80 users
    m = built.manifest
    assert m["items"]["kind"] == "flat" and m["items"]["recall@100"] == 1.0
    assert m["users"]["n"] == 80 and m["items_cos"]["centred"] and m["users"]["centred"]
    np.testing.assert_allclose(built.user_vectors, rec.user_embeddings(), rtol=1e-4, atol=1e-5)
    loaded = RunIndex.load(run, rec)
    q = rec.user_embeddings()[:5]
    np.testing.assert_array_equal(loaded.items.search(q, 10)[1], built.items.search(q, 10)[1])
    # the model changes: the old index is refused with a clear message
    from userseq.core.artifacts import load_tensors, save_tensors

    tensors, meta = load_tensors(run / "model.safetensors")
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_tensors(tensors, run / "model.safetensors", meta)
    with pytest.raises(ArtifactError, match="another model"):
        RunIndex.load(run)
    with pytest.raises(ArtifactError, match="no index"):
        RunIndex.load(trained_run())


def test_run_index_without_users_and_hnsw(tmp_path):
    from userseq import NextItemRecommender

    run = fresh_run(tmp_path)
    rec = NextItemRecommender.load(run)
    idx = RunIndex.build(rec, run, IndexConfig(kind="hnsw"), users=False)
    assert idx.users is None and "users" not in idx.manifest
    assert idx.manifest["items"]["kind"] == "hnsw" and idx.manifest["items"]["recall@100"] >= 0.95
    assert RunIndex.load(run).users is None


def test_index_cli(cli, tmp_path):
    run = fresh_run(tmp_path)
    res = cli("index", run, "--kind", "hnsw", "--ef-search", "64", "--quiet")
    assert res.code == 0, res.output
    assert "recall@100" in " ".join(res.stdout.split()) and "hnsw" in res.stdout
    idx = RunIndex.load(run)
    assert idx.items.kind == "hnsw" and idx.items.config.ef_search == 64
    bad = cli("index", run, "--kind", "annoy")
    assert bad.code == 2 and "invalid index config" in bad.error
    cfg = tmp_path / "ix.yaml"
    cfg.write_text("index:\n  kind: flat\n  bogus: 1\n")
    bad = cli("index", run, "--config", cfg)
    assert bad.code == 2 and "bogus" in bad.error
    assert cli("index", tmp_path / "nowhere").code == 2


def test_index_cli_needs_a_next_item_run(cli, tmp_path):
    """`userseq index` loads any run through Estimator.load (index sits below the task packages)
    and refuses runs of other tasks with one clear error."""
    from userseq.core.config import TaskConfig
    from userseq.core.estimator import ESTIMATORS, Estimator

    class Other(Estimator[TaskConfig]):
        task = "other-task"
        fitted_attribute = "state_"

        def __init__(self, config=None, overrides=None):
            super().__init__(config, overrides)
            self.state_ = None

        def _save_state(self, d):
            (d / "state.txt").write_text("x")

        def _load_state(self, d):
            self.state_ = (d / "state.txt").read_text()

    try:
        est = Other()
        est.state_ = "fitted"
        run = est.save(tmp_path / "other")
        res = cli("index", run, "--quiet")
        assert res.code == 2 and "a 'other-task' run" in res.error and "userseq train" in res.error
        assert not (run / "index").exists()
    finally:
        ESTIMATORS.unregister("other-task")


def test_embed_streams_chunks_and_builds_index(cli, tmp_path):
    from userseq import NextItemRecommender

    run = fresh_run(tmp_path)
    out = tmp_path / "users.parquet"
    res = cli("embed", run, "--out", out, "--chunk-size", "16", "--index")
    assert res.code == 0, res.output
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == 80 and meta.num_row_groups == 5  # 80 users in chunks of 16
    df = pl.read_parquet(out)
    rec = NextItemRecommender.load(run)
    assert df["user_id"].to_list() == rec.user_ids.to_list()
    np.testing.assert_allclose(np.stack(df["embedding"].to_numpy()), rec.user_embeddings(),
                               rtol=1e-4, atol=1e-5)
    assert (tmp_path / "users_items.parquet").exists()
    idx = RunIndex.load(run)  # --index built the run's indexes from the same vectors
    np.testing.assert_allclose(np.asarray(idx.user_vectors), rec.user_embeddings(), rtol=1e-4,
                               atol=1e-5)
    assert cli("embed", run, "--out", out, "--chunk-size", "0").code == 2
