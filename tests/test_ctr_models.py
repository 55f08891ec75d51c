"""CTR models: shapes, serving paths equal to batch scoring, the search stages, decoupled tables,
long-range signal recovery on the synthetic log, save/load round trip, bad requests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from userseq.core.errors import ArtifactError, DataError
from userseq.ctr.config import CTRConfig, CTRModelConfig
from userseq.ctr.data import build_ctr_data, make_batch
from userseq.ctr.estimator import CTREstimator
from userseq.ctr.models import build_ctr_model
from userseq.ctr.synthetic import synthetic_ctr_events
from userseq.data.eventlog import EventLog

MODELS = ["nohist", "mean", "din", "sim", "twin", "sdim", "dare", "awmoe"]
SMALL = {"model.item_dim": 8, "model.cat_dim": 8, "model.user_dim": 4, "model.mlp": [32, 16],
         "model.att_hidden": [16, 8], "model.num_hashes": 8, "model.hash_bits": 2, "model.top_k": 5,
         "model.max_len": 300, "model.long_len": 300, "train.batch_size": 128, "train.threads": 1,
         "train.device": "cpu"}


@pytest.fixture(scope="module")
def synth():
    """Planted long-range interests: 160 users, 300-event histories (the last 100 pure noise),
    10 impressions."""
    df = synthetic_ctr_events(n_users=160, n_items=400, n_cats=20, history_len=300, n_targets=10,
                              evidence=6, recent_clean=100, seed=3)
    cfg = CTRConfig().updated({"data.category_col": "category", "data.target_col": "is_target",
                               **SMALL})
    return df, cfg, build_ctr_data(EventLog.from_frame(df), cfg.data)


def random_batch(n_items=50, n_cats=6, B=6, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, n_items + 1, (B, L), generator=g)
    items[0] = 0  # one empty history
    item_cat = torch.randint(1, n_cats + 1, (n_items + 1,), generator=g)
    item_cat[0] = 0
    tgt = torch.randint(1, n_items + 1, (B,), generator=g)
    return {"user": torch.randint(0, 5, (B,), generator=g), "item": tgt, "cat": item_cat[tgt],
            "hist_item": items, "hist_cat": item_cat[items],
            "hist_feat": torch.where(items > 0, 3, 0),
            "hist_pos": torch.where(items > 0, torch.arange(L, 0, -1).expand(B, L), 0),
            "mask": items > 0,
            "context": torch.zeros(B, 0), "label": torch.zeros(B)}


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_and_empty_history(name):
    cfg = CTRModelConfig(name=name, item_dim=8, cat_dim=4, mlp=[16], att_hidden=[8],
                         num_hashes=4, top_k=3)
    model = build_ctr_model(cfg, 50, 6, 5, 4)
    b = random_batch()
    model.train()
    out = model(b)
    assert out.shape == (6,) and torch.isfinite(out).all()
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        keys = ("hist_item", "hist_cat", "hist_feat", "hist_pos", "mask")
        empty = {**b, **{k: b[k][:, :0] for k in keys}}
        assert torch.isfinite(model(empty)).all()


@pytest.mark.parametrize("name", MODELS)
def test_serving_path_equals_batch_scoring(name, synth):
    """score_candidates (history encoded once: keys/values, SDIM bucket sums) == per-sample
    forward."""
    _, cfg, data = synth
    est = CTREstimator(config=cfg, overrides={"model.name": name})
    v = data.vocab
    torch.manual_seed(0)
    est.model_ = build_ctr_model(est.config.model, v.n_items, v.n_cats, v.n_feats, v.n_users).eval()
    est.vocab_, est.behaviours_ = v, data.behaviours
    s = data.samples.take(np.array([5]))
    cand = np.arange(1, 41)
    served = est._score_candidates(data.behaviours, s, cand)
    reps = s.take(np.zeros(len(cand), dtype=np.int64))
    reps.item = cand
    with torch.no_grad():
        m = est.config.model
        b = make_batch(data.behaviours, reps, v.item_cat, m.window, m.pos_buckets)
        direct = torch.sigmoid(est.model_(b)).numpy()
    np.testing.assert_allclose(served, direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_score_jobs_in_one_pass_equals_one_by_one(name, synth):
    """score_jobs: jobs of different history lengths (0, 7, 300 events), users and candidate
    counts, padded into one batch, score exactly what each job scores alone (the one-history
    path of score_request), and what the id path gives for the same request."""
    from userseq.ctr.requests import ScoringJob, index_history

    _, cfg, data = synth
    est = CTREstimator(config=cfg, overrides={"model.name": name})
    v = data.vocab
    torch.manual_seed(0)
    est.model_ = build_ctr_model(est.config.model, v.n_items, v.n_cats, v.n_feats, v.n_users).eval()
    est.vocab_, est.behaviours_ = v, data.behaviours
    rng = np.random.default_rng(0)
    jobs = [ScoringJob(est.stored_history(3), rng.permutation(np.arange(1, 401))[:50], user=3),
            ScoringJob(index_history(rng.integers(1, 401, 7)), np.array([5, 9, 400]), user=0),
            ScoringJob(index_history(np.zeros(0, np.int64)), np.array([17]), user=8),
            ScoringJob(est.stored_history(11), np.arange(1, 31), user=11)]
    together = est.score_jobs(jobs)
    alone = [est.score_jobs([j])[0] for j in jobs]
    assert [len(t) for t in together] == [50, 3, 1, 30]
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_allclose(t, a, rtol=0, atol=1e-6)
    # the id path (score_request) of job 1: a posted history of raw ids
    ids = v.item_ids.to_list()
    hist = [ids[i - 1] for i in jobs[1].history[0]]
    by_ids = est.score_request({"history": hist}, [ids[i - 1] for i in jobs[1].candidates])
    np.testing.assert_allclose(alone[1], by_ids, rtol=0, atol=1e-6)
    user = v.user_ids.to_list()[2]  # user index 3
    by_user = est.score_request({"user": user}, [ids[i - 1] for i in jobs[0].candidates])
    np.testing.assert_allclose(alone[0], by_user, rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="no candidate items to score"):
        est.score_jobs([ScoringJob(index_history(np.array([1])), np.zeros(0, np.int64))])


def test_sim_hard_search_reads_only_same_category_behaviours():
    cfg = CTRModelConfig(name="sim", item_dim=8, cat_dim=4, mlp=[16], top_k=3)
    model = build_ctr_model(cfg, 50, 6, 5, 4).eval()
    b = random_batch(seed=1)
    with torch.no_grad():
        base = model.interest(b, model.target_repr(b))
        # changing behaviours of other categories must not change the interest
        other = (b["hist_cat"] != b["cat"][:, None]) & b["mask"]
        b2 = {**b, "hist_feat": torch.where(other, 1, b["hist_feat"])}
        assert torch.allclose(base, model.interest(b2, model.target_repr(b2)))
        same = (b["hist_cat"] == b["cat"][:, None]) & b["mask"]
        b3 = {**b, "hist_feat": torch.where(same, 1, b["hist_feat"])}
        changed = (base - model.interest(b3, model.target_repr(b3))).abs().sum(1) > 0
        assert (changed == same.any(1)).all()


def test_dare_has_decoupled_smaller_attention_tables():
    cfg = CTRModelConfig(name="dare", item_dim=32, cat_dim=16, attn_item_dim=8, attn_cat_dim=4)
    dare = build_ctr_model(cfg, 100, 5, 5, 5)
    twin = build_ctr_model(cfg.model_copy(update={"name": "twin"}), 100, 5, 5, 5)
    assert dare.att_emb.dim == 12 and dare.emb.dim == 48
    assert dare.att_emb.item.weight.data_ptr() != dare.emb.item.weight.data_ptr()
    assert not hasattr(twin, "att_emb")
    # gradients of the CTR loss reach both tables in DARE
    b = random_batch(n_items=100, n_cats=5)
    dare.train()
    dare(b).sum().backward()
    assert dare.att_emb.item.weight.grad.abs().sum() > 0
    assert dare.emb.item.weight.grad.abs().sum() > 0


def test_sdim_bucket_collisions_follow_simhash():
    cfg = CTRModelConfig(name="sdim", item_dim=8, cat_dim=8, num_hashes=400, hash_bits=2)
    model = build_ctr_model(cfg, 10, 2, 2, 1)
    x = torch.randn(16)
    same = (model.signatures(x) == model.signatures(2.5 * x)).float().mean()  # scale-invariant
    opposite = (model.signatures(x) == model.signatures(-x)).float().mean()
    assert same == 1.0 and opposite == 0.0
    y = torch.randn(16)
    theta = torch.arccos(torch.nn.functional.cosine_similarity(x, y, dim=0))
    expected = (1 - theta / torch.pi) ** 2
    rate = (model.signatures(x) == model.signatures(y)).float().mean()
    assert abs(float(rate - expected)) < 0.1


def test_long_range_signal_is_recovered(synth):
    """The recent 100 events are noise: a 50-event DIN window sees nothing; SIM's category search
    over the whole history finds the old evidence and gets close to the oracle."""
    df, cfg, data = synth
    test = data.splits["test"]
    fit = {"train.epochs": 4, "train.patience": 4, "train.lr": 3e-3}
    sim = CTREstimator("sim", config=cfg, overrides=fit).fit(data, quiet=True)
    short_fit = {**fit, "model.max_len": 50, "train.epochs": 2}
    short = CTREstimator("din", config=cfg, overrides=short_fit).fit(data, quiet=True)
    sim, short = sim.evaluate(data, "test"), short.evaluate(data, "test")
    from userseq.metrics.ctr import auc

    true_prob = df.filter(df["is_target"])["click_prob"].to_numpy()
    oracle = auc(data.samples.label[test], true_prob[test])
    assert oracle > 0.8
    assert sim["auc"] > 0.72, sim
    assert sim["auc"] > short["auc"] + 0.1, (sim, short)


def test_fit_save_load_round_trip(synth, tmp_path):
    _, cfg, data = synth
    est = CTREstimator("dare", config=cfg, overrides={"train.epochs": 1}).fit(
        data, run_dir=tmp_path / "run", quiet=True)
    p = est.predict_proba(data, "test")
    assert p.shape == (len(data.splits["test"]),) and ((p > 0) & (p < 1)).all()
    same = CTREstimator.load(tmp_path / "run")
    np.testing.assert_array_equal(same.predict_proba(data, "test"), p)
    assert same.evaluate(data, "test")["auc"] == est.evaluate(data, "test")["auc"]
    for name in ("config.yaml", "model.safetensors", "item_ids.parquet", "user_ids.parquet",
                 "vocab.json", "item_categories.parquet", "histories.safetensors"):
        assert (tmp_path / "run" / name).is_file()
    assert not list((tmp_path / "run").glob("*.pkl"))
    # requests: a known user's stored history before a time == the matching test sample
    i = int(data.splits["test"][0])
    s = data.samples
    uid = data.vocab.user_ids[int(s.user[i]) - 1]
    iid = data.vocab.item_ids[int(s.item[i]) - 1]
    via_user = same.predict_proba([{"user": uid, "item": iid, "timestamp": float(s.ts[i])}])
    assert via_user[0] == pytest.approx(p[list(data.splits["test"]).index(i)], abs=1e-6)
    hist = data.behaviours.items[s.start[i] : s.end[i]]
    hist_ids = data.vocab.item_ids.gather(hist - 1).to_list()
    # bucket -> a value in it
    values = np.concatenate([[data.vocab.feat_edges[0] - 1], data.vocab.feat_edges])
    vals = values[data.behaviours.feats[s.start[i] : s.end[i]] - 1].tolist()
    explicit = same.score_candidates(hist_ids, [iid], vals, user=uid)
    assert explicit[0] == pytest.approx(via_user[0], abs=1e-5)


def test_bad_requests(synth, tmp_path):
    _, cfg, data = synth
    est = CTREstimator("mean", config=cfg, overrides={"train.epochs": 1}).fit(data, quiet=True)
    known = data.vocab.item_ids[0]
    with pytest.raises(DataError, match=r"unknown candidate item id\(s\) \[999999\]"):
        est.predict_proba([{"item": 999999, "history": [known]}])
    with pytest.raises(DataError, match=r"unknown history item id\(s\) \[-5\]"):
        est.predict_proba([{"item": known, "history": [known, -5]}])
    with pytest.raises(DataError, match="1 history event.*at or after the target's timestamp 100"):
        est.predict_proba([{"item": known, "history": [known, known],
                            "history_timestamps": [50, 100], "timestamp": 100}])
    with pytest.raises(DataError, match="give a 'history'"):
        est.predict_proba([{"item": known}])
    with pytest.raises(DataError, match="history_values has 1 entries for 2"):
        est.predict_proba([{"item": known, "history": [known, known], "history_values": [5]}])
    with pytest.raises(ArtifactError, match="run directory not found"):
        CTREstimator.load(tmp_path / "nope")


def test_unknown_items_in_new_data_are_an_error(synth):
    df, cfg, data = synth
    est = CTREstimator("nohist", config=cfg, overrides={"train.epochs": 1}).fit(data, quiet=True)
    import polars as pl

    extra = df.head(3).with_columns(pl.Series("item_id", [10_001, 10_002, 10_001]))
    log = EventLog.from_frame(pl.concat([df, extra]))
    with pytest.raises(DataError, match=r"unknown item id\(s\) \[10001, 10002\]"):
        est.data_for(log)


# ---------------------------------------------------------------------- the Estimator contract
def test_estimator_contract_params_clone_and_not_fitted(synth):
    from sklearn.base import clone

    from userseq import Estimator, NotFittedError
    from userseq.ctr.models import CTR_MODELS

    _, cfg, data = synth
    est = CTREstimator("sdim", config=cfg, overrides={"train.epochs": 1})
    assert isinstance(est, Estimator) and est.task == "ctr" and not est.is_fitted
    assert est.config.model.name == "sdim" and est.config.train.epochs == 1
    assert cfg.model.name == "din"  # the given config is not changed
    params = est.get_params()
    assert params["model__name"] == "sdim" and params["train__epochs"] == 1
    twin = clone(est)
    assert twin is not est and twin.config == est.config and twin.model_ is None
    # a config object is kept as is (sklearn's clone checks identity)
    assert CTREstimator(config=cfg).config is cfg
    est.set_params(model__top_k=7)
    assert est.config.model.top_k == 7
    with pytest.raises(NotFittedError, match="not fitted yet"):
        est.predict_proba(data)
    with pytest.raises(NotFittedError):
        est.save("unused")
    # every CTR model name the config accepts is registered, and only those
    accepted = set(CTRModelConfig.model_fields["name"].annotation.__args__)
    assert set(CTR_MODELS.names()) == accepted


def test_saved_run_layout_and_format_1_runs_load(synth, tmp_path):
    import json
    import shutil

    from userseq import Estimator

    _, cfg, data = synth
    est = CTREstimator("din", config=cfg, overrides={"train.epochs": 1}).fit(
        data, run_dir=tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    manifest = json.loads((run / "estimator.json").read_text())
    assert manifest["task"] == "ctr" and manifest["format_version"] == 3
    assert est.data_fingerprint_ and est.cuts_ == (data.info["valid_cut"], data.info["test_cut"])
    assert est.train_state_["epochs"] == 1 and est.data_info_["samples"] == len(data.samples)
    p = est.predict_proba(data, "test")
    # userseq.Estimator.load picks the CTR estimator by the run's task
    generic = Estimator.load(run)
    assert type(generic) is CTREstimator
    np.testing.assert_array_equal(generic.predict_proba(data, "test"), p)
    # a run written by userseq 0.1 (format 1: no estimator.json) still loads, identically
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "estimator.json").unlink()
    same = CTREstimator.load(old)
    np.testing.assert_array_equal(same.predict_proba(data, "test"), p)
    assert same.train_state_ == est.train_state_ and same.data_fingerprint_ == est.data_fingerprint_
    assert type(Estimator.load(old)) is CTREstimator
    # metrics.json through the one writer
    m = est.write_metrics(run, est.report(data))
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["task"] == "ctr" and on_disk["test"]["auc"] == m["test"]["auc"]


def test_format_1_ctr_config_with_partial_train_section_keeps_ctr_defaults(tmp_path):
    """Old run configs may hold only some train keys: the CTR defaults fill the rest."""
    path = tmp_path / "config.yaml"
    path.write_text("model: {name: sim}\ntrain: {epochs: 3}\n")
    cfg = CTRConfig.from_yaml(path)
    assert cfg.model.name == "sim" and cfg.train.epochs == 3
    assert cfg.train.monitor == "auc" and cfg.train.batch_size == 512 and cfg.train.patience == 2
    from userseq.core.errors import ConfigError

    path.write_text("train: {monitor: ndcg@10}\n")
    with pytest.raises(ConfigError, match="train.monitor must be one of auc, gauc, neg_logloss"):
        CTRConfig.from_yaml(path)
