"""POST /classify: a detector run scores one user from a posted sequence (events or posts); the
answer equals the Python API on the same events; bad input answers 4xx with a clear message."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install "
                                      "'userseq[serve]')")
pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'userseq[serve]')")

from detect_support import TINY, synthetic_detect, synthetic_text  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_support import fresh_run, fresh_service  # noqa: E402

from userseq.data.eventlog import EventLog  # noqa: E402
from userseq.detect.data import event_data, stratified_split  # noqa: E402
from userseq.detect.estimator import UserDetector, train_and_evaluate  # noqa: E402
from userseq.serve.app import create_app  # noqa: E402
from userseq.serve.routes.detect import DetectorService  # noqa: E402

# after the training users' edits (synthetic_detect: 1.7e9 + up to ~1.1e6 s): the page vocabulary
# is causal, so an edit made before a page was known to the detector reads the rare-page vector
T0 = 1_700_000_000 + 2_000_000
# the synthetic pattern (detect_support.synthetic_detect): vandals hit hot articles seconds apart,
# benign users start on their own user page and edit topic pages hours apart
VANDAL = {"user_id": "x1", "items": ["Article 1", "Article 3", "Article 1", "Article 5"],
          "timestamps": [T0, T0 + 40, T0 + 70, T0 + 130]}
BENIGN = {"user_id": "x2", "items": ["User:x2", "Topic 7", "Topic 12", "Topic 30"],
          "timestamps": [T0, T0 + 3000, T0 + 7000, T0 + 9500]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    ev, lab = synthetic_detect(120, seed=2)
    data = event_data(EventLog.from_frame(ev), lab)
    train_and_evaluate(data, UserDetector("gru", overrides=TINY), d / "gru", quiet=True)
    text = synthetic_text()
    UserDetector("hlstm", overrides={**TINY, "train.epochs": 8}).fit(
        text, stratified_split(text.labels, 0.15, 0.25, seed=0), run_dir=d / "hlstm", quiet=True)
    return d


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_service(tmp_path_factory.mktemp("serve")) as svc:
        yield svc


@pytest.fixture(scope="module")
def event_client(service, runs):
    with TestClient(create_app(service, 64_000, DetectorService.from_run(runs / "gru"))) as c:
        yield c


@pytest.fixture(scope="module")
def text_client(service, runs):
    with TestClient(create_app(service, 64_000, DetectorService.from_run(runs / "hlstm"))) as c:
        yield c


def api_score(run, body, first_k=None):
    """The same user scored through the Python API (as `userseq detect score` would)."""
    frame = pl.DataFrame({"user_id": [body["user_id"]] * len(body["items"]),
                          "item_id": body["items"], "timestamp": body["timestamps"]})
    data = event_data(EventLog.from_frame(frame, timestamp_kind="time"), None)
    return float(UserDetector.load(run).predict_proba(data, first_k=first_k)[0])


def test_event_detector_scores_like_the_api(event_client, runs):
    bad = event_client.post("/classify", json=VANDAL)
    good = event_client.post("/classify", json=BENIGN)
    assert bad.status_code == good.status_code == 200, bad.text
    b, g = bad.json(), good.json()
    assert b["score"] > 0.5 > g["score"] and b["flagged"]
    # the validation threshold of this tiny run sits near 0.35 (causal page vocabulary)
    assert g["flagged"] == (g["score"] >= g["threshold"])
    assert b["model"] == "gru" and b["length"] == b["used"] == 4 and b["reordered"] == 0
    assert b["score"] == pytest.approx(api_score(runs / "gru", VANDAL), abs=1e-6)
    assert g["score"] == pytest.approx(api_score(runs / "gru", BENIGN), abs=1e-6)
    thresholds = UserDetector.load(runs / "gru").thresholds_
    assert b["threshold"] == pytest.approx(thresholds["all"]) and b["threshold_for"] == "all"


def test_first_k_and_time_order(event_client, runs):
    one = event_client.post("/classify", json={**BENIGN, "first_k": 1}).json()
    assert one["used"] == 1 and one["threshold_for"] == "1"
    assert one["score"] == pytest.approx(api_score(runs / "gru", BENIGN, first_k=1), abs=1e-6)
    # events posted out of time order are sorted by their timestamps (ISO strings work too)
    order = [2, 0, 3, 1]
    iso = [pl.from_epoch(pl.Series([t]), time_unit="s").dt.to_string("%Y-%m-%dT%H:%M:%SZ")[0]
           for t in BENIGN["timestamps"]]
    shuffled = {"user_id": "x2", "items": [BENIGN["items"][i] for i in order],
                "timestamps": [iso[i] for i in order]}
    r = event_client.post("/classify", json=shuffled).json()
    assert r["reordered"] == 2
    in_order = event_client.post("/classify", json=BENIGN).json()["score"]
    assert r["score"] == pytest.approx(in_order, abs=1e-6)


def test_text_detector(text_client):
    rng = np.random.default_rng(5)
    bad_words = "lol buy cheap stuff here you idiot page sucks".split()
    good_words = "the article history section was updated with sources from the library".split()
    bad_posts = [" ".join(rng.choice(bad_words, 8)) for _ in range(4)]
    good_posts = [" ".join(rng.choice(good_words, 8)) for _ in range(4)]
    bad = text_client.post("/classify", json={"posts": bad_posts})
    good = text_client.post("/classify", json={"posts": good_posts, "first_k": 2})
    assert bad.status_code == good.status_code == 200, bad.text
    assert bad.json()["score"] > good.json()["score"] and bad.json()["model"] == "hlstm"
    assert good.json()["used"] == 2 and good.json()["user_id"] is None


@pytest.mark.parametrize("body,needle", [
    ({"items": ["a"], "timestamps": [1], "posts": ["hi"]}, "exactly one of `items`"),
    ({}, "exactly one of `items`"),
    ({"items": ["a", "b"], "timestamps": [1]}, "`timestamps` has 1 entries but `items` has 2"),
    ({"items": ["a"]}, "give `timestamps`"),
    ({"posts": ["spam"]}, "reads edit events: send `items`"),
    ({"items": [], "timestamps": []}, "items: List should have at least 1 item"),
    ({"items": ["a"], "timestamps": ["yesterday"]}, "timestamps.0"),
    ({"items": ["a"], "timestamps": [1], "first_k": 0},
     "first_k: Input should be greater than or equal to 1"),
    ({"items": ["a"], "timestamps": [1], "colour": "red"},
     "colour: Extra inputs are not permitted"),
])
def test_bad_event_requests(event_client, body, needle):
    r = event_client.post("/classify", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["message"]


def test_bad_text_requests_and_no_detector(text_client, service):
    r = text_client.post("/classify", json={"posts": ["fine", "  "]})
    assert r.status_code == 422 and "posts [1] are empty" in r.json()["message"]
    r = text_client.post("/classify", json={"items": ["a"], "timestamps": [1]})
    assert r.status_code == 422 and "reads post texts: send `posts`" in r.json()["message"]
    r = text_client.post("/classify", content=b'{"posts": ["\xff\xfe"]}',
                         headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500  # not UTF-8
    with TestClient(create_app(service)) as c:
        r = c.post("/classify", json=VANDAL)
        assert r.status_code == 404 and "--detector" in r.json()["message"]


def test_classify_fuzz_no_server_errors(service, runs):
    """schemathesis: generated valid and invalid /classify bodies never get a 5xx and match the
    schema."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    app = create_app(service, 64_000, DetectorService.from_run(runs / "gru"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    op = schema["/classify"]["POST"]
    n = int(os.environ.get("USERSEQ_FUZZ_EXAMPLES", "20"))
    for mode in schemathesis.GenerationMode:
        @given(case=op.as_strategy(mode))
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=checks)

        check()


def test_serve_cli_rejects_a_bad_detector_run(tmp_path, cli):
    r = cli("serve", fresh_run(tmp_path), "--detector", tmp_path / "nowhere")
    assert r.code == 2 and "not a detector run directory" in r.error
