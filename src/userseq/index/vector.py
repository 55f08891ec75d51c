"""One vector index: faiss (flat, HNSW, IVF-PQ) or an exact torch fallback, same interface.

Scores are inner products; with `metric="cosine"` the vectors (and queries) are L2-normalised
first, so the inner product is the cosine. Row positions returned by `search` are 0-based rows
of the vectors the index was built from; a missing hit (fewer than k vectors, or an IVF probe
that found too few) is -1 with score -inf.

Files are faiss's own binary format (`faiss.write_index`) or safetensors for the exact index,
plus a small JSON header; nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from userseq.core.errors import ArtifactError, ConfigError, UserseqError

Kind = Literal["auto", "exact", "flat", "hnsw", "ivfpq"]
Metric = Literal["ip", "cosine"]


class IndexConfig(BaseModel):
    """How an index is chosen and tuned. `kind="auto"` picks by size and metric: exact flat up to
    `flat_max` vectors; above that, IVF-PQ with exact re-ranking for inner products (measured
    more accurate than HNSW for maximum inner product search, and 4x faster to build), HNSW for
    cosine up to `hnsw_max` vectors, IVF-PQ above; exact when faiss is missing."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Kind = "auto"
    flat_max: int = Field(
        100_000, ge=0, description="auto: exact flat index up to this many vectors")
    hnsw_max: int = Field(
        2_000_000, ge=0, description="auto, cosine: HNSW up to this many vectors, IVF-PQ above")
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW links per node")
    ef_construction: int = Field(100, ge=8, description="HNSW build-time beam width")
    ef_search: int = Field(
        256, ge=8, description="HNSW query-time beam width (raised to k when k is larger)")
    nlist: int | None = Field(
        None, ge=1, description="IVF lists (default ~4 sqrt(n), at most 65536)")
    pq_m: int | None = Field(
        None, ge=1, description="PQ sub-quantizers (default dim/4; must divide dim)")
    nprobe: int = Field(256, ge=1, description="IVF lists visited per query")
    refine: bool = Field(True, description="IVF-PQ: re-rank candidates with exact vectors (more "
                                           "memory, much better recall)")
    refine_factor: int = Field(
        10, ge=1, description="IVF-PQ refine: candidates = refine_factor * k")
    train_sample: int = Field(
        100_000, ge=1000, description="IVF-PQ: vectors used to train the quantizers")
    seed: int = 0

    def resolve(self, n: int, metric: str = "ip") -> str:
        """The concrete kind for `n` vectors compared by `metric`."""
        if self.kind != "auto":
            if self.kind != "exact" and not faiss_available():
                raise UserseqError(f"index kind {self.kind!r} needs faiss; install it with "
                                   "`pip install 'userseq[serve]'` (or use kind 'exact').")
            return self.kind
        if not faiss_available():
            return "exact"
        if n <= self.flat_max:
            return "flat"
        return "hnsw" if metric == "cosine" and n <= self.hnsw_max else "ivfpq"

    @classmethod
    def from_options(cls, base: IndexConfig | dict | None = None, **options: Any) -> IndexConfig:
        """A config from a dict/instance plus keyword overrides, with one clear error for bad
        values."""
        data = base.model_dump() if isinstance(base, IndexConfig) else dict(base or {})
        data.update({k: v for k, v in options.items() if v is not None})
        try:
            return cls(**data)
        except Exception as e:  # pydantic.ValidationError
            msgs = getattr(e, "errors", lambda: [])()
            text = "; ".join(f"{'.'.join(map(str, m['loc']))}: {m['msg']}" for m in msgs) or str(e)
            raise ConfigError(f"invalid index config: {text}") from None


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UserseqError("faiss is not installed; `pip install 'userseq[serve]'` (or use kind "
                           "'exact').") from None
    return faiss


def _prep(x: np.ndarray | torch.Tensor, metric: str,
          center: np.ndarray | None = None) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if center is not None:
        x = x - center
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


class VectorIndex:
    """Top-k inner-product (or cosine) search over a fixed set of vectors."""

    def __init__(self, kind: str, metric: Metric, dim: int, config: IndexConfig, impl: Any,
                 info: dict[str, Any] | None = None, center: np.ndarray | None = None) -> None:
        self.kind, self.metric, self.dim, self.config = kind, metric, dim, config
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        self._impl = impl  # a faiss index, or a torch matrix for "exact"
        self.info: dict[str, Any] = dict(info or {})

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray | torch.Tensor, metric: Metric = "ip",
              config: IndexConfig | None = None, center: np.ndarray | None = None) -> VectorIndex:
        """Index all rows of `vectors` (n, dim). `center` (a vector) is subtracted from vectors and
        queries first (centred cosine: removes the direction every embedding shares)."""
        x = _prep(vectors, metric, center)
        cfg = config or IndexConfig()
        sample = None
        if len(x) > cfg.train_sample:
            rng = np.random.default_rng(cfg.seed)
            sample = x[np.sort(rng.choice(len(x), cfg.train_sample, replace=False))]
        index = cls.build_chunks(lambda: iter([x]), len(x), x.shape[1], metric, cfg,
                                 prepared=True, sample=sample)
        index.center = None if center is None else np.asarray(center, dtype=np.float32)
        return index

    @classmethod
    def build_chunks(cls, chunks: Callable[[], Iterable[np.ndarray]], n: int, dim: int,
                     metric: Metric = "ip", config: IndexConfig | None = None,
                     prepared: bool = False, sample: np.ndarray | None = None,
                     center: np.ndarray | None = None) -> VectorIndex:
        """Index vectors that arrive in chunks (bounded memory for the exact index's inputs and
        for faiss adds). `chunks()` must yield the n rows in order; IVF-PQ trains on `sample`
        (prepared the same way) or on the first chunks up to `train_sample` rows. `center`: as in
        `build`; unprepared chunks are centred here."""
        cfg = config or IndexConfig()
        if n <= 0:
            raise UserseqError("cannot build an index over zero vectors.")
        kind = cfg.resolve(n, metric)
        t0 = time.perf_counter()

        def prepped() -> Iterator[np.ndarray]:
            for c in chunks():
                yield c if prepared else _prep(c, metric, center)

        if sample is not None and not prepared:
            sample = _prep(sample, metric, center)
        if kind == "exact":
            impl, params = _exact_matrix(prepped, n, dim), {}
        else:
            impl, params = _faiss_index(kind, n, dim, cfg, prepped, sample)
            _add(impl, prepped, n, kind, params)
        info = {"n": n, "build_seconds": round(time.perf_counter() - t0, 3), **params}
        return cls(kind, metric, dim, cfg, impl, info, center=None if prepared else center)

    # ------------------------------------------------------------------ searching
    @property
    def n(self) -> int:
        return int(self._impl.shape[0]) if self.kind == "exact" else int(self._impl.ntotal)

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n_queries, k), best first; rows of -1 mark missing hits."""
        q = _prep(queries, self.metric, self.center)
        if q.shape[1] != self.dim:
            raise UserseqError(f"query dimension {q.shape[1]} != index dimension {self.dim}.")
        k = int(k)
        if k <= 0:
            raise UserseqError(f"k must be a positive integer (got {k}).")
        kk = min(k, self.n)
        if self.kind == "exact":
            s, i = _exact_topk(torch.from_numpy(q), self._impl, kk)
        elif self.kind in ("hnsw", "ivfpq"):
            m = float(self.info["mips_max_norm"])
            padded = _augment(q, None, int(self.info["index_dim"]))
            d, i = self._impl.search(padded, kk, params=self._params(kk))
            # back from L2 distance to inner product
            s = ((q * q).sum(1, keepdims=True) + m * m - d) / 2
            s = np.where(i < 0, -np.inf, s).astype(np.float32)
        else:
            s, i = self._impl.search(q, kk)
            s = np.where(i < 0, -np.inf, s).astype(np.float32)
        if kk < k:  # pad to the requested width so callers can rely on the shape
            s = np.concatenate([s, np.full((len(q), k - kk), -np.inf, np.float32)], 1)
            i = np.concatenate([i, np.full((len(q), k - kk), -1, np.int64)], 1)
        return s, i.astype(np.int64)

    def _params(self, k: int):
        faiss = _faiss()
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        if self.kind == "ivfpq":
            ivf = faiss.SearchParametersIVF(nprobe=self.config.nprobe)
            if self.config.refine:
                return faiss.IndexRefineSearchParameters(k_factor=float(self.config.refine_factor),
                                                         base_index_params=ivf)
            return ivf
        return None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write `path` (faiss binary or safetensors) and `path.json` (kind, metric, config,
        info)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "exact":
            from safetensors.torch import save_file

            save_file({"vectors": self._impl.contiguous()}, str(p))
        else:
            _faiss().write_index(self._impl, str(p))
        header = {"kind": self.kind, "metric": self.metric, "dim": self.dim, "n": self.n,
                  "config": self.config.model_dump(), "info": self.info,
                  "center": None if self.center is None else [float(v) for v in self.center]}
        p.with_name(p.name + ".json").write_text(json.dumps(header, indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> VectorIndex:
        p = Path(path)
        head_path = p.with_name(p.name + ".json")
        if not p.is_file() or not head_path.is_file():
            raise ArtifactError(f"{p}: index file not found; build it with "
                                "`userseq index RUN_DIR`.")
        try:
            head = json.loads(head_path.read_text())
            cfg = IndexConfig(**head["config"])
            kind, metric, dim = head["kind"], head["metric"], int(head["dim"])
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{head_path}: corrupt index header ({e}); rebuild with `userseq "
                                "index`.") from None
        try:
            if kind == "exact":
                from safetensors.torch import load_file

                impl = load_file(str(p))["vectors"]
            else:
                faiss = _faiss()
                flags = faiss.IO_FLAG_MMAP if mmap and kind != "hnsw" else 0
                impl = faiss.read_index(str(p), flags)
        except UserseqError:
            raise
        except Exception as e:  # faiss raises RuntimeError, safetensors its own error type
            raise ArtifactError(f"{p}: corrupt index ({str(e).splitlines()[0][:200]}); "
                                "rebuild it with `userseq index RUN_DIR`.") from None
        n = int(impl.shape[0]) if kind == "exact" else int(impl.ntotal)
        if n != int(head.get("n", n)) or (kind == "exact" and impl.shape[1] != dim) or \
                (kind != "exact" and impl.d != int((head.get("info") or {}).get("index_dim", dim))):
            raise ArtifactError(f"{p}: index does not match its header {head_path}; rebuild it.")
        center = head.get("center")
        if center is not None and len(center) != dim:
            raise ArtifactError(f"{head_path}: centre vector has {len(center)} values for "
                                f"dimension {dim}; rebuild.")
        return cls(kind, metric, dim, cfg, impl, head.get("info"), center=center)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "centred": self.center is not None,
                "n": self.n, "dim": self.dim, **self.info}


def exact_search(vectors: np.ndarray | torch.Tensor, queries: np.ndarray | torch.Tensor, k: int,
                 metric: Metric = "ip",
                 center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k (the reference for recall), chunked over the vectors."""
    v = torch.from_numpy(_prep(vectors, metric, center))
    q = torch.from_numpy(_prep(queries, metric, center))
    return _exact_topk(q, v, min(k, len(v)))


def _exact_topk(q: torch.Tensor, mat: torch.Tensor, k: int,
                chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    best_s = torch.full((len(q), k), float("-inf"))
    best_i = torch.full((len(q), k), -1, dtype=torch.long)
    for lo in range(0, len(mat), chunk):
        s = q @ mat[lo : lo + chunk].T
        cs, ci = torch.topk(s, min(k, s.shape[1]), dim=1)
        both_s, both_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci + lo], 1)
        order = torch.topk(both_s, k, dim=1).indices
        best_s, best_i = both_s.gather(1, order), both_i.gather(1, order)
    return best_s.numpy(), best_i.numpy()


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-k row found in the approximate top-k row."""
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, (e >= 0).sum())
            for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def _augment(x: np.ndarray, max_norm: float | None, width: int) -> np.ndarray:
    """Append the MIPS-to-L2 coordinate (sqrt(M^2 - |x|^2) for stored vectors, 0 for queries),
    then zeros up to `width` columns."""
    out = np.zeros((len(x), width), np.float32)
    out[:, : x.shape[1]] = x
    if max_norm is not None:
        out[:, x.shape[1]] = np.sqrt(np.maximum(max_norm**2 - (x * x).sum(1), 0.0))
    return out


def _default_pq_m(dim: int) -> int:
    # 4 dimensions per sub-quantizer: 2-d sub-spaces make faiss's k-means very slow to train
    for m in (dim // 4, dim // 2, dim // 8, dim):
        if m >= 1 and dim % m == 0 and m <= 64:
            return m
    return 1


def _exact_matrix(prepped: Callable[[], Iterator[np.ndarray]], n: int, dim: int) -> torch.Tensor:
    mat = torch.empty(n, dim)
    pos = 0
    for c in prepped():
        mat[pos : pos + len(c)] = torch.from_numpy(c)
        pos += len(c)
    _check_count(pos, n)
    return mat


def _faiss_index(kind: str, n: int, dim: int, cfg: IndexConfig,
                 prepped: Callable[[], Iterator[np.ndarray]],
                 sample: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
    """An empty (trained, for IVF-PQ) faiss index of `kind` and its parameters."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlat(dim, faiss.METRIC_INNER_PRODUCT), {}
    # Graph and IVF indexes are much more accurate with L2 than with raw inner products over
    # vectors of different norms: append sqrt(M^2 - |x|^2) to every vector (M = the largest
    # norm) and 0 to queries; then L2 order = inner-product order (Bachrach et al., 2014).
    max_norm = 0.0
    for c in prepped():
        max_norm = max(max_norm, float(np.linalg.norm(c, axis=1).max(initial=0.0)))
    params: dict[str, Any] = {"mips_max_norm": max_norm}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim + 1, cfg.hnsw_m, faiss.METRIC_L2)
        index.hnsw.efConstruction = cfg.ef_construction
        params |= {"hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction,
                   "index_dim": dim + 1}
        return index, params
    index, ivf = _ivfpq(faiss, n, dim, cfg, prepped, sample, max_norm)
    return index, params | ivf


def _ivfpq(faiss: Any, n: int, dim: int, cfg: IndexConfig,
           prepped: Callable[[], Iterator[np.ndarray]], sample: np.ndarray | None,
           max_norm: float) -> tuple[Any, dict[str, Any]]:
    """A trained IVF-PQ index (vectors + the MIPS coordinate, zero-padded to 4-d sub-spaces)."""
    nlist = cfg.nlist or int(min(65536, max(16, 4 * math.sqrt(n))))
    nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per centroid
    index_dim = -(-(dim + 1) // 4) * 4
    pq_m = cfg.pq_m or _default_pq_m(index_dim)
    if index_dim % pq_m:
        raise ConfigError(f"invalid index config: pq_m {pq_m} must divide {index_dim} (the "
                          f"dimension {dim} + 1, rounded up to a multiple of 4).")
    spec = f"IVF{nlist},PQ{pq_m}x8np" + (",RFlat" if cfg.refine else "")
    index = faiss.index_factory(index_dim, spec, faiss.METRIC_L2)
    train = sample if sample is not None else _first_rows(prepped, cfg.train_sample)
    train = _augment(train[: max(cfg.train_sample, 39 * nlist)], max_norm, index_dim)
    index.train(train)
    return index, {"nlist": nlist, "pq_m": pq_m, "refine": cfg.refine,
                   "train_rows": int(len(train)), "index_dim": index_dim}


def _add(index: Any, prepped: Callable[[], Iterator[np.ndarray]], n: int, kind: str,
         params: dict[str, Any]) -> None:
    pos = 0
    for c in prepped():
        if kind != "flat":
            c = _augment(c, params["mips_max_norm"], params["index_dim"])
        index.add(c)
        pos += len(c)
    _check_count(pos, n)


def _first_rows(prepped: Callable[[], Iterator[np.ndarray]], n: int) -> np.ndarray:
    got, total = [], 0
    for c in prepped():
        got.append(c[: n - total])
        total += len(got[-1])
        if total >= n:
            break
    return np.concatenate(got)


def _check_count(pos: int, n: int) -> None:
    if pos != n:
        raise UserseqError(f"index build expected {n} vectors but the chunks gave {pos}.")
