"""Event-sequence attacks (attack/events.py): white-box gradient search, transfer from a surrogate,
the clear errors, and adversarial training copies for event detectors."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from detect_support import TINY, synthetic_detect

from userseq.core.errors import ConfigError, DataError
from userseq.data.eventlog import EventLog
from userseq.detect.data import event_data, stratified_split


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from userseq.detect.estimator import UserDetector, train_and_evaluate

    d = tmp_path_factory.mktemp("evatt")
    ev, lab = synthetic_detect(160, seed=3)
    ev.write_csv(d / "events.csv")
    lab.write_csv(d / "labels.csv")
    data = event_data(EventLog.from_frame(ev), lab)
    over = {**TINY, "train.epochs": 4, "model.max_len": 20}
    for name, model, seed in (("gru", "gru", 0), ("tf", "transformer", 1)):
        det = UserDetector(model, overrides={**over, "train.seed": seed})
        train_and_evaluate(data, det, d / name, quiet=True)
    return d, data


def test_event_gradient_flips_flagged_vandals_and_reports_denominators(world):
    from userseq.attack.events import run_event_attack

    d, _ = world
    m = run_event_attack(d / "gru", str(d / "events.csv"), "event-gradient", d / "att",
                         labels=d / "labels.csv", overrides={"steps": 4}, train_events=True)
    assert m["flagged_vandals"] > 5 and 0 <= m["flipped"] <= m["flagged_vandals"]
    assert m["flip_rate"] == pytest.approx(m["flipped"] / m["flagged_vandals"])
    lo, hi = m["flip_rate_ci"]
    assert lo <= m["flip_rate"] <= hi
    assert m["flipped"] > 0  # appending benign-looking events changes the detector's mind
    assert m["attacked"]["roc_auc"] < m["clean"]["roc_auc"]
    ev = pl.read_parquet(d / "att" / "attack_events.parquet")
    assert ev.height > 0 and ev.group_by("user_id").len()["len"].max() <= 4
    # appended events come after the user's own last event, at one of the benign gaps
    assert set(m["gaps"]) and all(g >= 1 for g in m["gaps"])
    assert json.loads((d / "att" / "metrics.json").read_text())["flipped"] == m["flipped"]
    assert (d / "att" / "train_events.parquet").is_file()


def test_event_transfer_needs_a_surrogate_and_runs_with_one(world):
    from userseq.attack.events import run_event_attack

    d, _ = world
    with pytest.raises(ConfigError, match="--black-box-surrogate"):
        run_event_attack(d / "gru", str(d / "events.csv"), "event-transfer", d / "x",
                         labels=d / "labels.csv")
    with pytest.raises(ConfigError, match="white box"):
        run_event_attack(d / "gru", str(d / "events.csv"), "event-gradient", d / "x",
                         surrogate=d / "tf", labels=d / "labels.csv")
    m = run_event_attack(d / "gru", str(d / "events.csv"), "event-transfer", d / "att2",
                         surrogate=d / "tf", labels=d / "labels.csv", overrides={"steps": 2})
    assert m["setting"].startswith("transfer") and m["flagged_vandals"] > 5


def test_white_box_on_an_unsupervised_detector_is_a_clear_error(world, tmp_path):
    from userseq.attack.events import event_inputs
    from userseq.detect.estimator import UserDetector

    d, data = world
    det = UserDetector("behavior-ae", overrides={**TINY, "train.epochs": 1})
    det.fit(data, quiet=True)
    with pytest.raises(ConfigError, match="unsupervised.*event-transfer"):
        event_inputs(det, "RUN")


def test_with_appended_recomputes_features_and_keeps_other_users(world):
    from userseq.attack.events import with_appended

    _, data = world
    uid = str(data.user_ids[0])
    last = int(data.log.frame.filter(pl.col("user") == 0)["timestamp"].max())
    page = str(data.log.item_ids[0])
    new = with_appended(data, pl.DataFrame({"user_id": [uid], "item_id": [page],
                                            "timestamp": [last + 60]}))
    assert new.log.n_events == data.log.n_events + 1
    lengths = np.diff(new.log.sequences()[0])
    assert lengths[0] == np.diff(data.log.sequences()[0])[0] + 1
    row = int(new.log.sequences()[0][1]) - 1  # the user's new last event
    gap = new.features[row, new.feature_names.index("gap_lt_3min")]
    assert gap == 1.0
    np.testing.assert_array_equal(new.labels, data.labels)


def test_adversarial_event_copies_join_training_only(world):
    from userseq.detect.augment import adversarial_events, read_train_events

    d, data = world
    events = read_train_events(d / "att")
    split = stratified_split(data.labels, 0.1, 0.2, seed=0)
    new, nsplit = adversarial_events(data, split, events)
    n_copies = events["user_id"].n_unique()
    assert new.n_users == data.n_users + n_copies
    ids = new.user_ids.cast(pl.String).to_list()
    copies = [i for i, u in enumerate(ids) if u.endswith("#adv")]
    assert len(copies) == n_copies and set(copies) <= set(nsplit.train.tolist())
    assert (new.labels[copies] == 1).all() and len(nsplit.test) == len(split.test)
    bad = events.with_columns(pl.lit("nobody").alias("user_id"))
    with pytest.raises(DataError, match="not in"):
        adversarial_events(data, split, bad)
