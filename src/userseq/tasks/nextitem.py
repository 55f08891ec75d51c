"""Next-item recommendation: the user-facing estimator (fit / recommend / embeddings / save / load)."""

from __future__ import annotations

import resource
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.artifacts import (
    fingerprint,
    load_ids,
    load_tensors,
    read_json,
    save_ids,
    save_tensors,
    write_json,
)
from userseq.config import RunConfig, load_config, parse_config
from userseq.data.batches import csr_take, length_bucketed_batches, pad_left, training_windows
from userseq.data.eventlog import EventLog, lookup_ids
from userseq.data.split import EvalSet, Split, make_split
from userseq.encoders import SequenceEncoder, build_encoder
from userseq.errors import ArtifactError, ConfigError, UserseqError
from userseq.eval.ranking import evaluate, matrix_scorer, popularity_scorer, repeat_scorer, scan_catalogue
from userseq.objectives.nextitem import NextItemLoss
from userseq.train.loop import Trainer, resolve_device

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def data_fingerprint(log: EventLog) -> str:
    offsets, items = log.sequences()
    return fingerprint(offsets, items, extra=f"{log.n_users}:{log.n_items}")


class NextItemRecommender:
    """Sequential recommender in the scikit-learn style.

    >>> rec = NextItemRecommender("sasrec", overrides={"train.epochs": 20}).fit(log)
    >>> rec.recommend(["user-1"], k=10)            # known users: from their full history
    >>> rec.recommend_history([["item-a", "item-b"]])  # anyone: from an explicit history
    """

    def __init__(self, model: str | None = None, config: RunConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        cfg = config if isinstance(config, RunConfig) else parse_config(config)
        over = dict(overrides or {})
        if model is not None:
            over["model.name"] = model
        self.config = cfg.updated(over, source="NextItemRecommender arguments") if over else cfg
        self.encoder: SequenceEncoder | None = None
        self.user_ids: pl.Series | None = None
        self.item_ids: pl.Series | None = None
        self.histories: tuple[np.ndarray, np.ndarray] | None = None
        self.data_fingerprint: str | None = None
        self.train_state: dict[str, Any] = {}
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ training
    def fit(self, log: EventLog, split: Split | None = None, run_dir: str | Path | None = None,
            resume: bool = False, quiet: bool = False) -> NextItemRecommender:
        cfg = self.config
        split = split or make_split(log, cfg.data.split, **_split_kw(cfg))
        torch.manual_seed(cfg.train.seed)
        encoder = build_encoder(cfg.model, log.n_items)
        self.encoder, self.user_ids, self.item_ids = encoder, log.user_ids, log.item_ids
        self.histories = log.sequences()
        self.data_fingerprint = data_fingerprint(log)
        rows = training_windows(split.train_offsets, split.train_items, cfg.model.max_len)
        if len(rows) == 0:
            raise UserseqError(f"{log.source}: no training sequence has 2 or more events; nothing to learn from.")
        # popularity for negative sampling comes from the training events only (no test leakage)
        loss = NextItemLoss(cfg.loss, log.n_items, np.bincount(split.train_items, minlength=log.n_items + 1))
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device = trainer.device
        bs = cfg.train.batch_size
        n_batches = (len(rows) + bs - 1) // bs
        rows_t = torch.from_numpy(rows)
        lengths = (rows > 0).sum(1)

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            rng = np.random.default_rng(cfg.train.seed + epoch)
            rows_e = rows_t
            if cfg.data.train_windows == "random":
                rows_e = torch.from_numpy(training_windows(split.train_offsets, split.train_items,
                                                           cfg.model.max_len, rng=rng))
            for idx in length_bucketed_batches(lengths, bs, rng):
                width = int(lengths[idx].max())  # rows are left-padded: trim the all-padding columns
                yield rows_e[torch.from_numpy(idx)][:, -width:].to(trainer.device, non_blocking=True)

        valid = split.valid
        if cfg.train.valid_users and len(valid) > cfg.train.valid_users:
            pick = np.sort(np.random.default_rng(cfg.train.seed).choice(len(valid), cfg.train.valid_users, replace=False))
            valid = _subset(valid, pick)

        def validate(model: torch.nn.Module) -> dict[str, float]:
            return self._evaluate(valid, cfg.eval.ks, cfg.eval.filter_seen)

        state = trainer.fit(encoder, batches, n_batches, lambda m, b: self._loss(m, b, loss), validate, resume)
        self.train_state = {
            "epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid": state.best_metric,
            "seconds": round(state.seconds, 2), "stopped": state.stopped,
            "seconds_per_epoch": round(float(np.mean([h["epoch_seconds"] for h in state.history])), 2)
            if state.history else None,
            "train_sequences": int(len(rows)), "device": str(trainer.device),
            "precision": str(trainer.autocast_dtype or torch.float32).replace("torch.", ""),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        }
        if run_dir is not None:
            self.save(run_dir)
            write_json(state.history, Path(run_dir) / "train_log.json")
            write_json(self.report(log, split), Path(run_dir) / "metrics.json")
        return self

    def _loss(self, model: SequenceEncoder, rows: torch.Tensor, loss: NextItemLoss) -> torch.Tensor:
        W = model.items.output_matrix()
        if model.causal:
            inputs, targets = rows[:, :-1], rows[:, 1:]
            mask = inputs > 0
            h = model(inputs, mask)
            sel = mask & (targets > 0)
            return loss(h[sel], targets[sel], W)
        # masked-item (Cloze) objective: hide a random share of real positions, predict them
        x = rows[:, 1:]
        real = x > 0
        hide = (torch.rand(x.shape, device=x.device) < self.config.model.mask_prob) & real
        none = ~hide.any(1)
        hide[none, -1] = real[none, -1]  # every row predicts at least its last item
        inputs = torch.where(hide, torch.full_like(x, model.mask_token()), x)
        h = model(inputs, real)
        return loss(h[hide], x[hide], W)

    # ------------------------------------------------------------------ encoding
    def _check_fitted(self) -> SequenceEncoder:
        if self.encoder is None:
            raise UserseqError("this recommender is not fitted yet; call fit(event_log) or load(run_dir).")
        return self.encoder

    @torch.no_grad()
    def encode(self, offsets: np.ndarray, items: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
        """User vectors (n, D) for CSR histories of item indices (the state after the last event)."""
        enc = self._check_fitted()
        enc.eval()
        L = self.config.model.max_len
        mask_tok = enc.mask_token()
        n = len(offsets) - 1
        out = torch.empty(n, enc.dim)
        lengths = np.diff(offsets)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        for i in range(0, n, batch_size):
            rows = order[i : i + batch_size]
            starts, ends = offsets[rows], offsets[rows + 1]
            if mask_tok is None:
                x = pad_left(starts, ends, items, L)
            else:  # BERT4Rec reads the [mask] appended after the history
                x = np.concatenate([pad_left(starts, ends, items, L - 1), np.full((len(rows), 1), mask_tok)], 1)
            width = int(min(L, max(1, lengths[rows].max() + (mask_tok is not None))))
            xt = torch.from_numpy(x[:, -width:]).to(self.device)
            out[torch.from_numpy(rows)] = enc.last(xt, xt > 0).float().cpu()
        return out

    def item_matrix(self) -> torch.Tensor:
        return self._check_fitted().items.output_matrix().detach().float().cpu()

    def _evaluate(self, eval_set: EvalSet, ks: Sequence[int], filter_seen: bool) -> dict[str, float]:
        users = self.encode(eval_set.offsets, eval_set.items)
        seen = (eval_set.offsets, eval_set.items) if filter_seen else None
        c = self.config.eval
        return evaluate(matrix_scorer(users, self.item_matrix()), len(self.item_ids), eval_set.targets, seen, ks,
                        c.user_chunk, c.item_chunk)

    def evaluate(self, eval_set: EvalSet, ks: Sequence[int] | None = None, filter_seen: bool | None = None) -> dict:
        """Full-ranking NDCG/HR/MRR/coverage of `eval_set` targets given their histories."""
        c = self.config.eval
        return self._evaluate(eval_set, ks or c.ks, c.filter_seen if filter_seen is None else filter_seen)

    def report(self, log: EventLog, split: Split) -> dict[str, Any]:
        """The `metrics.json` content: validation and test metrics, baselines on the same test
        targets, the protocol, training figures and the data description."""
        c = self.config.eval
        seen = (split.test.offsets, split.test.items) if c.filter_seen else None
        counts = np.bincount(split.train_items, minlength=log.n_items + 1)
        pop = evaluate(popularity_scorer(counts), log.n_items, split.test.targets, seen, c.ks, c.user_chunk,
                       c.item_chunk)
        # the repeat baseline only scores history items, so it is evaluated without seen-item filtering
        rep = evaluate(repeat_scorer(split.test.offsets, split.test.items), log.n_items, split.test.targets, None,
                       c.ks, c.user_chunk, c.item_chunk)
        return {
            "valid": self.evaluate(split.valid), "test": self.evaluate(split.test),
            "filter_seen": c.filter_seen, "ties": "pessimistic", "split": split.kind, "split_info": split.info,
            "model": self.config.model.name, "loss": self.config.loss.name, "train": self.train_state,
            "data": {"source": log.source, "users": log.n_users, "items": log.n_items, "events": log.n_events,
                     "fingerprint": self.data_fingerprint, "timestamp_kind": log.timestamp_kind},
            "baselines": {"popularity": pop, "repeat (no seen filter)": rep},
        }

    # ------------------------------------------------------------------ recommending
    def _topk(self, offsets: np.ndarray, items: np.ndarray, k: int, filter_seen: bool):
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
            raise UserseqError(f"k must be a positive integer (got {k!r}).")
        users = self.encode(offsets, items)
        seen = (offsets, items) if filter_seen else None
        c = self.config.eval
        _, top, top_s = scan_catalogue(matrix_scorer(users, self.item_matrix()), len(self.item_ids), len(users),
                                       None, seen, int(k), c.user_chunk, c.item_chunk)
        return top_s, top

    def _frame(self, ids: Sequence[Any], s: np.ndarray, idx: np.ndarray) -> pl.DataFrame:
        n, k = idx.shape
        finite = np.isfinite(s)
        item_vals = self.item_ids.gather(np.clip(idx.reshape(-1) - 1, 0, None))
        df = pl.DataFrame({
            "user_id": np.repeat(np.arange(n), k), "rank": np.tile(np.arange(1, k + 1), n),
            "item_id": item_vals, "score": s.reshape(-1),
        }).filter(pl.Series(finite.reshape(-1)))
        return df.with_columns(pl.Series("user_id", list(ids)).gather(df["user_id"]))

    def recommend(self, users: Sequence[Any], k: int = 10, filter_seen: bool = True) -> pl.DataFrame:
        """Top-k items for known users (original ids), from each user's full history."""
        self._check_fitted()
        users = list(users)
        idx = _lookup(self.user_ids, users)
        if (idx < 0).any():
            bad = [u for u, i in zip(users, idx, strict=True) if i < 0][:5]
            raise UserseqError(
                f"unknown user(s) {bad}: not in the training data. Recommend from an explicit history instead "
                "(API: recommend_history; CLI: --history ITEM,ITEM,...)."
            )
        offsets, items = self.histories
        h_off, h_items = csr_take(offsets, items, offsets[idx], offsets[idx + 1])
        return self._frame(users, *self._topk(h_off, h_items, k, filter_seen))

    def history_indices(self, histories: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """CSR of item indices for histories given as original item ids (unknown ids are an error)."""
        self._check_fitted()
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        if (lengths == 0).any():
            raise UserseqError(f"history #{int(np.flatnonzero(lengths == 0)[0])} is empty; give at least one item.")
        flat = [i for h in histories for i in h]
        idx = _lookup(self.item_ids, flat) + 1
        if (idx <= 0).any():
            bad = [flat[j] for j in np.flatnonzero(idx <= 0)[:5]]
            raise UserseqError(f"unknown item id(s) {bad} in history: not in the training catalogue.")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return offsets, idx.astype(np.int32)

    def recommend_history(self, histories: Sequence[Sequence[Any]], k: int = 10, filter_seen: bool = True,
                          ids: Sequence[Any] | None = None) -> pl.DataFrame:
        """Top-k items for explicit histories of original item ids (oldest first); works for new users."""
        offsets, items = self.history_indices(histories)
        return self._frame(ids if ids is not None else list(range(len(histories))),
                           *self._topk(offsets, items, k, filter_seen))

    def user_embeddings(self) -> np.ndarray:
        """(n_users, D) vectors of the training users, in the order of `user_ids`."""
        offsets, items = self.histories
        return self.encode(offsets, items).numpy()

    def item_embeddings(self) -> np.ndarray:
        """(n_items, D) output vectors of the items, in the order of `item_ids`."""
        return self.item_matrix()[1:].numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path) -> Path:
        enc = self._check_fitted()
        d = Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(self.config.to_yaml())
        meta = {"task": "nextitem", "n_items": str(len(self.item_ids)), "data_fingerprint": self.data_fingerprint or "",
                "userseq_version": _version()}
        save_tensors(enc.state_dict(), d / MODEL_FILE, meta)
        save_ids(self.user_ids, d / "user_ids.parquet")
        save_ids(self.item_ids, d / "item_ids.parquet")
        offsets, items = self.histories
        save_tensors({"offsets": torch.from_numpy(offsets.astype(np.int64)),
                      "items": torch.from_numpy(items.astype(np.int32))}, d / "histories.safetensors")
        write_json({"train": self.train_state, "data_fingerprint": self.data_fingerprint}, d / "run.json")
        return d

    @classmethod
    def load(cls, run_dir: str | Path) -> NextItemRecommender:
        d = Path(run_dir)
        if not d.is_dir():
            raise ArtifactError(f"{d}: run directory not found.")
        if not (d / CONFIG_FILE).exists() or not (d / MODEL_FILE).exists():
            if (d / "checkpoint.safetensors").exists():
                raise ArtifactError(f"{d}: {MODEL_FILE} is missing but a training checkpoint is there: training has "
                                    "not finished; wait for it, or continue it with `userseq train ... --resume`.")
            raise ArtifactError(f"{d}: not a userseq run directory (no {CONFIG_FILE} / {MODEL_FILE}); "
                                "create one with `userseq train`.")
        try:
            cfg = load_config(d / CONFIG_FILE)
        except ConfigError as e:
            raise ArtifactError(f"{d}: bad or missing {CONFIG_FILE}: {e}") from None
        tensors, meta = load_tensors(d / MODEL_FILE)
        rec = cls(config=cfg)
        rec.item_ids, rec.user_ids = load_ids(d / "item_ids.parquet"), load_ids(d / "user_ids.parquet")
        if meta.get("n_items") and int(meta["n_items"]) != len(rec.item_ids):
            raise ArtifactError(f"{d}: item_ids.parquet has {len(rec.item_ids)} items but the model expects {meta['n_items']}.")
        enc = build_encoder(cfg.model, len(rec.item_ids))
        try:
            enc.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match config.yaml: {str(e).splitlines()[0]}") from None
        rec.encoder = enc
        rec.device = resolve_device(cfg.train.device)
        enc.to(rec.device)
        h, _ = load_tensors(d / "histories.safetensors")
        rec.histories = (h["offsets"].numpy(), h["items"].numpy())
        rec.data_fingerprint = meta.get("data_fingerprint") or None
        if (d / "run.json").exists():
            rec.train_state = read_json(d / "run.json").get("train", {})
        return rec


# ---------------------------------------------------------------------- helpers
def _split_kw(cfg: RunConfig) -> dict[str, Any]:
    if cfg.data.split == "temporal":
        return {"test_quantile": cfg.data.test_quantile, "valid_quantile": cfg.data.valid_quantile}
    return {}


def _subset(e: EvalSet, pick: np.ndarray) -> EvalSet:
    off, items = csr_take(e.offsets, e.items, e.offsets[pick], e.offsets[pick + 1])
    return EvalSet(e.users[pick], e.targets[pick], off, items)


def _lookup(id_map: pl.Series, ids: Sequence[Any]) -> np.ndarray:
    return lookup_ids(id_map, ids, offset=0)


def _version() -> str:
    from userseq import __version__

    return __version__
