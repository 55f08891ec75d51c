"""CTR prediction over behaviour histories: the user-facing estimator.

>>> from userseq.data.datasets import load_dataset, load_item_metadata
>>> from userseq.ctr.estimator import CTREstimator, ctr_data_from
>>> data = ctr_data_from(load_dataset("ml-100k"), meta=load_item_metadata("ml-100k"))
>>> est = CTREstimator("dare", overrides={"train.epochs": 3}).fit(data)
>>> est.evaluate(data, "test")            # {'auc': ..., 'gauc': ..., 'logloss': ...}
>>> est.predict_proba(data.split("test"))  # click probabilities, one per sample
>>> est.predict_proba([{"item": 50, "history": [1, 2, 3], "history_values": [5, 3, 4]}])
>>> est.save("runs/ctr"); same = CTREstimator.load("runs/ctr")
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from userseq.core.artifacts import (
    fingerprint,
    load_ids,
    load_tensors,
    read_json,
    save_ids,
    save_tensors,
    write_json,
)
from userseq.core.errors import ArtifactError, ConfigError, DataError, UserseqError
from userseq.core.trainer import Trainer, resolve_device
from userseq.ctr.config import CTRConfig, load_ctr_config, parse_ctr_config
from userseq.ctr.data import (
    Behaviours,
    CTRData,
    Samples,
    Vocab,
    build_ctr_data,
    iter_batches,
    make_batch,
    position_buckets,
)
from userseq.ctr.models import CTRModel, build_ctr_model
from userseq.data.batches import length_bucketed_batches
from userseq.data.eventlog import EventLog, lookup_ids
from userseq.metrics.ctr import ctr_metrics

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
VOCAB_FILE = "vocab.json"
HISTORY_FILE = "histories.safetensors"


def ctr_data_from(log: EventLog, config: CTRConfig | None = None, meta: pl.DataFrame | None = None) -> CTRData:
    """CTR samples and time split from an event log with the config's data section."""
    return build_ctr_data(log, (config or CTRConfig()).data, meta)


def data_fingerprint(data: CTRData) -> str:
    b = data.behaviours
    return fingerprint(b.offsets, b.items, b.feats, b.ts, data.samples.label, extra=data.source.split(" (")[0])


class CTREstimator:
    """Click-probability model over user histories (scikit-learn style: fit / predict_proba).

    `model` is one of nohist, mean, din, sim, twin, sdim, dare; `overrides` are dotted config keys
    ({"model.top_k": 50, "train.epochs": 5}).
    """

    def __init__(self, model: str | None = None, config: CTRConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        cfg = config if isinstance(config, CTRConfig) else parse_ctr_config(config)
        over = dict(overrides or {})
        if model is not None:
            over["model.name"] = model
        self.config = cfg.updated(over) if over else cfg
        self.model: CTRModel | None = None
        self.vocab: Vocab | None = None
        self.behaviours: Behaviours | None = None
        self.cuts: tuple[float, float] | None = None
        self.data_fingerprint: str | None = None
        self.train_state: dict[str, Any] = {}
        self.data_info: dict[str, Any] | None = None
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ training
    def fit(self, data: CTRData | EventLog, meta: pl.DataFrame | None = None, run_dir: str | Path | None = None,
            resume: bool = False, quiet: bool = False) -> CTREstimator:
        """Train on the data's train split, early-stopping on its validation split (earlier in time than test)."""
        cfg = self.config
        if isinstance(data, EventLog):
            data = build_ctr_data(data, cfg.data, meta)
        train = data.split("train")
        valid = data.split("valid")
        if len(train) == 0 or len(valid) == 0:
            raise DataError(f"{data.source}: need training and validation samples (got {len(train)} and {len(valid)}).")
        if len(np.unique(train.label)) < 2:
            raise DataError(f"{data.source}: the training samples all have label {int(train.label[0])}; "
                            "CTR needs both clicks and non-clicks.")
        torch.manual_seed(cfg.train.seed)
        v = data.vocab
        model = build_ctr_model(cfg.model, v.n_items, v.n_cats, v.n_feats, v.n_users, len(v.context_cols))
        self.model, self.vocab, self.behaviours = model, v, data.behaviours
        self.cuts = (data.info["valid_cut"], data.info["test_cut"])
        self.data_fingerprint = data_fingerprint(data)
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device = trainer.device
        bs = cfg.train.batch_size
        window, n_pos = cfg.model.window, cfg.model.pos_buckets
        lengths = np.minimum(train.history_lengths, window)
        n_batches = (len(train) + bs - 1) // bs
        beh, item_cat = data.behaviours, v.item_cat

        def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            rng = np.random.default_rng(cfg.train.seed + epoch)
            for idx in length_bucketed_batches(lengths, bs, rng):
                yield make_batch(beh, train.take(idx), item_cat, window, n_pos, trainer.device)

        def loss_fn(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = m(b)
            loss = F.binary_cross_entropy_with_logits(logits.float(), b["label"])
            if m.aux_logit is not None:
                loss = loss + F.binary_cross_entropy_with_logits(m.aux_logit.float(), b["label"])
            return loss

        def validate(m: torch.nn.Module) -> dict[str, float]:
            out = self._metrics(beh, valid)
            return {"auc": out["auc"], "gauc": out["gauc"], "logloss": out["logloss"],
                    "neg_logloss": -out["logloss"]}

        t0 = time.time()
        state = trainer.fit(model, batches, n_batches, loss_fn, validate, resume)
        self.train_state = {
            "epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid": state.best_metric,
            "monitor": cfg.train.monitor, "seconds": round(time.time() - t0, 2), "stopped": state.stopped,
            "seconds_per_epoch": round(float(np.mean([h["epoch_seconds"] for h in state.history])), 2)
            if state.history else None,
            "train_samples": len(train), "valid_samples": len(valid), "device": str(trainer.device),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        }
        self.data_info = data.info
        if run_dir is not None:
            self.save(run_dir)
            write_json(state.history, Path(run_dir) / "train_log.json")
        return self

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> CTRModel:
        if self.model is None:
            raise UserseqError("this CTR model is not fitted yet; call fit(data) or CTREstimator.load(run_dir).")
        return self.model

    @torch.no_grad()
    def _predict(self, beh: Behaviours, s: Samples, batch_size: int = 2048) -> np.ndarray:
        model = self._check_fitted()
        model.eval()
        out = np.empty(len(s), dtype=np.float64)
        cfg = self.config.model
        for idx, b in iter_batches(beh, s, self.vocab.item_cat, cfg.window, cfg.pos_buckets, batch_size,
                                   self.device):
            out[idx] = torch.sigmoid(model(b).float()).cpu().numpy()
        return out

    def _metrics(self, beh: Behaviours, s: Samples) -> dict[str, float]:
        return ctr_metrics(s.label, self._predict(beh, s), s.user)

    def predict_proba(self, X: CTRData | Samples | Sequence[Mapping[str, Any]] | pl.DataFrame,
                      split: str = "test") -> np.ndarray:
        """Click probabilities, one per sample (a 1-D array).

        X is a `CTRData` (its `split` samples: train | valid | test | all), or requests: a list of
        dicts / a DataFrame with `item` and either `history` (item ids, oldest first) or `user`
        (a training user: their stored history), plus optional `history_values` (ratings or labels
        of the history events), `timestamp` and `history_timestamps` (history events must be
        strictly before the timestamp), and `context` (dict of the context columns).
        """
        self._check_fitted()
        if isinstance(X, CTRData):
            self._check_vocab(X)
            return self._predict(X.behaviours, X.split(split))
        if isinstance(X, Samples):
            return self._predict(self.behaviours, X)
        if isinstance(X, pl.DataFrame):
            X = X.to_dicts()
        beh, s = self.requests_to_samples(list(X))
        return self._predict(beh, s)

    def evaluate(self, data: CTRData, split: str = "test") -> dict[str, float]:
        """AUC, GAUC (by user, impression-weighted), logloss and counts on one split of `data`."""
        self._check_fitted()
        self._check_vocab(data)
        s = data.split(split)
        if len(s) == 0:
            raise DataError(f"{data.source}: the {split} split is empty.")
        t0 = time.perf_counter()
        p = self._predict(data.behaviours, s)
        sec = time.perf_counter() - t0
        out = ctr_metrics(s.label, p, s.user)
        out["samples_per_second"] = round(len(s) / max(sec, 1e-9), 1)
        return out

    def report(self, data: CTRData) -> dict[str, Any]:
        """The metrics.json content: valid and test metrics, protocol, training figures, data."""
        return {
            "valid": self.evaluate(data, "valid"), "test": self.evaluate(data, "test"),
            "model": self.config.model.name, "gauc": "grouped by user, weighted by impressions",
            "split": {k: data.info.get(k) for k in ("split", "valid_cut", "test_cut", "train_samples",
                                                     "valid_samples", "test_samples")},
            "train": self.train_state, "data": {**data.info, "fingerprint": data_fingerprint(data)},
        }

    def _check_vocab(self, data: CTRData) -> None:
        v = self.vocab
        if data.vocab is not v and (data.vocab.n_items != v.n_items or not data.vocab.item_ids.equals(v.item_ids)):
            raise DataError(f"{data.source}: built with another item catalogue than this model's; build it with "
                            "build_ctr_data(log, config.data, vocab=estimator.vocab).")

    def data_for(self, log: EventLog, meta: pl.DataFrame | None = None, same_split: bool = True) -> CTRData:
        """Samples from a new log read with this model's vocabulary (unknown items are an error);
        `same_split` reuses the training run's split times."""
        self._check_fitted()
        return build_ctr_data(log, self.config.data, meta, vocab=self.vocab, cuts=self.cuts if same_split else None)

    # ------------------------------------------------------------------ requests
    def requests_to_samples(self, requests: list[Mapping[str, Any]]) -> tuple[Behaviours, Samples]:
        """Behaviours and samples for explicit scoring requests (see `predict_proba`)."""
        v = self.vocab
        if not requests:
            raise DataError("no requests to score.")
        n = len(requests)
        items = v.item_index([_get(r, "item", i) for i, r in enumerate(requests)], "candidate item")
        users = np.zeros(n, dtype=np.int64)
        ts = np.full(n, np.inf)
        hist_items: list[np.ndarray] = []
        hist_feats: list[np.ndarray] = []
        hist_ts: list[np.ndarray] = []
        ctx = np.zeros((n, len(v.context_cols)), dtype=np.float64)
        for i, r in enumerate(requests):
            if r.get("timestamp") is not None:
                ts[i] = float(r["timestamp"])
            if r.get("user") is not None:
                u = int(lookup_ids(v.user_ids, [r["user"]], offset=1)[0])
                users[i] = u
            if r.get("history") is not None:
                h = list(r["history"])
                hi = v.item_index(h, "history item") if h else np.zeros(0, dtype=np.int64)
                vals = r.get("history_values")
                if vals is None:
                    hf = np.zeros(len(h), dtype=np.int64)  # no value: the feature embedding is left out
                else:
                    if len(vals) != len(h):
                        raise DataError(f"request #{i}: history_values has {len(vals)} entries for {len(h)} history "
                                        "items; give one value per history event.")
                    hf = v.feature_buckets(np.asarray(vals, dtype=np.float64))
                htimes = r.get("history_timestamps")
                if htimes is not None:
                    ht = np.asarray(htimes, dtype=np.float64)
                    if len(ht) != len(h):
                        raise DataError(f"request #{i}: history_timestamps has {len(ht)} entries for {len(h)} "
                                        "history items.")
                    if np.isfinite(ts[i]) and (ht >= ts[i]).any():
                        bad = int((ht >= ts[i]).sum())
                        raise DataError(
                            f"request #{i}: {bad} history event(s) at or after the target's timestamp {r['timestamp']} "
                            f"(latest {ht.max()}); a history may only hold earlier events (no future leakage)."
                        )
                    order = np.argsort(ht, kind="stable")
                    hi, hf, ht = hi[order], hf[order], ht[order]
                else:
                    ht = np.full(len(h), -np.inf)
            elif users[i] > 0 and self.behaviours is not None:
                b = self.behaviours
                lo, hi_end = b.offsets[users[i] - 1], b.offsets[users[i]]
                end = lo + int(np.searchsorted(b.ts[lo:hi_end], ts[i], side="left"))  # strictly before
                hi, hf, ht = b.items[lo:end], b.feats[lo:end], b.ts[lo:end]
            else:
                raise DataError(f"request #{i}: give a 'history' (item ids, oldest first) or a known 'user'"
                                + (f" ({r.get('user')!r} is not a training user)" if r.get("user") is not None else "")
                                + ".")
            hist_items.append(hi)
            hist_feats.append(hf)
            hist_ts.append(ht)
            c = r.get("context") or {}
            missing = [col for col in v.context_cols if col not in c]
            if missing:
                raise DataError(f"request #{i}: missing context feature(s) {missing}.")
            ctx[i] = [float(c[col]) for col in v.context_cols]
        lengths = np.array([len(h) for h in hist_items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        beh = Behaviours(offsets, np.concatenate(hist_items).astype(np.int64),
                         np.concatenate(hist_feats).astype(np.int64), np.concatenate(hist_ts))
        if len(v.context_cols):
            ctx = (ctx - v.context_mean) / v.context_std
        s = Samples(users, items, ts, offsets[:-1].copy(), offsets[1:].copy(), np.zeros(n, dtype=np.float32),
                    ctx.astype(np.float32))
        return beh, s

    @torch.no_grad()
    def score_candidates(self, history: Sequence[Any], candidates: Sequence[Any],
                         history_values: Sequence[float] | None = None, user: Any = None,
                         context: Mapping[str, float] | None = None) -> np.ndarray:
        """Probabilities of many candidate items for one history (ranking): the history is encoded
        once (SDIM: bucket sums; search models: keys and values) and the candidates are scored in
        chunks. Ids are original ids."""
        model = self._check_fitted()
        model.eval()
        beh, s = self.requests_to_samples([{"item": candidates[0], "history": list(history),
                                            "history_values": history_values, "user": user,
                                            "context": context}])
        return self._score_candidates(beh, s, self.vocab.item_index(list(candidates), "candidate item"))

    @torch.no_grad()
    def _score_candidates(self, beh: Behaviours, s: Samples, cand: np.ndarray) -> np.ndarray:
        model = self._check_fitted()
        cfg = self.config.model
        b = make_batch(beh, s, self.vocab.item_cat, cfg.window, cfg.pos_buckets, self.device)
        hist_keys = ("hist_item", "hist_cat", "hist_feat", "hist_pos", "mask")
        state = model.encode_history({k: b[k] for k in hist_keys})
        chunk = model.candidate_chunk(int(b["hist_item"].shape[1]))
        out = np.empty(len(cand), dtype=np.float64)
        cand_t = torch.from_numpy(cand).to(self.device)
        item_cat = torch.from_numpy(self.vocab.item_cat).to(self.device)
        for i in range(0, len(cand), chunk):
            c = cand_t[i : i + chunk]
            n = len(c)
            cb = {"item": c, "cat": item_cat[c], "user": b["user"].expand(n), "context": b["context"].expand(n, -1)}
            out[i : i + n] = torch.sigmoid(model.score_state(state, cb).float()).cpu().numpy()
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path) -> Path:
        model = self._check_fitted()
        d = Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(self.config.to_yaml())
        v = self.vocab
        meta = {"task": "ctr", "model": self.config.model.name, "n_items": str(v.n_items),
                "n_users": str(v.n_users), "n_cats": str(v.n_cats), "n_feats": str(v.n_feats),
                "data_fingerprint": self.data_fingerprint or "", "userseq_version": _version()}
        save_tensors(model.state_dict(), d / MODEL_FILE, meta)
        save_ids(v.item_ids, d / "item_ids.parquet")
        save_ids(v.user_ids, d / "user_ids.parquet")
        pl.DataFrame({"item_index": np.arange(v.n_items + 1), "category": v.item_cat}).write_parquet(
            d / "item_categories.parquet")
        write_json({"categories": v.cat_names, "feature_edges": v.feat_edges.tolist(), "context_cols": v.context_cols,
                    "context_mean": v.context_mean.tolist(), "context_std": v.context_std.tolist(),
                    "cuts": list(self.cuts) if self.cuts else None}, d / VOCAB_FILE)
        b = self.behaviours
        if b is not None:
            save_tensors({"offsets": torch.from_numpy(b.offsets), "items": torch.from_numpy(b.items),
                          "feats": torch.from_numpy(b.feats), "ts": torch.from_numpy(b.ts)}, d / HISTORY_FILE)
        write_json({"task": "ctr", "train": self.train_state, "data_fingerprint": self.data_fingerprint,
                    "data": getattr(self, "data_info", None)}, d / "run.json")
        return d

    @classmethod
    def load(cls, run_dir: str | Path) -> CTREstimator:
        d = Path(run_dir)
        if not d.is_dir():
            raise ArtifactError(f"{d}: run directory not found.")
        try:
            cfg = load_ctr_config(d / CONFIG_FILE)
        except ConfigError as e:
            raise ArtifactError(f"{d}: bad or missing {CONFIG_FILE} (is this a `userseq ctr train` run?): {e}") from None
        tensors, meta = load_tensors(d / MODEL_FILE)
        if meta.get("task") != "ctr":
            raise ArtifactError(f"{d}: not a CTR run (model task {meta.get('task')!r}); use `userseq ctr train`.")
        est = cls(config=cfg)
        vj = read_json(d / VOCAB_FILE)
        cats = pl.read_parquet(d / "item_categories.parquet")["category"].to_numpy().astype(np.int64)
        est.vocab = Vocab(load_ids(d / "item_ids.parquet"), load_ids(d / "user_ids.parquet"), cats, vj["categories"],
                          np.asarray(vj["feature_edges"], dtype=np.float64), list(vj["context_cols"]),
                          np.asarray(vj["context_mean"], dtype=np.float64),
                          np.asarray(vj["context_std"], dtype=np.float64))
        v = est.vocab
        if int(meta.get("n_items", v.n_items)) != v.n_items or len(cats) != v.n_items + 1:
            raise ArtifactError(f"{d}: item_ids.parquet / item_categories.parquet do not match the model.")
        model = build_ctr_model(cfg.model, v.n_items, v.n_cats, v.n_feats, v.n_users, len(v.context_cols))
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match config.yaml: {str(e).splitlines()[0]}") from None
        est.device = resolve_device(cfg.train.device)
        est.model = model.to(est.device).eval()
        est.cuts = tuple(vj["cuts"]) if vj.get("cuts") else None
        if (d / HISTORY_FILE).exists():
            h, _ = load_tensors(d / HISTORY_FILE)
            est.behaviours = Behaviours(h["offsets"].numpy(), h["items"].numpy(), h["feats"].numpy(), h["ts"].numpy())
        est.data_fingerprint = meta.get("data_fingerprint") or None
        if (d / "run.json").exists():
            run = read_json(d / "run.json")
            est.train_state = run.get("train", {})
            est.data_info = run.get("data")
        return est


def _get(r: Mapping[str, Any], key: str, i: int) -> Any:
    if not isinstance(r, Mapping):
        raise DataError(f"request #{i}: expected a mapping with 'item' and 'history' or 'user' (got {type(r).__name__}).")
    if r.get(key) is None:
        raise DataError(f"request #{i}: missing '{key}'.")
    return r[key]


def _version() -> str:
    from userseq.core.version import __version__

    return __version__


__all__ = ["CTREstimator", "ctr_data_from", "data_fingerprint", "position_buckets"]
