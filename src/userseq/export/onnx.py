"""ONNX export of fitted runs, checked against PyTorch, and onnxruntime engines for the service.

* Next-item runs export the **user encoder**: input `history` (B, W) int64, item indices of the
  last W events left-padded with 0 (W <= max_len; BERT4Rec's [mask] is appended inside the
  graph), output `user_vector` (B, D): the vector `NextItemRecommender.encode` returns. The item
  matrix stays with the run (retrieval is an index lookup, not a graph).
* CTR runs export the **click model**: inputs `item`, `cat` (B,), `user` (B,), the history tensors
  `hist_item`, `hist_cat`, `hist_feat`, `hist_pos` (B, W) int64 and `mask` (B, W) bool, `context`
  (B, C) float32 when the run has context columns; output `probability` (B,). W is free
  (<= the model's window, max_len or long_len) when the graph also passes the check at a second,
  shorter width (`dynamic_width` and `min_width` in FILE.json: top-k models need at least k
  columns), so a short history is not padded to a long window; otherwise W is fixed to the
  window and histories are left-padded to it (padding does not change a score). Batch size is free.

`export_onnx(run, out)` writes FILE and FILE.json (inputs, outputs, width, and the largest
absolute difference between onnxruntime and PyTorch on real histories of the run, which must be
<= 1e-4). A model whose operations the exporter cannot trace is one error naming the model.
`OnnxUserEncoder` / `OnnxCTRScorer` wrap a loaded estimator and answer its `encode` /
`score_request` with onnxruntime instead of PyTorch (`userseq serve RUN --engine onnx`).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from userseq.core.errors import ArtifactError, UserseqError
from userseq.core.estimator import Estimator
from userseq.core.version import __version__
from userseq.ctr.data import Behaviours, Samples, make_batch
from userseq.ctr.estimator import CTREstimator
from userseq.ctr.requests import jobs_to_samples
from userseq.data.batches import pad_left
from userseq.items.factory import serve_dim
from userseq.nextitem.estimator import NextItemRecommender

TOLERANCE = 1e-4
OPSET = 17
CTR_INPUTS = ("item", "cat", "user", "hist_item", "hist_cat", "hist_feat", "hist_pos", "mask")
HISTORY = ("hist_item", "hist_cat", "hist_feat", "hist_pos", "mask")
NARROW = (16, 64)  # second check widths of a CTR export (its history axis is dynamic if one
# passes; the first that passes is the smallest width the engine feeds)


def _require(name: str) -> Any:
    try:
        return __import__(name)
    except ModuleNotFoundError:
        raise UserseqError(f"ONNX export and the onnx engine need the '{name}' package: "
                           "pip install 'userseq[onnx]'.") from None


# ---------------------------------------------------------------------- graphs
class UserVectorGraph(nn.Module):
    """Padded history (B, W) -> user vector (B, D), as NextItemRecommender.encode computes it."""

    def __init__(self, rec: NextItemRecommender) -> None:
        super().__init__()
        self.enc = rec.check_is_fitted()
        self.mask_tok = self.enc.mask_token()
        self.dim = serve_dim(rec.config.model)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        x = history
        if self.mask_tok is not None:  # BERT4Rec reads the [mask] appended after the history
            x = torch.cat([x[:, 1:], torch.full_like(x[:, :1], self.mask_tok)], 1)
        return self.enc.last(x, x > 0).float()[:, : self.dim]


class CTRGraph(nn.Module):
    """CTR batch tensors -> click probability (B,)."""

    def __init__(self, model: nn.Module, n_context: int) -> None:
        super().__init__()
        self.model, self.n_context = model, n_context

    def forward(self, item, cat, user, hist_item, hist_cat, hist_feat, hist_pos, mask,
                context=None):
        b = {"item": item, "cat": cat, "user": user, "hist_item": hist_item,
             "hist_cat": hist_cat, "hist_feat": hist_feat, "hist_pos": hist_pos, "mask": mask,
             "context": context if context is not None else torch.zeros(item.shape[0], 0)}
        return torch.sigmoid(self.model(b).float())


def pad_batch(b: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Left-pad the history tensors of a CTR batch to `width` columns (padding = 0 / False)."""
    out = dict(b)
    w = b["hist_item"].shape[1]
    if w > width:
        raise ValueError(f"history width {w} exceeds the exported width {width}")
    for k in HISTORY:
        pad = torch.zeros(b[k].shape[0], width - w, dtype=b[k].dtype)
        out[k] = torch.cat([pad, b[k]], 1)
    return out


# ---------------------------------------------------------------------- check inputs
def _user_histories(rec: NextItemRecommender, n: int, seed: int = 0) -> np.ndarray:
    """(n, max_len) left-padded histories of training users (the longest ones first, then random
    ones): the check inputs."""
    offsets, items = rec.histories_
    lengths = np.diff(offsets)
    rng = np.random.default_rng(seed)
    rows = np.unique(np.r_[np.argsort(-lengths)[: n // 2],
                           rng.choice(len(lengths), min(n, len(lengths)), replace=False)])[:n]
    return pad_left(offsets[rows], offsets[rows + 1], items, rec.config.model.max_len)


def _ctr_check_batch(est: CTREstimator, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of `n` training users' whole histories against random candidate items."""
    beh: Behaviours = est.behaviours_
    v = est.vocab_
    rng = np.random.default_rng(seed)
    n_users = len(beh.offsets) - 1
    users = rng.choice(n_users, min(n, n_users), replace=False)
    k = len(users)
    s = Samples(users + 1, rng.integers(1, v.n_items + 1, k), np.full(k, np.inf),
                beh.offsets[users], beh.offsets[users + 1], np.zeros(k, np.float32),
                np.zeros((k, len(v.context_cols)), np.float32))
    m = est.config.model
    return make_batch(beh, s, v.item_cat, m.window, m.pos_buckets)


# ---------------------------------------------------------------------- export
def export_onnx(run: str | Path | Estimator, out: str | Path, n_check: int = 64) -> dict[str, Any]:
    """Export a next-item or CTR run to ONNX at `out`, check it against PyTorch with
    onnxruntime, and write `out`.json; returns that JSON's content."""
    _require("onnx")
    _require("onnxruntime")
    est = Estimator.load(run) if not isinstance(run, Estimator) else run
    out = Path(out)
    if not out.parent.is_dir():
        raise UserseqError(f"{out}: directory {out.parent} does not exist.")
    name = getattr(est.config.model, "name", None) or getattr(est.config.model, "encoder", "?")
    with torch.no_grad():
        if isinstance(est, NextItemRecommender):
            graph, feeds, dyn, info = _nextitem_export(est, n_check)
        elif isinstance(est, CTREstimator):
            graph, feeds, dyn, info = _ctr_export(est, n_check)
            name = est.config.model.name
        else:
            raise ArtifactError(f"{run}: a '{est.task}' run; ONNX export covers next-item "
                                "encoders and CTR models.")
        graph.eval()
        t0 = time.perf_counter()
        diff, sess = _export_checked(graph, feeds, dyn, info, out, run, est.task, name)
        if isinstance(est, CTREstimator):
            # a free history width serves short histories without padding them to the window;
            # keep it only if the graph also matches PyTorch on narrower inputs
            # (top-k models need a width of at least k: the narrowest passing width is the
            # engine's minimum, histories shorter than it are padded to it)
            wide_ok = False
            for w in (w for w in NARROW if w < feeds["hist_item"].shape[1]):
                narrow = {k: v[:, -w:] if k in HISTORY else v for k, v in feeds.items()}
                try:
                    wide_ok = _max_diff(graph, sess, narrow, info) <= TOLERANCE
                except Exception:  # onnxruntime refuses this shape (e.g. top-k > width)
                    wide_ok = False
                if wide_ok:
                    info["min_width"] = w
                    break
            info["dynamic_width"] = wide_ok
            if not wide_ok:
                fixed = {k: {0: "batch"} for k in dyn}
                diff, _ = _export_checked(graph, feeds, fixed, info, out, run, est.task, name)
    info.update({"task": est.task, "model": name, "opset": OPSET,
                 "export_seconds": round(time.perf_counter() - t0, 2), "check_rows":
                 len(next(iter(feeds.values()))), "max_abs_diff": diff, "tolerance": TOLERANCE,
                 "userseq_version": __version__,
                 "run": str(run) if not isinstance(run, Estimator) else None})
    Path(f"{out}.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _max_diff(graph: nn.Module, sess: Any, feeds: dict[str, np.ndarray], info: dict) -> float:
    with torch.no_grad():
        want = graph(*(torch.from_numpy(feeds[k]) for k in info["inputs"])).numpy()
    got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    return float(np.abs(got - want).max()) if want.size else 0.0


def _export_checked(graph: nn.Module, feeds: dict[str, np.ndarray], dyn: dict, info: dict,
                    out: Path, run: Any, task: str, name: str) -> tuple[float, Any]:
    """Trace `graph` to `out` and check it with onnxruntime on `feeds`: (max |diff|, session).
    Any failure (tracing, running, > TOLERANCE) removes `out` and raises one ArtifactError."""
    ort = _require("onnxruntime")
    args = tuple(torch.from_numpy(feeds[k]) for k in info["inputs"])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(out), input_names=info["inputs"],
                              output_names=info["outputs"], dynamic_axes=dyn,
                              opset_version=OPSET, dynamo=False)
    except Exception as e:  # the exporter's errors are many kinds
        out.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{run}: the {task} model '{name}' cannot be exported to "
                            f"ONNX ({type(e).__name__}: {first[:300]}). Serve it with the "
                            "PyTorch engine (the default).") from None
    try:  # a graph that traced but onnxruntime cannot run is the same failure
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        diff = _max_diff(graph, sess, feeds, info)
    except Exception as e:
        out.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{run}: the {task} model '{name}' cannot be exported to ONNX "
                            f"(the traced graph fails in onnxruntime: {type(e).__name__}: "
                            f"{first[:300]}). Serve it with the PyTorch engine (the "
                            "default).") from None
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        raise ArtifactError(f"{run}: the ONNX export of '{name}' differs from PyTorch by "
                            f"{diff:.3g} (> {TOLERANCE}); not written. Serve it with the PyTorch "
                            "engine.")
    return diff, sess


def _nextitem_export(rec: NextItemRecommender, n: int):
    graph = UserVectorGraph(rec)
    feeds = {"history": _user_histories(rec, n).astype(np.int64)}
    info = {"inputs": ["history"], "outputs": ["user_vector"],
            "history_width": int(rec.config.model.max_len), "dim": graph.dim,
            "input_doc": "history (B, W <= max_len) int64 item indices (1-based, the run's "
                         "item_ids order), left-padded with 0"}
    dyn = {"history": {0: "batch", 1: "width"}, "user_vector": {0: "batch"}}
    return graph, feeds, dyn, info


def _ctr_export(est: CTREstimator, n: int):
    model = est.check_is_fitted()
    n_ctx = len(est.vocab_.context_cols)
    graph = CTRGraph(model, n_ctx)
    width = int(est.config.model.window)
    b = pad_batch(_ctr_check_batch(est, n), width)
    names = [*CTR_INPUTS, *(["context"] if n_ctx else [])]
    feeds = {k: b[k].numpy() for k in names}
    info = {"inputs": names, "outputs": ["probability"], "history_width": width,
            "input_doc": "history tensors left-padded (to at most history_width, or exactly "
                         "history_width when dynamic_width is false); see "
                         "userseq.ctr.data.make_batch"}
    dyn = {k: {0: "batch", 1: "width"} if k in HISTORY else {0: "batch"}
           for k in [*names, "probability"]}
    return graph, feeds, dyn, info


# ---------------------------------------------------------------------- engines
def _session(path: Path) -> Any:
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_file(run_dir: str | Path, est: Estimator) -> Path:
    """RUN/model.onnx, exported (and checked) now when it is missing or older than the weights."""
    run_dir = Path(run_dir)
    path = run_dir / "model.onnx"
    weights = run_dir / "model.safetensors"
    if not path.is_file() or (weights.is_file()
                              and path.stat().st_mtime < weights.stat().st_mtime):
        export_onnx(est, path)
    return path


class _Engine:
    """Delegates everything but the scoring method to the wrapped estimator."""

    engine = "onnx"

    def __init__(self, est: Estimator, path: Path) -> None:
        self._est = est
        self.session = _session(path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.onnx_path = path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._est, name)


class OnnxUserEncoder(_Engine):
    """A next-item recommender whose `encode` (user vectors) runs the exported graph."""

    def encode(self, offsets: np.ndarray, items: np.ndarray, batch_size: int = 1024
               ) -> torch.Tensor:
        L = self._est.config.model.max_len
        lengths = np.diff(offsets)
        width = int(min(L, max(1, lengths.max() if len(lengths) else 1)))
        x = pad_left(offsets[:-1], offsets[1:], items, width).astype(np.int64)
        if self._est.check_is_fitted().mask_token() is not None:  # room for the [mask]
            x = np.concatenate([np.zeros((len(x), 1), np.int64), x], 1)[:, -L:]
        outs = [self.session.run(None, {"history": x[i : i + batch_size]})[0]
                for i in range(0, len(x), batch_size)]
        return torch.from_numpy(np.concatenate(outs) if outs else np.zeros((0, 0), np.float32))


class OnnxCTRScorer(_Engine):
    """A CTR estimator whose `score_request` runs the exported graph."""

    def __init__(self, est: Estimator, path: Path) -> None:
        super().__init__(est, path)
        meta = Path(f"{path}.json")
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        self.dynamic_width = bool(info.get("dynamic_width", False))
        self.min_width = int(info.get("min_width", 0))

    def score_request(self, request: dict[str, Any], candidates: list[Any]) -> np.ndarray:
        return self._score(*self._est.request_samples(request, candidates))

    def score_jobs(self, jobs: list[Any]) -> list[np.ndarray]:
        """`CTREstimator.score_jobs` through the graph (one job at a time: it takes one
        history)."""
        return [self._score(*jobs_to_samples([j], self._est.vocab_), np.asarray(j.candidates))
                for j in jobs]

    def _score(self, beh: Any, s: Any, cand: np.ndarray) -> np.ndarray:
        est = self._est
        reps = s.take(np.zeros(len(cand), dtype=np.int64))
        reps.item = cand
        m = est.config.model
        b = make_batch(beh, reps, est.vocab_.item_cat, m.window, m.pos_buckets)
        if not self.dynamic_width:  # an export with a fixed history width
            b = pad_batch(b, int(m.window))
        elif b["hist_item"].shape[1] < self.min_width:
            b = pad_batch(b, self.min_width)
        feeds = {k: b[k].numpy() for k in self.input_names}
        return self.session.run(None, feeds)[0].astype(np.float64)


def onnx_engine(est: Estimator, run_dir: str | Path) -> OnnxUserEncoder | OnnxCTRScorer:
    """The onnxruntime engine of a loaded run (exporting RUN/model.onnx first if needed)."""
    path = onnx_file(run_dir, est)
    if isinstance(est, CTREstimator):
        return OnnxCTRScorer(est, path)
    return OnnxUserEncoder(est, path)


__all__ = ["CTRGraph", "OnnxCTRScorer", "OnnxUserEncoder", "UserVectorGraph", "export_onnx",
           "onnx_engine", "onnx_file", "pad_batch"]
