"""End-to-end next-item training on a learnable synthetic log: fit, evaluate, save/load, serve."""

import numpy as np
import polars as pl
import pytest
import torch

from userseq import Estimator, EventLog, NextItemRecommender, NotFittedError
from userseq.core.artifacts import read_json, write_json
from userseq.core.errors import ArtifactError, ConfigError, UserseqError
from userseq.data.split import leave_one_out

SMALL = {
    "model.dim": 32, "model.max_len": 16, "model.heads": 2, "train.batch_size": 32,
    "train.epochs": 12, "train.lr": 5e-3, "train.patience": 12, "eval.ks": [1, 10],
}


def cyclic_log(n_users=120, n_items=40, length=14, seed=0) -> EventLog:
    """Each user walks the catalogue in steps of +1 from a random start: next item = last + 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            rows.append((f"u{u}", f"i{(start + t) % n_items}", t))
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    return EventLog.from_frame(frame)


@pytest.fixture(scope="module")
def log():
    return cyclic_log()


@pytest.fixture(scope="module")
def fitted(log, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    rec = NextItemRecommender("sasrec", overrides=SMALL).fit(log, run_dir=run, quiet=True)
    return rec, run


def test_sasrec_learns_the_pattern(log, fitted):
    rec, _ = fitted
    m = rec.evaluate(leave_one_out(log).test)
    assert m["hr@10"] > 0.9, m  # popularity gives ~0.25 here; the pattern is deterministic
    assert m["ndcg@10"] > 0.5, m
    assert m["users"] == 120


@pytest.mark.parametrize("model,loss", [("gru4rec", "ce"), ("bert4rec", "ce"),
                                        ("sasrec", "sampled_softmax"), ("sasrec", "gbce"),
                                        ("sasrec", "bce")])
def test_other_encoders_and_losses_learn(log, model, loss):
    over = {**SMALL, "loss.name": loss, "loss.negatives": 16,
            "train.epochs": 20 if model == "bert4rec" else 12}
    rec = NextItemRecommender(model, overrides=over).fit(log, quiet=True)
    m = rec.evaluate(leave_one_out(log).test)
    assert m["hr@10"] > 0.5, (model, loss, m)


def test_save_load_gives_identical_recommendations(fitted):
    rec, run = fitted
    loaded = NextItemRecommender.load(run)
    a = rec.recommend(["u0", "u5"], k=5)
    b = loaded.recommend(["u0", "u5"], k=5)
    assert a.equals(b)
    np.testing.assert_array_equal(rec.user_embeddings(), loaded.user_embeddings())
    np.testing.assert_array_equal(rec.item_embeddings(), loaded.item_embeddings())
    for name in ("config.yaml", "model.safetensors", "user_ids.parquet", "item_ids.parquet",
                 "run.json", "metrics.json"):
        assert (run / name).exists()
    metrics = read_json(run / "metrics.json")
    assert metrics["test"]["hr@10"] > 0.9 and metrics["filter_seen"] is True
    assert set(metrics["baselines"]) == {"popularity", "repeat (no seen filter)"}
    assert read_json(run / "run.json")["data_fingerprint"] == rec.data_fingerprint_
    assert read_json(run / "estimator.json")["task"] == "nextitem"
    assert metrics["task"] == "nextitem"


def test_recommend_frame_and_filtering(log, fitted):
    rec, _ = fitted
    df = rec.recommend(["u3"], k=5)
    assert df.columns == ["user_id", "rank", "item_id", "score"]
    assert df["rank"].to_list() == [1, 2, 3, 4, 5]
    assert df["score"].is_sorted(descending=True)
    off, items = log.sequences()
    u = int(log.user_index(["u3"])[0])
    seen = set(log.item_ids.gather(items[off[u]:off[u + 1]] - 1).to_list())
    assert not seen & set(df["item_id"].to_list())
    # the next item after the user's last one is the top recommendation (pattern learned)
    last = log.item_ids[int(items[off[u + 1] - 1]) - 1]
    assert df["item_id"][0] == f"i{(int(last[1:]) + 1) % 40}"
    kept = rec.recommend(["u3"], k=40, filter_seen=False)
    assert len(kept) == 40


def test_new_user_from_history(fitted):
    rec, _ = fitted
    df = rec.recommend_history([["i10", "i11", "i12"]], k=3, ids=["new"])
    assert df["user_id"].to_list() == ["new"] * 3
    assert df["item_id"][0] == "i13"


def test_user_and_item_embeddings_shapes(log, fitted):
    rec, _ = fitted
    assert rec.user_embeddings().shape == (log.n_users, 32)
    assert rec.item_embeddings().shape == (log.n_items, 32)


def test_errors(fitted):
    rec, run = fitted
    with pytest.raises(UserseqError, match="unknown user"):
        rec.recommend(["nobody"], k=3)
    with pytest.raises(UserseqError, match="k must be a positive integer"):
        rec.recommend(["u1"], k=0)
    with pytest.raises(UserseqError, match="unknown item"):
        rec.recommend_history([["i1", "zzz"]])
    with pytest.raises(UserseqError, match="empty"):
        rec.recommend_history([[]])
    with pytest.raises(NotFittedError, match="not fitted"):
        NextItemRecommender().recommend(["u1"])


def test_corrupt_checkpoint_is_a_clear_error(fitted, tmp_path):
    _, run = fitted
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="the file was cut, changed or replaced"):
        NextItemRecommender.load(bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="the file was cut, changed or replaced"):
        NextItemRecommender.load(bad)
    (bad / "estimator.json").unlink()  # without the manifest: the safetensors reader's own check
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        NextItemRecommender.load(bad)


def test_resume_continues_from_checkpoint(log, tmp_path):
    over = {**SMALL, "train.epochs": 2}
    NextItemRecommender("gru4rec", overrides=over).fit(log, run_dir=tmp_path, quiet=True)
    state = read_json(tmp_path / "trainer_state.json")
    assert state["epoch"] == 2
    rec = NextItemRecommender("gru4rec", overrides={**SMALL, "train.epochs": 4}).fit(
        log, run_dir=tmp_path, resume=True, quiet=True)
    state = read_json(tmp_path / "trainer_state.json")
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert rec.train_state_["epochs"] == 4


def test_seed_reproducibility(log):
    over = {**SMALL, "train.epochs": 2}
    a = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
    b = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
    for (k, va), (_, vb) in zip(a.encoder_.state_dict().items(), b.encoder_.state_dict().items(),
                                strict=True):
        assert torch.equal(va, vb), k


def test_time_budget_stops_training(log):
    over = {**SMALL, "train.epochs": 1000, "train.max_minutes": 0.02, "train.patience": 1000}
    rec = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
    assert "time budget" in rec.train_state_["stopped"]
    assert rec.train_state_["epochs"] < 1000


# --------------------------------------------------------------------------- the Estimator contract


def test_is_an_estimator_with_clone_and_params():
    from sklearn.base import clone

    rec = NextItemRecommender("gru4rec", overrides={"model.dim": 8})
    assert isinstance(rec, Estimator) and rec.task == "nextitem" and not rec.is_fitted
    assert rec.config.model.name == "gru4rec" and rec.config.model.dim == 8
    same = NextItemRecommender(config=rec.config)
    assert same.config is rec.config  # what sklearn.base.clone requires
    twin = clone(rec)
    assert type(twin) is NextItemRecommender and twin.config == rec.config and not twin.is_fitted
    assert rec.get_params()["model__dim"] == 8
    rec.set_params(model__name="bert4rec", model__mask_prob=0.5)
    assert rec.config.model.name == "bert4rec" and rec.config.model.mask_prob == 0.5
    with pytest.raises(NotFittedError):
        rec.check_is_fitted()
    with pytest.raises(NotFittedError):
        rec.save("unused")


def test_fitted_state_has_trailing_underscores(log, fitted):
    rec, _ = fitted
    assert rec.is_fitted and rec.check_is_fitted() is rec.encoder_
    assert rec.user_ids is rec.user_ids_ and rec.item_ids is rec.item_ids_
    assert len(rec.user_ids) == log.n_users and len(rec.item_ids) == log.n_items
    assert rec.histories_[0].shape == (log.n_users + 1,) and rec.train_state_["epochs"] >= 1
    with pytest.raises(AttributeError):
        rec.user_ids = None  # read-only: the fitted state is user_ids_


def _old_flat_model_section(model: dict) -> dict:
    """The `model:` section as userseq 0.1 wrote it: one flat config with every encoder's
    settings."""
    flat = {"name": model["name"], "dim": model["dim"], "layers": 2, "heads": 1, "dropout": 0.1,
            "max_len": model["max_len"], "ffn_dim": None, "mask_prob": 0.2, "attn_dropout": 0.0,
            "init_std": None}
    flat.update({k: v for k, v in model.items() if k in flat})
    return {**flat, **{k: v for k, v in model.items() if k not in flat}}


def test_a_run_of_format_1_loads_and_recommends_the_same(fitted, tmp_path):
    import shutil

    import yaml

    import userseq

    rec, run = fitted
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "estimator.json").unlink()  # userseq 0.1 wrote no manifest ...
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["model"] = _old_flat_model_section(cfg["model"])  # ... and a flat model config
    assert "mask_prob" in cfg["model"] and cfg["model"]["name"] == "sasrec"
    (old / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for loaded in (NextItemRecommender.load(old), userseq.load(old)):
        assert type(loaded) is NextItemRecommender
        assert loaded.recommend(["u0", "u5"], k=5).equals(rec.recommend(["u0", "u5"], k=5))
        assert loaded.config.model == rec.config.model


def test_a_newer_run_format_is_a_clear_error(fitted, tmp_path):
    import shutil

    _, run = fitted
    new = tmp_path / "new"
    shutil.copytree(run, new)
    manifest = read_json(new / "estimator.json")
    write_json({**manifest, "format_version": 99, "userseq_version": "9.0"}, new / "estimator.json")
    with pytest.raises(ArtifactError,
                       match="run format 99.*reads formats up to 3. Upgrade userseq"):
        NextItemRecommender.load(new)
    write_json({**manifest, "task": "ctr"}, new / "estimator.json")
    with pytest.raises(ArtifactError, match="this is a 'ctr' run, not a 'nextitem' run"):
        NextItemRecommender.load(new)


# --------------------------------------------------------------------------- the model: section


def test_model_section_is_validated_by_the_named_encoder():
    from userseq.encoders import ENCODERS
    from userseq.nextitem.config import RunConfig

    gru = RunConfig.parse({"model": {"name": "gru4rec", "dim": 8, "heads": 1, "ffn_dim": None,
                                     "mask_prob": 0.2, "attn_dropout": 0.0, "init_std": None}})
    assert type(gru.model) is ENCODERS.get("gru4rec").config and gru.model.dim == 8
    dumped = gru.model_dump()["model"]
    assert "layers" in dumped and "heads" not in dumped  # the subclass's fields, only those
    assert RunConfig.parse(gru.model_dump()) == gru
    with pytest.raises(ConfigError, match=r"c.yaml: .*unknown key 'model.dimm' \(allowed here: "
                                          r"name, dim, .*layers"):
        RunConfig.parse({"model": {"dimm": 8}}, "c.yaml")
    with pytest.raises(ConfigError, match="'model.name': unknown encoder 'gru'. Did you mean "
                                          "'gru4rec'.* Choose one of: .*sasrec"):
        RunConfig.parse({"model": {"name": "gru"}}, "c.yaml")


def test_overrides_switch_the_encoder_first():
    cfg = NextItemRecommender("bert4rec", overrides={"model.mask_prob": 0.4, "model.heads": 2,
                                                     "model.dim": 16}).config
    assert (cfg.model.name, cfg.model.mask_prob, cfg.model.heads) == ("bert4rec", 0.4, 2)
    gru = NextItemRecommender("gru4rec", overrides={"model.heads": 2, "model.dim": 16}).config
    assert gru.model.dim == 16 and not hasattr(gru.model, "heads")  # another encoder's setting
    with pytest.raises(ConfigError, match="unknown config key 'model.nope'"):
        NextItemRecommender("gru4rec", overrides={"model.nope": 1})


def test_cold_start_split_follows_the_split_seed(log):
    from userseq.nextitem.config import split_kwargs

    key = "data.split_seed"
    a = NextItemRecommender(overrides={"data.split": "cold-start", key: 3}).config
    assert a.data.split_seed == 3 and split_kwargs(a)["seed"] == 3
    from userseq.data.split import make_split

    s3 = make_split(log, "cold-start", **split_kwargs(a))
    s4 = make_split(log, "cold-start", **split_kwargs(a.updated({key: 4})))
    assert not np.array_equal(s3.test.targets, s4.test.targets)
