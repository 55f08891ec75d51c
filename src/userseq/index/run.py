"""The indexes of a run directory: `RUN/index/`.

- `items.faiss`      inner product over the item output vectors: recommendation retrieval
                     (the model scores user . item, so this is the model's own ranking)
- `items_cos.faiss`  centred cosine over the item vectors: "items like this one"
- `users.faiss`      centred cosine over the training users' vectors: "users who behave like this
                     one" (centred: the mean vector, stored in the index header, is subtracted
                     first)
- `user_vectors.npy` the users' raw vectors (float32, row i = `user_ids[i]`), so a known user is
                     served without re-encoding their history
- `manifest.json`    kinds, parameters, build time, recall@k of each ANN index against exact
                     search on a sample of queries, the data fingerprint and the model's hash

Files are faiss's binary format, .npy (loaded with allow_pickle=False), safetensors and JSON.
An index built from another model is refused at load time (the model hash differs).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from userseq.core.artifacts import read_json, write_json
from userseq.core.errors import ArtifactError
from userseq.index.stream import DEFAULT_CHUNK, write_user_embeddings
from userseq.index.vector import IndexConfig, VectorIndex, exact_search, recall_at_k

INDEX_DIR = "index"
MANIFEST = "manifest.json"
RECALL_K = 100


def model_hash(run_dir: str | Path) -> str:
    """sha256 prefix of the run's model.safetensors (what the vectors came from)."""
    h = hashlib.sha256()
    with open(Path(run_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


class RunIndex:
    """The item and user indexes of one run (see the module docstring for the files)."""

    def __init__(self, items: VectorIndex, items_cos: VectorIndex, users: VectorIndex | None,
                 user_vectors: np.ndarray | None, manifest: dict[str, Any]) -> None:
        self.items, self.items_cos, self.users = items, items_cos, users
        self.user_vectors = user_vectors
        self.manifest = manifest

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, rec: Any, run_dir: str | Path, config: IndexConfig | None = None,
              users: bool = True, chunk_size: int = DEFAULT_CHUNK,
              user_vectors_path: str | Path | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              recall_queries: int = 256) -> RunIndex:
        """Build every index of `rec` (a fitted or loaded NextItemRecommender) and save it under
        RUN/index/. User vectors are encoded in chunks of `chunk_size` (bounded memory) unless
        `user_vectors_path` already holds them (e.g. written by `userseq embed --index`)."""
        cfg = config or IndexConfig()
        run_dir = Path(run_dir)
        out = run_dir / INDEX_DIR
        out.mkdir(parents=True, exist_ok=True)
        say = progress or (lambda what, done, total: None)
        t0 = time.perf_counter()
        item_vecs = rec.item_embeddings().astype(np.float32)  # (n_items, D), row i = item_ids[i]
        say("items", 0, len(item_vecs))
        items = VectorIndex.build(item_vecs, "ip", cfg)
        say("items", len(item_vecs), len(item_vecs))
        # similarity indexes use centred cosine: the mean vector is a direction that every
        # embedding shares (plain cosines all come out near 1 for some models)
        item_mean = item_vecs.mean(0)
        items_cos = VectorIndex.build(item_vecs, "cosine", cfg, center=item_mean)
        rng = np.random.default_rng(cfg.seed)
        manifest: dict[str, Any] = {
            "format": 1, "data_fingerprint": rec.data_fingerprint_,
            "model_hash": model_hash(run_dir), "config": cfg.model_dump(), "recall_k": RECALL_K,
        }
        user_vectors = users_index = user_mean = None
        if users:
            vec_path = _user_vector_file(rec, out, chunk_size, user_vectors_path, say)
            user_vectors = _load_vectors(vec_path, len(rec.user_ids), rec.encoder_.dim)
            users_index, user_mean = _user_index(user_vectors, cfg, rng, chunk_size, say)
        # recall of each index against exact search, on a sample of realistic queries
        q_users, q_items = _recall_queries(rng, item_vecs, user_vectors, recall_queries)
        manifest["items"] = {**items.describe(), **_recall(items, item_vecs, q_users, "ip")}
        manifest["items_cos"] = {**items_cos.describe(),
                                 **_recall(items_cos, item_vecs, q_items, "cosine",
                                           center=item_mean)}
        if users_index is not None:
            manifest["users"] = {**users_index.describe(),
                                 **_recall(users_index, user_vectors, q_users, "cosine",
                                           chunked=True, center=user_mean)}
        manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        _save(out, items, items_cos, users_index, manifest)
        return cls(items, items_cos, users_index, user_vectors, manifest)

    # ------------------------------------------------------------------ load
    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        return (Path(run_dir) / INDEX_DIR / MANIFEST).is_file()

    @classmethod
    def load(cls, run_dir: str | Path, rec: Any | None = None,
             check_model: bool = True) -> RunIndex:
        """Load RUN/index/. With `check_model`, an index built from another model is an error."""
        run_dir = Path(run_dir)
        d = run_dir / INDEX_DIR
        if not (d / MANIFEST).is_file():
            raise ArtifactError(f"{d}: no index; build it with `userseq index {run_dir}`.")
        manifest = read_json(d / MANIFEST)
        if check_model and manifest.get("model_hash") != model_hash(run_dir):
            raise ArtifactError(f"{d}: the index was built from another model.safetensors (the "
                                f"model changed since); rebuild it with `userseq index {run_dir}`.")
        items = VectorIndex.load(d / "items.faiss")
        items_cos = VectorIndex.load(d / "items_cos.faiss")
        users = user_vectors = None
        if "users" in manifest:
            users = VectorIndex.load(d / "users.faiss")
            user_vectors = _load_vectors(d / "user_vectors.npy", users.n, users.dim)
        if rec is not None:
            if items.n != len(rec.item_ids) or (users is not None and users.n != len(rec.user_ids)):
                raise ArtifactError(f"{d}: index sizes do not match the run's id maps; rebuild it "
                                    f"with `userseq index {run_dir}`.")
        return cls(items, items_cos, users, user_vectors, manifest)


def _user_vector_file(rec: Any, out: Path, chunk_size: int, given: str | Path | None,
                      say: Callable[[str, int, int], None]) -> Path:
    """RUN/index/user_vectors.npy: copied from `given`, or encoded chunk by chunk."""
    vec_path = out / "user_vectors.npy"
    if given is not None and Path(given).resolve() == vec_path.resolve():
        return vec_path
    if given is not None:
        import shutil

        shutil.copyfile(given, vec_path)
    else:
        n_users = len(rec.user_ids)
        write_user_embeddings(rec, None, chunk_size, vectors_path=vec_path,
                              progress=lambda d: say("user vectors", d, n_users))
    return vec_path


def _user_index(user_vectors: np.ndarray, cfg: IndexConfig, rng: np.random.Generator,
                chunk_size: int, say: Callable[[str, int, int], None],
                ) -> tuple[VectorIndex, np.ndarray]:
    """The centred-cosine index of the users' vectors (read chunk by chunk: they may be a memory
    map) and the mean vector it is centred on."""
    n_users, dim = user_vectors.shape
    user_mean = np.zeros(dim, np.float64)
    for i in range(0, n_users, chunk_size):
        user_mean += np.asarray(user_vectors[i : i + chunk_size], np.float64).sum(0)
    user_mean = (user_mean / n_users).astype(np.float32)
    say("users", 0, n_users)
    sample = None
    if n_users > cfg.train_sample:
        rows = np.sort(rng.choice(n_users, cfg.train_sample, replace=False))
        sample = np.asarray(user_vectors[rows])

    def chunks() -> Any:
        return (np.asarray(user_vectors[i : i + chunk_size]) for i in range(0, n_users, chunk_size))

    index = VectorIndex.build_chunks(chunks, n_users, dim, "cosine", cfg, sample=sample,
                                     center=user_mean)
    say("users", n_users, n_users)
    return index, user_mean


def _recall_queries(rng: np.random.Generator, item_vecs: np.ndarray, user_vectors: Any,
                    n: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries for the recall figures: user vectors (item vectors when there are none) for the
    recommendation and user indexes, item vectors for the similar-items index."""
    if user_vectors is not None:
        rows = np.sort(rng.choice(len(user_vectors), min(n, len(user_vectors)), replace=False))
        q_users = np.asarray(user_vectors[rows])
    else:
        q_users = item_vecs[rng.choice(len(item_vecs), min(n, len(item_vecs)), replace=False)]
    q_items = item_vecs[rng.choice(len(item_vecs), min(n, len(item_vecs)), replace=False)]
    return q_users, q_items


def _save(out: Path, items: VectorIndex, items_cos: VectorIndex, users: VectorIndex | None,
          manifest: dict[str, Any]) -> None:
    items.save(out / "items.faiss")
    items_cos.save(out / "items_cos.faiss")
    if users is not None:
        users.save(out / "users.faiss")
    else:
        for stale in ("users.faiss", "users.faiss.json", "user_vectors.npy"):
            (out / stale).unlink(missing_ok=True)
    write_json(manifest, out / MANIFEST)


def _load_vectors(path: Path, n: int, dim: int) -> np.ndarray:
    try:
        v = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: corrupt user vectors ({e}); rebuild with "
                            "`userseq index`.") from None
    if v.shape != (n, dim) or v.dtype != np.float32:
        raise ArtifactError(f"{path}: expected float32 ({n}, {dim}), found {v.dtype} {v.shape}; "
                            "rebuild the index.")
    return v


def _recall(index: VectorIndex, vectors: Any, queries: np.ndarray, metric: str,
            chunked: bool = False, k: int = RECALL_K,
            center: np.ndarray | None = None) -> dict[str, Any]:
    """recall@k of `index` against brute force, and its mean single-query latency (ms)."""
    if chunked:  # vectors may be a memory map: exact search chunk by chunk
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        for lo in range(0, len(vectors), 262_144):
            s, i = exact_search(np.asarray(vectors[lo : lo + 262_144]), queries, k, metric, center)
            best_s, best_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i + lo], 1)
            order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(best_s, order, 1)
            best_i = np.take_along_axis(best_i, order, 1)
        exact_i = best_i
    else:
        _, exact_i = exact_search(vectors, queries, k, metric, center)
    _, approx_i = index.search(queries, k)
    t0 = time.perf_counter()
    for q in queries[:64]:
        index.search(q[None], k)
    ms = (time.perf_counter() - t0) * 1000 / max(1, min(64, len(queries)))
    return {f"recall@{k}": round(recall_at_k(approx_i, exact_i), 4), "query_ms": round(ms, 3),
            "recall_queries": int(len(queries))}
