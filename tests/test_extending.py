"""Adding an encoder or a loss is one new file: define it, register it through the public API
(`userseq.register_encoder` / `userseq.register_loss`), and the Python API, the standard CLI and
saved runs use it with no other change. (The classes below are the whole "new file".)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import synthetic_events
from pydantic import Field

import userseq
from userseq import EventLog, NextItemRecommender
from userseq.core.artifacts import read_json
from userseq.encoders import ENCODERS, EncoderConfig, SequenceEncoder, build_encoder
from userseq.losses import LOSSES

# --------------------------------------------------------------------------- the new "file"


class TinyConfig(EncoderConfig):
    """Settings of the tiny encoder: the common ones plus its own `scale`."""

    name: str = "tiny"
    scale: float = Field(1.0, gt=0)


class Tiny(SequenceEncoder):
    """Mean of the item embeddings over the causal prefix, through one linear map."""

    causal = True

    def __init__(self, config: TinyConfig, items) -> None:
        super().__init__()
        self.items, self.dim, self.max_len = items, items.dim, config.max_len
        self.proj = torch.nn.Linear(items.dim, items.dim)
        self.scale = config.scale

    def forward(self, item_ids, mask, features=None):
        item_ids, mask = item_ids[:, -self.max_len :], mask[:, -self.max_len :]
        x = self.items.embed(item_ids, features) * mask.unsqueeze(-1)
        seen = mask.cumsum(1).clamp(min=1).unsqueeze(-1)
        return self.proj(x.cumsum(1) / seen) * self.scale


CALLS = {"margin": 0}


def margin_loss(h, targets, items, ctx):
    """Hinge between the target and one uniform negative per position."""
    CALLS["margin"] += 1
    neg = ctx.sampler("uniform").sample((h.shape[0],), h.device)
    pos = (h * items.output_rows(targets)).sum(-1)
    negs = (h * items.output_rows(neg)).sum(-1)
    return torch.relu(1.0 - pos + negs).mean()


# --------------------------------------------------------------------------- registering


@pytest.fixture
def tiny():
    userseq.register_encoder("tiny", config=TinyConfig)(Tiny)
    yield
    ENCODERS.unregister("tiny")


@pytest.fixture
def margin():
    userseq.register_loss("margin")(margin_loss)
    CALLS["margin"] = 0
    yield
    LOSSES.unregister("margin")


@pytest.fixture(scope="module")
def log() -> EventLog:
    return EventLog.from_frame(synthetic_events(n_users=30, n_items=20, length=8))


def _check_metrics(metrics: dict, model: str) -> None:
    assert metrics["model"] == model and metrics["task"] == "nextitem"
    for split in ("valid", "test"):
        for key in ("ndcg@10", "hr@10"):
            value = metrics[split][key]
            assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_a_registered_encoder_trains_saves_and_loads_with_the_python_api(tiny, log, tmp_path):
    over = {"model.dim": 8, "model.max_len": 10, "model.scale": 2.0, "train.epochs": 1,
            "train.batch_size": 16}
    rec = NextItemRecommender("tiny", overrides=over).fit(log, run_dir=tmp_path, quiet=True)
    assert type(rec.encoder_) is Tiny and rec.encoder_.scale == 2.0
    assert rec.train_state_["epochs"] == 1
    _check_metrics(read_json(tmp_path / "metrics.json"), "tiny")
    recs = rec.recommend(["u0", "u1"], k=3)
    assert recs["user_id"].to_list() == ["u0"] * 3 + ["u1"] * 3
    assert recs["score"].is_not_nan().all()
    assert "scale: 2.0" in (tmp_path / "config.yaml").read_text()  # its own setting is saved
    loaded = NextItemRecommender.load(tmp_path)
    assert type(loaded.encoder_) is Tiny and loaded.recommend(["u0", "u1"], k=3).equals(recs)


def test_a_registered_loss_trains_one_step(margin, log):
    over = {"model.dim": 8, "model.max_len": 10, "train.epochs": 1, "train.batch_size": 1000,
            "loss.name": "margin"}
    rec = NextItemRecommender("gru4rec", overrides=over)
    torch.manual_seed(rec.config.train.seed)  # fit starts from the same weights
    init = build_encoder(rec.config.model, log.n_items).state_dict()
    rec.fit(log, quiet=True)
    assert CALLS["margin"] == 1  # 30 training rows, one batch: one step
    assert rec.train_state_["epochs"] == 1 and rec.train_state_["train_sequences"] == 30
    after = rec.encoder_.state_dict()
    assert torch.equal(init["items.table.weight"][0], after["items.table.weight"][0])  # padding
    assert not torch.equal(init["proj.weight"], after["proj.weight"])  # the step moved the weights


def test_the_standard_cli_trains_a_registered_encoder_and_loss(tiny, margin, cli, tmp_path):
    data, run = tmp_path / "events.csv", tmp_path / "run"
    synthetic_events(n_users=30, n_items=20, length=8).write_csv(data)
    res = cli("train", "--data", data, "--model", "tiny", "--out", run, "--epochs", "1",
              "--loss", "margin", "--set", "model.dim=8", "--set", "model.scale=0.5", "--quiet")
    assert res.code == 0, res.output
    assert "saved run to" in res.stdout and CALLS["margin"] >= 1
    _check_metrics(read_json(run / "metrics.json"), "tiny")
    loaded = userseq.load(run)
    assert type(loaded.encoder_) is Tiny and loaded.encoder_.scale == 0.5
    assert loaded.config.loss.name == "margin"
    res = cli("recommend", run, "--user", "u1", "-k", "2", "--json")
    assert res.code == 0, res.output
    assert [r["rank"] for r in json.loads(res.stdout)] == [1, 2]


def test_unregistered_names_are_unknown_again(cli, tmp_path):
    assert "tiny" not in ENCODERS and "margin" not in LOSSES
    data = tmp_path / "events.csv"
    synthetic_events(n_users=5, n_items=5, length=4).write_csv(data)
    res = cli("train", "--data", data, "--model", "tiny", "--out", tmp_path / "run")
    assert res.code == 2 and "unknown encoder 'tiny'" in res.error
