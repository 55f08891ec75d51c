"""Issue 20: the Persona-Plug context aggregator (userseq.context), its CLI and POST /context."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from cli_support import assert_user_error
from test_items import fake_text as fake_text  # noqa: F401 - the fixture

from userseq.context import BM25, ContextAggregator, UserContext
from userseq.context.baselines import top_k
from userseq.core.errors import UserseqError

SMALL = {"model.hidden": 16, "model.context_dim": 8, "train.epochs": 15, "train.threads": 1,
         "train.patience": 15}


def users(n: int = 60, seed: int = 0) -> pl.DataFrame:
    """Users whose next post is on the input's topic: history = 6 topics, the last post repeats
    the topic of the input; relevancy flags the history posts on that topic."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n):
        topics = rng.choice(40, size=6, replace=False)
        target = int(topics[rng.integers(6)])
        posts = [f"product {t}" for t in topics] + [f"product {target}"]
        rows.append({"user_id": u, "posts": posts, "context": f"about product {target}",
                     "relevancy": [int(t == target) for t in topics]})
    return pl.DataFrame(rows)


def test_bm25_hand_computed_and_top_k_order():
    bm = BM25(["a b", "a c"])
    s = bm.scores("b", ["a b", "a c"])
    # idf(b) = log(1 + (2 - 1 + .5) / (1 + .5)) = log 2; tf 1, |d| = avgdl: 2.5 / 2.5
    assert s[0] == pytest.approx(math.log(2)) and s[1] == 0.0
    assert top_k(np.array([1.0, 3.0, 3.0, 0.0]), 2).tolist() == [2, 1]  # ties: recent first


def test_aggregator_weights_mask_padding_and_shapes():
    torch.manual_seed(0)
    m = ContextAggregator(6, hidden=4, context_dim=3, max_history=5)
    x, h = torch.randn(2, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    a, z, pred = m(x, h, mask)
    assert a.shape == (2, 4) and z.shape == (2, 3) and pred.shape == (2, 6)
    assert torch.all(a[0, :2] == 0) and torch.allclose(a.sum(1), torch.ones(2))


def test_fit_report_context_and_reload(fake_text, tmp_path):
    ctx = UserContext(overrides=SMALL).fit(users(), run_dir=tmp_path / "run", quiet=True)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(m["methods"]) == {"aggregator", "mean of history", "most recent k", "BM25 top-k",
                                 "MiniLM similarity top-k", "input text alone"}
    assert m["data"]["test_users"] == 12 and m["data"]["examples"] == 60
    assert "relevant@3" not in m["methods"]["mean of history"]
    # the input names the topic: lexical retrieval finds the on-topic post every time
    assert m["methods"]["BM25 top-k"]["relevant@3"] == 1.0
    assert m["methods"]["aggregator"]["cosine"] > m["methods"]["mean of history"]["cosine"]
    res = ctx.context("about product 5", history=["product 1", "product 5", "product 9"], k=2)
    assert len(res["vector"]) == 8 and res["context_dim"] == 8 and len(res["weights"]) == 3
    assert [c["position"] for c in res["context"]] == list(np.argsort(res["weights"])[::-1][:2])
    back = UserContext.load(tmp_path / "run")
    again = back.context("about product 5", history=["product 1", "product 5", "product 9"], k=2)
    assert np.allclose(again["vector"], res["vector"], atol=1e-6)
    known = back.context("about product 3", user="7")  # ids typed like the run's (int)
    assert known["user_id"] == "7" and len(known["weights"]) == 7
    with pytest.raises(UserseqError, match="unknown user 'nobody'"):
        back.context("x", user="nobody")
    with pytest.raises(UserseqError, match="input text is empty"):
        back.context("  ", history=["a"])


def test_context_cli_and_service(fake_text, cli, tmp_path):
    data = tmp_path / "users.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in users(40).to_dicts()))
    run = tmp_path / "ctx"
    res = cli("context", "train", "--data", data, "--out", run, "--context-dim", "4",
              "--epochs", "2", "--set", "model.hidden=8", "--quiet")
    assert res.code == 0, res.output
    assert "BM25 top-k" in res.stdout
    res = cli("context", run, "--user", "3", "--input", "about product 2", "--k", "2")
    assert res.code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["vector"]) == 4 and len(out["context"]) == 2
    assert_user_error(cli("context", run, "--input", "x"), "exactly one of --user")
    assert_user_error(cli("context", run, "--user", "3", "--input", "x", "--epochs", "3"),
                      "belong to `userseq context train`")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"user_id": 1, "posts": ["a", "b"]}) + "\n")
    assert_user_error(cli("context", "train", "--data", bad, "--out", tmp_path / "b"),
                      "missing fields ['context']")
    # --overwrite with bad data: the data is read and validated first, the old run stays
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(json.dumps(r) for r in users(40).to_dicts()[:5]))
    for data_path, message in ((bad, "missing fields ['context']"),
                               (few, "only 5 users have 2+ posts"),
                               (tmp_path / "none.jsonl", "no such file")):
        assert_user_error(cli("context", "train", "--data", data_path, "--out", run,
                              "--overwrite", "--quiet"), message)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert cli("context", run, "--user", "3", "--input", "about product 2").code == 0
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"user_id": 1, "posts": ["a"], "context": "x"}\n{"user_id": 2, '
                      b'"posts": ["caf\xe9"], "context": "y"}\n')
    assert_user_error(cli("context", "train", "--data", latin, "--out", tmp_path / "c"),
                      "line 2: not valid UTF-8")

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from userseq.serve.app import add_error_handlers
    from userseq.serve.routes import context as routes

    app = FastAPI()
    add_error_handlers(app)
    routes.mount(app)
    client = TestClient(app)
    r = client.post("/context", json={"user_id": 3, "input": "about product 2"})
    assert r.status_code == 404 and "--context" in r.json()["message"]
    app.state.context = routes.ContextService.from_run(run)
    r = client.post("/context", json={"user_id": 3, "input": "about product 2", "k": 1})
    assert r.status_code == 200, r.text
    assert len(r.json()["vector"]) == 4 and len(r.json()["context"]) == 1
    r = client.post("/context", json={"history": ["product 1", "product 2"], "input": "p 2"})
    assert r.status_code == 200 and len(r.json()["weights"]) == 2
    r = client.post("/context", json={"user_id": 999, "input": "x"})
    assert r.status_code == 404 and "unknown user 999" in r.json()["message"]
    r = client.post("/context", json={"input": "x"})
    assert r.status_code == 422
