"""Next-item recommendation: the user-facing estimator (fit / recommend / embeddings / save / load).

`NextItemRecommender` is an `Estimator[RunConfig]` (`userseq.core.estimator`): its config is the
run config (data, model, loss, train, eval), its fitted state the attributes ending in `_`, and a
saved run holds `config.yaml`, `estimator.json`, `model.safetensors` (the encoder),
`user_ids.parquet` / `item_ids.parquet`, `histories.safetensors` and `run.json`. Runs written by
userseq 0.1 (no `estimator.json`) load too.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.core import distributed
from userseq.core.artifacts import (
    fingerprint,
    load_ids,
    load_tensors,
    read_json,
    save_ids,
    save_tensors,
    write_json,
)
from userseq.core.errors import ArtifactError, ConfigError, UserseqError
from userseq.core.estimator import Estimator, IdMaps
from userseq.core.trainer import Trainer, TrainState, resolve_device
from userseq.core.version import __version__
from userseq.data.batches import csr_take, length_bucketed_batches, pad_left, training_windows
from userseq.data.eventlog import EventLog, lookup_ids
from userseq.data.split import EvalSet, Split, make_split, subsample_train_users
from userseq.encoders import SequenceEncoder, build_encoder
from userseq.items.base import IdEmbedding, ItemRepr
from userseq.items.factory import (
    build_items,
    categorical_features,
    matryoshka_dims,
    serve_dim,
    table_report,
)
from userseq.items.graph import cooccurrence_graph
from userseq.items.text import check_encoder, check_vector_dim
from userseq.losses import NextItemLoss
from userseq.metrics.ranking import (
    bag_scorer,
    beyond_accuracy,
    coverage,
    diversity,
    evaluate,
    evaluate_lists,
    matrix_scorer,
    popularity_scorer,
    ranking_metrics,
    repeat_scorer,
    scan_catalogue,
    streamed_scorer,
)
from userseq.nextitem.ada import ADA_FILE, AdaRetrieval, ada_batches, ada_topk
from userseq.nextitem.config import RETRIEVAL_MODES, RunConfig, check_monitor, split_kwargs
from userseq.nextitem.stream import UserState, advance, check_recurrent, empty_state

MODEL_FILE = "model.safetensors"
HISTORIES_FILE = "histories.safetensors"
RUN_FILE = "run.json"


def data_fingerprint(log: EventLog) -> str:
    offsets, items = log.sequences()
    return fingerprint(offsets, items, extra=f"{log.n_users}:{log.n_items}")


class NextItemRecommender(IdMaps, Estimator[RunConfig]):
    """Sequential recommender in the scikit-learn style.

    >>> rec = NextItemRecommender("sasrec", overrides={"train.epochs": 20}).fit(log)
    >>> rec.recommend(["user-1"], k=10)            # known users: from their full history
    >>> rec.recommend_history([["item-a", "item-b"]])  # anyone: from an explicit history

    `model` is a shortcut for `overrides["model.name"]` (a registered encoder, see
    `userseq.encoders.ENCODERS`). Fitted state: `encoder_` (the network), `user_ids_`, `item_ids_`
    (the id maps; also readable as `user_ids` / `item_ids`), `histories_` (CSR of every training
    user's item indices), `data_fingerprint_`, `train_state_` and `item_info_`.
    """

    task = "nextitem"
    config_class = RunConfig
    fitted_attribute = "encoder_"

    def __init__(self, model: str | None = None, config: RunConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        over = dict(overrides or {})
        if model is not None:
            over["model.name"] = model
        super().__init__(config, over)
        self.encoder_: SequenceEncoder | None = None
        self.user_ids_: pl.Series | None = None
        self.item_ids_: pl.Series | None = None
        self.histories_: tuple[np.ndarray, np.ndarray] | None = None
        self.data_fingerprint_: str | None = None
        self.train_state_: dict[str, Any] = {}
        self.item_info_: dict[str, Any] = {}
        self.ada_: AdaRetrieval | None = None
        self.device_ = torch.device("cpu")
        self._knn: tuple[Any, Any, Any] | None = None  # (settings, KnnEmbed, bank) cache
        self._item_dict: tuple[pl.Series, dict] | None = None

    # ------------------------------------------------------------------ training
    def fit(self, log: EventLog, split: Split | None = None, run_dir: str | Path | None = None,
            resume: bool = False, quiet: bool = False,
            item_meta: pl.DataFrame | None = None,
            init_from: str | Path | NextItemRecommender | None = None,
            on_validated: Callable[[int, dict[str, float]], str | None] | None = None
            ) -> NextItemRecommender:
        """Train on `split` (default: the configured split of `log`). `item_meta` (item_id +
        attribute columns) gives text items their text; by default it comes from `data.item_text`
        or from the named dataset's item metadata (see docs/items.md). With `run_dir`, the run is
        saved there (with metrics.json and train_log.json) and `resume` continues its checkpoint.

        `init_from` (a fitted recommender or its run directory) warm-starts from its weights: the
        catalogue is this log's items followed by the earlier run's items that the log lacks; an
        item's row is copied from the earlier run, new items get fresh rows; users of the earlier
        run missing from the log keep their stored histories (docs/distributed.md).

        `on_validated(epoch, metrics)` runs after each validation (`Trainer.on_validated`; a
        returned reason stops training: `userseq tune` prunes trials with it); closed-form models
        call it once per tried setting."""
        cfg = self.config
        check_monitor(cfg)
        warm = self._warm_source(init_from, resume) if init_from is not None else None
        split = split or make_split(log, cfg.data.split, **split_kwargs(cfg))
        split = subsample_train_users(split, cfg.data.train_user_fraction, cfg.data.split_seed)
        torch.manual_seed(cfg.train.seed)
        catalogue, items = self._build_item_repr(log, split, item_meta)
        text_warm = warm is not None and cfg.model.items == "text"
        if warm is not None and not text_warm:  # the earlier run's items the new log lacks stay
            catalogue = pl.concat([catalogue, warm.item_ids_.filter(
                ~warm.item_ids_.is_in(catalogue.implode()))])
        self.encoder_ = encoder = build_encoder(cfg.model, len(catalogue), items)
        if cfg.loss.mse2d.enabled:
            _check_mse2d(cfg, encoder)
        self.user_ids_, self.item_ids_ = log.user_ids, catalogue
        self.histories_ = log.sequences()
        if text_warm:
            self.item_info_["warm_start"] = warm._copy_text_model(encoder, "--init-from")
        elif warm is not None:
            self.item_info_["warm_start"] = self._warm_start(warm, encoder, catalogue)
        self.data_fingerprint_ = data_fingerprint(log)
        if getattr(encoder, "closed_form", False):  # pop, itemknn, ease: no gradient steps
            history = self._fit_closed_form(encoder, split, warm is not None, on_validated)
            if run_dir is not None and distributed.is_main():
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                write_json(history, Path(run_dir) / "train_log.json")
                self.write_metrics(run_dir, self.report(log, split))
                self.save(run_dir)
            return self
        rows = training_windows(split.train_offsets, split.train_items, cfg.model.max_len)
        if len(rows) == 0:
            raise UserseqError(f"{log.source}: no training sequence has 2 or more events; "
                               "nothing to learn from.")
        # popularity for negative sampling comes from the training events only (no test leakage)
        n_items = len(catalogue)
        counts = np.bincount(split.train_items, minlength=n_items + 1)
        loss = NextItemLoss(cfg.loss, n_items, counts)
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        if on_validated is not None:
            trainer.on_validated.append(on_validated)
        self.device_ = trainer.device
        self._knn, self.ada_ = None, None
        if loss.wants_epoch_hidden:  # e.g. ICSRec's intent prototypes, refreshed every epoch
            if not encoder.causal:
                raise ConfigError(f"loss '{cfg.loss.name}' contrasts subsequences (prefixes) and "
                                  f"needs a causal encoder (sasrec, gru4rec); "
                                  f"'{cfg.model.name}' is bidirectional.")
            trainer.on_epoch_start.append(
                lambda model, epoch: loss.epoch_start(*self._position_sample(
                    model, rows, cfg.loss.icsrec.sample, cfg.train.seed + epoch)))
        batches, n_batches = self._batches(split, rows, trainer.device)
        valid = self._valid_subset(split.valid)
        state = trainer.fit(encoder, batches, n_batches, lambda m, b: self._loss(m, b, loss),
                            lambda m: self._validate(valid), resume)
        self.train_state_ = _train_state(state, trainer, len(rows))
        if run_dir is not None and distributed.is_main():  # rank 0 writes; save last: it
            # writes the run's completion marker
            write_json(state.history, Path(run_dir) / "train_log.json")
            self.write_metrics(run_dir, self.report(log, split))
            self.save(run_dir)
        return self

    def _fit_closed_form(self, encoder: Any, split: Split, warm: bool,
                         on_validated: Callable[[int, dict[str, float]], str | None] | None = None
                         ) -> list[dict[str, Any]]:
        """Fit a closed-form baseline (`encoders.classical`) on the training events with each
        setting of its grid, keep the one with the best validation `train.monitor`; returns the
        tried settings with their validation metrics (train_log.json)."""
        cfg = self.config
        if warm:
            raise ConfigError(f"--init-from: '{cfg.model.name}' is fitted in closed form; there "
                              "are no weights to warm-start (train it without --init-from).")
        m = cfg.model
        if m.items != "id" or m.item_table != "full" or m.quantize != "none":
            raise ConfigError(f"model '{m.name}' scores with its own item-to-item statistics; "
                              "model.items, model.item_table and model.quantize do not apply "
                              "(leave them at id, full, none).")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        valid = self._valid_subset(split.valid)
        t_start, history, best, best_weights = time.time(), [], None, None
        sign = 1.0 if cfg.train.monitor_mode == "max" else -1.0
        for setting in encoder.grid():
            t0 = time.time()
            encoder.fit_closed_form(split.train_offsets, split.train_items, **setting)
            fit_s = time.time() - t0
            metrics = self._validate(valid)
            if on_validated is not None:
                on_validated(len(history) + 1, metrics)
            value = metrics[cfg.train.monitor]
            history.append({**setting, "fit_seconds": round(fit_s, 3),
                            "seconds": round(time.time() - t0, 3),
                            **{f"valid_{k}": v for k, v in metrics.items()}})
            if best is None or sign * value > sign * best[1]:
                best = (setting, value)
                if len(encoder.grid()) > 1:
                    best_weights = {k: v.clone() for k, v in encoder.state_dict().items()}
        if best_weights is not None:
            encoder.load_state_dict(best_weights)
        encoder.release()
        self.train_state_ = {
            "epochs": 0, "best_epoch": 0, "best_valid": best[1],
            "seconds": round(time.time() - t_start, 2), "stopped": "closed form",
            "fit": "closed form", "chosen": best[0], "selection": history,
            "seconds_per_epoch": None, "train_sequences": len(split.train_offsets) - 1,
            "device": "cpu", "precision": "float32",
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        return history

    # ------------------------------------------------------------------ warm start
    def _warm_source(self, init_from: str | Path | NextItemRecommender,
                     resume: bool) -> NextItemRecommender:
        """The earlier run of `init_from`, checked: a next-item run with the same encoder."""
        if resume:
            raise ConfigError("--init-from and --resume exclude each other: --resume continues "
                              "this run's own checkpoint; --init-from starts a new run from "
                              "another run's weights.")
        if isinstance(init_from, NextItemRecommender):
            prev = init_from
            where = "init_from"
            prev.check_is_fitted()
        else:
            where = f"--init-from {init_from}"
            try:
                prev = NextItemRecommender.load(init_from)
            except ArtifactError as e:
                raise ArtifactError(f"{where}: {e}") from None
        old, new = prev.config.model, self.config.model
        if old.name != new.name:
            raise ConfigError(f"{where}: that run's encoder is '{old.name}', this run's is "
                              f"'{new.name}'; warm start needs the same encoder (--model "
                              f"{old.name}), or train from scratch without --init-from.")
        a, b = old.model_dump(), new.model_dump()
        differ = [k for k in a if k not in ("dropout", "attn_dropout") and a[k] != b.get(k)]
        if differ:
            k = differ[0]
            raise ConfigError(f"{where}: model.{k} is {a[k]!r} there and {b.get(k)!r} here; warm "
                              f"start needs the same architecture (--set model.{k}={a[k]}).")
        if new.items == "text" and new.quantize == "none":
            return prev  # a text model carries over to any catalogue (transfer, docs/items.md)
        if new.items != "id" or new.item_table != "full" or new.quantize != "none":
            raise ConfigError(f"{where}: warm start grows full id item tables (model.items id, "
                              "model.item_table full, not quantized) or carries a text-only "
                              f"model over (model.items text); this run has items={new.items}, "
                              f"item_table={new.item_table}.")
        return prev

    # ------------------------------------------------------------------ text transfer
    def _copy_text_model(self, encoder: SequenceEncoder, where: str) -> dict[str, Any]:
        """Copy this text-only run's sequence model and text adapter into `encoder` (built for
        another catalogue): every tensor except the item-indexed ones (text vectors, masks, the
        id rows of items without text, which start at zero: such items score 0); special-token
        rows (BERT4Rec's [mask]) are copied."""
        old_sd, new_sd = self.check_is_fitted().state_dict(), encoder.state_dict()
        old_w = old_sd["items.text_vectors"].shape[1]
        check_vector_dim(old_w, new_sd["items.text_vectors"].shape[1],
                         self.config.model.text_encoder, f"{where}: the run")
        item_rows = ("items.text_vectors", "items.has_text", "items.id_rows", "items.id_mask")
        copied = 0
        for k, t in new_sd.items():
            if k in item_rows:
                continue
            o = old_sd[k]
            if k == "items.ids.table.weight":  # rows: padding, items without text, special
                with torch.no_grad():
                    t.zero_()
                    n_special = self.config.model.special_tokens
                    if n_special:
                        t[-n_special:] = o[-n_special:]
                continue
            if o.shape != t.shape:
                raise ArtifactError(f"{where}: tensor {k} has shape {tuple(o.shape)} there and "
                                    f"{tuple(t.shape)} here.")
            t.copy_(o)
            copied += 1
        encoder.load_state_dict(new_sd)
        return {"tensors_copied": copied, "items_with_text": int(new_sd["items.has_text"].sum()),
                "users_carried_over": 0}

    def transfer(self, log: EventLog, item_meta: pl.DataFrame | None = None,
                 dataset: str | None = None) -> NextItemRecommender:
        """Zero-shot: this text-only run (model.items text) re-bound to another catalogue, `log`'s
        items (plus items only `item_meta` knows), from their text alone. The sequence model and
        text adapter are this run's; the item vectors come from the new items' text through the
        same text encoder (a different vector width is an error naming both). Items without text
        get a zero vector (score 0 for every user; counted in `item_info_['item_text']`). The
        result is a fitted recommender over `log`'s users: evaluate, recommend, save it."""
        self.check_is_fitted()
        m = self.config.model
        if m.items != "text":
            raise ConfigError(f"zero-shot transfer needs a text-only run (model.items text); "
                              f"this run's items are '{m.items}': its id vectors belong to its "
                              "own catalogue. Train with --items text.")
        new = NextItemRecommender(config=self.config.updated(
            {"dataset": dataset or log.source.split(" ")[0], "data.item_text": None}))
        catalogue, items = new._build_item_repr(log, None, item_meta)
        new.encoder_ = encoder = build_encoder(m, len(catalogue), items)
        info = self._copy_text_model(encoder, "zero-shot")
        new.encoder_.to(self.device_).eval()
        new.device_ = self.device_
        new.user_ids_, new.item_ids_ = log.user_ids, catalogue
        new.histories_ = log.sequences()
        new.data_fingerprint_ = data_fingerprint(log)
        new.item_info_["zero_shot"] = {"source": self.config.dataset, **info}
        return new

    def _warm_start(self, prev: NextItemRecommender, encoder: SequenceEncoder,
                    catalogue: pl.Series) -> dict[str, int]:
        """Copy `prev`'s weights into `encoder`: item-indexed tensors row by row (by item id;
        row 0 and the special rows above the catalogue too), every other tensor as is. Adds
        `prev`'s users that this log lacks, with their histories, to the id map."""
        n_old, n_new = len(prev.item_ids_), len(catalogue)
        # the new catalogue's rows in the old table (0: a new item, keeps its fresh row)
        old_row = lookup_ids(prev.item_ids_, catalogue, offset=1)
        old_sd, new_sd = prev.check_is_fitted().state_dict(), encoder.state_dict()
        for k, t in new_sd.items():
            o = old_sd[k]
            extra = o.shape[0] - n_old if o.dim() else -1
            if o.dim() and 1 <= extra <= 4 and t.shape[0] - n_new == extra \
                    and o.shape[1:] == t.shape[1:]:
                rows = torch.from_numpy(np.flatnonzero(old_row > 0) + 1)
                with torch.no_grad():
                    t[0] = o[0]
                    t[rows] = o[torch.from_numpy(old_row[old_row > 0].astype(np.int64))]
                    t[n_new + 1:] = o[n_old + 1:]
            elif o.shape == t.shape:
                t.copy_(o)
            else:
                raise ArtifactError(f"--init-from: tensor {k} has shape {tuple(o.shape)} there "
                                    f"and {tuple(t.shape)} here.")
        encoder.load_state_dict(new_sd)
        # users of the earlier run that this log lacks: their histories, in the new item indices
        keep = np.flatnonzero(~prev.user_ids_.is_in(self.user_ids_.implode()).to_numpy())
        to_new = lookup_ids(catalogue, prev.item_ids_, offset=1).astype(np.int32)
        to_new = np.concatenate([[0], to_new])
        p_off, p_items = prev.histories_
        k_off, k_items = csr_take(p_off, p_items, p_off[keep], p_off[keep + 1])
        off, items = self.histories_
        self.histories_ = (np.concatenate([off, off[-1] + k_off[1:]]),
                           np.concatenate([items, to_new[k_items].astype(items.dtype)]))
        self.user_ids_ = pl.concat([self.user_ids_, prev.user_ids_.gather(keep)])
        return {"items_kept": int((old_row > 0).sum()), "items_new": int((old_row == 0).sum()),
                "users_carried_over": len(keep)}
    def fit_ada(self, log: EventLog, split: Split | None = None,
                run_dir: str | Path | None = None, quiet: bool = False,
                base_run: str | None = None) -> NextItemRecommender:
        """Ada-Retrieval's second stage: fine-tune this trained model with the item and user
        adapters (`retrieval.ada.*`: rounds, train_k, round_weight, dropout, freeze_base) through
        the one Trainer (`train.*`: epochs, lr, patience, monitor, ...), on the same data and
        split. Afterwards `retrieval.mode` is `ada`; with `run_dir` the run is saved there
        (model.safetensors: the fine-tuned encoder, ada.safetensors: the adapters) with its
        metrics.json. Validation ranks `eval.ks` plus `train_k` with multi-round retrieval."""
        enc = self.check_is_fitted()
        cfg = self.config
        if data_fingerprint(log) != self.data_fingerprint_:
            raise UserseqError(f"{log.source}: not the data this model was trained on (the "
                               "fingerprint differs); Ada-Retrieval fine-tunes on the base run's "
                               "data.")
        a = cfg.retrieval.ada
        if a.train_k > len(self.item_ids_):
            raise ConfigError(f"retrieval.ada.train_k ({a.train_k}) is larger than the catalogue "
                              f"({len(self.item_ids_)} items).")
        split = split or make_split(log, cfg.data.split, **split_kwargs(cfg))
        torch.manual_seed(cfg.train.seed)
        model = AdaRetrieval(enc, a.rounds, a.train_k, a.dropout)
        enc.requires_grad_(not a.freeze_base)
        rows = training_windows(split.train_offsets, split.train_items, cfg.model.max_len)
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device_ = trainer.device
        self.ada_, self._knn = model, None
        batches = ada_batches(rows, cfg.train.batch_size, cfg.train.seed, trainer.device)
        n_batches = (len(rows) + cfg.train.batch_size - 1) // cfg.train.batch_size
        seen_in_loss = cfg.eval.filter_seen
        valid = self._valid_subset(split.valid)
        ks = sorted(set(cfg.eval.ks) | {a.train_k})
        k_valid = -(-ks[-1] // a.rounds) * a.rounds  # whole rounds

        def loss_fn(m: AdaRetrieval, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, t = batch
            return m.retrieve(x, a.train_k, x if seen_in_loss else None, t, a.round_weight)[2]

        def validate(m: AdaRetrieval) -> dict[str, float]:
            top, _ = ada_topk(m, valid.offsets, valid.items, k_valid, cfg.model.max_len,
                              cfg.eval.filter_seen, self.device_)
            return evaluate_lists(top, valid.targets, len(self.item_ids_), ks)

        state = trainer.fit(model, batches, n_batches, loss_fn, validate)
        enc.requires_grad_(True)
        model.eval()
        over = {"retrieval.mode": "ada"}
        if base_run is not None:
            over["retrieval.ada.base_run"] = str(base_run)
        self.config = cfg.updated(over)
        self.train_state_ = {**_train_state(state, trainer, len(rows)), "stage": "ada fine-tune",
                             "base": self.train_state_}
        if run_dir is not None and distributed.is_main():  # save last: the completion marker
            write_json(state.history, Path(run_dir) / "train_log.json")
            self.write_metrics(run_dir, self.report(log, split))
            self.save(run_dir)
        return self

    @torch.no_grad()
    def _position_sample(self, model: SequenceEncoder, rows: np.ndarray, n: int, seed: int,
                         batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states, targets) of up to `n` training positions (every position of randomly
        drawn training rows), computed in eval mode: what losses with per-epoch state (ICSRec's
        k-means intent prototypes) are refreshed from."""
        was = model.training
        model.eval()
        rng = np.random.default_rng(seed)
        lengths = (rows > 0).sum(1)
        order = rng.permutation(len(rows))
        hs, ts, total = [], [], 0
        for i in range(0, len(order), batch_size):
            if total >= n:
                break
            r = torch.from_numpy(rows[order[i : i + batch_size]])
            width = int(max(2, lengths[order[i : i + batch_size]].max()))
            r = r[:, -width:].to(self.device_)
            inputs, targets = r[:, :-1], r[:, 1:]
            mask = inputs > 0
            sel = mask & (targets > 0)
            hs.append(model(inputs, mask)[sel].float())
            ts.append(targets[sel])
            total += int(sel.sum())
        model.train(was)
        return torch.cat(hs)[:n], torch.cat(ts)[:n]

    def _batches(self, split: Split, rows: np.ndarray, device: torch.device
                 ) -> tuple[Callable[[int], Iterator[torch.Tensor]], int]:
        """The trainer's epoch -> batches factory (length-bucketed, left-padded rows with the
        all-padding columns trimmed) and the number of batches per epoch."""
        cfg = self.config
        bs, seed, max_len = cfg.train.batch_size, cfg.train.seed, cfg.model.max_len
        rows_t = torch.from_numpy(rows)
        lengths = (rows > 0).sum(1)

        def batches(epoch: int) -> Iterator[torch.Tensor]:
            rng = np.random.default_rng(seed + epoch)
            rows_e = rows_t
            if cfg.data.train_windows == "random":
                rows_e = torch.from_numpy(training_windows(split.train_offsets, split.train_items,
                                                           max_len, rng=rng))
            for idx in length_bucketed_batches(lengths, bs, rng, cfg.train.bucket_batches):
                width = int(lengths[idx].max())
                yield rows_e[torch.from_numpy(idx)][:, -width:].to(device, non_blocking=True)

        return batches, (len(rows) + bs - 1) // bs

    def _valid_subset(self, valid: EvalSet) -> EvalSet:
        """The validation users of early stopping: all, or `train.valid_users` drawn at random."""
        n = self.config.train.valid_users
        if not n or len(valid) <= n:
            return valid
        rng = np.random.default_rng(self.config.train.seed)
        return _subset(valid, np.sort(rng.choice(len(valid), n, replace=False)))

    def _build_item_repr(self, log: EventLog, split: Split | None, meta: pl.DataFrame | None
                         ) -> tuple[pl.Series, ItemRepr | None]:
        """The catalogue (the log's items, then items that only the attribute table knows) and the
        configured item representation (None: the encoder's default id table). `split` None: no
        training events (zero-shot transfer)."""
        from userseq.items.text import catalogue_extension, item_text_for, text_matrix

        m = self.config.model
        catalogue, self.item_info_ = log.item_ids, {}
        if m.items != "id":
            check_encoder(m.text_encoder)  # an unknown model path: before any text is read
        source = "item_meta argument"
        textual = m.items in ("text", "id+text")
        if meta is None and (textual or m.item_table == "unified"):
            meta, source = self._item_meta(log)
        text = None
        if textual:
            if meta is None:
                build_items(m, log.n_items)  # raises the "needs item text" error
            extra = catalogue_extension(catalogue, meta)
            if len(extra):
                catalogue = pl.concat([catalogue, extra])
            it = item_text_for(catalogue, meta, source)
            vectors, has_text, stats = text_matrix(it, m.text_encoder)
            text = (vectors, has_text)
            self.item_info_["item_text"] = {**it.report(), "vectors": stats,
                                            "catalogue_items_without_events": len(extra)}
        if m.items == "id" and m.item_table == "full" and m.quantize == "none":
            return catalogue, None
        features = categorical_features(catalogue, meta) if m.item_table == "unified" else None
        train_items = split.train_items if split is not None else np.zeros(0, np.int64)
        counts = torch.from_numpy(np.bincount(train_items, minlength=len(catalogue) + 1))
        graph = None
        if m.items == "id+graph":  # training sequences only: no validation/test edges
            graph = cooccurrence_graph(split.train_offsets, split.train_items, len(catalogue),
                                       m.graph_window)
            self.item_info_["graph"] = {"edges": int(graph[0].shape[1]),
                                        "layers": m.graph_layers, "window": m.graph_window,
                                        "source": "training split"}
        return catalogue, build_items(m, len(catalogue), text=text, known=counts > 0,
                                      features=features, counts=counts, graph=graph)

    def _item_meta(self, log: EventLog) -> tuple[pl.DataFrame | None, str]:
        from userseq.data.datasets import is_dataset_name, load_item_metadata
        from userseq.items.text import read_item_table

        d = self.config.data
        if d.item_text:
            return read_item_table(d.item_text), d.item_text
        name = self.config.dataset or log.source.split(" ")[0]
        if is_dataset_name(name):
            meta = load_item_metadata(name)
            if meta is not None:
                return meta, f"{name} item metadata"
        return None, ""

    def _objective(self, h: torch.Tensor, targets: torch.Tensor, items: ItemRepr,
                   loss: NextItemLoss) -> torch.Tensor:
        """The loss; Matryoshka tables average it over nested prefixes of the vectors."""
        m = self.config.model
        if m.item_table != "matryoshka":
            return loss(h, targets, items)
        dims = matryoshka_dims(m)
        return sum(loss(h[:, :d], targets, _Prefix(items, d)) for d in dims) / len(dims)

    def _validate(self, valid: EvalSet) -> dict[str, float]:
        """Validation metrics of early stopping: next-item ranking, plus `recon_acc` for
        autoencoders."""
        c = self.config.eval
        metrics = self._evaluate(valid, c.ks, c.filter_seen)
        if self.check_is_fitted().reconstructs:
            metrics["recon_acc"] = self.reconstruction_accuracy(valid.offsets, valid.items)
        return metrics

    @torch.no_grad()
    def reconstruction_accuracy(self, offsets: np.ndarray, items: np.ndarray,
                                max_users: int = 1024, batch_size: int = 128) -> float:
        """Autoencoders: share of positions (of the last `max_len` events of up to `max_users`
        histories) whose item is the top-1 of the reconstruction over the whole catalogue."""
        enc = self.check_is_fitted()
        enc.eval()
        n = min(len(offsets) - 1, max_users)
        W = enc.items.output_matrix().float()
        hits = total = 0
        for i in range(0, n, batch_size):
            rows = np.arange(i, min(n, i + batch_size))
            x = torch.from_numpy(pad_left(offsets[rows], offsets[rows + 1], items,
                                          self.config.model.max_len)).to(self.device_)
            real = x > 0
            logits = enc.reconstruct(x, real)[real].float() @ W.T
            logits[:, 0] = float("-inf")
            hits += int((logits.argmax(1) == x[real]).sum())
            total += int(real.sum())
        return hits / max(total, 1)

    def _loss(self, model: SequenceEncoder, rows: torch.Tensor, loss: NextItemLoss) -> torch.Tensor:
        W = model.items
        if model.reconstructs:  # autoencoder: reconstruct the window's items from its embedding
            x = rows[:, 1:]
            real = x > 0
            return self._objective(model.reconstruct(x, real)[real], x[real], W, loss)
        two_d = self.config.loss.mse2d.enabled
        if model.causal:
            inputs, targets = rows[:, :-1], rows[:, 1:]
            mask = inputs > 0
            sel = mask & (targets > 0)
            if two_d:
                return self._loss_2d(model.layer_outputs(inputs, mask), sel, targets[sel], W,
                                     loss)
            h = model(inputs, mask)
            return self._objective(h[sel], targets[sel], W, loss)
        # masked-item (Cloze) objective: hide a random share of real positions, predict them
        x = rows[:, 1:]
        real = x > 0
        hide = (torch.rand(x.shape, device=x.device) < self._mask_prob()) & real
        none = ~hide.any(1)
        hide[none, -1] = real[none, -1]  # every row predicts at least its last item
        inputs = torch.where(hide, torch.full_like(x, model.mask_token()), x)
        if two_d:
            return self._loss_2d(model.layer_outputs(inputs, real), hide, x[hide], W, loss)
        h = model(inputs, real)
        return self._objective(h[hide], x[hide], W, loss)

    def _loss_2d(self, hs: list[torch.Tensor], sel: torch.Tensor, targets: torch.Tensor,
                 items: Any, loss: NextItemLoss) -> torch.Tensor:
        """2D Matryoshka objective (`loss.mse2d`): the last block's loss at a sampled prefix
        width, plus one sampled earlier block's loss at a sampled width, plus the KL term pulling
        that block's softmax over items toward the (detached) last block's. `hs`: the
        hidden states after each block."""
        c = self.config.loss.mse2d
        dims = mse2d_dims(self.config)
        full = hs[-1].shape[-1]

        def pick(n: int) -> int:
            return int(torch.randint(n, (1,)))

        def at(h: torch.Tensor, d: int) -> torch.Tensor:
            return loss(h[:, :d], targets, items if d == full else _Prefix(items, d))

        last = hs[-1][sel]
        total = c.last_layer_weight * at(last, dims[pick(len(dims))])
        if len(hs) > 1:
            prior = hs[pick(len(hs) - 1)][sel]
            total = total + c.prior_layers_weight * at(prior, dims[pick(len(dims))])
            if c.kl_weight > 0:
                total = total + c.kl_weight * self._kl_to_last(last, prior, items, c)
        return total

    def _kl_to_last(self, last: torch.Tensor, prior: torch.Tensor, items: Any,
                    c: Any) -> torch.Tensor:
        """KL(softmax(last / T) || softmax(prior / T)) over the catalogue, on `c.kl_rows`
        random positions (the last block is the detached teacher)."""
        rows = torch.randperm(len(last), device=last.device)[: c.kl_rows]
        W = items.output_matrix()[1 : len(self.item_ids_) + 1]
        teacher = torch.log_softmax(last[rows].detach() @ W.T / c.kl_temperature, -1)
        student = torch.log_softmax(prior[rows] @ W.T / c.kl_temperature, -1)
        return torch.nn.functional.kl_div(student, teacher, log_target=True,
                                          reduction="batchmean")

    def _mask_prob(self) -> float:
        """Share of positions hidden by the masked-item objective of bidirectional encoders."""
        p = getattr(self.config.model, "mask_prob", None)
        if p is None:
            raise ConfigError(f"encoder '{self.config.model.name}' is bidirectional (causal=False) "
                              "but its config has no mask_prob; add one (see BERT4RecConfig).")
        return p

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode(self, offsets: np.ndarray, items: np.ndarray,
               batch_size: int = 1024) -> torch.Tensor:
        """User vectors (n, D) for CSR histories of item indices (the state after the last
        event)."""
        enc = self.check_is_fitted()
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
            # only as wide as the batch's longest history (max_len can be the whole history)
            width = int(min(L, max(1, lengths[rows].max() + (mask_tok is not None))))
            if mask_tok is None:
                x = pad_left(starts, ends, items, width)
            else:  # BERT4Rec reads the [mask] appended after the history
                x = np.concatenate([pad_left(starts, ends, items, width - 1),
                                    np.full((len(rows), 1), mask_tok)], 1)
            xt = torch.from_numpy(x).to(self.device_)
            out[torch.from_numpy(rows)] = enc.last(xt, xt > 0).float().cpu()
        return self._serving(out)

    def item_matrix(self) -> torch.Tensor:
        """(n_items + 1, D) item output vectors (D = the Matryoshka serving prefix where set)."""
        enc = self.check_is_fitted()
        enc.eval()  # no dropout (nor DropoutNet's id drop) in served vectors
        with torch.no_grad():
            return self._serving(enc.items.output_matrix().detach().float().cpu())

    def scorer(self, users: torch.Tensor) -> Any:
        """Full-catalogue dot-product scorer for user vectors. An item table that computes its rows
        (hashed, QR, unified) and a catalogue larger than one `eval.item_chunk` are scored chunk by
        chunk from `output_rows`, so the whole item matrix is never built (memory flat in the
        catalogue size); otherwise from `item_matrix()`."""
        items = self.check_is_fitted().items
        if not self._streams():
            return matrix_scorer(users, self.item_matrix())

        def rows(lo: int, hi: int) -> torch.Tensor:
            with torch.no_grad():
                ids = torch.arange(lo, hi, device=self.device_)
                return self._serving(items.output_rows(ids).float().cpu())

        return streamed_scorer(users, rows)

    def _streams(self) -> bool:
        """Whether item vectors are computed chunk by chunk (`scorer`): an item table that
        computes its rows (hashed, QR, unified) and a catalogue larger than one
        `eval.item_chunk`. A stored table (IdEmbedding) is its own matrix (a view): streaming it
        would save nothing."""
        items = self.check_is_fitted().items
        computed = type(items).output_rows is not ItemRepr.output_rows and not isinstance(
            items, IdEmbedding)
        return computed and len(self.item_ids_) + 1 > self.config.eval.item_chunk

    def _serving(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.config.model.item_table != "matryoshka":
            return vectors
        d = serve_dim(self.config.model)
        return vectors if d == vectors.shape[1] else vectors[:, :d].contiguous()

    def history_scorer(self, offsets: np.ndarray, items: np.ndarray) -> Any:
        """Full-catalogue scorer for CSR histories of item indices: the user vectors of `encode`
        times the item matrix (`scorer`); bag-of-items baselines (item-kNN, EASE) score the sparse
        history directly (`metrics.ranking.bag_scorer`), never building dense multi-hot rows."""
        enc = self.check_is_fitted()
        if getattr(enc, "bag_of_items", False):
            return bag_scorer(offsets, items, enc.item_scores, self.config.model.max_len)
        return self.scorer(self.encode(offsets, items))

    def _evaluate(self, eval_set: EvalSet, ks: Sequence[int],
                  filter_seen: bool) -> dict[str, float]:
        seen = (eval_set.offsets, eval_set.items) if filter_seen else None
        c = self.config.eval
        return evaluate(self.history_scorer(eval_set.offsets, eval_set.items),
                        len(self.item_ids_), eval_set.targets, seen, ks, c.user_chunk,
                        c.item_chunk)

    def evaluate_grid(self, eval_set: EvalSet, layers: Sequence[int] | None = None,
                      dims: Sequence[int] | None = None, ks: Sequence[int] | None = None,
                      filter_seen: bool | None = None) -> list[dict[str, float]]:
        """Full-ranking metrics of `eval_set` with user vectors read after the first n blocks
        (`layers`, default 1..all) and truncated to their first d dimensions (`dims`, default
        the run's `loss.mse2d` widths), item vectors truncated alike: one row per (n, d) cell
        (keys `layers`, `dim` and the metrics). Meant for runs trained with `loss.mse2d` (any
        transformer run can be measured; untrained cells are poor)."""
        enc = self.check_is_fitted()
        if not hasattr(enc, "layer_outputs"):
            raise ConfigError(f"encoder '{self.config.model.name}' has no per-block read-outs; "
                              "the layers x dims grid needs a transformer (sasrec, bert4rec).")
        c = self.config.eval
        seen = (eval_set.offsets, eval_set.items) if (
            c.filter_seen if filter_seen is None else filter_seen) else None
        ks = sorted(set(ks or c.ks))
        layers = list(layers or range(1, len(enc.blocks) + 1))
        dims = list(dims or mse2d_dims(self.config))
        items = self.item_matrix()
        bad = [d for d in dims if not 1 <= d <= items.shape[1]]
        if bad or not all(1 <= n <= len(enc.blocks) for n in layers):
            raise ConfigError(f"grid: dims must lie in 1..{items.shape[1]} and layers in "
                              f"1..{len(enc.blocks)} (got dims {dims}, layers {layers}).")
        out = []
        saved = enc.exit_layer
        try:
            for n in layers:
                enc.exit_layer = n
                users = self.encode(eval_set.offsets, eval_set.items)
                for d in dims:
                    scorer = matrix_scorer(users[:, :d].contiguous(), items[:, :d].contiguous())
                    m = evaluate(scorer, len(self.item_ids_), eval_set.targets, seen, ks,
                                 c.user_chunk, c.item_chunk)
                    out.append({"layers": float(n), "dim": float(d), **m})
        finally:
            enc.exit_layer = saved
        return out

    def evaluate(self, eval_set: EvalSet, ks: Sequence[int] | None = None,
                 filter_seen: bool | None = None, retrieval: str | None = None,
                 bank: tuple[np.ndarray, np.ndarray] | None = None,
                 item_groups: dict[str, Any] | None = None,
                 item_counts: np.ndarray | None = None) -> dict:
        """NDCG/HR/MRR/coverage of `eval_set` targets given their histories, plus diversity of
        the top-K lists (`ild@K`, `clusters@K`: distinct kNN-Embed item clusters, and one entry
        per `item_groups` name, e.g. `categories@K`). `retrieval` (default
        `retrieval.mode`): `single` ranks the whole catalogue with one user vector; `knn_embed`
        and `ada` return lists, scored by the target's position in the list. `bank`: the
        (offsets, items) histories of all training users, for kNN-Embed's neighbours (default:
        the run's histories; pass the split's training part to keep test items out).
        `item_counts` (training events per item index) adds the beyond-accuracy metrics
        (`novelty@K`, `gini@K`, `pop1%@K`: `metrics.ranking.beyond_accuracy`). Closed-form
        baselines (pop, itemknn, ease) have no embedding space: no `ild@K` / `clusters@K`."""
        c = self.config.eval
        seen = c.filter_seen if filter_seen is None else filter_seen
        mode = self._mode(retrieval)
        ks = sorted(set(ks or c.ks))
        n_items = len(self.item_ids_)
        if mode == "single":
            hist = (eval_set.offsets, eval_set.items) if seen else None
            ranks, top, _ = scan_catalogue(self.history_scorer(eval_set.offsets, eval_set.items),
                                           n_items, len(eval_set), eval_set.targets, hist, ks[-1],
                                           c.user_chunk, c.item_chunk)
            out = ranking_metrics(ranks, ks)
            out.update(coverage(top, n_items, ks))
            out["users"] = float(len(eval_set))
        else:
            k = ks[-1]
            if mode == "ada":  # whole rounds: the smallest multiple of the rounds >= max(ks)
                k = -(-k // self.ada_.rounds) * self.ada_.rounds
            _, top = self._retrieve(mode, eval_set.offsets, eval_set.items, k, seen,
                                    self_rows=eval_set.users, bank=bank)
            out = evaluate_lists(top, eval_set.targets, n_items, ks)
        if item_counts is not None:
            out.update(beyond_accuracy(top, item_counts, ks))
        if getattr(self.check_is_fitted(), "closed_form", False):
            out.update(diversity(top, ks, None, item_groups))
            return out
        if self._streams():  # a computed table too large for one chunk: only the listed rows
            ids = np.unique(np.concatenate([[0], top.ravel()]))  # row 0 stays the padding row
            top_rows = np.searchsorted(ids, top)
            with torch.no_grad():
                listed = self.check_is_fitted().items.output_rows(
                    torch.from_numpy(ids).to(self.device_))
            vectors = self._serving(listed.float().cpu())
            # kNN-Embed clusters need the whole item matrix: not computed here
            out.update(diversity(top_rows, ks, vectors, None))
            out.update(diversity(top, ks, None, item_groups))
            return out
        groups = {"clusters": self._knn_embed(bank, users=False).cluster_ids(),
                  **(item_groups or {})}
        out.update(diversity(top, ks, self.item_matrix(), groups))
        return out

    def _mode(self, retrieval: str | None) -> str:
        mode = retrieval or self.config.retrieval.mode
        if mode not in RETRIEVAL_MODES:
            raise ConfigError(f"retrieval '{mode}' is not a retrieval mode; choose one of "
                              f"{', '.join(RETRIEVAL_MODES)}.")
        if mode == "ada" and self.ada_ is None:
            raise ConfigError("retrieval 'ada' needs a run fine-tuned with Ada-Retrieval "
                              "adapters; this run has none (no ada.safetensors). Create one with "
                              "`userseq ada fit RUN --out NEW_RUN` and use NEW_RUN.")
        return mode

    def _knn_embed(self, bank: tuple[np.ndarray, np.ndarray] | None = None,
                   users: bool = True) -> Any:
        """The kNN-Embed retriever of `retrieval.knn_embed` over this model's item vectors (item
        clusters), with the users of `bank` (default: the run's histories) as neighbours when
        `users`. Cached until the settings or the bank change."""
        from userseq.index.knn_embed import KnnEmbed

        self.check_is_fitted()
        cfg = self.config.retrieval.knn_embed
        if not users:  # only the item partition (the clusters@K metric): at most one per item
            cfg = cfg.model_copy(update={"clusters": min(cfg.clusters, len(self.item_ids_))})
        key = cfg.model_dump_json()
        if self._knn is None or self._knn[0] != key:
            self._knn = (key, KnnEmbed(cfg, self.item_matrix()), None)
        knn = self._knn[1]
        if users and knn.cfg != self.config.retrieval.knn_embed:  # the capped partition
            self._knn = None
            return self._knn_embed(bank, users)
        if users:
            offsets, items = bank if bank is not None else self.histories_
            bank_key = fingerprint(offsets, items)
            if self._knn[2] != bank_key:
                knn.fit_users(self.encode(offsets, items), offsets, items)
                self._knn = (key, knn, bank_key)
        return knn

    def _retrieve(self, mode: str, offsets: np.ndarray, items: np.ndarray, k: int,
                  filter_seen: bool, self_rows: np.ndarray | None = None,
                  bank: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item indices) (n, k) of a list-returning retrieval mode."""
        n_items = len(self.item_ids_)
        if k > n_items:
            raise ConfigError(f"k ({k}) is larger than the catalogue ({n_items} items); ask for "
                              f"at most {n_items}.")
        if mode == "knn_embed":
            knn = self._knn_embed(bank)
            top, s = knn.retrieve(self.encode(offsets, items), offsets, items, k, filter_seen,
                                  self_rows)
            return s, top
        assert self.ada_ is not None
        top, s = ada_topk(self.ada_, offsets, items, k, self.config.model.max_len, filter_seen,
                          self.device_)
        return s, top

    def report(self, log: EventLog, split: Split, retrieval: str | None = None) -> dict[str, Any]:
        """The `metrics.json` content: validation and test metrics (with `retrieval`, default
        `retrieval.mode`), baselines on the same test targets, the protocol, training figures and
        the data description. kNN-Embed's neighbours are the training users with their training
        events (no test item leaks into a neighbour's mixture)."""
        c = self.config.eval
        bank = (split.train_offsets, split.train_items)
        groups = self.item_categories(log)
        seen = (split.test.offsets, split.test.items) if c.filter_seen else None
        n_items = len(self.item_ids_)
        counts = np.bincount(split.train_items, minlength=n_items + 1)
        test = split.test
        pop = evaluate(popularity_scorer(counts), n_items, test.targets, seen, c.ks, c.user_chunk,
                       c.item_chunk, counts)
        # the repeat baseline only scores history items: evaluated without seen-item filtering
        rep = evaluate(repeat_scorer(test.offsets, test.items), n_items, test.targets, None,
                       c.ks, c.user_chunk, c.item_chunk, counts)
        tables = table_report(self.check_is_fitted().items, self.config.model)
        extra = {"test_groups": self.group_report(split)} if split.groups else {}
        return {
            "valid": self.evaluate(split.valid, retrieval=retrieval, bank=bank,
                                   item_groups=groups, item_counts=counts),
            "test": self.evaluate(test, retrieval=retrieval, bank=bank, item_groups=groups,
                                  item_counts=counts),
            **extra, "retrieval": self._retrieval_report(retrieval),
            "item_table_bytes": tables["item_table_bytes"], "item_table": tables,
            **self.item_info_, "filter_seen": c.filter_seen, "ties": "pessimistic",
            "split": split.kind, "split_info": split.info, "model": self.config.model.name,
            "loss": self.config.loss.name, "train": self.train_state_,
            "data": {"source": log.source, "users": log.n_users, "items": log.n_items,
                     "catalogue": n_items, "events": log.n_events,
                     "fingerprint": self.data_fingerprint_, "timestamp_kind": log.timestamp_kind},
            "baselines": {"popularity": pop, "repeat (no seen filter)": rep},
        }

    def group_report(self, split: Split) -> dict[str, dict[str, float]]:
        """Ranking metrics of the split's test target groups: the test set under its split's name
        for it (cold-start: `cold`), each of `split.groups` (`warm`), and `all` of them together,
        with the popularity baseline of each."""
        c = self.config.eval
        name = "cold" if split.kind == "cold-start" else "test"
        sets = {name: split.test, **split.groups}
        sets["all"] = _concat(list(sets.values()))
        counts = np.bincount(split.train_items, minlength=len(self.item_ids_) + 1)
        out = {}
        for k, e in sets.items():
            seen = (e.offsets, e.items) if c.filter_seen else None
            m = self._evaluate(e, c.ks, c.filter_seen)
            pop = evaluate(popularity_scorer(counts), len(self.item_ids_), e.targets, seen, c.ks,
                           c.user_chunk, c.item_chunk)
            out[k] = {**m, "users": float(len(e)),
                      "popularity": {f"ndcg@{x}": pop[f"ndcg@{x}"] for x in c.ks}}
        return out

    # ------------------------------------------------------------------ recommending
    def item_categories(self, log: EventLog | None = None) -> dict[str, list[list[int]]]:
        """{"categories": category ids per item index} from the dataset's item metadata (the
        `genres` of MovieLens), for the `categories@K` diversity metric; {} when there are none."""
        try:
            meta, _ = self._item_meta(log) if log is not None else (None, "")
        except UserseqError:
            return {}
        if meta is None or "genres" not in meta.columns:
            return {}
        names: dict[str, int] = {}
        by_item = dict(zip(meta["item_id"].to_list(), meta["genres"].to_list(), strict=True))
        cats: list[list[int]] = [[]]
        for item in self.item_ids_.to_list():
            cats.append([names.setdefault(g, len(names)) for g in by_item.get(item) or []])
        return {"categories": cats}

    def _retrieval_report(self, retrieval: str | None) -> dict[str, Any]:
        r = self.config.retrieval
        mode = self._mode(retrieval)
        out: dict[str, Any] = {"mode": mode}
        if mode == "knn_embed":
            out["knn_embed"] = r.knn_embed.model_dump()
        if mode == "ada" or self.ada_ is not None:
            out["ada"] = r.ada.model_dump()
        return out

    def top_items(self, offsets: np.ndarray, items: np.ndarray, k: int, filter_seen: bool = True,
                  retrieval: str | None = None, user_rows: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item indices) (n, k) for CSR histories of item indices; `user_rows`: each
        history's training-user row (-1: none), kept out of its own kNN-Embed neighbours."""
        return self._topk(offsets, items, k, filter_seen, retrieval, user_rows)

    def _topk(self, offsets: np.ndarray, items: np.ndarray, k: int, filter_seen: bool,
              retrieval: str | None = None, self_rows: np.ndarray | None = None):
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
            raise UserseqError(f"k must be a positive integer (got {k!r}).")
        mode = self._mode(retrieval)
        if mode != "single":
            return self._retrieve(mode, offsets, items, int(k), filter_seen, self_rows)
        seen = (offsets, items) if filter_seen else None
        c = self.config.eval
        _, top, top_s = scan_catalogue(self.history_scorer(offsets, items),
                                       len(self.item_ids_), len(offsets) - 1, None, seen, int(k),
                                       c.user_chunk, c.item_chunk)
        return top_s, top

    def _frame(self, ids: Sequence[Any], s: np.ndarray, idx: np.ndarray) -> pl.DataFrame:
        n, k = idx.shape
        finite = np.isfinite(s)
        item_vals = self.item_ids_.gather(np.clip(idx.reshape(-1) - 1, 0, None))
        df = pl.DataFrame({
            "user_id": np.repeat(np.arange(n), k), "rank": np.tile(np.arange(1, k + 1), n),
            "item_id": item_vals, "score": s.reshape(-1),
        }).filter(pl.Series(finite.reshape(-1)))
        return df.with_columns(pl.Series("user_id", list(ids)).gather(df["user_id"]))

    def recommend(self, users: Sequence[Any], k: int = 10, filter_seen: bool = True,
                  retrieval: str | None = None) -> pl.DataFrame:
        """Top-k items for known users (original ids), from each user's full history.
        `retrieval`: single | knn_embed | ada (default `retrieval.mode`, see docs/retrieval.md)."""
        self.check_is_fitted()
        users = list(users)
        idx = _lookup(self.user_ids_, users)
        if (idx < 0).any():
            bad = [u for u, i in zip(users, idx, strict=True) if i < 0][:5]
            raise UserseqError(
                f"unknown user(s) {bad}: not in the training data. Recommend from an explicit "
                "history instead (API: recommend_history; CLI: --history ITEM,ITEM,...)."
            )
        offsets, items = self.histories_
        h_off, h_items = csr_take(offsets, items, offsets[idx], offsets[idx + 1])
        return self._frame(users, *self._topk(h_off, h_items, k, filter_seen, retrieval, idx))

    def history_indices(self, histories: Sequence[Sequence[Any]]
                        ) -> tuple[np.ndarray, np.ndarray]:
        """CSR of item indices for histories given as original item ids (unknown ids are an
        error)."""
        self.check_is_fitted()
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        if (lengths == 0).any():
            first = int(np.flatnonzero(lengths == 0)[0])
            raise UserseqError(f"history #{first} is empty; give at least one item.")
        flat = [i for h in histories for i in h]
        idx = _lookup(self.item_ids_, flat) + 1
        if (idx <= 0).any():
            bad = [flat[j] for j in np.flatnonzero(idx <= 0)[:5]]
            raise UserseqError(f"unknown item id(s) {bad} in history: not in the training "
                               "catalogue.")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return offsets, idx.astype(np.int32)

    def recommend_history(self, histories: Sequence[Sequence[Any]], k: int = 10,
                          filter_seen: bool = True,
                          ids: Sequence[Any] | None = None,
                          retrieval: str | None = None) -> pl.DataFrame:
        """Top-k items for explicit histories of original item ids (oldest first); works for new
        users. `retrieval` as in `recommend`."""
        offsets, items = self.history_indices(histories)
        return self._frame(ids if ids is not None else list(range(len(histories))),
                           *self._topk(offsets, items, k, filter_seen, retrieval))

    # ------------------------------------------------------------------ streaming state
    def user_state(self, users: Sequence[Any] | None = None,
                   histories: Sequence[Sequence[Any]] | None = None) -> UserState:
        """Streaming state (recurrent encoders: ssm, gru4rec) of known `users` after their
        training history, or of explicit `histories` (original item ids, oldest first; an empty
        history is a user with no events yet). With neither: the state of one new user."""
        enc = self.check_is_fitted()
        check_recurrent(enc, self.config.model.name)
        if users is not None and histories is not None:
            raise UserseqError("give users or histories, not both.")
        if users is not None:
            users = list(users)
            idx = _lookup(self.user_ids_, users)
            if (idx < 0).any():
                bad = [u for u, i in zip(users, idx, strict=True) if i < 0][:5]
                raise UserseqError(f"unknown user(s) {bad}: not in the training data; start "
                                   "from their history instead (user_state(histories=...)).")
            offsets, items = self.histories_
            events = [items[offsets[i] : offsets[i + 1]] for i in idx]
        else:
            events = [self._event_indices(h, f"histories[{j}]")
                      for j, h in enumerate(histories if histories is not None else [[]])]
        return advance(enc, empty_state(enc, len(events), self.device_), events, self.device_)

    def update(self, state: UserState, new_events: Sequence[Sequence[Any]]) -> UserState:
        """The state after each user's `new_events` (original item ids, oldest first; one list
        per user of `state`), in O(new events): the history is not read again. Unknown item ids
        raise before anything is computed; `state` itself is never modified."""
        enc = self.check_is_fitted()
        check_recurrent(enc, self.config.model.name)
        if len(new_events) != len(state):
            raise UserseqError(f"new_events has {len(new_events)} lists but the state holds "
                               f"{len(state)} users; give one list of item ids per user.")
        events = [self._event_indices(e, f"new_events[{j}]") for j, e in enumerate(new_events)]
        return advance(enc, state, events, self.device_)

    def recommend_state(self, state: UserState, k: int = 10,
                        ids: Sequence[Any] | None = None,
                        exclude: Sequence[Sequence[Any]] | None = None) -> pl.DataFrame:
        """Top-k items from streaming states (scores = user vector . item vectors, as
        `recommend`); `exclude` (one list of item ids per user) removes items from the ranking."""
        self.check_is_fitted()
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
            raise UserseqError(f"k must be a positive integer (got {k!r}).")
        if (state.n_events == 0).any():
            first = int(np.flatnonzero(state.n_events == 0)[0])
            raise UserseqError(f"state #{first} has no events yet: update it with at least one "
                               "event before recommending.")
        seen = None
        if exclude is not None:
            parts = [self._event_indices(e, f"exclude[{j}]") for j, e in enumerate(exclude)]
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
            seen = (offsets, np.concatenate(parts).astype(np.int32))
        c = self.config.eval
        users = self._serving(state.vector.float())
        _, top, top_s = scan_catalogue(matrix_scorer(users, self.item_matrix()),
                                       len(self.item_ids_), len(users), None, seen, int(k),
                                       c.user_chunk, c.item_chunk)
        return self._frame(ids if ids is not None else list(range(len(state))), top_s, top)

    def _event_indices(self, events: Sequence[Any], field: str) -> np.ndarray:
        events = list(events)
        # a dict for the few ids of a streaming update (a polars join costs ~0.5 ms per call);
        # ids it does not know exactly (another type: "10" for 10) go through lookup_ids
        if self._item_dict is None or self._item_dict[0] is not self.item_ids_:
            self._item_dict = (self.item_ids_, {v: i + 1 for i, v in
                                                enumerate(self.item_ids_.to_list())})
        table = self._item_dict[1]
        try:
            idx = np.array([table.get(e, 0) for e in events], dtype=np.int64)
        except TypeError:  # unhashable ids: leave them to lookup_ids
            idx = np.zeros(len(events), dtype=np.int64)
        miss = idx <= 0
        if miss.any():
            idx[miss] = _lookup(self.item_ids_, [events[j] for j in np.flatnonzero(miss)]) + 1
        if (idx <= 0).any():
            bad = [events[j] for j in np.flatnonzero(idx <= 0)[:5]]
            raise UserseqError(f"unknown item id(s) {bad} in {field}: not in the model's "
                               "catalogue; nothing was updated.")
        return idx.astype(np.int64)

    def user_embeddings(self) -> np.ndarray:
        """(n_users, D) vectors of the training users, in the order of `user_ids`."""
        offsets, items = self.histories_
        return self.encode(offsets, items).numpy()

    def item_embeddings(self) -> np.ndarray:
        """(n_items, D) output vectors of the items, in the order of `item_ids`."""
        return self.item_matrix()[1:].numpy()

    # ------------------------------------------------------------------ persistence
    def _save_state(self, d: Path) -> None:
        """The fitted state (the layout of userseq 0.1, so old and new runs read the same way)."""
        enc = self.check_is_fitted()
        meta = {"task": self.task, "n_items": str(len(self.item_ids_)),
                "data_fingerprint": self.data_fingerprint_ or "", "userseq_version": __version__}
        save_tensors(enc.state_dict(), d / MODEL_FILE, meta)
        if self.ada_ is not None:
            save_tensors(self.ada_.adapter_state(), d / ADA_FILE, meta)
        save_ids(self.user_ids_, d / "user_ids.parquet")
        save_ids(self.item_ids_, d / "item_ids.parquet")
        offsets, items = self.histories_
        save_tensors({"offsets": torch.from_numpy(offsets.astype(np.int64)),
                      "items": torch.from_numpy(items.astype(np.int32))}, d / HISTORIES_FILE)
        write_json({"train": self.train_state_, "data_fingerprint": self.data_fingerprint_,
                    "items": self.item_info_}, d / RUN_FILE)

    def _load_state(self, d: Path) -> None:
        _check_run_files(d)
        tensors, meta = load_tensors(d / MODEL_FILE)
        self.item_ids_ = load_ids(d / "item_ids.parquet")
        self.user_ids_ = load_ids(d / "user_ids.parquet")
        n_items = len(self.item_ids_)
        if meta.get("n_items") and int(meta["n_items"]) != n_items:
            raise ArtifactError(f"{d}: item_ids.parquet has {n_items} items but the model expects "
                                f"{meta['n_items']}.")
        self.device_ = resolve_device(self.config.train.device)
        self.encoder_ = _restore_encoder(d, self.config, tensors, n_items).to(self.device_)
        self.ada_ = _restore_ada(d, self.config, self.encoder_) if (d / ADA_FILE).exists() else None
        self._knn = None
        h, _ = load_tensors(d / HISTORIES_FILE)
        self.histories_ = _checked_histories(d, h, len(self.user_ids_), n_items)
        self.data_fingerprint_ = meta.get("data_fingerprint") or None
        if (d / RUN_FILE).exists():
            run = read_json(d / RUN_FILE)
            self.train_state_, self.item_info_ = run.get("train", {}), run.get("items", {})


# ---------------------------------------------------------------------- helpers
def _check_run_files(d: Path) -> None:
    if (d / MODEL_FILE).exists():
        return
    if (d / "checkpoint.safetensors").exists():
        raise ArtifactError(f"{d}: {MODEL_FILE} is missing but a training checkpoint is there: "
                            "training has not finished; wait for it, or continue it with "
                            "`userseq train ... --resume`.")
    raise ArtifactError(f"{d}: not a userseq run directory (no {MODEL_FILE}); create one with "
                        "`userseq train`.")


def _checked_histories(d: Path, h: dict[str, torch.Tensor], n_users: int,
                       n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The training histories (CSR), checked against the id maps: a histories file of another run
    (runs of format 2 record no hashes) is an error, not an IndexError or wrong answers later."""
    p = d / HISTORIES_FILE
    if "offsets" not in h or "items" not in h:
        raise ArtifactError(f"{p}: not a histories file (no offsets/items tensors).")
    offsets, items = h["offsets"].numpy(), h["items"].numpy()
    why = None
    if offsets.ndim != 1 or len(offsets) != n_users + 1:
        why = f"{len(offsets) - 1} users, but user_ids.parquet has {n_users}"
    elif offsets[0] != 0 or offsets[-1] != len(items) or (np.diff(offsets) < 0).any():
        why = "its offsets do not describe its items"
    elif len(items) and (items.min() < 1 or items.max() > n_items):
        why = f"item indices outside 1..{n_items} (the catalogue of item_ids.parquet)"
    if why:
        raise ArtifactError(f"{p}: does not belong to this run ({why}); restore the run's own "
                            "file or train again.")
    return offsets, items


def _restore_encoder(d: Path, cfg: RunConfig, tensors: dict[str, torch.Tensor],
                     n_items: int) -> SequenceEncoder:
    """The saved encoder, rebuilt from config.yaml and its weights."""

    def mismatch(why: str) -> ArtifactError:
        return ArtifactError(f"{d / MODEL_FILE}: weights do not match config.yaml: {why}")

    try:
        enc = build_encoder(cfg.model, n_items, build_items(cfg.model, n_items, saved=tensors))
        enc.load_state_dict(tensors)
    except KeyError as e:
        raise mismatch(f"missing tensor {e}") from None
    except RuntimeError as e:
        raise mismatch(str(e).splitlines()[0]) from None
    return enc


def _restore_ada(d: Path, cfg: RunConfig, encoder: SequenceEncoder) -> AdaRetrieval:
    a = cfg.retrieval.ada
    ada = AdaRetrieval(encoder, a.rounds, a.train_k, a.dropout)
    tensors, _ = load_tensors(d / ADA_FILE)
    try:
        missing, unexpected = ada.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise ArtifactError(f"{d / ADA_FILE}: adapters do not match config.yaml "
                            f"(retrieval.ada): {str(e).splitlines()[0]}") from None
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise ArtifactError(f"{d / ADA_FILE}: adapters do not match config.yaml (retrieval.ada): "
                            f"missing {missing[:3]}, unexpected {unexpected[:3]}.")
    return ada.to(encoder.items.output_matrix().device).eval()


def _train_state(state: TrainState, trainer: Trainer, n_rows: int) -> dict[str, Any]:
    """What `train_state_` (and metrics.json's `train`) report about a finished training."""
    per_epoch = [h["epoch_seconds"] for h in state.history]
    return {
        "epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid": state.best_metric,
        "seconds": round(state.seconds, 2), "stopped": state.stopped,
        "seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
        "train_sequences": int(n_rows), "device": str(trainer.device),
        "precision": str(trainer.autocast_dtype or torch.float32).replace("torch.", ""),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def _check_mse2d(cfg: RunConfig, encoder: SequenceEncoder) -> None:
    if not hasattr(encoder, "layer_outputs"):
        raise ConfigError(f"loss.mse2d needs per-block read-outs: a transformer encoder (sasrec, "
                          f"bert4rec) with model.readout=last; got '{cfg.model.name}' "
                          f"(readout {cfg.model.readout}).")
    too_wide = [d for d in mse2d_dims(cfg) if not 1 <= d <= cfg.model.dim]
    if too_wide:
        raise ConfigError(f"loss.mse2d.dims {too_wide}: each width must lie in 1..model.dim "
                          f"({cfg.model.dim}).")


def mse2d_dims(cfg: RunConfig) -> list[int]:
    """Prefix widths of 2D Matryoshka training, widest first: `loss.mse2d.dims`, else the
    Matryoshka table's nested prefixes, else dim, dim/2, ... down to 8."""
    c, m = cfg.loss.mse2d, cfg.model
    if c.dims:
        return sorted(set(c.dims), reverse=True)
    if m.item_table == "matryoshka":
        return matryoshka_dims(m)
    dims, d = [], m.dim
    while d >= 8:
        dims.append(d)
        d //= 2
    return dims or [m.dim]


class _Prefix:
    """The first `d` dimensions of an item representation's output vectors (Matryoshka losses)."""

    def __init__(self, items: ItemRepr, d: int) -> None:
        self.items, self.d = items, d

    def output_matrix(self) -> torch.Tensor:
        return self.items.output_matrix()[:, : self.d]

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.items.output_rows(ids)[..., : self.d]


def _subset(e: EvalSet, pick: np.ndarray) -> EvalSet:
    off, items = csr_take(e.offsets, e.items, e.offsets[pick], e.offsets[pick + 1])
    return EvalSet(e.users[pick], e.targets[pick], off, items)


def _concat(sets: list[EvalSet]) -> EvalSet:
    """One evaluation set made of several (users may repeat: each row is one target)."""
    lengths = np.concatenate([np.diff(e.offsets) for e in sets])
    return EvalSet(np.concatenate([e.users for e in sets]),
                   np.concatenate([e.targets for e in sets]),
                   np.concatenate([[0], np.cumsum(lengths)]).astype(sets[0].offsets.dtype),
                   np.concatenate([e.items for e in sets]))


def _lookup(id_map: pl.Series, ids: Sequence[Any]) -> np.ndarray:
    return lookup_ids(id_map, ids, offset=0)
