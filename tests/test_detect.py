"""Malicious-user detection: metrics, labels, features, splits, models, estimator, CLI,
clustering."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from detect_support import TINY, synthetic_detect, synthetic_text

from userseq.core.errors import ConfigError, DataError, UserseqError
from userseq.data.eventlog import EventLog
from userseq.detect.config import DetectConfig, DetectModelConfig
from userseq.detect.data import (
    FEATURE_NAMES,
    attach_labels,
    edit_features,
    event_data,
    read_labels,
    stratified_folds,
    stratified_split,
    validate_labels,
)
from userseq.detect.models import detect_model, encoder_names, model_names
from userseq.metrics.classification import (
    best_threshold,
    binary_metrics,
    pr_auc,
    roc_auc,
    tpr_at_fpr,
)


def small_events():
    ev, lab = synthetic_detect(20)
    return event_data(EventLog.from_frame(ev), lab)


@pytest.fixture(scope="module")
def events_data():
    ev, lab = synthetic_detect()
    return event_data(EventLog.from_frame(ev), lab)


# ---------------------------------------------------------------------- metrics (hand-computed)
def test_roc_auc_hand_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # tie counts 1/2
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_pr_auc_and_tpr_at_fpr_hand_cases():
    # order by score: 1 (p=1/1), 0, 1 (p=2/3) -> AP = 0.5*1 + 0.5*2/3
    assert pr_auc([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    y, s = [1, 0, 1, 0, 1], [0.9, 0.8, 0.7, 0.2, 0.1]
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(y, s, 0.5) == pytest.approx(2 / 3)
    assert tpr_at_fpr(y, s, 1.0) == pytest.approx(1.0)


def test_binary_metrics_and_threshold():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    m = binary_metrics(y, s, 0.5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["n"] == 5
    t = best_threshold(y, s)
    assert ((s >= t) == y).mean() == pytest.approx(0.8)
    with pytest.raises(UserseqError, match="0 or 1"):
        binary_metrics([0, 2], [0.1, 0.2])


# ------------------------------------------------------------ labels: one clear error each
def test_label_table_errors(tmp_path):
    p = tmp_path / "l.csv"
    pl.DataFrame({"user_id": ["a"], "is_bad": [1]}).write_csv(p)
    with pytest.raises(DataError, match="missing label column 'label'"):
        read_labels(p)
    pl.DataFrame({"user_id": ["a", "b"], "label": [0, 2]}).write_csv(p)
    with pytest.raises(DataError, match="must be 0/1.*row 2"):
        read_labels(p)
    pl.DataFrame({"user_id": ["a", "b"], "label": ["benign", "1"]}).write_csv(p)
    with pytest.raises(DataError, match="must be 0/1"):
        read_labels(p)
    with pytest.raises(DataError, match="conflicting labels"):
        validate_labels(pl.DataFrame({"user_id": ["a", "a"], "label": [0, 1]}))
    ok = validate_labels(pl.DataFrame({"user_id": ["a", "b"], "label": ["true", "0"]}))
    assert ok["label"].to_list() == [1, 0]


def test_users_without_labels_and_single_class():
    users = pl.Series("user_id", ["a", "b", "c"])
    with pytest.raises(DataError, match="1 of 3 users with events have no label.*'c'"):
        attach_labels(users, pl.DataFrame({"user_id": ["a", "b"], "label": [0, 1]}))
    with pytest.raises(DataError, match="both classes"):
        attach_labels(users, pl.DataFrame({"user_id": ["a", "b", "c"], "label": [1, 1, 1]}))
    table = pl.DataFrame({"user_id": ["c", "a", "b", "zz"], "label": [1, 0, 1, 0]})
    y = attach_labels(users, table)
    assert y.tolist() == [0, 1, 1]


def test_text_models_start_from_their_defaults():
    from userseq.detect.estimator import UserDetector
    from userseq.detect.models import DETECT_MODELS

    for entry in DETECT_MODELS:  # every model starts from its registered defaults
        flat = UserDetector(entry.name).config.flat()
        assert {k: flat[k] for k in entry.obj.defaults} == dict(entry.obj.defaults)
    c = UserDetector("hlstm").config
    assert (c.train.batch_size, c.train.epochs, c.train.patience, c.model.dim) == (32, 40, 10, 32)
    assert UserDetector("gru").config.train.batch_size == 128  # event models: the plain defaults
    # the caller's settings win over the model's defaults (None = not given, as from the CLI)
    over = {"model.name": "hlstm", "train.epochs": None, "train.lr": 0.01}
    c = UserDetector(config={"model": {"dim": 16}}, overrides=over).config
    assert (c.model.dim, c.train.epochs, c.train.lr) == (16, 40, 0.01)
    cnn_lr = DETECT_MODELS.get("cnn").obj.defaults["train.lr"]
    assert UserDetector("cnn").config.train.lr == cnn_lr == 3e-3
    # a config object is used as given (scikit-learn's clone): no defaults are layered on it
    plain = DetectConfig.parse({"model": {"name": "cnn"}})
    assert UserDetector(config=plain).config is plain and plain.train.lr == 1e-3


def test_unknown_model_is_a_config_error():
    from userseq.detect.estimator import UserDetector

    with pytest.raises(ConfigError, match="unknown detector model 'lstm2'.*gru, transformer"):
        UserDetector("lstm2")


# ---------------------------------------------------------------------- features and splits
def test_edit_features_by_hand():
    ev = pl.DataFrame({"user_id": ["bob", "bob", "bob", "ann"],
                       "item_id": ["User:bob", "Paris", "Paris", "Paris"],
                       "timestamp": ["2013-01-01T00:00:00Z", "2013-01-01T00:01:00Z",
                                     "2013-01-01T01:01:00Z", "2012-12-31T00:00:00Z"]})
    log = EventLog.from_frame(ev)
    X, names = edit_features(log)
    assert tuple(names) == FEATURE_NAMES
    f = {n: X[:, i] for i, n in enumerate(names)}
    # rows: ann/Paris, bob/User:bob, bob/Paris (+60 s), bob/Paris (+3600 s)
    assert f["first_event"].tolist() == [1, 1, 0, 0]
    assert f["gap_lt_3min"].tolist() == [0, 0, 1, 0]
    assert f["gap_gt_15min"].tolist() == [0, 0, 0, 1]
    assert f["same_page_as_previous"].tolist() == [0, 0, 0, 1]
    assert f["page_edited_before"].tolist() == [0, 0, 0, 1]
    assert f["own_user_page"].tolist() == [0, 1, 0, 0]
    assert f["ns_user"].tolist() == [0, 1, 0, 0] and f["ns_main"].tolist() == [1, 0, 1, 1]
    assert f["page_new_in_log"].tolist() == [1, 1, 0, 0]  # ann edited Paris first (earlier in time)
    assert f["gap_log"][2] == pytest.approx(np.log1p(60) / 10, rel=1e-5)


def test_splits_are_disjoint_stratified_and_seeded():
    y = np.array([0] * 50 + [1] * 30)
    s = stratified_split(y, 0.1, 0.2, seed=3)
    parts = [s.train, s.valid, s.test]
    assert sum(len(p) for p in parts) == 80 and len(np.unique(np.concatenate(parts))) == 80
    assert y[s.test].sum() == 6 and len(s.test) == 16
    assert np.array_equal(stratified_split(y, 0.1, 0.2, seed=3).test, s.test)
    folds = stratified_folds(y, 5, seed=0)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(80))
    for f in folds:
        train, valid, test = set(f.train), set(f.valid), set(f.test)
        assert not train & test and not valid & test and not train & valid


# ---------------------------------------------------------------------- models
TOKEN_MODELS = [n for n in model_names("text") if detect_model(n).inputs == "tokens"]


def test_model_names_come_from_the_registries():
    # every registered encoder is also an event model
    assert encoder_names() and set(encoder_names()) <= set(model_names("event"))
    assert {"gru", "transformer"} <= set(model_names("event"))  # the documented detection names
    assert {"hlstm", "cnn", "minilm"} <= set(model_names("text")) and TOKEN_MODELS


def test_detection_names_build_their_encoders():
    from userseq.detect.estimator import UserDetector

    for alias, encoder in (("gru", "gru4rec"), ("transformer", "sasrec")):
        states = []
        for name in (alias, encoder):
            torch.manual_seed(0)
            states.append(UserDetector(name, overrides=TINY)._build(5, 3, 0).state_dict())
        a, b = states
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(model_names()) == set(model_names("event")) | set(model_names("text"))


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_text_models_accept_soft_one_hot(name):
    torch.manual_seed(0)
    V = 30
    m = DetectModelConfig(name=name, dim=8, dropout=0.0)
    enc = detect_model(name).build(m, n_pages=0, n_features=0, vocab=V).eval()
    tokens = torch.randint(2, V, (2, 3, 5))
    tokens[0, 2] = 0  # padded post
    tokens[1, 1, 3:] = 0  # short post
    pm = torch.tensor([[True, True, False], [True, True, True]])
    hard = enc(tokens, pm)
    soft = torch.nn.functional.one_hot(tokens, V).float().requires_grad_(True)
    out = enc(soft, pm)
    assert torch.allclose(hard, out, atol=1e-5)
    out.sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0  # differentiable through the tokens


@pytest.mark.parametrize("model", model_names("event"))
def test_event_encoder_ignores_left_padding_and_reads_features(events_data, model):
    from userseq.detect.estimator import UserDetector

    torch.manual_seed(0)
    det = UserDetector(model, overrides=TINY)
    det.pages_ = pl.Series("id", ["Article 1"])
    det.feature_names_ = list(events_data.feature_names)
    det.net_ = det._build(2, len(det.feature_names_), 0).eval()
    prep = det._prepare(events_data)
    users = np.flatnonzero(det._lengths(prep) >= 3)[:2]
    inp = det._inputs(prep, users, np.array([3, 3]))
    assert inp["pages"].shape == (2, 3) and inp["features"].shape == (2, 3, len(det.feature_names_))
    # the features reach the encoder through the per-event `features` dict (no per-dataset buffers)
    first = prep["offsets"][users[0]]
    assert torch.equal(inp["features"][0, -1], torch.from_numpy(events_data.features[first + 2]))
    a = det.net_(**inp)
    padded = {"pages": torch.cat([torch.zeros(2, 2, dtype=torch.long), inp["pages"]], 1),
              "features": torch.cat([torch.zeros(2, 2, inp["features"].shape[2]),
                                     inp["features"]], 1)}
    assert torch.allclose(a, det.net_(**padded), atol=1e-5)
    changed = {"pages": inp["pages"], "features": inp["features"] + 1.0}
    assert not torch.allclose(a, det.net_(**changed), atol=1e-4)  # (behavior-ae at init: ~5e-4)


@pytest.mark.parametrize("name", encoder_names())
def test_shared_encoders_cut_features_with_inputs_past_max_len(name):
    from userseq.detect.models import EventInputs
    from userseq.encoders import build_encoder, encoder_config

    torch.manual_seed(0)
    cfg = encoder_config(name, dim=8, layers=1, heads=1, dropout=0.0, max_len=4)
    enc = build_encoder(cfg, 5, items=EventInputs(5, 3, 8)).eval()
    ids, feats = torch.randint(1, 6, (2, 6)), torch.randn(2, 6, 3)
    long = enc.last(ids, ids > 0, {"event": feats})
    short = enc.last(ids[:, -4:], ids[:, -4:] > 0, {"event": feats[:, -4:]})
    assert torch.allclose(long, short, atol=1e-6)


# ---------------------------------------------------------------------- estimator
@pytest.mark.parametrize("model", ["gru", "transformer"])
def test_event_detector_learns_and_reloads(events_data, tmp_path, model):
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    det = UserDetector(model, overrides=TINY)
    metrics = train_and_evaluate(events_data, det, tmp_path / "run", quiet=True)
    assert metrics["test"]["roc_auc"] > 0.9 and metrics["test"]["accuracy"] > 0.75
    assert set(metrics["first_k"]) == {"1", "2", "5", "10", "all"}
    assert metrics["first_k"]["1"]["roc_auc"] > 0.8  # first event: own user page vs hot article
    again = UserDetector.load(tmp_path / "run")
    assert np.array_equal(again.predict_proba(events_data), det.predict_proba(events_data))
    assert again.embed(events_data, first_k=2).shape == (events_data.n_users, 16)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"accuracy", "roc_auc", "f1"} <= set(saved["test"]) and "1" in saved["first_k"]
    assert saved["task"] == "detect" and saved["split"]["split_seed"] == det.config.split_seed == 0


def _as_legacy_run(src, dst):
    """A copy of run `src` in the userseq 0.1 layout: detect.yaml (with the old `seed` key), no
    estimator.json."""
    import shutil

    import yaml

    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["seed"] = cfg.pop("split_seed")
    (dst / "detect.yaml").write_text(yaml.safe_dump(cfg))
    (dst / "config.yaml").unlink()
    (dst / "estimator.json").unlink()
    return dst


def test_detector_estimator_contract(events_data, tmp_path):
    from sklearn.base import clone

    import userseq
    from userseq.core.errors import NotFittedError
    from userseq.detect.estimator import UserDetector

    det = UserDetector("gru", overrides={**TINY, "train.epochs": 2, "split_seed": 3})
    with pytest.raises(NotFittedError):
        det.predict_proba(events_data)
    twin = clone(det)  # the config object travels unchanged; the fitted state does not
    assert twin.config == det.config and twin.net_ is None and not twin.is_fitted
    det.fit(events_data, quiet=True)
    assert clone(det).net_ is None and det.check_is_fitted() is det.net_
    assert det.pages_ is not None and det.feature_names_ == list(events_data.feature_names)
    assert set(det.thresholds_) == {"1", "2", "5", "10", "all"} and det.train_state_["epochs"] == 2
    det.save(tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "estimator.json", "model.safetensors"} <= files
    scores = det.predict_proba(events_data)
    loaded = userseq.Estimator.load(tmp_path / "run")  # the task picks the class
    assert isinstance(loaded, UserDetector)
    assert np.array_equal(loaded.predict_proba(events_data), scores)
    # a run written before the Estimator base (detect.yaml, `seed`, no estimator.json) still loads
    old = UserDetector.load(_as_legacy_run(tmp_path / "run", tmp_path / "old"))
    assert old.config == det.config and old.config.split_seed == 3
    assert np.array_equal(old.predict_proba(events_data), scores)
    assert old.thresholds_ == det.thresholds_ and old.vocab_ is None


def test_heads_must_divide_dim():
    from userseq.detect.estimator import UserDetector

    with pytest.raises(ConfigError, match=r"heads \(2\) must divide dim \(9\)"):
        UserDetector("transformer", overrides={"model.dim": 9})


def test_split_seed_and_its_old_name():
    c = DetectConfig.parse({"seed": 4})  # configs written before the rename
    assert c.split_seed == 4 and c.train.seed == 42
    assert c.updated({"seed": 9}).split_seed == 9 and c.updated({"split_seed": 5}).split_seed == 5
    assert DetectConfig.parse({"seed": 2, "split_seed": 2}).split_seed == 2
    with pytest.raises(ConfigError, match="'seed' is the old name of 'split_seed'"):
        DetectConfig.parse({"seed": 1, "split_seed": 2})  # two different values: which one? say so
    with pytest.raises(ConfigError, match="seed"):
        c.updated({"split_seed": "x"})


def test_text_detector_hlstm_learns():
    from userseq.detect.estimator import UserDetector

    data = synthetic_text()
    split = stratified_split(data.labels, 0.15, 0.25, seed=0)
    det = UserDetector("hlstm", overrides={**TINY, "train.epochs": 8}).fit(data, split, quiet=True)
    m = det.evaluate(data, split.test, first_k=[1])
    assert m["test"]["roc_auc"] > 0.9
    assert det.predict_proba(data).shape == (80,)


def test_model_data_mismatch_is_clear(events_data):
    from userseq.detect.estimator import UserDetector

    with pytest.raises(DataError, match="reads post texts"):
        UserDetector("hlstm").fit(events_data)


def test_baselines_run(events_data):
    pytest.importorskip("sklearn")
    from threadpoolctl import threadpool_limits

    from userseq.detect.baselines import fit_baseline

    s = stratified_split(events_data.labels, 0.1, 0.3, seed=0)
    with threadpool_limits(1):  # tiny GBDTs: OpenMP threads only contend on a shared machine
        for name in ("logreg", "pages", "gbdt-prefix-name"):
            score = fit_baseline(name, events_data, s.train)
            assert roc_auc(events_data.labels[s.test], score(s.test)) > 0.9
            assert score(s.test, 1).shape == (len(s.test),)


def test_page_vandal_rate_uses_training_labels_known_before_the_event():
    from userseq.detect.baselines import page_vandal_rate

    ev = pl.DataFrame({"user_id": ["a", "a", "a", "b", "c"], "item_id": ["P", "P", "Q", "P", "P"],
                       "timestamp": [1, 2, 3, 4, 5]})
    log = EventLog.from_frame(ev)
    data = event_data(log, pl.DataFrame({"user_id": ["a", "b", "c"], "label": [1, 0, 1]}))
    train = np.array([0, 1])  # a, b; c is a test user
    rate, log_users = page_vandal_rate(data, train, smoothing=1.0)
    # a's label is known after t=3 (its last edit), b's after t=4. Prior = (known vandals + 1) /
    # (known + 2). t<=3: nothing known -> 0.5. b@4 on P: a known (1) -> prior 2/3,
    # rate (1 + 2/3) / 2. c@5 on P: a (1), b (0) known -> prior 1/2, rate (1 + 0.5) / 3.
    assert rate.tolist() == pytest.approx([0.5, 0.5, 0.5, 5 / 6, 0.5])
    # training users who edited the page strictly before (a's own earlier edit left out)
    assert log_users.tolist() == pytest.approx(np.log1p([0, 0, 0, 1, 2]).tolist())
    data.labels = np.array([1, 0, 0])  # a test user's label is never read
    assert page_vandal_rate(data, train, smoothing=1.0)[0].tolist() == pytest.approx(rate.tolist())


def test_tfidf_text_baseline():
    pytest.importorskip("sklearn")
    from userseq.detect.baselines import fit_baseline, user_documents

    data = synthetic_text()
    assert user_documents(data, 2)[0] == "\n".join(data.posts[0][:2])
    s = stratified_split(data.labels, 0.1, 0.3, seed=0)
    score = fit_baseline("tfidf", data, s.train)
    assert roc_auc(data.labels[s.test], score(s.test)) > 0.95
    assert score(s.test, 1).shape == (len(s.test),)
    with pytest.raises(ConfigError, match="baseline 'tfidf' reads post texts"):
        fit_baseline("tfidf", small_events(), s.train)
    with pytest.raises(ConfigError, match="baseline 'pages' reads event sequences"):
        fit_baseline("pages", data, s.train)


# ---------------------------------------------------------------------- command line + clustering
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cli):
    d = tmp_path_factory.mktemp("detect")
    ev, lab = synthetic_detect(160, seed=1)
    ev.write_csv(d / "events.csv")
    lab.write_csv(d / "labels.csv")
    r = cli("detect", "train", "--data", d / "events.csv", "--labels", d / "labels.csv",
            "--model", "gru", "--out", d / "run", "--epochs", "6", "--dim", "16",
            "--batch-size", "16", "--lr", "0.003", "--threads", "1", "--quiet")
    assert r.code == 0, r.output
    return d


def test_cli_train_writes_metrics(trained_run):
    m = json.loads((trained_run / "run" / "metrics.json").read_text())
    assert m["test"]["roc_auc"] > 0.9 and m["first_k"]["1"]["n"] == m["test"]["n"]
    cfg = DetectConfig.from_yaml(trained_run / "run" / "config.yaml")
    assert (cfg.split_seed, cfg.train.seed) == (0, 42)  # no --seed: the defaults


def test_cli_train_seeds_and_set(trained_run, cli):
    from userseq.detect.estimator import UserDetector

    common = ("detect", "train", "--data", trained_run / "events.csv",
              "--labels", trained_run / "labels.csv", "--epochs", "1", "--dim", "8",
              "--threads", "1", "--quiet")
    r = cli(*common, "--seed", "5", "--set", "model.dropout=0.2", "--set", "model.dim=32",
            "--out", trained_run / "seeded")
    assert r.code == 0, r.output
    cfg = UserDetector.load(trained_run / "seeded").config
    assert (cfg.train.seed, cfg.split_seed) == (5, 5)  # --seed seeds the whole run
    assert cfg.model.dropout == 0.2 and cfg.model.dim == 8  # --set, then the specific options
    metrics = json.loads((trained_run / "seeded" / "metrics.json").read_text())
    assert metrics["split"]["split_seed"] == 5
    # --split-seed wins over --seed, and over `seed` (the old name of split_seed) given with --set
    r = cli(*common, "--seed", "5", "--split-seed", "2", "--set", "seed=7",
            "--out", trained_run / "split2")
    assert r.code == 0, r.output
    cfg = UserDetector.load(trained_run / "split2").config
    assert (cfg.train.seed, cfg.split_seed) == (5, 2)
    users = pl.read_parquet(trained_run / "split2" / "users.parquet")
    test = np.flatnonzero(users["split"].to_numpy() == "test")
    labels = users["label"].to_numpy()
    assert test.tolist() == stratified_split(labels, 0.1, 0.2, seed=2).test.tolist()
    assert test.tolist() != stratified_split(labels, 0.1, 0.2, seed=5).test.tolist()
    r = cli(*common, "--set", "model.heads=3", "--out", trained_run / "bad")
    assert r.code == 2 and "heads (3) must divide dim" in r.error
    r = cli(*common, "--set", "nope=1", "--out", trained_run / "bad")
    assert r.code == 2 and "unknown config key 'nope'" in r.error


def test_cli_score_first_k(trained_run, cli):
    r = cli("detect", "score", trained_run / "run", "--events", trained_run / "events.csv",
            "--first-k", "1")
    assert r.code == 0, r.output
    table = pl.read_csv(r.stdout.encode())
    assert table.columns == ["user_id", "score", "flagged"] and len(table) == 160
    assert ((table["score"] >= 0) & (table["score"] <= 1)).all()


def test_cli_errors(trained_run, cli):
    r = cli("detect", "train", "--data", trained_run / "events.csv",
            "--labels", trained_run / "labels.csv", "--model", "nope", "--out", trained_run / "x")
    assert r.code == 2 and "unknown detector model 'nope'" in r.error
    bad = trained_run / "bad_labels.csv"
    pl.DataFrame({"user_id": ["u0"], "label": [0]}).write_csv(bad)
    r = cli("detect", "train", "--data", trained_run / "events.csv", "--labels", bad,
            "--out", trained_run / "y")
    assert r.code == 2 and "have no label" in r.error
    r = cli("detect", "score", trained_run / "nothing", "--events", trained_run / "events.csv")
    assert r.code == 2 and "not a detector run directory" in r.error


def test_cli_cluster_report(trained_run, cli):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    r = cli("detect", "cluster", trained_run / "run", "--out", trained_run / "clusters",
            "--min-cluster-size", "8")
    assert r.code == 0, r.output
    out = trained_run / "clusters"
    assert (out / "map.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "malicious rate" in report and (out / "report.html").exists()
    summary = json.loads((out / "clusters.json").read_text())
    assert summary["users"] == 160 and summary["clusters"] >= 2
    assert summary["weighted_purity"] > 0.8  # the two behaviours separate


def test_cross_validation_folds(events_data):
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    det = UserDetector("gru", overrides={**TINY, "train.epochs": 2})
    m = train_and_evaluate(events_data, det, None, folds=2, quiet=True)
    assert m["folds"] == 2 and len(m["per_fold"]) == 2
    assert m["test"]["n"] == pytest.approx(events_data.n_users / 2)
    assert m["test"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in m["per_fold"]]))
    assert "accuracy_std" in m["test"]
