"""POST /rank (`userseq serve RUN --ranker CTR_RUN`): retrieval by the next-item run, ranking by a
CTR run trained on the same items; both scores equal the Python APIs; a ranker over another item
space is refused at startup naming both runs; bad input answers 4xx naming the field; detector-only
serving (`userseq serve --detector DETECT_RUN`)."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install "
                                      "'userseq[serve]')")
pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'userseq[serve]')")

from fastapi.testclient import TestClient  # noqa: E402
from serve_support import FIRST_ITEM, N_ITEMS, cyclic_frame, fresh_run, fresh_service  # noqa: E402

from userseq.core.errors import UserseqError  # noqa: E402
from userseq.ctr.config import CTRConfig  # noqa: E402
from userseq.ctr.estimator import CTREstimator, ctr_data_from  # noqa: E402
from userseq.data.eventlog import EventLog  # noqa: E402
from userseq.serve.app import create_app  # noqa: E402
from userseq.serve.routes.ctr import CTRService  # noqa: E402
from userseq.serve.routes.rank import RankService  # noqa: E402

TINY = {"model.item_dim": 8, "model.cat_dim": 4, "model.user_dim": 4, "model.mlp": [16],
        "model.att_hidden": [8], "model.top_k": 5, "train.batch_size": 256, "train.threads": 1,
        "train.device": "cpu", "train.epochs": 2}


def ctr_frame(items_offset: int = 0) -> pl.DataFrame:
    """The next-item run's users and items (serve_support.cyclic_frame) with a rating (5: click,
    1: no click; the label is rating >= 4): the same item space, so the CTR run can rank what the
    next-item run retrieves."""
    df = cyclic_frame()
    return df.with_columns((pl.col("item_id") + items_offset).alias("item_id"),
                           pl.when(pl.col("item_id") % 3 != 0).then(5).otherwise(1)
                           .alias("rating"))


def train_ctr(df: pl.DataFrame, run) -> None:
    cfg = CTRConfig().updated(TINY)
    CTREstimator("din", config=cfg).fit(ctr_data_from(EventLog.from_frame(df), cfg), run_dir=run,
                                        quiet=True)


@pytest.fixture(scope="module")
def ranker_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ranker") / "run"
    train_ctr(ctr_frame(), run)
    return run


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_service(tmp_path_factory.mktemp("serve")) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service, ranker_run):
    ctr = CTRService.from_run(ranker_run)
    with TestClient(create_app(service, 64_000, ranker=RankService(service, ctr))) as c:
        yield c


def test_retrieve_then_rank_equals_the_two_apis(client, service, ranker_run):
    r = client.post("/rank", json={"user_id": "u3", "retrieve": 20, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "retrieved" and body["candidates"] == 20 and len(body["items"]) == 5
    assert body["ranker"] == "din" and body["ranker_history"] == "stored (ranking run)"
    # stage 1 = POST /recommend's top 20 (same ids, same scores)
    rec = client.post("/recommend", json={"user_id": "u3", "k": 20}).json()["items"]
    rec_score = {d["item_id"]: d["score"] for d in rec}
    # stage 2 = the CTR estimator on those 20 candidates, the user's stored history
    est = CTREstimator.load(ranker_run)
    want = est.score_request({"user": "u3"}, list(rec_score))
    want_top = sorted(zip(rec_score, want, strict=True), key=lambda t: -t[1])[:5]
    got = body["items"]
    assert [d["item_id"] for d in got] == [i for i, _ in want_top]
    assert [d["rank_score"] for d in got] == pytest.approx([p for _, p in want_top], abs=1e-6)
    for d in got:
        assert d["retrieval_score"] == pytest.approx(rec_score[d["item_id"]], abs=1e-5)
        assert list(rec_score).index(d["item_id"]) + 1 == d["retrieval_rank"]
    assert sorted(d["rank_score"] for d in got) == [d["rank_score"] for d in got][::-1]
    seen = set(service.user("u3", 1000)["history"][i]["item_id"]
               for i in range(len(service.user("u3", 1000)["history"])))
    assert not seen & {d["item_id"] for d in got}  # retrieval excluded the history
    assert set(body["timings_ms"]) == {"retrieval", "ranking"}


def test_explicit_candidates_and_posted_history(client, ranker_run, service):
    cands = [FIRST_ITEM + 3, FIRST_ITEM + 17, FIRST_ITEM + 30]
    hist = [FIRST_ITEM + 1, FIRST_ITEM + 2]
    r = client.post("/rank", json={"history": hist, "candidates": cands, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "candidates" and body["candidates"] == 3 and len(body["items"]) == 3
    assert body["ranker_history"] == "retrieval history (stored + posted)"
    est = CTREstimator.load(ranker_run)
    want = dict(zip(cands, est.score_request({"history": hist}, cands), strict=True))
    assert {d["item_id"]: d["rank_score"] for d in body["items"]} == pytest.approx(want)
    # retrieval scores of explicit candidates: the user vector of the posted history . item
    emb = client.post("/embed", json={"history": hist}).json()["embedding"]
    rows, _ = service.items.rows(cands)
    dots = dict(zip(cands, service.item_vectors[rows] @ np.array(emb, np.float32), strict=True))
    for d in body["items"]:
        assert d["retrieval_score"] == pytest.approx(float(dots[d["item_id"]]), abs=1e-4)


def test_concurrent_rank_requests_share_one_forward_pass(service, ranker_run):
    """12 concurrent /rank requests (known users, posted histories, explicit candidates) are
    ranked in one CTR forward pass once the worker is free, with the scores each gets alone."""
    import asyncio
    import threading

    from userseq.serve.schemas import RankRequest

    joined = RankService(service, CTRService.from_run(ranker_run))
    bodies = [{"user_id": f"u{i}", "retrieve": 20, "k": 20} for i in range(1, 6)]
    bodies += [{"history": [FIRST_ITEM + (3 * i + j) % N_ITEMS for j in range(2 + i)],
                "retrieve": 15, "k": 15} for i in range(5)]
    bodies += [{"user_id": "u2", "history": [FIRST_ITEM + 5], "candidates": [FIRST_ITEM + 9,
                FIRST_ITEM + 1, FIRST_ITEM + 33], "k": 3},
               {"history": [FIRST_ITEM + 7], "candidates": [FIRST_ITEM + 8], "k": 1}]
    requests = [RankRequest(**b) for b in bodies]

    def scores(res):
        return {d["item_id"]: d["rank_score"] for d in res["items"]}

    alone = [scores(asyncio.run(joined.rank(r))) for r in requests]
    assert joined.batcher.batches == len(requests) == joined.batcher.jobs

    gate, busy, fn, sizes = threading.Event(), threading.Event(), joined.batcher.fn, []

    def held(jobs):  # a first job keeps the worker busy until the 12 requests are queued
        sizes.append(len(jobs))
        if jobs == ["hold"]:
            busy.set()
            gate.wait(30)
            return [None]
        return fn(jobs)

    joined.batcher.fn = held
    joined.batcher.submit("hold")
    assert busy.wait(30)

    async def together():
        tasks = [asyncio.create_task(joined.rank(r)) for r in requests]
        for _ in range(3000):
            if joined.batcher._q.qsize() == len(requests):
                break
            await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(together())
    assert sizes == [1, len(requests)]  # the 12 requests were ranked in one forward pass
    assert joined.batcher.batches == len(requests) + 2  # 12 alone, the hold, the 12 together
    assert joined.batcher.jobs == 2 * len(requests) + 1
    for want, res in zip(alone, results, strict=True):
        got = scores(res)
        assert list(got) == list(want)  # same items in the same order
        assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-6)
    joined.close()


@pytest.mark.parametrize("body,status,needle", [
    ({"user_id": "u3", "candidates": []}, 422, "candidates: List should have at least 1 item"),
    ({"user_id": "u3", "candidates": [FIRST_ITEM, 999]}, 422,
     "unknown item id(s) [999] in `candidates`"),
    ({"user_id": "u3", "candidates": [FIRST_ITEM, FIRST_ITEM]}, 422,
     f"`candidates` has duplicate ids ['{FIRST_ITEM}']"),
    ({"user_id": "u3", "candidates": [FIRST_ITEM], "retrieve": 5}, 422, "not both"),
    ({"user_id": "u3", "retrieve": 0}, 422, "retrieve: Input should be greater than or equal"),
    ({"user_id": "u3", "retrieve": 1001}, 422, "retrieve: Input should be less than or equal"),
    ({"user_id": "u3", "candidates": list(range(10_001))}, 422,
     "candidates: List should have at most 10000 items"),
    ({"user_id": "nobody"}, 404, "unknown user id 'nobody'"),
    ({"history": [424242]}, 422, "unknown item id(s) [424242] in `history`"),
    ({"user_id": "u3", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
])
def test_bad_rank_requests(client, body, status, needle):
    r = client.post("/rank", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
    assert client.get("/health").status_code == 200  # the service stays up


def test_oversized_rank_body_is_413(client):
    r = client.post("/rank", content=b'{"user_id": "u3", "candidates": [' + b"1," * 40_000
                    + b"1]}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body too large" in r.json()["message"]


def test_ranker_over_another_item_space_is_refused(tmp_path, service):
    run = tmp_path / "other"
    train_ctr(ctr_frame(items_offset=1000), run)  # items 1100..1139: none shared
    with pytest.raises(UserseqError) as e:
        RankService(service, CTRService.from_run(run))
    msg = str(e.value)
    assert f"ranking run {run}" in msg and f"retrieval run {service.run_dir}" in msg
    assert f"the ranker knows 0 of the retrieval run's {N_ITEMS} items (0%" in msg


def test_partial_overlap_retrieves_only_rankable_items(tmp_path, service):
    run = tmp_path / "half"
    df = ctr_frame().filter(pl.col("item_id") < FIRST_ITEM + 30)  # the ranker knows 30 of 40
    train_ctr(df, run)
    joined = RankService(service, CTRService.from_run(run))
    assert joined.shared == 30 and joined.overlap == pytest.approx(0.75)
    with TestClient(create_app(service, ranker=joined)) as c:
        body = c.post("/rank", json={"user_id": "u5", "retrieve": 40, "k": 40}).json()
        assert all(d["item_id"] < FIRST_ITEM + 30 for d in body["items"])
        r = c.post("/rank", json={"user_id": "u5", "candidates": [FIRST_ITEM + 35]})
        assert r.status_code == 422 and "not in the ranking run's catalogue" in r.json()["message"]
    with pytest.raises(UserseqError, match="at least 80% needed"):
        RankService(service, CTRService.from_run(run), min_overlap=0.8)


def test_without_a_ranker_rank_says_how_to_load_one(service):
    with TestClient(create_app(service)) as c:
        r = c.post("/rank", json={"user_id": "u3"})
        assert r.status_code == 404 and "userseq serve RUN --ranker CTR_RUN" in r.json()["message"]
        assert c.get("/info").json()["ranker"] is None


def test_serve_cli_ranker_and_mismatch(tmp_path, cli, ranker_run, monkeypatch):
    import gc

    import uvicorn

    started = {}
    monkeypatch.setattr(gc, "freeze", lambda: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    res = cli("serve", fresh_run(tmp_path), "--ranker", ranker_run, "--port", "8125")
    assert res.code == 0, res.output
    assert "POST /rank and /score: ranking run" in res.stderr
    assert "40 of the retrieval run's 40 items shared" in res.stderr
    with TestClient(started["app"]) as c:
        assert c.post("/rank", json={"user_id": "u1", "k": 3}).status_code == 200
        assert c.get("/info").json()["ranker"]["shared_items"] == N_ITEMS
    other = tmp_path / "other"
    train_ctr(ctr_frame(items_offset=1000), other)
    bad = cli("serve", fresh_run(tmp_path / "b"), "--ranker", other)
    assert bad.code == 2 and "do not share an item space" in bad.error
    both = cli("serve", fresh_run(tmp_path / "c"), "--ranker", ranker_run, "--ctr", ranker_run)
    assert both.code == 2 and "not both" in both.error
    none = cli("serve")
    assert none.code == 2 and "give a run directory" in none.error


def test_rank_fuzz_no_server_errors(client):
    """schemathesis: generated valid and invalid /rank bodies never get a 5xx and match the
    schema."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    op = schema["/rank"]["POST"]
    n = int(os.environ.get("USERSEQ_FUZZ_EXAMPLES", "20"))
    for mode in schemathesis.GenerationMode:
        @given(case=op.as_strategy(mode))
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=checks)

        check()


def test_serve_detector_alone(tmp_path, cli, monkeypatch):
    """`userseq serve --detector DETECT_RUN` (no next-item run) serves /classify, /health and
    /info; the score equals the Python API."""
    import uvicorn
    from detect_support import TINY as DETECT_TINY
    from detect_support import synthetic_detect

    from userseq.detect.data import event_data
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    ev, lab = synthetic_detect(60, seed=3)
    train_and_evaluate(event_data(EventLog.from_frame(ev), lab),
                       UserDetector("gru", overrides={**DETECT_TINY, "train.epochs": 2}),
                       tmp_path / "gru", quiet=True)
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    res = cli("serve", "--detector", tmp_path / "gru", "--port", "8126")
    assert res.code == 0, res.output
    assert "serving detector" in res.stderr and started["port"] == 8126
    events = {"user_id": "x", "items": ["Article 1", "Article 2"], "timestamps": [10, 50]}
    frame = pl.DataFrame({"user_id": ["x", "x"], "item_id": events["items"],
                          "timestamp": events["timestamps"]})
    want = UserDetector.load(tmp_path / "gru").predict_proba(
        event_data(EventLog.from_frame(frame, timestamp_kind="time"), None))[0]
    with TestClient(started["app"]) as c:
        assert c.get("/health").json() == {"status": "ok", "model": "gru"}
        r = c.post("/classify", json=events)
        assert r.status_code == 200 and r.json()["score"] == pytest.approx(float(want), abs=1e-6)
        assert c.get("/info").json()["detector"]["run_dir"] == "."
        assert c.post("/recommend", json={"user_id": 1}).status_code == 404
        assert c.post("/classify", json={"items": []}).status_code == 422
    bad = cli("serve", "--detector", tmp_path / "gru", "--ranker", tmp_path / "gru")
    assert bad.code == 2 and "need a retrieval run" in bad.error
