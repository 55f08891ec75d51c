"""A service that cannot be knocked over (docs/hardening.md): NaN/Infinity anywhere in a request
answer 422 (never 500), strict types (`true` is not 1), a bounded /map cache, /info without
absolute paths, and an in-flight limit that answers 503 + Retry-After. The fuzzer takes the
requests schemathesis generates from the OpenAPI schema and puts non-finite numbers into them
(schemathesis itself only generates JSON-valid numbers)."""

from __future__ import annotations

import asyncio
import json
import math
import os

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="faiss-cpu is not installed")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from serve_support import FIRST_ITEM, N_ITEMS, fresh_service  # noqa: E402

from userseq.serve.app import InFlightLimit, create_app, json_safe, relative_paths  # noqa: E402
from userseq.serve.service import MAP_CACHE  # noqa: E402

NON_FINITE = ("NaN", "Infinity", "-Infinity")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_service(tmp_path_factory.mktemp("harden")) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def strict_json(text: str):
    """Parse JSON as a strict client does: NaN/Infinity are not JSON."""
    def refuse(token: str):
        raise ValueError(f"non-JSON constant {token} in a response")
    return json.loads(text, parse_constant=refuse)


def post_raw(client, path: str, body: str):
    return client.post(path, content=body, headers={"content-type": "application/json"})


H = f"[{FIRST_ITEM}, {FIRST_ITEM + 1}]"


@pytest.mark.parametrize("token", NON_FINITE)
@pytest.mark.parametrize("path,body,field", [
    ("/recommend", '{"history": H, "k": T}', "k"),
    ("/recommend", '{"history": [T]}', "history"),
    ("/recommend", '{"user_id": T}', "user_id"),
    ("/recommend", '{"history": H, "timestamps": [1, T]}', "timestamps"),
    ("/recommend", '{"history": H, "allow": [T]}', "allow"),
    ("/recommend", '{"history": H, "exclude_seen": T}', "exclude_seen"),
    ("/embed", '{"history": H, "timestamps": [T, 2]}', "timestamps"),
    ("/embed", '{"user_id": "u1", "history": [T]}', "history"),
])
def test_non_finite_numbers_answer_422_naming_the_field(client, path, body, field, token):
    r = post_raw(client, path, body.replace("H", H).replace("T", token))
    assert r.status_code == 422, r.text
    answer = strict_json(r.text)  # the echo of the bad value is text, not a JSON NaN
    assert field in answer["message"]


def test_strict_types(client):
    for body in ({"history": [FIRST_ITEM], "k": True}, {"user_id": True},
                 {"history": [True]}, {"history": [FIRST_ITEM], "exclude_seen": "yes"},
                 {"history": [FIRST_ITEM], "k": "5"}, {"history": [FIRST_ITEM], "k": 2.5}):
        r = client.post("/recommend", json=body)
        assert r.status_code == 422, (body, r.text)
    ok = client.post("/recommend", json={"history": [FIRST_ITEM, str(FIRST_ITEM + 1)], "k": 3,
                                         "timestamps": ["2024-01-01T00:00:00", 1.7e9]})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3  # strings, ISO and numbers


def test_json_safe_and_relative_paths(tmp_path):
    assert json_safe({"a": [math.nan, math.inf, -math.inf, 1.5, True, None, b"x"]}) == \
        {"a": ["nan", "inf", "-inf", 1.5, True, None, "b'x'"]}
    run = tmp_path / "run"
    info = {"run_dir": str(run), "index": {"file": str(run / "index" / "items.faiss")},
            "data": "/elsewhere/events.csv", "name": "ml-1m", "list": ["/a/b.txt", "x"]}
    assert relative_paths(info, run) == {"run_dir": ".", "index": {"file": "index/items.faiss"},
                                         "data": "events.csv", "name": "ml-1m",
                                         "list": ["b.txt", "x"]}


def test_info_has_no_absolute_paths(client, service):
    r = client.get("/info")
    assert r.status_code == 200
    text = r.text
    assert str(service.run_dir) not in text and str(service.run_dir.parent) not in text

    def strings(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    assert not [s for s in strings(r.json()) if os.path.isabs(s)]
    assert r.json()["run_dir"] == "."


def test_map_clamps_n_and_keeps_a_bounded_cache(client, service):
    service._map.clear()
    for n in range(2, 2 + 3 * MAP_CACHE):
        assert client.get("/map", params={"n": n}).status_code == 200
    assert len(service._map) == MAP_CACHE
    big = client.get("/map", params={"n": 20_000}).json()
    assert len(big["points"]) == N_ITEMS  # clamped to the catalogue
    assert max(service._map) == N_ITEMS
    assert client.get("/map", params={"n": 20_001}).status_code == 422


def test_in_flight_limit_answers_503_with_retry_after():
    """Two requests hold the app; the third is refused at once; /health is never refused; once
    the two finish, requests are accepted again."""
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        if scope["path"] != "/health":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = InFlightLimit(slow_app, limit=2, retry_after=3)

    async def call(path: str) -> tuple[int, dict]:
        out: dict = {}

        async def send(msg):
            if msg["type"] == "http.response.start":
                out["status"] = msg["status"]
                out["headers"] = dict(msg["headers"])

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        await limited({"type": "http", "path": path, "method": "GET", "headers": []},
                      receive, send)
        return out["status"], out["headers"]

    async def scenario():
        held = [asyncio.create_task(call("/recommend")) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await call("/recommend")
        health = await call("/health")
        release.set()
        done = await asyncio.gather(*held)
        again = await call("/recommend")
        return refused, health, done, again

    refused, health, done, again = asyncio.run(scenario())
    assert refused[0] == 503 and refused[1][b"retry-after"] == b"3"
    assert health[0] == 200 and [d[0] for d in done] == [200, 200] and again[0] == 200
    assert limited.rejected == 1 and limited.active == 0


# ---------------------------------------------------------------------- the fuzzer
def _leaves(value, path=()):
    """Every place a value can be replaced: (path, kind) for dict values and list items."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    out = list(value)
    out[head] = _replace(out[head], rest, new)
    return out


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service))


def test_fuzz_non_finite_numbers_never_give_a_server_error(api_schema, client):
    """schemathesis cases (valid and invalid) for every operation, with NaN, Infinity or
    -Infinity put at a random place of the body (or into a query parameter): no 5xx, and every
    answer is strict JSON."""
    n = int(os.environ.get("USERSEQ_FUZZ_EXAMPLES", "15"))
    operations = [op.ok() for op in api_schema.get_all_operations()]
    assert len(operations) >= 10
    seen = {"bodies": 0, "queries": 0}
    for operation in operations:
        @given(case=operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
               where=st.integers(min_value=0), token=st.sampled_from(NON_FINITE))
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case, where, token):
            path = case.formatted_path
            marker = "__NONFINITE__"
            if isinstance(case.body, dict | list):
                places = list(_leaves(case.body))
                body = _replace(case.body, places[where % len(places)], marker)
                text = json.dumps(body).replace(f'"{marker}"', token)
                r = client.request(case.method, path, params=case.query, content=text,
                                   headers={"content-type": "application/json"})
                seen["bodies"] += 1
            else:
                query = dict(case.query or {})
                if query:
                    key = sorted(query)[where % len(query)]
                    query[key] = token
                    seen["queries"] += 1
                r = client.request(case.method, path, params=query)
            assert r.status_code < 500, (case.method, path, r.text)
            strict_json(r.text) if r.headers.get("content-type", "").startswith(
                "application/json") else None
            if isinstance(case.body, dict) and r.status_code != 422:
                # a non-finite number was accepted: only where any JSON value is allowed
                assert r.status_code in (200, 404), r.text

        check()
    assert seen["bodies"] >= n and seen["queries"] >= n
