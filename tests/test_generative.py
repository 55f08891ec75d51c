"""Generative retrieval: semantic IDs (RQ-VAE + collision code), the prefix trie, beam search and
Diverse Beam Search (hand-computed on a fixed model), the estimator, user semantic IDs and the
CLI."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import synthetic_events

import userseq
from userseq.core.errors import ConfigError, DataError
from userseq.generative.decoding import DecodeSettings, decode
from userseq.generative.semantic_ids import PrefixTrie
from userseq.index.semantic_ids import (
    SemanticIdTokenizer,
    disambiguate,
    prefix_neighbour_check,
)
from userseq.metrics.diversity import category_coverage, distinct_codes, intra_list_diversity


def clustered(n_per: int = 40, centres: int = 8, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)) * 5
    return np.concatenate([c[i] + rng.normal(size=(n_per, dim)) * 0.3 for i in range(centres)]
                          ).astype(np.float32)


# ---------------------------------------------------------------------- tokenizer
def test_disambiguate_numbers_colliding_tuples_in_row_order():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 1]])
    out = disambiguate(codes)
    assert out[:, -1].tolist() == [0, 1, 0, 2, 0]
    assert len(np.unique(out, axis=0)) == len(out)


def test_tokenizer_learns_clusters_with_full_usage_and_round_trips(tmp_path):
    x = clustered()
    tok = SemanticIdTokenizer({"levels": 2, "codebook_size": 8, "epochs": 30}).fit(x)
    ids = tok.ids_
    assert ids.shape == (320, 3) and len(np.unique(ids, axis=0)) == 320
    r = tok.report_
    assert r["codebook_usage"][0] == 1.0  # 8 clusters, 8 first-level codes: all used
    # the first code recovers the clusters: one code per cluster
    first = ids[:, 0].reshape(8, 40)
    assert all(len(set(row)) == 1 for row in first) and len(set(first[:, 0])) == 8
    assert r["collision_rate"] == pytest.approx(1 - r["unique_tuples"] / 320)
    assert tok.sizes == [8, 8, int(ids[:, -1].max()) + 1]
    back = SemanticIdTokenizer.load(tok.save(tmp_path / "tok"))
    assert np.array_equal(back.ids_, ids)
    assert np.array_equal(back.encode(x[:50]), tok.encode(x[:50]))
    assert not list((tmp_path / "tok").glob("*.pkl"))


def test_prefix_check_shows_equal_prefixes_are_near():
    x = clustered()
    tok = SemanticIdTokenizer({"levels": 2, "codebook_size": 8, "epochs": 10}).fit(x)
    check = prefix_neighbour_check(x, tok.ids_, sample=200)
    assert [c["prefix"] for c in check] == [1, 2]
    assert check[0]["same_prefix_cosine"] > check[0]["all_pairs_cosine"] + 0.3
    assert check[0]["knn_same_prefix"] > 0.9 > check[0]["chance_same_prefix"]


def test_tokenizer_bad_input():
    x = clustered(n_per=2, centres=5)
    with pytest.raises(ConfigError, match=r"semantic_ids.codebook_size 64 is larger than the "
                                          r"number of vectors \(10\)"):
        SemanticIdTokenizer({"codebook_size": 64}).fit(x)
    with pytest.raises(ConfigError, match=r"'levels': Input should be greater than or equal to 1"):
        SemanticIdTokenizer({"levels": 0})
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match=r"1 row\(s\) have NaN/inf values \(first: row 3\)"):
        SemanticIdTokenizer({"codebook_size": 4}).fit(bad)
    with pytest.raises(userseq.NotFittedError):
        SemanticIdTokenizer().encode(x)


# ---------------------------------------------------------------------- trie
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])  # items 1..5
TUPLES = np.concatenate([CODES, np.zeros((5, 1), np.int64)], 1)  # + the collision code (all 0)


def test_trie_masks_and_steps():
    trie = PrefixTrie(CODES, [3, 2])
    assert trie.allowed(0, torch.tensor([0])).tolist() == [[True, True, True]]
    nodes = trie.step(0, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]))
    assert trie.allowed(1, nodes).tolist() == [[True, True], [True, True], [True, False]]
    assert trie.step(1, nodes, torch.tensor([1, 0, 1])).tolist() == [2, 3, -1]
    assert trie.lookup(np.array([[2, 0], [2, 1], [1, 1]])).tolist() == [5, -1, 4]
    with pytest.raises(DataError, match="share a code tuple"):
        PrefixTrie(np.array([[0, 1], [0, 1]]), [1, 2])


# ---------------------------------------------------------------------- decoding
class FixedModel(torch.nn.Module):
    """Level 0: p = (.6, .3, .1); level 1: p = (.9, .1) whatever the prefix; the collision code
    (level 2) has one value."""

    def encode(self, history, preference=None):
        return torch.zeros(len(history), 1, 1), torch.ones(len(history), 1, dtype=torch.bool)

    def next_logprobs(self, memory, key_mask, prefixes):
        U, K, t = prefixes.shape
        p = [torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.9, 0.1]), torch.tensor([1.0])][t]
        return p.log().expand(U, K, len(p))


def _decode(settings, k=2, seen=None):
    trie = PrefixTrie(TUPLES, [3, 2, 1])
    items, scores = decode(FixedModel(), trie, torch.ones(1, 1, dtype=torch.long), settings, k,
                           seen)
    return items[0].tolist(), scores[0].exp().tolist()


def test_beam_search_by_hand():
    # step 0 keeps codes 0 (.6) and 1 (.3); step 1: (0,0) .54, (1,0) .27, (0,1) .06, (1,1) .03
    items, p = _decode(DecodeSettings(2))
    assert items == [1, 3] and p == pytest.approx([0.54, 0.27])
    # seen items are never generated: item 1 blocked -> (1,0) .27 and (0,1) .06
    items, p = _decode(DecodeSettings(2), seen=[np.array([1])])
    assert items == [3, 2] and p == pytest.approx([0.27, 0.06])
    # a prefix whose items were all seen is never entered: code 0 (items 1, 2) is skipped at
    # step 0, so both beams still end on new items: (1,0) .27 and (2,0) .09
    items, p = _decode(DecodeSettings(2), seen=[np.array([2, 1, 1])])
    assert items == [3, 5] and p == pytest.approx([0.27, 0.09])


def test_diverse_beam_search_by_hand():
    # G=2 groups of one beam: group 1 takes code 0, group 2 is pushed off code 0 at step 0
    # (0.3 > 0.6 e^-λ for λ >= 1). At step 1 group 2's choice (1,0) .27 vs (1,1) .03 flips when
    # λ > ln 9 = 2.197: the Hamming penalty counts group 1's code 0 at that step.
    items, p = _decode(DecodeSettings(2, 2, 1.0))
    assert items == [1, 3] and p == pytest.approx([0.54, 0.27])
    items, p = _decode(DecodeSettings(2, 2, 2.5))
    assert items == [1, 4] and p == pytest.approx([0.54, 0.03])  # scores stay log-probabilities
    # without a penalty the groups would pick the same item: the later group takes another one
    items, _ = _decode(DecodeSettings(2, 2, 0.0))
    assert len(set(items)) == 2


def test_decode_setting_errors():
    with pytest.raises(ConfigError, match=r"decode.groups \(3\) must divide decode.beams \(10\)"):
        _decode(DecodeSettings(10, 3, 0.5))
    with pytest.raises(ConfigError, match=r"k \(4\) is larger than decode.beams \(2\)"):
        _decode(DecodeSettings(2), k=4)
    with pytest.raises(ConfigError, match=r"the prefix trie cannot yield 6 items"):
        _decode(DecodeSettings(8), k=6)


# ---------------------------------------------------------------------- diversity metrics
def test_diversity_metrics_by_hand():
    codes = np.array([[0, 0], [1, 0], [1, 1], [2, 0]])  # items 0 (pad), 1, 2, 3
    top = np.array([[1, 2, 3], [2, 3, 0]])
    assert distinct_codes(top, codes, 0) == pytest.approx((2 + 2) / 2)
    vec = np.array([[0, 0], [1, 0], [0, 1], [1, 0]], dtype=float)
    # list 1: pairs (1,2) cos 0, (1,3) cos 1, (2,3) cos 0 -> mean distance 2/3; list 2: 1
    assert intra_list_diversity(top, vec) == pytest.approx((2 / 3 + 1) / 2)
    offsets = np.array([0, 0, 2, 3, 4])  # item 1: {7, 8}, item 2: {8}, item 3: {9}
    cats = np.array([7, 8, 8, 9])
    assert category_coverage(top, offsets, cats) == pytest.approx((3 + 2) / 2)


# ---------------------------------------------------------------------- estimator
SMALL = {"semantic_ids.codebook_size": 8, "semantic_ids.levels": 2, "semantic_ids.epochs": 20,
         "model.dim": 32, "model.max_len": 10, "train.epochs": 12, "train.batch_size": 32,
         "decode.beams": 10, "train.device": "cpu", "train.threads": 1}


@pytest.fixture(scope="module")
def fitted():
    log = userseq.EventLog.from_frame(synthetic_events(n_users=120, n_items=40))
    vec = clustered(n_per=5, centres=8)
    rec = userseq.GenerativeRecommender(overrides=SMALL).fit(log, vectors=vec, quiet=True)
    return log, rec


def test_generative_learns_the_walk(fitted):
    log, rec = fitted
    from userseq.data.split import make_split

    test = rec.evaluate(make_split(log, "loo").test)
    # 40 items, each user's next item is the last + 1: far above the 10/40 of chance
    assert test["recall@10"] > 0.5 and test["recall@10"] == test["hr@10"]
    assert rec.train_state_["epochs"] == 12


def test_recommend_beam_and_diverse(fitted, tmp_path):
    log, rec = fitted
    beam = rec.recommend(["u1"], k=10)
    assert beam["rank"].to_list() == list(range(1, 11)) and beam["item_id"].n_unique() == 10
    assert beam["score"].is_sorted(descending=True) and (beam["score"] <= 0).all()
    row = int(np.flatnonzero(log.user_ids.to_numpy() == "u1")[0])
    off, items = rec.histories_
    history = set(rec.item_ids.gather(items[off[row]:off[row + 1]] - 1).to_list())
    assert not history & set(beam["item_id"].to_list())  # seen items are filtered
    div = rec.recommend(["u1"], k=10, decode="diverse", groups=5, diversity=2.0)
    assert div["item_id"].n_unique() == 10
    first = lambda df: len({c[0] for c in df["semantic_id"].to_list()})  # noqa: E731
    assert first(div) >= first(beam)
    back = userseq.load(rec.save(tmp_path / "run"))
    assert back.recommend(["u1"], k=10).equals(beam)
    assert back.recommend_history([["i3", "i4"]], k=5)["item_id"].len() == 5
    with pytest.raises(ConfigError, match="--groups/--diversity need --decode diverse"):
        rec.recommend(["u1"], groups=2)
    with pytest.raises(userseq.UserseqError, match=r"unknown user\(s\) \['nobody'\]"):
        rec.recommend(["nobody"])


def test_preference_slot_changes_the_output(monkeypatch):
    import userseq.generative.estimator as est

    def fake(texts):  # a deterministic stand-in for MiniLM
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=384)
                         for t in texts]).astype(np.float32)

    monkeypatch.setattr(est, "encode_preferences", fake)
    log = userseq.EventLog.from_frame(synthetic_events(n_users=40, n_items=20, length=8))
    prefs = pl.DataFrame({"user_id": ["u0", "u1"], "preference": ["cheap", "vegan skin care"]})
    rec = userseq.GenerativeRecommender(overrides={**SMALL, "model.preference": True,
                                                   "train.epochs": 2}).fit(
        log, vectors=clustered(n_per=4, centres=5), preferences=prefs, quiet=True)
    assert rec.preferences_[1].tolist()[:3] == [True, True, False]
    a = rec.recommend(["u5"], k=5, preference=["cheap"])
    b = rec.recommend(["u5"], k=5, preference=["luxury perfume for men"])
    assert not np.allclose(a["score"].to_numpy(), b["score"].to_numpy())
    plain = userseq.GenerativeRecommender(overrides=SMALL)
    plain.__dict__.update({k: v for k, v in rec.__dict__.items() if k != "config"})
    with pytest.raises(ConfigError, match="no preference slot"):
        plain.recommend(["u5"], k=5, preference=["cheap"])


def test_config_errors():
    with pytest.raises(ConfigError, match=r"decode.groups \(3\) must divide decode.beams \(20\)"):
        userseq.GenerativeRecommender(overrides={"decode.method": "diverse", "decode.groups": 3})
    with pytest.raises(ConfigError, match=r"decode.beams \(5\) must be at least the largest "
                                          r"eval.ks \(10\)"):
        userseq.GenerativeRecommender(overrides={"decode.beams": 5})
    with pytest.raises(ConfigError, match=r"expected text, run:RUN_DIR or file:PATH"):
        userseq.GenerativeRecommender(overrides={"items.source": "attributes"})


def test_items_without_a_vector_are_named(tmp_path):
    log = userseq.EventLog.from_frame(synthetic_events(n_users=20, n_items=10, length=5))
    table = pl.DataFrame({"item_id": [f"i{i}" for i in range(8)],
                          "embedding": clustered(n_per=2, centres=4).tolist()})
    path = tmp_path / "vec.parquet"
    table.write_parquet(path)
    rec = userseq.GenerativeRecommender(overrides={**SMALL, "items.source": f"file:{path}"})
    with pytest.raises(DataError, match=r"2 of 10 items have no vector \(e.g. \['i8', 'i9'\]\)"):
        rec.fit(log, quiet=True)


# ---------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import invoke_cli

    d = tmp_path_factory.mktemp("gen")
    events = d / "events.csv"
    synthetic_events(n_users=60, n_items=30, length=10).write_csv(events)
    cfg = d / "tiny.yaml"
    cfg.write_text("model: {dim: 16, max_len: 10}\ntrain: {batch_size: 32, epochs: 2}\n")
    r = invoke_cli("train", "--data", events, "--out", d / "sas", "--config", cfg, "--quiet")
    assert r.code == 0, r.output
    return d, events


def test_cli_end_to_end(cli, runs):
    d, events = runs
    r = cli("semantic-ids", "fit", "--data", events, "--vectors", f"run:{d / 'sas'}", "--out",
            d / "sid", "--levels", "2", "--codebook-size", "8", "--epochs", "10")
    assert r.code == 0, r.output
    assert "codebook usage per level" in r.stdout
    codes = pl.read_parquet(d / "sid" / "item_semantic_ids.parquet")
    assert codes.columns == ["item_id", "semantic_id"] and codes.height == 30
    r = cli("generative", "train", "--data", events, "--semantic-ids", d / "sid", "--out",
            d / "gen", "--epochs", "2", "--quiet", "--set", "model.dim=16",
            "--set", "decode.beams=10")
    assert r.code == 0, r.output
    assert "recall@10" in r.stdout
    r = cli("recommend", d / "gen", "--user", "u1", "-k", "5", "--decode", "diverse",
            "--groups", "5", "--diversity", "0.5", "--json")
    assert r.code == 0, r.output
    assert '"semantic_id"' in r.stdout and r.stdout.count('"rank"') == 5
    r = cli("recommend", d / "gen", "--user", "u1", "--decode", "diverse", "--groups", "3")
    assert r.code == 2
    assert "error: decode.groups (3) must divide decode.beams (10)" in r.error
    r = cli("recommend", d / "sas", "--user", "u1", "--decode", "beam")
    assert r.code == 2 and "--decode: " in r.error and "is a next-item run" in r.error
    r = cli("generative", "evaluate", d / "gen", "--decode", "diverse", "--groups", "2")
    assert r.code == 0, r.output


def test_cli_errors(cli, runs):
    d, events = runs
    r = cli("semantic-ids", "fit", "--data", events, "--vectors", f"run:{d / 'sas'}", "--out",
            d / "x", "--codebook-size", "64")
    assert r.code == 2
    assert "error: semantic_ids.codebook_size 64 is larger than the number of items (30)" in r.error
    r = cli("semantic-ids", "fit", "--data", events, "--levels", "0", "--out", d / "x")
    assert r.code == 2 and "--levels 0: Input should be greater than or equal to 1" in r.error
    r = cli("semantic-ids", "fit", "--data", events, "--out", d / "x")
    assert r.code == 2 and "items.source text:" in r.error and "has no item text" in r.error
    r = cli("train", "--data", events, "--out", d / "g3", "--model", "generative")
    assert r.code == 2 and "userseq generative train" in r.error
    r = cli("generative", "train", "--data", events, "--out", d / "g2", "--semantic-ids",
            d / "missing")
    assert r.code == 2 and "--semantic-ids" in r.error and "directory not found" in r.error


def test_embed_user_semantic_ids(cli, runs):
    d, _ = runs
    r = cli("embed", d / "sas", "--out", d / "users.parquet", "--semantic-ids",
            "--codebook-size", "8")
    assert r.code == 0, r.output
    ids = pl.read_parquet(d / "users_semantic_ids.parquet")
    assert ids.height == 60 and len(ids["semantic_id"][0]) == 3
    assert len({tuple(x) for x in ids["semantic_id"].to_list()}) == 60
    assert "do equal prefixes mean near users?" in r.stdout
    assert (d / "sas" / "user_semantic_ids" / "tokenizer.safetensors").is_file()
    r = cli("embed", d / "sas", "--out", d / "u2.parquet", "--semantic-ids",
            "--codebook-size", "100")
    assert r.code == 2
    assert "error: --codebook-size 100 is larger than the number of users (60)" in r.error


def test_log_probabilities_are_normalised(fitted):
    _, rec = fitted
    m = rec.model_
    x = torch.tensor([[0, 3, 4, 5]])
    memory, mask = m.encode(x)
    lp = m.next_logprobs(memory, mask, torch.zeros(1, 1, 0, dtype=torch.long))
    assert lp.shape == (1, 1, 8) and lp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    lp2 = m.next_logprobs(memory, mask, torch.tensor([[[2], [5]]]))
    assert lp2.shape == (1, 2, 8) and lp2.exp().sum(-1)[0].tolist() == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------------- service
def test_service_recommend_route(fitted, tmp_path):
    from fastapi.testclient import TestClient

    from userseq.serve.app import create_generative_app
    from userseq.serve.routes.generative import GenerativeService

    _, rec = fitted
    service = GenerativeService.from_run(rec.save(tmp_path / "run"))
    client = TestClient(create_generative_app(service))
    r = client.post("/recommend", json={"user_id": "u1", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    want = rec.recommend(["u1"], k=5)
    assert [i["item_id"] for i in body["items"]] == want["item_id"].to_list()
    assert body["decode"] == {"method": "beam", "beams": 10, "groups": 1, "diversity": 0.0}
    assert [i["semantic_id"] for i in body["items"]] == want["semantic_id"].to_list()
    r = client.post("/recommend", json={"history": ["i3", "i4"], "k": 10, "decode": "diverse",
                                        "groups": 5, "diversity": 1.0})
    assert r.status_code == 200 and len({i["item_id"] for i in r.json()["items"]}) == 10
    r = client.post("/recommend", json={"history": ["i3"], "decode": "diverse", "groups": 3})
    assert r.status_code == 422
    assert "decode.groups (3) must divide decode.beams (10)" in r.json()["message"]
    r = client.post("/recommend", json={"user_id": "nobody"})
    assert r.status_code == 404 and "unknown user id 'nobody'" in r.json()["message"]
    r = client.post("/recommend", json={"user_id": "u1", "k": 11})
    assert r.status_code == 422 and "k (11) is larger than decode.beams (10)" in r.json()["message"]
    assert client.get("/info").json()["task"] == "generative"
