"""The HTTP service: recommendations that follow the learned pattern, filters, similar items/users,
embeddings, request batching, 4xx (never 500) on bad input, the OpenAPI schema, and the CLI."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install "
                                      "'userseq[serve]')")
pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'userseq[serve]')")
pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install "
                                           "'userseq[test]')")

import httpx  # noqa: E402
import schemathesis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serve_support import FIRST_ITEM, N_ITEMS, fresh_run, fresh_service, item_meta, next_item  # noqa: E402

from userseq.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_service(tmp_path_factory.mktemp("serve"), item_meta=item_meta()) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service, max_body_bytes=64_000)) as c:
        yield c


def last_item(service, user: str) -> int:
    r = service.users.row(user)
    return int(service.rec.item_ids[int(service.hist_items[service.offsets[r + 1] - 1]) - 1])


H = [108, 109, 110, 111, 112]  # a 5-item walk: the model predicts 113 next


def ids(resp) -> list:
    return [it["item_id"] for it in resp.json()["items"]]


# ---------------------------------------------------------------------- recommendations
def test_known_user_follows_the_pattern_and_excludes_seen(client, service):
    r = client.post("/recommend", json={"user_id": "u3", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known_user"] and body["history_length"] == 14
    assert body["k"] == 5 and body["index"] == "flat"
    got = ids(r)
    assert got[0] == next_item(last_item(service, "u3"))
    row = service.users.row("u3")
    hist = service.hist_items[service.offsets[row] : service.offsets[row + 1]]
    seen = set(service.rec.item_ids.gather(hist - 1))
    assert not seen & set(got)
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["items"][0]["title"] == f"Film {got[0]}" and body["items"][0]["genres"]
    # the same as the Python API
    ref = service.rec.recommend(["u3"], k=5)
    assert got == ref["item_id"].to_list()
    np.testing.assert_allclose(scores, ref["score"].to_list(), rtol=1e-4, atol=1e-5)


def test_new_user_history_ids_as_ints_or_strings(client):
    a = client.post("/recommend", json={"history": H, "k": 3})
    b = client.post("/recommend", json={"history": [str(i) for i in H], "k": 3})
    assert a.status_code == b.status_code == 200
    assert ids(a)[0] == 113 and ids(a) == ids(b)
    assert a.json()["known_user"] is False and a.json()["user_id"] is None
    # an unknown user id with a history is a new user, not an error
    c = client.post("/recommend", json={"user_id": "brand-new", "history": H, "k": 3})
    assert c.status_code == 200 and ids(c) == ids(a) and not c.json()["known_user"]


def test_timestamps_order_the_history(client):
    shuffled = [112, 110, 111, 108, 109]
    r = client.post("/recommend", json={"history": shuffled, "timestamps": [50, 30, 40, 10, 20],
                                        "k": 1})
    assert ids(r) == [113]
    iso = [f"2024-01-0{d}T00:00:00Z" for d in (5, 3, 4, 1, 2)]
    r = client.post("/recommend", json={"history": shuffled, "timestamps": iso, "k": 1})
    assert ids(r) == [113]


def test_user_plus_recent_history(client, service):
    # "what they just did": the given events follow the user's training history
    r = client.post("/recommend", json={"user_id": "u3", "history": [120, 121, 122, 123], "k": 1})
    assert r.status_code == 200 and r.json()["history_length"] == 18 and ids(r) == [124]


def test_filters(client):
    base = ids(client.post("/recommend", json={"history": H, "k": 5}))
    denied = ids(client.post("/recommend", json={"history": H, "k": 5, "deny": [base[0]]}))
    assert base[0] not in denied and denied[:4] == base[1:5]
    allowed = client.post("/recommend", json={"history": H, "k": 5, "allow": [130, 131, 113, 110]})
    assert allowed.status_code == 200
    assert ids(allowed)[0] == 113 and set(ids(allowed)) == {130, 131, 113}  # 110 is seen: excluded
    kept = ids(client.post("/recommend", json={"history": H, "k": N_ITEMS, "exclude_seen": False}))
    assert len(kept) == N_ITEMS and set(H) <= set(kept)
    exact = client.post("/recommend", json={"history": H, "k": 5, "exact": True})
    assert ids(exact) == base and exact.json()["index"] == "exact"
    big_k = client.post("/recommend", json={"history": [110], "k": 1000})
    assert len(ids(big_k)) == N_ITEMS - 1


def test_unknown_history_items(client):
    r = client.post("/recommend", json={"history": [110, 99999, "zz"], "k": 3})
    assert r.status_code == 422 and "99999" in r.json()["message"] and "zz" in r.json()["message"]
    r = client.post("/recommend", json={"history": [108, 109, 110, 111, 99999], "k": 3,
                                          "unknown_items": "ignore"})
    assert r.status_code == 200 and r.json()["ignored_items"] == [99999] and ids(r)[0] == 112
    r = client.post("/recommend", json={"history": [99999], "unknown_items": "ignore"})
    assert r.status_code == 422 and "no known item" in r.json()["message"]


# ---------------------------------------------------------------------- similar, embed, catalogue
def test_similar_items_and_users(client, service):
    r = client.get(f"/items/{FIRST_ITEM + 5}/similar", params={"k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["metric"] == "cosine" and len(body["items"]) == 4 and FIRST_ITEM + 5 not in ids(r)
    assert body["items"][0]["score"] >= body["items"][-1]["score"]
    u = client.get("/users/u3/similar", params={"k": 6}).json()
    assert len(u["users"]) == 6 and "u3" not in [x["user_id"] for x in u["users"]]
    # the most similar users are those whose walk ended at the same place (same next item)
    last = last_item(service, "u3")
    top = u["users"][0]
    assert last_item(service, top["user_id"]) in {last, next_item(last)} or top["score"] > 0.8


def test_embed_matches_the_encoder(client, service):
    r = client.post("/embed", json={"history": H})
    assert r.status_code == 200
    body = r.json()
    assert body["dim"] == 32 and len(body["embedding"]) == 32
    off, items = service.rec.history_indices([H])
    ref = service.rec.encode(off, items).numpy()[0]
    np.testing.assert_allclose(body["embedding"], ref, rtol=1e-4, atol=1e-5)
    known = client.post("/embed", json={"user_id": "u5"}).json()
    ue = service.rec.user_embeddings()[service.users.row("u5")]
    np.testing.assert_allclose(known["embedding"], ue, rtol=1e-4, atol=1e-5)


def test_catalogue_endpoints(client):
    item = client.get(f"/items/{FIRST_ITEM}").json()
    assert item["title"] == f"Film {FIRST_ITEM}" and item["count"] > 0
    user = client.get("/users/u3", params={"limit": 5}).json()
    assert user["history_length"] == 14 and len(user["history"]) == 5
    users = client.get("/users", params={"limit": 3}).json()
    assert users == {"total": 80, "ids": ["u0", "u1", "u10"]}  # id-map order
    hits = client.get("/items", params={"q": "film 11"}).json()
    assert hits["total"] == 10 and all(h["title"].startswith("Film 11") for h in hits["items"])
    m = client.get("/map").json()
    assert len(m["points"]) == N_ITEMS and m["method"] == "pca"
    assert {p["genre"] for p in m["points"]} == {"Drama", "Comedy", "Action", "Horror"}
    assert all(-1 <= p["x"] <= 1 and -1 <= p["y"] <= 1 for p in m["points"])


def test_health_info_schema_and_page(client):
    assert client.get("/health").json() == {"status": "ok", "items": N_ITEMS, "users": 80}
    info = client.get("/info").json()
    assert info["model"]["name"] == "sasrec" and info["data_fingerprint"]
    assert info["metrics"]["test"]["hr@10"] > 0.5 and info["index"]["items"]["recall@100"] == 1.0
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/embed", "/items/{item_id}/similar", "/users/{user_id}/similar",
            "/health", "/info"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "userseq" in page.text
    assert client.get("/static/app.js").status_code == 200


# ---------------------------------------------------------------------- bad input: 4xx, never 500
@pytest.mark.parametrize("body,status,needle", [
    ({"user_id": "nobody", "k": 3}, 404, "unknown user id 'nobody'"),
    ({"history": [], "k": 3}, 422, "non-empty `history`"),
    ({}, 422, "give `user_id`"),
    ({"user_id": "u1", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"user_id": "u1", "k": 1001}, 422, "k: Input should be less than or equal to 1000"),
    ({"user_id": "u1", "k": "many"}, 422, "k: Input should be a valid integer"),
    ({"user_id": "u1", "bogus": 1}, 422, "bogus: Extra inputs are not permitted"),
    ({"history": [110, 111], "timestamps": [1]}, 422, "one timestamp per history item"),
    ({"history": [110], "timestamps": ["yesterday"]}, 422, "timestamps.0"),
    ({"history": [[110]]}, 422, "history.0"),
    ({"history": [110], "deny": [424242]}, 422, "unknown item id(s) [424242] in `deny`"),
    ({"history": [110], "allow": ["x"]}, 422, "in `allow`"),
    ({"history": list(range(10_001))}, 422, "history: List should have at most 10000 items"),
    ({"user_id": None, "history": None}, 422, "give `user_id`"),
    ({"history": [110], "unknown_items": "drop"}, 422, "unknown_items"),
])
def test_bad_recommend_requests(client, body, status, needle):
    r = client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_integer_ids_from_odd_strings():
    import polars as pl

    from userseq.serve.service import IdMap

    ids = IdMap(pl.Series("id", [5, 7]), "item")
    assert ids.row("7") == 1 and ids.row(" +5 ") == 0
    for odd in ("²", "+-5", "٣", "5.0", "", True):
        assert ids.row(odd) is None  # not an integer id: unknown, never a crash


def test_bad_requests_elsewhere(client):
    as_json = {"content-type": "application/json"}
    assert client.post("/recommend", content=b"{oops", headers=as_json).status_code == 422
    assert client.post("/recommend", content=b"[1, 2]", headers=as_json).status_code == 422
    big = client.post("/recommend", content=b" " * 70_000, headers=as_json)
    assert big.status_code == 413 and "too large" in big.json()["message"]

    def chunks():
        for _ in range(20):
            yield b" " * 8000

    streamed = client.post("/recommend", content=chunks(), headers=as_json)
    assert streamed.status_code == 413
    r = client.get("/items/nope/similar")
    assert r.status_code == 404 and "unknown item id 'nope'" in r.json()["message"]
    assert client.get(f"/items/{FIRST_ITEM}/similar", params={"k": 0}).status_code == 422
    assert client.get(f"/items/{FIRST_ITEM}/similar", params={"k": "x"}).status_code == 422
    assert client.get("/users/nobody/similar").status_code == 404
    assert client.get("/users/nobody").status_code == 404
    assert client.get("/nowhere").status_code == 404
    assert client.post("/embed", json={"history": []}).status_code == 422
    assert client.get("/recommend").status_code == 405


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


def test_schemathesis_no_server_errors(api_schema):
    """schemathesis generates requests for every operation of the OpenAPI schema (valid and
    invalid ones): none may get a 5xx, and every answer must match the documented status codes
    and schemas."""
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    n = int(os.environ.get("USERSEQ_FUZZ_EXAMPLES", "20"))
    operations = [op.ok() for op in api_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation, mode in itertools.product(operations, list(schemathesis.GenerationMode)):
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=checks)

        try:
            check()
        except Unsatisfiable:  # no parameters to make invalid (e.g. GET /health)
            assert mode == schemathesis.GenerationMode.NEGATIVE and not operation.path_parameters \
                and not operation.query and not operation.body, operation.label


# ---------------------------------------------------------------------- request batching
def test_concurrent_requests_are_batched(service):
    hist = [[FIRST_ITEM + (s + j) % N_ITEMS for j in range(5)] for s in range(24)]

    async def many():
        from userseq.serve.schemas import RecommendRequest

        requests = [RecommendRequest(history=h, k=3) for h in hist]
        return await asyncio.gather(*(service.recommend(r) for r in requests))

    before = service.batcher.batches
    results = asyncio.run(many())
    batches = service.batcher.batches - before
    assert batches < len(hist)  # requests that arrived together shared forward passes
    for h, r in zip(hist, results, strict=True):
        assert r["items"][0]["item_id"] == next_item(h[-1])


# ---------------------------------------------------------------------- the command
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_cli_end_to_end(tmp_path, cli):
    run = fresh_run(tmp_path)
    port = _free_port()
    exe = Path(sys.executable).with_name("userseq")
    proc = subprocess.Popen([str(exe), "serve", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("server did not start: "
                                     f"{proc.stderr.read() if proc.poll() is not None else ''}")
            time.sleep(0.3)
        r = httpx.post(url + "/recommend", json={"history": H, "k": 2})
        assert r.status_code == 200 and r.json()["items"][0]["item_id"] == 113
        assert (run / "index" / "manifest.json").exists()  # built on first start
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert cli("serve", tmp_path / "nowhere").code == 2
    assert cli("serve", run, "--port", "0").code == 2


def test_a_closed_batcher_answers_later_jobs_instead_of_hanging():
    """`close()` at shutdown stops the worker; a job submitted afterwards (an app reused after
    `userseq serve` returned, as the CLI tests do) starts a new worker and is answered."""
    from userseq.serve.service import Batcher

    b = Batcher(lambda jobs: [2 * j for j in jobs], name="test-batcher")
    assert b.submit(3).result(timeout=10) == 6
    b.close()
    b.close()  # closing twice is harmless
    assert b.submit(4).result(timeout=10) == 8
    assert b.batches == 2 and b.jobs == 2
    b.close()
