"""`userseq export RUN --format onnx`: next-item user encoders and CTR models exported to ONNX,
onnxruntime outputs equal to PyTorch's (<= 1e-4) on real histories, the onnx engines, and the
errors (a model the exporter cannot trace, a run of another task, an unknown format)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_events

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'userseq[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from userseq.core.errors import ArtifactError  # noqa: E402
from userseq.ctr.config import CTRConfig  # noqa: E402
from userseq.ctr.data import build_ctr_data  # noqa: E402
from userseq.ctr.estimator import CTREstimator  # noqa: E402
from userseq.ctr.models import build_ctr_model  # noqa: E402
from userseq.ctr.synthetic import synthetic_ctr_events  # noqa: E402
from userseq.data.eventlog import EventLog  # noqa: E402
from userseq.export.onnx import OnnxCTRScorer, OnnxUserEncoder, export_onnx  # noqa: E402
from userseq.nextitem.estimator import NextItemRecommender  # noqa: E402

SMALL_CTR = {"model.item_dim": 8, "model.cat_dim": 4, "model.user_dim": 4, "model.mlp": [16, 8],
             "model.att_hidden": [8, 4], "model.num_hashes": 4, "model.hash_bits": 2,
             "model.top_k": 5, "model.max_len": 60, "model.long_len": 60,
             "train.device": "cpu"}


@pytest.fixture(scope="module")
def ctr_data():
    df = synthetic_ctr_events(n_users=40, n_items=120, n_cats=8, history_len=60, n_targets=10,
                              evidence=4, recent_clean=20, seed=2)
    cfg = CTRConfig().updated({"data.category_col": "category", "data.target_col": "is_target",
                               **SMALL_CTR})
    return cfg, build_ctr_data(EventLog.from_frame(df), cfg.data)


def ctr_estimator(ctr_data, name):
    cfg, data = ctr_data
    est = CTREstimator(config=cfg, overrides={"model.name": name})
    v = data.vocab
    torch.manual_seed(0)
    est.model_ = build_ctr_model(est.config.model, v.n_items, v.n_cats, v.n_feats,
                                 v.n_users).eval()
    for p in est.model_.parameters():  # untrained weights are near zero: make outputs spread
        p.data.normal_(0, 0.3)
    est.vocab_, est.behaviours_ = v, data.behaviours
    return est


@pytest.mark.parametrize("name", ["din", "sim", "twin", "dare", "awmoe", "mean", "nohist"])
def test_ctr_export_matches_pytorch(ctr_data, name, tmp_path):
    est = ctr_estimator(ctr_data, name)
    info = export_onnx(est, tmp_path / "m.onnx")
    assert info["max_abs_diff"] <= 1e-4 and info["check_rows"] == 40
    assert info["outputs"] == ["probability"]
    assert info["history_width"] == (0 if name == "nohist" else 60)  # nohist reads no history
    assert isinstance(info["dynamic_width"], bool)
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    assert side["model"] == name and side["task"] == "ctr"
    # the engine answers score_request like the PyTorch path, for a user and a raw history
    eng = OnnxCTRScorer(est, tmp_path / "m.onnx")
    items = est.vocab_.item_ids.to_list()
    user = est.vocab_.user_ids.to_list()[3]
    for req in ({"user": user}, {"history": items[:7]}):
        cands = items[10:40]
        np.testing.assert_allclose(eng.score_request(req, cands),
                                   est.score_request(req, cands), atol=1e-4)
    assert eng.vocab_ is est.vocab_  # everything else is the estimator's


def test_model_that_cannot_be_exported_is_one_clear_error(ctr_data, tmp_path):
    est = ctr_estimator(ctr_data, "sdim")  # SimHash buckets: torch.unique(return_inverse)
    try:
        info = export_onnx(est, tmp_path / "s.onnx")
    except ArtifactError as e:
        assert "the ctr model 'sdim' cannot be exported to ONNX" in str(e)
        assert "PyTorch engine" in str(e) and not (tmp_path / "s.onnx").exists()
    else:  # an exporter that handles it must still match PyTorch
        assert info["max_abs_diff"] <= 1e-4


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    rec = NextItemRecommender("sasrec", overrides={
        "model.dim": 16, "model.max_len": 10, "train.epochs": 1, "train.device": "cpu"})
    rec.fit(EventLog.from_frame(synthetic_events(n_users=40, n_items=30, length=12)),
            run_dir=tmp / "run", quiet=True)
    return rec, tmp / "run"


def test_user_encoder_export_matches_encode_at_any_batch_and_width(sasrec, tmp_path, cli):
    rec, run = sasrec
    r = cli("export", run, "--format", "onnx", "--out", tmp_path / "u.onnx")
    assert r.code == 0, r.output
    assert "max abs difference" in " ".join(r.stdout.split())
    info = json.loads((tmp_path / "u.onnx.json").read_text())
    assert info["inputs"] == ["history"] and info["dim"] == 16 and info["max_abs_diff"] <= 1e-4
    eng = OnnxUserEncoder(rec, tmp_path / "u.onnx")
    offsets, items = rec.histories_
    np.testing.assert_allclose(eng.encode(offsets, items).numpy(),
                               rec.encode(offsets, items).numpy(), atol=1e-4)
    short = rec.history_indices([["i1", "i2", "i3"], ["i4"]])  # width 3, batch 2
    np.testing.assert_allclose(eng.encode(*short).numpy(), rec.encode(*short).numpy(), atol=1e-4)


def test_export_errors(sasrec, tmp_path, cli):
    _, run = sasrec
    r = cli("export", run, "--format", "tflite", "--out", tmp_path / "x")
    assert r.code == 2 and "supported formats are onnx" in r.output
    r = cli("export", run, "--out", tmp_path / "missing" / "x.onnx")
    assert r.code == 2 and "does not exist" in r.output


def test_service_onnx_engine_scores_like_torch(ctr_data, tmp_path):
    """apply_engine swaps the CTR route's estimator for the onnxruntime one (RUN/model.onnx
    exported on first use); the answers equal the PyTorch engine's."""
    from userseq.serve.engines import apply_engine
    from userseq.serve.routes.ctr import CTRService

    est = ctr_estimator(ctr_data, "dare")
    est.save(tmp_path / "run")
    torch_scorer = CTRService.from_run(tmp_path / "run")
    onnx_scorer = CTRService.from_run(tmp_path / "run")
    apply_engine("onnx", scorer=onnx_scorer)
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert isinstance(onnx_scorer.estimator, OnnxCTRScorer)
    items = est.vocab_.item_ids.to_list()[:25]
    req = {"user": None, "history": est.vocab_.item_ids.to_list()[30:45], "history_values": None,
           "history_timestamps": None, "timestamp": None, "context": None}
    a = onnx_scorer.estimator.score_request(req, items)
    b = torch_scorer.estimator.score_request(req, items)
    np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(Exception, match="choose one of torch, onnx"):
        apply_engine("tensorrt", scorer=onnx_scorer)
