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

from userseq.core import distributed
from userseq.core.artifacts import (
    fingerprint,
    load_ids,
    load_tensors,
    read_json,
    save_ids,
    save_tensors,
    write_json,
    write_parquet,
)
from userseq.core.errors import ArtifactError, DataError
from userseq.core.estimator import Estimator
from userseq.core.trainer import Trainer, TrainState, resolve_device
from userseq.core.version import __version__
from userseq.ctr.config import CTRConfig
from userseq.ctr.data import (
    Behaviours,
    CTRData,
    Samples,
    Vocab,
    build_ctr_data,
    iter_batches,
    make_batch,
)
from userseq.ctr.models import CTRModel, build_ctr_model
from userseq.ctr.requests import (
    ScoringJob,
    jobs_to_samples,
    requests_to_samples,
    stored_history,
)
from userseq.data.batches import length_bucketed_batches
from userseq.data.eventlog import EventLog
from userseq.metrics.ctr import bootstrap_ctr, ctr_by_history, ctr_metrics

MODEL_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
HISTORY_FILE = "histories.safetensors"
RUN_FILE = "run.json"
HISTORY_KEYS = ("hist_item", "hist_cat", "hist_feat", "hist_pos", "mask")


def ctr_data_from(log: EventLog, config: CTRConfig | None = None,
                  meta: pl.DataFrame | None = None) -> CTRData:
    """CTR samples and time split from an event log with the config's data section."""
    return build_ctr_data(log, (config or CTRConfig()).data, meta)


def data_fingerprint(data: CTRData) -> str:
    b = data.behaviours
    return fingerprint(b.offsets, b.items, b.feats, b.ts, data.samples.label,
                       extra=data.source.split(" (")[0])


class CTREstimator(Estimator[CTRConfig]):
    """Click-probability model over user histories (scikit-learn style: fit / predict_proba).

    `model` is one of nohist, mean, din, sim, twin, sdim, dare, awmoe (a shortcut for the override
    `model.name`); `overrides` are dotted config keys ({"model.top_k": 50, "train.epochs": 5}).
    Fitted state: `model_` (the network), `vocab_` (ids, categories, feature buckets),
    `behaviours_` (the training histories), `cuts_` (the split times), `data_fingerprint_`,
    `train_state_` and `data_info_`.
    """

    task = "ctr"
    config_class = CTRConfig
    fitted_attribute = "model_"

    def __init__(self, model: str | None = None, config: CTRConfig | dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        over = dict(overrides or {})
        if model is not None:
            over["model.name"] = model
        super().__init__(config, over)
        self.model_: CTRModel | None = None
        self.vocab_: Vocab | None = None
        self.behaviours_: Behaviours | None = None
        self.cuts_: tuple[float, float] | None = None
        self.data_fingerprint_: str | None = None
        self.train_state_: dict[str, Any] = {}
        self.data_info_: dict[str, Any] | None = None
        self.device_ = torch.device("cpu")

    # ------------------------------------------------------------------ training
    def fit(self, data: CTRData | EventLog, meta: pl.DataFrame | None = None,
            run_dir: str | Path | None = None, resume: bool = False,
            quiet: bool = False) -> CTREstimator:
        """Train on the data's train split, early-stopping on its validation split (earlier in
        time than test). With `run_dir`, checkpoints go there (`resume` continues from the last
        one) and the fitted run is saved there."""
        cfg = self.config
        if isinstance(data, EventLog):
            data = build_ctr_data(data, cfg.data, meta)
        train, valid = _check_trainable(data)
        torch.manual_seed(cfg.train.seed)
        v = data.vocab
        model = build_ctr_model(cfg.model, v.n_items, v.n_cats, v.n_feats, v.n_users,
                                len(v.context_cols))
        self.model_, self.vocab_, self.behaviours_ = model, v, data.behaviours
        cut = (data.info.get("valid_cut"), data.info.get("test_cut"))
        self.cuts_ = cut if cut[0] is not None else None  # a per-user split has no cut times
        self.data_fingerprint_ = data_fingerprint(data)
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device_ = trainer.device

        def validate(m: torch.nn.Module) -> dict[str, float]:
            out = self._metrics(data.behaviours, valid)
            return {"auc": out["auc"], "gauc": out["gauc"], "logloss": out["logloss"],
                    "neg_logloss": -out["logloss"]}

        t0 = time.time()
        n_batches = (len(train) + cfg.train.batch_size - 1) // cfg.train.batch_size
        state = trainer.fit(model, self._batches(data, train), n_batches, _bce_loss, validate,
                            resume)
        self.train_state_ = self._summary(state, time.time() - t0, len(train), len(valid))
        self.data_info_ = data.info
        if run_dir is not None and distributed.is_main():  # rank 0 writes; save last: it
            # writes the run's completion marker
            write_json(state.history, Path(run_dir) / "train_log.json")
            self.save(run_dir)
        return self

    def _batches(self, data: CTRData, train: Samples) -> Any:
        """The trainer's `batches(epoch)`: length-bucketed, shuffled by `train.seed + epoch`."""
        cfg, device = self.config, self.device_
        window, n_pos, bs = cfg.model.window, cfg.model.pos_buckets, cfg.train.batch_size
        lengths = np.minimum(train.history_lengths, window)
        item_cat = data.vocab.item_cat

        def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            rng = np.random.default_rng(cfg.train.seed + epoch)
            for idx in length_bucketed_batches(lengths, bs, rng):
                yield make_batch(data.behaviours, train.take(idx), item_cat, window, n_pos, device)

        return batches

    def _summary(self, state: TrainState, seconds: float, n_train: int,
                 n_valid: int) -> dict[str, Any]:
        per_epoch = [h["epoch_seconds"] for h in state.history]
        model = self.check_is_fitted()
        return {
            "epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid": state.best_metric,
            "monitor": self.config.train.monitor, "seconds": round(seconds, 2),
            "stopped": state.stopped,
            "seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
            "train_samples": n_train, "valid_samples": n_valid, "device": str(self.device_),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        }

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _predict(self, beh: Behaviours, s: Samples, batch_size: int = 2048) -> np.ndarray:
        model = self.check_is_fitted()
        model.eval()
        out = np.empty(len(s), dtype=np.float64)
        cfg = self.config.model
        for idx, b in iter_batches(beh, s, self.vocab_.item_cat, cfg.window, cfg.pos_buckets,
                                   batch_size, self.device_):
            out[idx] = torch.sigmoid(model(b).float()).cpu().numpy()
        return out

    def _metrics(self, beh: Behaviours, s: Samples) -> dict[str, float]:
        return ctr_metrics(s.label, self._predict(beh, s), s.user)

    def predict_proba(self, X: CTRData | Samples | Sequence[Mapping[str, Any]] | pl.DataFrame,
                      split: str = "test") -> np.ndarray:
        """Click probabilities, one per sample (a 1-D array).

        X is a `CTRData` (its `split` samples: train | valid | test | all), or requests: a list of
        dicts / a DataFrame with `item` and either `history` (item ids, oldest first) or `user`
        (a training user: their stored history), plus optional `history_values` (ratings or
        labels of the history events), `timestamp` and `history_timestamps` (history events must
        be strictly before the timestamp), and `context` (dict of the context columns).
        """
        self.check_is_fitted()
        if isinstance(X, CTRData):
            self._check_vocab(X)
            return self._predict(X.behaviours, X.split(split))
        if isinstance(X, Samples):
            return self._predict(self.behaviours_, X)
        if isinstance(X, pl.DataFrame):
            X = X.to_dicts()
        beh, s = self.requests_to_samples(list(X))
        return self._predict(beh, s)

    def evaluate(self, data: CTRData, split: str = "test") -> dict[str, float]:
        """AUC, GAUC (by user, impression-weighted), logloss and counts on one split of `data`,
        with 95% bootstrap intervals over users (`ci95`) and AUC/GAUC per history-length bucket
        (`by_history`: cold users, 0-19 events, apart from warm ones)."""
        self.check_is_fitted()
        self._check_vocab(data)
        s = data.split(split)
        if len(s) == 0:
            raise DataError(f"{data.source}: the {split} split is empty.")
        t0 = time.perf_counter()
        p = self._predict(data.behaviours, s)
        sec = time.perf_counter() - t0
        out: dict[str, Any] = ctr_metrics(s.label, p, s.user)
        out["samples_per_second"] = round(len(s) / max(sec, 1e-9), 1)
        # bootstrap over the log's users (Samples.user is 0 for users unknown to the model)
        owner = np.searchsorted(data.behaviours.offsets, s.start, side="right")
        out["ci95"] = bootstrap_ctr(s.label, p, owner, n_boot=200, seed=0)
        out["by_history"] = ctr_by_history(s.label, p, owner, s.history_lengths)
        return out

    def report(self, data: CTRData) -> dict[str, Any]:
        """The metrics.json content: valid and test metrics, protocol, training figures, data."""
        split_keys = ("split", "valid_cut", "test_cut", "train_samples", "valid_samples",
                      "test_samples")
        return {
            "valid": self.evaluate(data, "valid"), "test": self.evaluate(data, "test"),
            "model": self.config.model.name, "gauc": "grouped by user, weighted by impressions",
            "split": {k: data.info.get(k) for k in split_keys},
            "train": self.train_state_,
            "data": {**data.info, "fingerprint": data_fingerprint(data)},
        }

    def _check_vocab(self, data: CTRData) -> None:
        v = self.vocab_
        if data.vocab is not v and (data.vocab.n_items != v.n_items
                                    or not data.vocab.item_ids.equals(v.item_ids)):
            raise DataError(f"{data.source}: built with another item catalogue than this model's; "
                            "build it with build_ctr_data(log, config.data, "
                            "vocab=estimator.vocab_).")

    def data_for(self, log: EventLog, meta: pl.DataFrame | None = None,
                 same_split: bool = True) -> CTRData:
        """Samples from a new log read with this model's vocabulary (unknown items are an error);
        `same_split` reuses the training run's split times."""
        self.check_is_fitted()
        return build_ctr_data(log, self.config.data, meta, vocab=self.vocab_,
                              cuts=self.cuts_ if same_split else None)

    # ------------------------------------------------------------------ requests
    def requests_to_samples(self, requests: list[Mapping[str, Any]]) -> tuple[Behaviours, Samples]:
        """Behaviours and samples for explicit scoring requests (see `predict_proba`)."""
        self.check_is_fitted()
        return requests_to_samples(requests, self.vocab_, self.behaviours_)

    def score_request(self, request: Mapping[str, Any], candidates: Sequence[Any]) -> np.ndarray:
        """Probabilities of many candidate items (original ids) for one request (`user` and/or
        `history`, `history_values`, `history_timestamps`, `timestamp`, `context`: see
        `predict_proba`); the history is encoded once (SDIM: bucket sums; search models: keys and
        values) and the candidates are scored in chunks."""
        return self._score_candidates(*self.request_samples(request, candidates))

    def request_samples(self, request: Mapping[str, Any], candidates: Sequence[Any]
                        ) -> tuple[Behaviours, Samples, np.ndarray]:
        """The request's history (one sample) and the candidates' item indices."""
        if len(candidates) == 0:
            raise DataError("no candidate items to score.")
        beh, s = self.requests_to_samples([{**request, "item": candidates[0]}])
        cand = self.vocab_.item_index(list(candidates), "candidate item")
        return beh, s, cand

    def score_candidates(self, history: Sequence[Any], candidates: Sequence[Any],
                         history_values: Sequence[float] | None = None, user: Any = None,
                         context: Mapping[str, float] | None = None) -> np.ndarray:
        """Probabilities of many candidate items for one history (see `score_request`)."""
        return self.score_request({"history": list(history), "history_values": history_values,
                                   "user": user, "context": context}, candidates)

    def score_jobs(self, jobs: Sequence[ScoringJob]) -> list[np.ndarray]:
        """Probabilities of each job's candidates (`ScoringJob`: a history, user and candidates
        already in the model's indices), all jobs in one forward pass: the histories are padded
        into one batch and encoded once each, the candidates of every job scored together (each
        against its own history). Equal to scoring the jobs one by one (to float rounding)."""
        self.check_is_fitted()
        beh, s = jobs_to_samples(jobs, self.vocab_)
        return self._score_many(beh, s, [np.asarray(j.candidates, dtype=np.int64) for j in jobs])

    def stored_history(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A training user's whole stored history (user index 1..n) as a `ScoringJob` history."""
        if self.behaviours_ is None:
            raise DataError("this CTR run has no stored histories; send a `history`.")
        return stored_history(self.behaviours_, user)

    def _score_candidates(self, beh: Behaviours, s: Samples, cand: np.ndarray) -> np.ndarray:
        """Probabilities of candidates `cand` for the one sample `s` (its history)."""
        return self._score_many(beh, s, [cand])[0]

    @torch.no_grad()
    def _score_many(self, beh: Behaviours, s: Samples, cands: list[np.ndarray]
                    ) -> list[np.ndarray]:
        """Probabilities of `cands[i]` against the history of sample i, for every sample at once:
        one `make_batch` of the histories, `encode_history` once, then the concatenated
        candidates in chunks, each naming its history (`hist_row`; one history: none)."""
        model = self.check_is_fitted()
        if model.training:
            model.eval()
        cfg, device = self.config.model, self.device_
        b = make_batch(beh, s, self.vocab_.item_cat, cfg.window, cfg.pos_buckets, device)
        state = model.encode_history({k: b[k] for k in HISTORY_KEYS})
        chunk = model.candidate_chunk(int(b["hist_item"].shape[1]))
        lengths = [len(c) for c in cands]
        cand = np.concatenate(cands).astype(np.int64)
        out = np.empty(len(cand), dtype=np.float64)
        cand_t = torch.from_numpy(cand).to(device)
        rows_t = torch.from_numpy(np.repeat(np.arange(len(cands)), lengths)).to(device)
        item_cat = torch.from_numpy(self.vocab_.item_cat).to(device)
        for i in range(0, len(cand), chunk):
            c = cand_t[i : i + chunk]
            n = len(c)
            if len(cands) == 1:
                cb = {"item": c, "cat": item_cat[c], "user": b["user"].expand(n),
                      "context": b["context"].expand(n, -1)}
            else:
                r = rows_t[i : i + chunk]
                cb = {"item": c, "cat": item_cat[c], "user": b["user"][r],
                      "context": b["context"][r], "hist_row": r}
            out[i : i + n] = torch.sigmoid(model.score_state(state, cb).float()).cpu().numpy()
        return np.split(out, np.cumsum(lengths)[:-1])

    # ------------------------------------------------------------------ persistence
    def _save_state(self, d: Path) -> None:
        """The format-1 files, unchanged: weights (task in their metadata), id maps, categories,
        vocab.json, the training histories and run.json."""
        model, v = self.check_is_fitted(), self.vocab_
        meta = {"task": "ctr", "model": self.config.model.name, "n_items": str(v.n_items),
                "n_users": str(v.n_users), "n_cats": str(v.n_cats), "n_feats": str(v.n_feats),
                "data_fingerprint": self.data_fingerprint_ or "", "userseq_version": __version__}
        save_tensors(model.state_dict(), d / MODEL_FILE, meta)
        save_ids(v.item_ids, d / "item_ids.parquet")
        save_ids(v.user_ids, d / "user_ids.parquet")
        cats = pl.DataFrame({"item_index": np.arange(v.n_items + 1), "category": v.item_cat})
        write_parquet(cats, d / "item_categories.parquet")
        write_json({"categories": v.cat_names, "feature_edges": v.feat_edges.tolist(),
                    "context_cols": v.context_cols, "context_mean": v.context_mean.tolist(),
                    "context_std": v.context_std.tolist(),
                    "cuts": list(self.cuts_) if self.cuts_ else None}, d / VOCAB_FILE)
        b = self.behaviours_
        if b is not None:
            arrays = {"offsets": b.offsets, "items": b.items, "feats": b.feats, "ts": b.ts}
            save_tensors({k: torch.from_numpy(a) for k, a in arrays.items()}, d / HISTORY_FILE)
        write_json({"task": "ctr", "train": self.train_state_,
                    "data_fingerprint": self.data_fingerprint_, "data": self.data_info_},
                   d / RUN_FILE)

    def _load_state(self, d: Path) -> None:
        tensors, meta = load_tensors(d / MODEL_FILE)
        if meta.get("task") != "ctr":
            raise ArtifactError(f"{d}: not a CTR run (model task {meta.get('task')!r}); "
                                "train one with `userseq ctr train`.")
        self.vocab_ = v = _read_vocab(d)
        if int(meta.get("n_items", v.n_items)) != v.n_items:
            raise ArtifactError(f"{d}: item_ids.parquet / item_categories.parquet do not match "
                                "the model.")
        cfg = self.config
        model = build_ctr_model(cfg.model, v.n_items, v.n_cats, v.n_feats, v.n_users,
                                len(v.context_cols))
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match config.yaml: "
                                f"{str(e).splitlines()[0]}") from None
        self.device_ = resolve_device(cfg.train.device)
        self.model_ = model.to(self.device_).eval()
        self.cuts_ = tuple(read_json(d / VOCAB_FILE).get("cuts") or ()) or None
        if (d / HISTORY_FILE).exists():
            h, _ = load_tensors(d / HISTORY_FILE)
            self.behaviours_ = Behaviours(h["offsets"].numpy(), h["items"].numpy(),
                                          h["feats"].numpy(), h["ts"].numpy())
        self.data_fingerprint_ = meta.get("data_fingerprint") or None
        if (d / RUN_FILE).exists():
            run = read_json(d / RUN_FILE)
            self.train_state_ = run.get("train", {})
            self.data_info_ = run.get("data")


def _check_trainable(data: CTRData) -> tuple[Samples, Samples]:
    """The train and validation samples; both must exist and the labels must not be constant."""
    train, valid = data.split("train"), data.split("valid")
    if len(train) == 0 or len(valid) == 0:
        raise DataError(f"{data.source}: need training and validation samples (got {len(train)} "
                        f"and {len(valid)}).")
    if len(np.unique(train.label)) < 2:
        raise DataError(f"{data.source}: the training samples all have label "
                        f"{int(train.label[0])}; CTR needs both clicks and non-clicks.")
    return train, valid


def _bce_loss(m: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy on the logit (plus the auxiliary attention logit of twin/dare)."""
    loss = F.binary_cross_entropy_with_logits(m(b).float(), b["label"])
    if m.aux_logit is not None:
        loss = loss + F.binary_cross_entropy_with_logits(m.aux_logit.float(), b["label"])
    extra = getattr(m, "aux_loss", None)  # AW-MoE: contrastive loss on the gate outputs
    if extra is not None:
        loss = loss + extra
    return loss


def _read_vocab(d: Path) -> Vocab:
    vj = read_json(d / VOCAB_FILE)
    cats = pl.read_parquet(d / "item_categories.parquet")["category"].to_numpy().astype(np.int64)
    v = Vocab(load_ids(d / "item_ids.parquet"), load_ids(d / "user_ids.parquet"), cats,
              vj["categories"], np.asarray(vj["feature_edges"], dtype=np.float64),
              list(vj["context_cols"]), np.asarray(vj["context_mean"], dtype=np.float64),
              np.asarray(vj["context_std"], dtype=np.float64))
    if len(cats) != v.n_items + 1:
        raise ArtifactError(f"{d}: item_ids.parquet / item_categories.parquet do not match the "
                            "model.")
    return v


__all__ = ["CTREstimator", "ctr_data_from", "data_fingerprint"]
