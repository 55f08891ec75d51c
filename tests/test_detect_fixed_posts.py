"""Scoring reads the posts per user a text detector was trained with (`--fixed-posts` of the run),
from the CLI (`detect score`) and the Python API (`UserDetector.predict_proba`)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_attack import _write_events, synthetic_posts

from userseq.core.errors import DataError
from userseq.data.eventlog import Columns
from userseq.detect.data import fix_post_count, load_text_data
from userseq.detect.estimator import UserDetector


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory, cli):
    d = tmp_path_factory.mktemp("fixed")
    data = synthetic_posts(80, seed=3)  # 3 to 6 posts per user
    events, labels = _write_events(data, d)
    r = cli("detect", "train", "--data", events, "--labels", labels, "--model", "bow-attn",
            "--fixed-posts", "4", "--epochs", "3", "--dim", "16", "--quiet", "--out", d / "run")
    assert r.code == 0, r.output
    return d, data, events


def test_cli_score_reads_the_runs_fixed_posts(fixed_run, cli):
    d, data, events = fixed_run
    r = cli("detect", "score", d / "run", "--events", events)
    assert r.code == 0, r.output
    table = pl.read_csv(r.stdout.encode())
    lengths = np.array([len(p) for p in data.posts])
    # as in training: the last 4 posts, users with fewer not scored (the old command scored all 80
    # users from all their posts)
    assert len(table) == int((lengths >= 4).sum()) < 80
    assert f"{int((lengths < 4).sum())} users with fewer are not scored" in r.error
    det = UserDetector.load(d / "run")
    ref = load_text_data(str(events), columns=Columns(), fixed_posts=4)
    assert table["user_id"].to_list() == ref.user_ids.cast(pl.String).to_list()
    np.testing.assert_allclose(table["score"].to_numpy(), det.predict_proba(ref), atol=1e-5)


def test_predict_proba_reads_the_last_n_posts(fixed_run):
    d, data, events = fixed_run
    det = UserDetector.load(d / "run")
    raw = load_text_data(str(events), fixed_posts=0)  # all posts, as a caller may pass them
    lengths = np.array([len(p) for p in raw.posts])
    assert lengths.max() > 4 and lengths.min() < 4
    s_raw = det.predict_proba(raw)
    long = np.flatnonzero(lengths >= 4)
    fixed = fix_post_count(raw, 4)
    np.testing.assert_allclose(s_raw[long], det.predict_proba(fixed), atol=1e-5)
    # users with fewer posts are scored on all of theirs
    short = np.flatnonzero(lengths < 4)
    only_short = fix_post_count(raw, 4, drop_short=False)
    np.testing.assert_allclose(s_raw[short], det.predict_proba(only_short, short), atol=1e-5)
    assert only_short.post_count["short_kept"] == len(short)
    assert det.embed(raw).shape[0] == raw.n_users
    # posts fixed to another count: one clear error naming both counts
    with pytest.raises(DataError, match=r"posts were fixed to 3 \(last\) per user but the "
                                        r"detector \('bow-attn'\) was trained on the last 4 posts "
                                        r"per user; load the data with fixed_posts=4"):
        det.predict_proba(fix_post_count(raw, 3))
