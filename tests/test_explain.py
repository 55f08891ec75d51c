"""SESA concept head (userseq.nextitem.concepts): hand-computed metrics, file formats, save/load,
explanations that follow the history, `userseq explain` and GET /explain."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from serve_support import FIRST_ITEM, N_ITEMS, fresh_run, item_meta, trained_run

from userseq.core.errors import ArtifactError, DataError
from userseq.nextitem.concepts import (
    ConceptHead,
    concept_metrics,
    explain_history,
    fit_run_concepts,
    read_concepts,
)
from userseq.nextitem.estimator import NextItemRecommender


def halves() -> dict:
    """Concept 'early' on items 100..119, 'late' on 120..139, plus 'even' on even items: the
    cyclic walk makes the first two predictable from an item's position."""
    out = {}
    for i in range(N_ITEMS):
        item = FIRST_ITEM + i
        out[item] = ["early" if i < N_ITEMS // 2 else "late"] + (["even"] if i % 2 == 0 else [])
    return out


def test_concept_metrics_by_hand():
    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.3]])
    y = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    m = concept_metrics(probs, y, y)
    # top-1 picks concepts 0, 1, 0 -> right for row 0 only; baseline (concept 0) rows 0 and 1
    assert m["top1_accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["top1_baseline"] == pytest.approx(2 / 3, abs=1e-4)
    # at 0.5: predicted (0,0), (1,1), (2,0); only (0,0) is right: P = R = F1 = 1/3
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(1 / 3, abs=1e-4)
    # baseline predicts concept 0 (on 2/3 of the training items) for every item
    assert m["baseline_f1"] == pytest.approx(2 / 3, abs=1e-4)


def test_read_concepts_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"4": [1, 2], "83": ["x"]}))
    assert read_concepts(tmp_path / "a.json") == {"4": ["attr:1", "attr:2"], "83": ["x"]}
    pl.DataFrame({"item_id": [1, 2], "genres": ["A|B", "C"]}).write_csv(tmp_path / "g.csv")
    assert read_concepts(tmp_path / "g.csv") == {1: ["A", "B"], 2: ["C"]}
    with pytest.raises(DataError, match="no concept column"):
        read_concepts(pl.DataFrame({"item_id": [1], "colour": ["red"]}))
    with pytest.raises(DataError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        read_concepts(tmp_path / "bad.json")
    with pytest.raises(DataError, match="concept file not found"):
        read_concepts(tmp_path / "nowhere.csv")


@pytest.fixture(scope="module")
def head_and_rec():
    rec = NextItemRecommender.load(trained_run())
    return fit_run_concepts(rec, halves(), holdout=0.25, min_items=5, seed=0), rec


def test_fit_reports_heldout_accuracy_and_round_trips(head_and_rec, tmp_path):
    head, rec = head_and_rec
    m = head.metrics
    assert head.names == ["early", "even", "late"]
    assert m["items_heldout"] == 10 and m["items_train"] == 30 and m["concepts"] == 3
    assert 0 <= m["top1_accuracy"] <= 1 and 0 <= m["f1"] <= 1
    run = fresh_run(tmp_path)
    head.save(run)
    back = ConceptHead.load(run)
    x = rec.item_embeddings()[:5]
    np.testing.assert_allclose(back.probabilities(x), head.probabilities(x), atol=1e-6)
    assert back.item_labels[0] == [0, 1]  # item 100: early + even
    with pytest.raises(ArtifactError, match="userseq explain .* --fit"):
        ConceptHead.load(tmp_path)


def test_explanations_follow_the_history(head_and_rec):
    head, rec = head_and_rec
    early = np.arange(1, 8)  # item indices of items 100..106 (the walk's next item: 107, early)
    late = np.arange(21, 28)  # items 120..126 (next: 127, late)
    a = explain_history(rec, head, early, n=3, items=2)
    b = explain_history(rec, head, late, n=3, items=2)
    pa = {d["concept"]: d["score"] for d in a["user_concepts"]}
    pb = {d["concept"]: d["score"] for d in b["user_concepts"]}
    assert pa != pb  # the user's concepts change with the history
    assert pa["early"] - pa["late"] > pb["early"] - pb["late"]  # and in the right direction
    assert [d["row"] for d in a["items"]] != [d["row"] for d in b["items"]]
    for e in (a, b):
        for d in e["items"]:
            w = [s["weight"] for s in d["shared"]]
            assert w == sorted(w, reverse=True) and 0 < sum(w) <= 1 + 1e-5
            assert d["labels"] is not None
    # one explicit item: its labels and the score user . item
    one = explain_history(rec, head, early, item_rows=[7])
    assert one["items"][0]["row"] == 7 and one["items"][0]["labels"] == ["early"]
    with pytest.raises(DataError, match="history is empty"):
        explain_history(rec, head, [])


def test_explain_cli_fits_then_explains(tmp_path, cli):
    run = fresh_run(tmp_path)
    labels = pl.DataFrame({"item_id": list(halves()),
                           "concepts": ["|".join(v) for v in halves().values()]})
    labels.write_csv(tmp_path / "concepts.csv")
    r = cli("explain", run, "--fit", "--concepts", tmp_path / "concepts.csv", "--min-items", "5")
    assert r.code == 0, r.output
    assert "concept map: 3 concepts from concepts.csv" in r.stderr and "top-1 accuracy" in r.stderr
    assert ConceptHead.exists(run)
    r = cli("explain", run, "--user", "u3", "--item", str(FIRST_ITEM + 5), "--top", "2")
    assert r.code == 0, r.output
    body = json.loads(r.stdout)
    assert body["user"] == "u3" and body["items"][0]["item_id"] == FIRST_ITEM + 5
    assert len(body["user_concepts"]) == 2 and len(body["items"][0]["shared"]) == 2
    r = cli("explain", run, "--history", f"{FIRST_ITEM},{FIRST_ITEM + 1}")
    assert r.code == 0 and len(json.loads(r.stdout)["items"]) == 3
    bad = cli("explain", run, "--history", "999")
    assert bad.code == 2 and "unknown item id(s) ['999']" in bad.error
    bad = cli("explain", run)
    assert bad.code == 2 and "give --user and/or --history" in bad.error
    nometa = cli("explain", fresh_run(tmp_path / "n"), "--user", "u3")
    assert nometa.code == 2 and "--concepts FILE" in nometa.error


def test_get_explain(tmp_path, head_and_rec):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    from fastapi.testclient import TestClient

    from userseq.serve.app import create_app
    from userseq.serve.service import Service

    head, _ = head_and_rec
    run = fresh_run(tmp_path)
    head.save(run)
    svc = Service.from_run(run)
    try:
        with TestClient(create_app(svc)) as c:
            r = c.get("/explain", params={"user_id": "u3", "item_id": FIRST_ITEM + 5, "n": 2})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["explained"] == "item" and len(body["user_concepts"]) == 2
            assert body["items"][0]["item_id"] == FIRST_ITEM + 5
            assert body["concept_map"]["concepts"] == 3
            a = c.get("/explain", params={"history": [str(FIRST_ITEM + i) for i in range(7)]})
            b = c.get("/explain", params={"history": [str(FIRST_ITEM + 20 + i)
                                                      for i in range(7)]})
            assert a.status_code == b.status_code == 200
            assert a.json()["user_concepts"] != b.json()["user_concepts"]
            assert len(a.json()["items"]) == 3
            assert c.get("/explain").status_code == 422
            r = c.get("/explain", params={"user_id": "u3", "item_id": "999"})
            assert r.status_code == 404 and "`item_id`" in r.json()["message"]
            assert c.get("/info").json()["concepts"]["concepts"] == 3
    finally:
        svc.close()
    # no saved map: fitted in memory from the served genres; none at all: 404 with the fix
    svc = Service.from_run(fresh_run(tmp_path / "m"), item_meta())
    try:
        with TestClient(create_app(svc)) as c:
            r = c.get("/explain", params={"user_id": "u3"})
            assert r.status_code == 200, r.text
            assert c.get("/info").json()["concepts"]["fitted_in_memory"] is True
    finally:
        svc.close()
    svc = Service.from_run(fresh_run(tmp_path / "z"))
    try:
        with TestClient(create_app(svc)) as c:
            r = c.get("/explain", params={"user_id": "u3"})
            assert r.status_code == 404 and "userseq explain RUN --fit" in r.json()["message"]
    finally:
        svc.close()
