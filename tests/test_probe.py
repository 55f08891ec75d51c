"""The sequence autoencoder (reconstruction training, recon_acc) and the probing command
(genre share / length / order vs a bag-of-items baseline), with hand-checked metric values."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from userseq import EventLog, NextItemRecommender
from userseq.core.errors import UserseqError
from userseq.metrics.regression import r2_score
from userseq.nextitem.probe import genre_targets, probe, ridge_probe

N_ITEMS = 30
GENRES = ["Drama", "Comedy", "Action"]


def genre_log(n_users=150, seed=0):
    """Users walk the catalogue in steps of +1 (order matters); lengths vary from 4 to 20."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        s, n = int(rng.integers(N_ITEMS)), int(rng.integers(4, 21))
        rows += [(f"u{u}", f"i{(s + t) % N_ITEMS}", t) for t in range(n)]
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    return EventLog.from_frame(frame)


def meta():
    return pl.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)],
                         "genres": [GENRES[(i // 10) % 3] + ("|Action" if i % 7 == 0 else "")
                                    for i in range(N_ITEMS)]})


def test_r2_by_hand_and_errors():
    assert r2_score([1, 2, 3], [1, 2, 3]) == 1.0
    # SS_res = 0.25 + 0 + 0.25 = 0.5, SS_tot = 2: 1 - 0.25
    assert r2_score([1, 2, 3], [1.5, 2, 2.5]) == pytest.approx(0.75)
    assert r2_score([1, 2, 3], [2, 2, 2]) == 0.0
    with pytest.raises(UserseqError, match="NaN"):
        r2_score([1.0, float("nan")], [1.0, 2.0])


def test_genre_shares_by_hand():
    genres = [["A"], ["A", "B"], ["B"], None]
    off = np.array([0, 3, 5])
    items = np.array([1, 2, 4, 3, 3])  # user 0: A, A|B, none; user 1: B, B
    names, shares = genre_targets(off, items, genres, top=2)
    assert names == ["B", "A"]  # B: 3 events, A: 2
    np.testing.assert_allclose(shares, [[1 / 3, 2 / 3], [1.0, 0.0]])


def test_ridge_probe_recovers_a_linear_target_and_picks_alpha_on_valid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ np.array([1.0, -2.0, 0.0, 0.5, 0.0]) + 0.01 * rng.normal(size=200)
    parts = (np.arange(120), np.arange(120, 160), np.arange(160, 200))
    r = ridge_probe(x, y, parts, r2_score)
    assert r["test"] > 0.99 and r["alpha"] <= 1.0


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ae") / "run"
    rec = NextItemRecommender("seq2seq-ae", overrides={
        "model.dim": 32, "model.max_len": 20, "train.epochs": 25, "train.lr": 5e-3,
        "train.monitor": "recon_acc", "train.patience": 25, "eval.ks": [10]})
    rec.fit(genre_log(), run_dir=run, quiet=True)
    return rec, run


def test_autoencoder_reconstructs_and_keeps_the_gru4rec_contract(ae_run):
    rec, run = ae_run
    enc = rec.encoder_
    assert enc.reconstructs and enc.recurrent and enc.causal
    assert rec.train_state_["best_valid"] > 0.3  # recon_acc: chance is 1/30
    off, items = rec.histories_
    acc = rec.reconstruction_accuracy(off, items)
    assert 0.3 < acc <= 1.0
    x = torch.randint(1, N_ITEMS + 1, (2, 6))
    x[0, :2] = 0
    with torch.no_grad():
        out = enc.reconstruct(x, x > 0)
        wide = torch.cat([torch.zeros(2, 3, dtype=torch.long), x], 1)
        torch.testing.assert_close(enc.reconstruct(wide, wide > 0)[:, 3:], out, atol=1e-5,
                                   rtol=1e-5)
    last = json.loads((run / "train_log.json").read_text())[-1]
    assert 0 < last["valid_recon_acc"] <= 1


def test_probe_finds_order_and_length_that_a_bag_cannot(ae_run):
    rec, _ = ae_run
    off, items = rec.histories_
    from userseq.nextitem.probe import item_genres

    res = probe(rec, off, items, item_genres(rec, meta()), top_genres=3, seed=0)
    p = res["probes"]
    assert res["genres"][0] == "Action" or set(res["genres"]) == set(GENRES)
    assert p["order"]["bag_of_items"]["test"] == 0.5  # identical features for both versions
    assert p["order"]["model"]["test"] > 0.7
    assert p["length"]["model"]["test"] > p["length"]["bag_of_items"]["test"]
    assert -1 < p["genre_share"]["bag_of_items"]["test"] <= 1
    with pytest.raises(UserseqError, match="at least 20 users"):
        probe(rec, off[:11], items, None)


def test_probe_cli(ae_run, cli, tmp_path):
    _, run = ae_run
    m = tmp_path / "meta.csv"
    meta().write_csv(m)
    r = cli("probe", run, "--items", m, "--top-genres", "3")
    assert r.code == 0, r.output
    assert "order" in r.stdout and "genre_share" in r.stdout
    saved = json.loads((run / "probe.json").read_text())
    assert saved["model"] == "seq2seq-ae" and saved["genres"]
    r = cli("probe", run)  # no genres: the two other probes, and a note
    assert r.code == 0 and "genre_share probe was skipped" in r.stdout
    bad = cli("probe", run, "--items", tmp_path / "nope.csv")
    assert bad.code == 2 and "--items" in bad.error and "file not found" in bad.error
