"""POST /users/{id}/events: streaming state over HTTP (append, recommend, persist across a
restart, bad events rejected without touching the state, non-recurrent runs refused)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss", reason="faiss-cpu is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from serve_support import FIRST_ITEM, SMALL, cyclic_frame, fresh_service  # noqa: E402

from userseq.serve.app import create_app  # noqa: E402
from userseq.serve.service import Service  # noqa: E402


@pytest.fixture(scope="module")
def ssm_run(tmp_path_factory):
    from userseq import EventLog, NextItemRecommender

    run = tmp_path_factory.mktemp("ssm") / "run"
    over = {**SMALL, "model.max_len": 40}
    NextItemRecommender("ssm", overrides=over).fit(EventLog.from_frame(cyclic_frame()),
                                                   run_dir=run, quiet=True)
    return run


def _client(run, state_dir):
    svc = Service.from_run(run, state_dir=state_dir)
    return svc, TestClient(create_app(svc))


def test_events_update_state_recommend_and_survive_a_restart(ssm_run, tmp_path):
    svc, client = _client(ssm_run, tmp_path / "state")
    r = client.post("/users/u0/events", json={"events": [FIRST_ITEM + 5, FIRST_ITEM + 6],
                                              "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["known_user"] and body["created"] and body["appended"] == 2
    assert body["n_events"] == 14 + 2
    # scores equal re-encoding the whole history (training history + the new events)
    hist = svc.rec.histories_
    u0 = svc.users.row("u0")
    items = list(svc.rec.item_ids.gather(hist[1][hist[0][u0] : hist[0][u0 + 1]] - 1))
    ref = svc.rec.recommend_history([items + [FIRST_ITEM + 5, FIRST_ITEM + 6]], k=3)
    assert [i["item_id"] for i in body["items"]] == ref["item_id"].to_list()
    np.testing.assert_allclose([i["score"] for i in body["items"]], ref["score"].to_numpy(),
                               atol=1e-4)
    # a bad event: 422 naming it, and the state is unchanged
    bad = client.post("/users/u0/events", json={"events": [FIRST_ITEM + 7, 999_999]})
    assert bad.status_code == 422 and "999999" in bad.json()["message"]
    assert "not changed" in bad.json()["message"]
    assert client.post("/users/u0/events", json={"events": []}).status_code == 422
    svc.close()
    # restart: the state is read back from the SQLite file
    svc2, client2 = _client(ssm_run, tmp_path / "state")
    r2 = client2.post("/users/u0/events", json={"events": [FIRST_ITEM + 7], "k": 3}).json()
    assert not r2["created"] and r2["n_events"] == 17
    ref2 = svc2.rec.recommend_history([items + [FIRST_ITEM + 5, FIRST_ITEM + 6,
                                                FIRST_ITEM + 7]], k=3)
    np.testing.assert_allclose([i["score"] for i in r2["items"]], ref2["score"].to_numpy(),
                               atol=1e-4)
    # a new user starts from an empty state
    new = client2.post("/users/newbie/events", json={"events": [FIRST_ITEM]}).json()
    assert not new["known_user"] and new["n_events"] == 1
    svc2.close()
    db = sqlite3.connect(tmp_path / "state" / "streaming.sqlite")
    assert db.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 2
    blob = db.execute("SELECT state FROM users").fetchone()[0]
    assert blob[8:9] == b"{"  # safetensors: an 8-byte header length, then a JSON header


def test_state_file_of_another_run_is_refused(ssm_run, tmp_path):
    svc, client = _client(ssm_run, tmp_path / "s")
    client.post("/users/u1/events", json={"events": [FIRST_ITEM]})
    svc.close()
    db = sqlite3.connect(tmp_path / "s" / "streaming.sqlite")
    with db:
        db.execute("UPDATE meta SET value = 'other' WHERE key = 'data_fingerprint'")
    svc, client = _client(ssm_run, tmp_path / "s")
    r = client.post("/users/u1/events", json={"events": [FIRST_ITEM]})
    assert r.status_code == 422 and "belongs to another run" in r.json()["message"]
    svc.close()


def test_attention_runs_cannot_stream(tmp_path):
    with fresh_service(tmp_path) as svc:  # the shared SASRec run
        r = TestClient(create_app(svc)).post("/users/u0/events", json={"events": [FIRST_ITEM]})
        assert r.status_code == 422
        assert "encoder 'sasrec' has no recurrent state" in r.json()["message"]
