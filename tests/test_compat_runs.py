"""Run directories written by userseq 0.1 (before the Estimator base: no estimator.json, a flat
model config, detect.yaml) still load and give the same predictions. The runs in
tests/fixtures/runs-0.1 were written by that version (its make_runs.py says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from detect_support import synthetic_detect

import userseq

RUNS = Path(__file__).resolve().parent / "fixtures" / "runs-0.1"
EXPECTED = json.loads((RUNS / "expected.json").read_text())


@pytest.mark.parametrize("name", ["nextitem-sasrec", "nextitem-gru4rec"])
def test_old_nextitem_runs_recommend_the_same(name):
    assert not (RUNS / name / "estimator.json").exists()
    rec = userseq.load(RUNS / name)
    assert isinstance(rec, userseq.NextItemRecommender)
    assert rec.config.model.name == name.split("-")[1]  # the flat section read as its own config
    got, want = rec.recommend(["u0", "u5"], k=4).to_dicts(), EXPECTED[name]
    key = [(r["user_id"], r["rank"], r["item_id"]) for r in want]
    assert [(r["user_id"], r["rank"], r["item_id"]) for r in got] == key
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


def test_old_detector_run_scores_the_same():
    from userseq.detect.data import load_event_data

    assert (RUNS / "detect-gru" / "detect.yaml").is_file()
    det = userseq.load(RUNS / "detect-gru")
    assert isinstance(det, userseq.UserDetector)
    assert det.config.split_seed == 0  # written as `seed: 0`
    events, labels = synthetic_detect(n_users=40)
    got = det.predict_proba(load_event_data(events, labels)).round(6).tolist()
    assert got == pytest.approx(EXPECTED["detect-gru"], abs=1e-5)


def test_old_ctr_run_predicts_the_same():
    from userseq.ctr.data import build_ctr_data
    from userseq.ctr.synthetic import synthetic_ctr_events

    est = userseq.load(RUNS / "ctr-din")
    assert isinstance(est, userseq.CTREstimator)
    df = synthetic_ctr_events(n_users=30, n_items=40, n_cats=5, history_len=30, n_targets=4,
                              evidence=3, recent_clean=10, seed=1)
    data = build_ctr_data(userseq.EventLog.from_frame(df), est.config.data)
    got = est.predict_proba(data, "test").round(6).tolist()
    assert got == pytest.approx(EXPECTED["ctr-din"], abs=1e-5)


def test_old_runs_through_the_cli(cli):
    res = cli("recommend", RUNS / "nextitem-sasrec", "--user", "u0", "-k", "4", "--json")
    assert res.code == 0, res.output
    want = [r["item_id"] for r in EXPECTED["nextitem-sasrec"] if r["user_id"] == "u0"]
    assert [r["item_id"] for r in json.loads(res.stdout)] == want
    res = cli("config", "show", RUNS / "detect-gru")
    assert res.code == 0 and "split_seed: 0" in res.stdout
