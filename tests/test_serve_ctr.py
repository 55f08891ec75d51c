"""POST /score in the main service (`userseq serve RUN --ctr CTR_RUN`): the answer equals the
Python API, /info names the CTR run, bad input answers 4xx with a clear message, and without a
CTR run the route says how to load one."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install "
                                      "'userseq[serve]')")
pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'userseq[serve]')")

from fastapi.testclient import TestClient  # noqa: E402
from serve_support import fresh_run, fresh_service  # noqa: E402

from userseq.ctr.config import CTRConfig  # noqa: E402
from userseq.ctr.estimator import CTREstimator, ctr_data_from  # noqa: E402
from userseq.ctr.synthetic import synthetic_ctr_events  # noqa: E402
from userseq.data.eventlog import EventLog  # noqa: E402
from userseq.serve.app import create_app  # noqa: E402
from userseq.serve.routes.ctr import CTRService  # noqa: E402

TINY = {"model.item_dim": 8, "model.cat_dim": 4, "model.user_dim": 4, "model.mlp": [16],
        "model.att_hidden": [8], "model.top_k": 5, "train.batch_size": 256, "train.threads": 1,
        "train.device": "cpu", "train.epochs": 1, "data.category_col": "category"}


@pytest.fixture(scope="module")
def ctr_run(tmp_path_factory):
    df = synthetic_ctr_events(n_users=40, n_items=80, n_cats=5, history_len=30, n_targets=4,
                              evidence=2, recent_clean=5, seed=1)
    cfg = CTRConfig().updated(TINY)
    data = ctr_data_from(EventLog.from_frame(df.drop("click_prob")), cfg)
    run = tmp_path_factory.mktemp("ctr") / "run"
    CTREstimator("din", config=cfg).fit(data, run_dir=run, quiet=True)
    return run


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_service(tmp_path_factory.mktemp("serve")) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service, ctr_run):
    with TestClient(create_app(service, 64_000, ctr=CTRService.from_run(ctr_run))) as c:
        yield c


def test_score_equals_the_python_api(client, ctr_run):
    est = CTREstimator.load(ctr_run)
    r = client.post("/score", json={"user": 3, "items": [5, 7, 11]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "din" and [s["item"] for s in body["scores"]] == [5, 7, 11]
    want = est.predict_proba([{"user": 3, "item": i} for i in (5, 7, 11)])
    assert [s["probability"] for s in body["scores"]] == pytest.approx(want.tolist(), abs=1e-6)
    # an explicit history (ids as strings work too), scored once for all candidates
    h = {"history": ["1", 2, 3], "history_values": [5, 1, 4]}
    r = client.post("/score", json={**h, "items": [5, "7"]})
    assert r.status_code == 200, r.text
    want = est.score_candidates([1, 2, 3], [5, 7], [5, 1, 4])
    assert [s["probability"] for s in r.json()["scores"]] == pytest.approx(want.tolist(), abs=1e-6)


def test_info_and_schema_name_the_ctr_run(client, ctr_run):
    info = client.get("/info").json()
    # no absolute paths in /info: a run outside the served run shows its name only
    assert info["ctr"]["model"] == "din" and info["ctr"]["run_dir"] == ctr_run.name
    assert info["ctr"]["items"] == 80 and info["detector"] is None
    assert info["model"]["name"] == "sasrec"  # the next-item run is still the main one
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/score", "/recommend", "/classify"} <= set(paths)


@pytest.mark.parametrize("body,status,needle", [
    ({"history": [1], "items": [99999]}, 422, "unknown candidate item id(s) [99999]"),
    ({"history": [1, 424242], "items": [5]}, 422, "unknown history item id(s) [424242]"),
    ({"items": [5]}, 422, "give `user`"),
    ({"user": 3, "items": []}, 422, "items: List should have at least 1 item"),
    ({"user": 3, "items": [5], "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"history": [1, 2], "history_values": [5], "items": [5]}, 422,
     "history_values has 1 entries for 2"),
    ({"history": [1, 2], "history_timestamps": [5, 20], "timestamp": 10, "items": [5]}, 422,
     "at or after the target's timestamp"),
    ({"user": "nobody", "items": [5]}, 422, "'nobody' is not a training user"),
    ({"user": 3, "items": [5], "timestamp": "soon"}, 422,
     "timestamp: Input should be a valid number"),
])
def test_bad_score_requests(client, body, status, needle):
    r = client.post("/score", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_without_a_ctr_run_score_says_how_to_load_one(service):
    with TestClient(create_app(service)) as c:
        r = c.post("/score", json={"user": 3, "items": [5]})
        assert r.status_code == 404 and "userseq serve RUN --ctr CTR_RUN" in r.json()["message"]
        assert c.get("/info").json()["ctr"] is None


def test_serve_cli_mounts_score_with_ctr(tmp_path, cli, ctr_run, monkeypatch):
    """`userseq serve RUN --ctr CTR_RUN` serves /score: the app handed to uvicorn answers it."""
    import gc

    import uvicorn

    started = {}
    monkeypatch.setattr(gc, "freeze", lambda: None)  # in-process: keep the test session collectable
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    res = cli("serve", fresh_run(tmp_path), "--ctr", ctr_run, "--port", "8123")
    assert res.code == 0, res.output
    assert "POST /score: CTR model" in res.stderr and started["port"] == 8123
    with TestClient(started["app"]) as c:
        r = c.post("/score", json={"user": 3, "items": [5]})
        assert r.status_code == 200 and 0 < r.json()["scores"][0]["probability"] < 1
        assert c.get("/info").json()["ctr"]["model"] == "din"
    bad = cli("serve", fresh_run(tmp_path / "b"), "--ctr", tmp_path / "nowhere")
    assert bad.code == 2 and "run directory not found" in bad.error


def test_ctr_serve_cli_serves_score_alone(cli, ctr_run, monkeypatch):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    res = cli("ctr", "serve", ctr_run, "--port", "8124")
    assert res.code == 0, res.output
    assert started["port"] == 8124 and "(din)" in res.stdout
    with TestClient(started["app"]) as c:
        assert c.get("/health").json() == {"status": "ok", "model": "din", "items": 80, "users": 40}
        assert c.post("/score", json={"user": 3, "items": [5]}).status_code == 200
        assert c.post("/recommend", json={"user_id": 3}).status_code == 404  # CTR only
