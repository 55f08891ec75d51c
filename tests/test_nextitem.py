"""End-to-end next-item training on a learnable synthetic log: fit, evaluate, save/load, serve."""

import numpy as np
import polars as pl
import pytest
import torch

from userseq import EventLog, NextItemRecommender
from userseq.core.artifacts import read_json
from userseq.core.errors import ArtifactError, UserseqError
from userseq.data.split import leave_one_out

SMALL = {
    "model.dim": 32, "model.max_len": 16, "model.heads": 2, "train.batch_size": 32, "train.epochs": 12,
    "train.lr": 5e-3, "train.patience": 12, "eval.ks": [1, 10],
}


def cyclic_log(n_users=120, n_items=40, length=14, seed=0) -> EventLog:
    """Each user walks the catalogue in steps of +1 from a random start: next item = last + 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            rows.append((f"u{u}", f"i{(start + t) % n_items}", t))
    return EventLog.from_frame(pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row"))


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


@pytest.mark.parametrize("model,loss", [("gru4rec", "ce"), ("bert4rec", "ce"), ("sasrec", "sampled_softmax"),
                                        ("sasrec", "gbce"), ("sasrec", "bce")])
def test_other_encoders_and_losses_learn(log, model, loss):
    over = {**SMALL, "loss.name": loss, "loss.negatives": 16, "train.epochs": 20 if model == "bert4rec" else 12}
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
    for name in ("config.yaml", "model.safetensors", "user_ids.parquet", "item_ids.parquet", "run.json",
                 "metrics.json"):
        assert (run / name).exists()
    metrics = read_json(run / "metrics.json")
    assert metrics["test"]["hr@10"] > 0.9 and metrics["filter_seen"] is True
    assert set(metrics["baselines"]) == {"popularity", "repeat (no seen filter)"}
    assert read_json(run / "run.json")["data_fingerprint"] == rec.data_fingerprint


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
    with pytest.raises(UserseqError, match="not fitted"):
        NextItemRecommender().recommend(["u1"])


def test_corrupt_checkpoint_is_a_clear_error(fitted, tmp_path):
    _, run = fitted
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        NextItemRecommender.load(bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
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
    assert rec.train_state["epochs"] == 4


def test_seed_reproducibility(log):
    over = {**SMALL, "train.epochs": 2}
    a = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
    b = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
    for (k, va), (_, vb) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_time_budget_stops_training(log):
    over = {**SMALL, "train.epochs": 1000, "train.max_minutes": 0.02, "train.patience": 1000}
    rec = NextItemRecommender("sasrec", overrides=over).fit(log, quiet=True)
    assert "time budget" in rec.train_state["stopped"]
    assert rec.train_state["epochs"] < 1000
