"""The inference engine of a served run: PyTorch (default) or onnxruntime (`--engine onnx`).

With onnx, the next-item service encodes user vectors and the CTR route scores candidates with
the exported graphs (RUN/model.onnx, exported and checked against PyTorch on first use; see
userseq.export.onnx); retrieval, id handling and validation are unchanged.
"""

from __future__ import annotations

from typing import Any

from userseq.core.errors import UserseqError

ENGINES = ("torch", "onnx")


def apply_engine(engine: str, service: Any = None, scorer: Any = None) -> None:
    """Switch a loaded next-item `service` and/or CTR `scorer` to `engine`."""
    if engine not in ENGINES:
        raise UserseqError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}.")
    if engine == "torch":
        return
    from userseq.export.onnx import onnx_engine

    if service is not None:
        service.batcher.rec = onnx_engine(service.rec, service.run_dir)
    if scorer is not None:
        scorer.estimator = onnx_engine(scorer.estimator, scorer.run_dir)
