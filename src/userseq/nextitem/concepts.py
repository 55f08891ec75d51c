"""SESA-style concept head (Supervised Explicit Semantic Analysis, METHODS.md §9): a supervised
linear map from a finished next-item run's embedding space onto named concepts (MovieLens genres,
Amazon categories/attributes), used to explain users and recommendations.

* Fit (`fit_concepts`): items that have concept labels are split (seeded) into a training part and
  a held-out part (`holdout`, default 20%); a linear map `W (D x C), b (C)` from the L2-normalised
  item output vectors to one logit per concept is trained with multi-label logistic loss (full
  batch Adam, L2 penalty). Concepts with fewer than `min_items` labelled items are dropped.
  Reported on the held-out items: top-1 accuracy (the highest-scoring concept is one of the item's
  concepts) and micro-averaged precision/recall/F1 at threshold 0.5, each next to the baseline
  that always predicts the most frequent concept(s).
* Apply: a user vector (the model's state after the history, in the same space the items are
  scored in) goes through the same map after L2 normalisation: its concept profile `σ(W'û + b)`.
* Explain (`ConceptHead.explain`): the user's top concepts, and for an item the shared concepts,
  weight_c = p_user(c) · p_item(c) / Σ_c' p_user(c') · p_item(c'), with the item's own labels.

The map is saved next to the run (`RUN/concepts.safetensors` + `RUN/concepts.json`, with its
metrics and source) by `userseq explain RUN --fit`; `userseq explain` and `GET /explain` read it.
Concept labels come from the dataset's item metadata (`genres`) or a file: CSV/Parquet with
`item_id` and a concept column (a list, or strings joined by `|`), or a JSON object
{item_id: [concept, ...]} (the S3-Rec `*_item2attributes.json` format; integer concepts are named
`attr:<n>`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.core.artifacts import read_json, write_json
from userseq.core.errors import ArtifactError, DataError
from userseq.data.eventlog import lookup_ids

CONCEPT_FILE = "concepts.safetensors"
CONCEPT_META = "concepts.json"
CONCEPT_COLUMNS = ("concepts", "genres", "categories", "category", "tags")


def read_concepts(source: str | Path | pl.DataFrame, column: str | None = None
                  ) -> dict[Any, list[str]]:
    """{item_id: [concept, ...]} from a frame, a CSV/Parquet file or an item2attributes JSON."""
    if isinstance(source, pl.DataFrame):
        return _frame_concepts(source, column, "<frame>")
    p = Path(source)
    if not p.is_file():
        raise DataError(f"{p}: concept file not found.")
    if p.suffix == ".json":
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}).") from None
        if not isinstance(raw, dict):
            raise DataError(f"{p}: expected a JSON object {{item_id: [concept, ...]}}.")
        out: dict[Any, list[str]] = {}
        for k, v in raw.items():
            if not isinstance(v, list):
                raise DataError(f"{p}: item {k!r}: expected a list of concepts, got "
                                f"{type(v).__name__}.")
            out[k] = [f"attr:{c}" if isinstance(c, int) else str(c) for c in v]
        return out
    try:
        df = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(
            p, infer_schema_length=10000)
    except Exception as e:  # polars raises several error types for unreadable files
        raise DataError(f"{p}: cannot read concepts ({str(e).splitlines()[0]}).") from None
    return _frame_concepts(df, column, str(p))


def _frame_concepts(df: pl.DataFrame, column: str | None, where: str) -> dict[Any, list[str]]:
    if "item_id" not in df.columns:
        raise DataError(f"{where}: needs an `item_id` column and a concept column "
                        f"({' / '.join(CONCEPT_COLUMNS)}).")
    col = column or next((c for c in CONCEPT_COLUMNS if c in df.columns), None)
    if col is None or col not in df.columns:
        raise DataError(f"{where}: no concept column (looked for {column or CONCEPT_COLUMNS}; "
                        f"columns: {df.columns}).")
    values = df[col]
    if values.dtype == pl.String:
        values = values.str.split("|")
    out = {}
    for item, v in zip(df["item_id"].to_list(), values.to_list(), strict=True):
        if v:
            out[item] = [str(c) for c in v if c is not None and str(c)]
    return out


class ConceptHead:
    """A fitted concept map: `names` (C), `weight` (D x C), `bias` (C), `metrics`, `source`."""

    def __init__(self, names: list[str], weight: np.ndarray, bias: np.ndarray,
                 metrics: dict[str, Any] | None = None, source: str = "",
                 item_labels: list[list[int]] | None = None) -> None:
        self.names = list(names)
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.metrics = metrics or {}
        self.source = source
        self.item_labels = item_labels  # per item row: concept indices (None: unlabelled)

    # ------------------------------------------------------------------ scoring
    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, C) concept probabilities of embedding vectors (rows L2-normalised first)."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return 1.0 / (1.0 + np.exp(-(v @ self.weight + self.bias)))

    def top(self, probs: np.ndarray, n: int) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[:n]
        return [{"concept": self.names[c], "score": round(float(probs[c]), 6)} for c in order]

    def explain(self, user_vector: np.ndarray, item_vector: np.ndarray | None = None,
                item_row: int | None = None, n: int = 5) -> dict[str, Any]:
        """The user's top `n` concepts, and for an item: its own labels, its predicted concepts
        and the `n` shared concepts with normalised weights (see the module doc)."""
        pu = self.probabilities(user_vector)[0]
        out: dict[str, Any] = {"user_concepts": self.top(pu, n)}
        if item_vector is not None:
            pi = self.probabilities(item_vector)[0]
            joint = pu * pi
            total = float(joint.sum()) or 1.0
            order = np.argsort(-joint, kind="stable")[:n]
            labels = None
            if self.item_labels is not None and item_row is not None:
                got = self.item_labels[item_row]
                labels = None if got is None else [self.names[c] for c in got]
            out["item_concepts"] = self.top(pi, n)
            out["item_labels"] = labels
            out["shared"] = [{"concept": self.names[c], "weight": round(float(joint[c]) / total, 6),
                              "user": round(float(pu[c]), 6), "item": round(float(pi[c]), 6)}
                             for c in order]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path) -> None:
        from safetensors.numpy import save_file

        d = Path(run_dir)
        save_file({"weight": self.weight, "bias": self.bias}, str(d / CONCEPT_FILE))
        labels = None if self.item_labels is None else [
            None if x is None else list(map(int, x)) for x in self.item_labels]
        write_json({"names": self.names, "metrics": self.metrics, "source": self.source,
                    "item_labels": labels}, d / CONCEPT_META)

    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        d = Path(run_dir)
        return (d / CONCEPT_FILE).is_file() and (d / CONCEPT_META).is_file()

    @classmethod
    def load(cls, run_dir: str | Path) -> ConceptHead:
        from safetensors.numpy import load_file

        d = Path(run_dir)
        if not cls.exists(d):
            raise ArtifactError(f"{d}: no concept map; fit one with `userseq explain {d} --fit` "
                                "(concept labels: the dataset's genres or --concepts FILE).")
        t = load_file(str(d / CONCEPT_FILE))
        meta = read_json(d / CONCEPT_META)
        if t["weight"].shape[1] != len(meta["names"]):
            raise ArtifactError(f"{d / CONCEPT_FILE}: {t['weight'].shape[1]} concepts but "
                                f"{CONCEPT_META} names {len(meta['names'])}; refit with --fit.")
        return cls(meta["names"], t["weight"], t["bias"], meta.get("metrics"),
                   meta.get("source", ""), meta.get("item_labels"))


def label_matrix(item_ids: pl.Series, concepts: dict[Any, list[str]], min_items: int
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(concept names, (n_items, C) 0/1 labels, labelled-item mask) for the run's items; concepts
    on fewer than `min_items` items are dropped. Concept ids are matched to the run's item ids
    by value (10 finds "10")."""
    keys = list(concepts)
    rows = lookup_ids(item_ids, keys, offset=0)
    counts: Counter = Counter()
    matched = [(int(r), concepts[k]) for k, r in zip(keys, rows, strict=True) if r >= 0]
    for _, cs in matched:
        counts.update(set(cs))
    names = sorted(c for c, n in counts.items() if n >= min_items)
    if not names:
        raise DataError(f"no concept is on at least {min_items} of the run's items ({len(matched)}"
                        f" of {len(item_ids)} items have concepts; ids matched by value).")
    col = {c: j for j, c in enumerate(names)}
    y = np.zeros((len(item_ids), len(names)), dtype=np.float32)
    for r, cs in matched:
        for c in cs:
            if c in col:
                y[r, col[c]] = 1.0
    return names, y, y.sum(1) > 0


def fit_concepts(item_vectors: np.ndarray, item_ids: pl.Series, concepts: dict[Any, list[str]],
                 holdout: float = 0.2, min_items: int = 10, steps: int = 500, lr: float = 0.05,
                 l2: float = 1e-4, seed: int = 0, source: str = "") -> ConceptHead:
    """Fit the concept map on a run's item vectors (rows = `item_ids`); metrics on held-out
    items (see the module doc)."""
    if not 0 < holdout < 1:
        raise DataError(f"holdout must be in (0, 1) (got {holdout}).")
    names, y, labelled = label_matrix(item_ids, concepts, min_items)
    idx = np.flatnonzero(labelled)
    if len(idx) < 10:
        raise DataError(f"only {len(idx)} of the run's items have concept labels; need >= 10.")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(idx)
    n_test = max(1, int(round(holdout * len(idx))))
    test, train = np.sort(idx[:n_test]), np.sort(idx[n_test:])
    v = np.asarray(item_vectors, dtype=np.float32)
    x = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    w = (torch.randn(x.shape[1], len(names), generator=g) * 0.01).requires_grad_()
    prior = yt.mean(0).clamp(1e-4, 1 - 1e-4)
    b = torch.log(prior / (1 - prior)).clone().requires_grad_()  # start at the base rates
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt)
        (loss + l2 * (w * w).sum()).backward()
        opt.step()
    head = ConceptHead(names, w.detach().numpy(), b.detach().numpy(), source=source,
                       item_labels=[list(np.flatnonzero(r)) if r.any() else None for r in y])
    head.metrics = concept_metrics(head.probabilities(x[test]), y[test], y[train])
    head.metrics.update({"items_labelled": int(len(idx)), "items_train": int(len(train)),
                         "items_heldout": int(len(test)), "concepts": len(names),
                         "holdout": holdout, "seed": seed, "min_items": min_items,
                         "train_loss": round(float(loss.detach()), 5)})
    return head


def concept_metrics(probs: np.ndarray, y: np.ndarray, y_train: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy and micro P/R/F1 at 0.5 of `probs` against labels `y`, and the same for the
    baseline that predicts the training items' most frequent concept (top-1) or every concept on
    at least half of them (F1; the single most frequent one when none is)."""
    top1 = y[np.arange(len(y)), probs.argmax(1)]
    freq = y_train.mean(0)
    base_top1 = y[:, int(freq.argmax())]
    pred = probs >= 0.5
    base = np.broadcast_to(freq >= 0.5, y.shape) if (freq >= 0.5).any() else \
        np.broadcast_to(np.arange(y.shape[1]) == freq.argmax(), y.shape)
    return {"top1_accuracy": round(float(top1.mean()), 4),
            "top1_baseline": round(float(base_top1.mean()), 4),
            **_prf(pred, y, ""), **_prf(base, y, "baseline_")}


def _prf(pred: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    tp = float((pred & (y > 0)).sum())
    p = tp / max(float(pred.sum()), 1.0)
    r = tp / max(float(y.sum()), 1.0)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {f"{prefix}precision": round(p, 4), f"{prefix}recall": round(r, 4),
            f"{prefix}f1": round(f, 4)}


def fit_run_concepts(rec: Any, concepts: dict[Any, list[str]], **options: Any) -> ConceptHead:
    """`fit_concepts` on a fitted `NextItemRecommender`'s item output vectors."""
    return fit_concepts(rec.item_embeddings(), rec.item_ids, concepts, **options)


def explain_vector(head: ConceptHead, user_vector: np.ndarray, item_vectors: np.ndarray,
                   rows: Sequence[int], n: int = 5) -> dict[str, Any]:
    """The user's top `n` concepts and, per item row of `item_vectors`, its retrieval score
    (user . item), labels, predicted concepts and shared concepts (`ConceptHead.explain`)."""
    u = np.asarray(user_vector, dtype=np.float32)
    out: dict[str, Any] = {"user_concepts": head.explain(u, None, None, n)["user_concepts"],
                           "items": []}
    for r in rows:
        v = item_vectors[int(r)]
        e = head.explain(u, v, int(r), n)
        out["items"].append({"row": int(r), "score": float(u @ v), "labels": e["item_labels"],
                             "item_concepts": e["item_concepts"], "shared": e["shared"]})
    return out


def explain_history(rec: Any, head: ConceptHead, history: Sequence[int],
                    item_rows: Sequence[int] | None = None, n: int = 5,
                    items: int = 3) -> dict[str, Any]:
    """`explain_vector` for a history of item indices of `rec` (1-based, oldest first): the
    given item rows (0-based), or the user's top `items` recommendations (history excluded)."""
    h = np.asarray(history, dtype=np.int64)
    if len(h) == 0:
        raise DataError("the history is empty; explanations need at least one item.")
    offsets = np.array([0, len(h)], dtype=np.int64)
    with torch.inference_mode():
        u = rec.encode(offsets, h).numpy()[0]
    if item_rows is None:
        _, top = rec.top_items(offsets, h, items, filter_seen=True)
        item_rows = [int(i) - 1 for i in top[0] if i > 0]
    return explain_vector(head, u, rec.item_embeddings(), item_rows, n)
