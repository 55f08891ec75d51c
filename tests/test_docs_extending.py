"""docs/extending.md is executable: every ```python block runs, in order, in one namespace (in a
scratch directory), and the registrations it makes are removed afterwards."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_the_extending_examples_run(tmp_path, monkeypatch):
    from userseq.core.estimator import ESTIMATORS
    from userseq.data.datasets import DATASETS
    from userseq.encoders import ENCODERS
    from userseq.losses import LOSSES

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 5, "the page lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "extending_md"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), namespace)  # noqa: S102
        assert "meanpool" in ENCODERS and "hinge" in LOSSES and "shop" in DATASETS
        assert "popular" in ESTIMATORS
        assert (tmp_path / "runs" / "popular" / "estimator.json").is_file()
    finally:
        ENCODERS.unregister("meanpool")
        LOSSES.unregister("hinge")
        DATASETS.unregister("shop")
        ESTIMATORS.unregister("popular")
