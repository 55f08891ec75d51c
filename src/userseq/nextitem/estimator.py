"""Next-item recommendation: the user-facing estimator (fit / recommend / embeddings / save / load).

`NextItemRecommender` is an `Estimator[RunConfig]` (`userseq.core.estimator`): its config is the
run config (data, model, loss, train, eval), its fitted state the attributes ending in `_`, and a
saved run holds `config.yaml`, `estimator.json`, `model.safetensors` (the encoder),
`user_ids.parquet` / `item_ids.parquet`, `histories.safetensors` and `run.json`. Runs written by
userseq 0.1 (no `estimator.json`) load too.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

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
from userseq.core.estimator import Estimator
from userseq.core.trainer import Trainer, TrainState, resolve_device
from userseq.core.version import __version__
from userseq.data.batches import csr_take, length_bucketed_batches, pad_left, training_windows
from userseq.data.eventlog import EventLog, lookup_ids
from userseq.data.split import EvalSet, Split, make_split
from userseq.encoders import SequenceEncoder, build_encoder
from userseq.items.base import ItemRepr
from userseq.items.factory import (
    build_items,
    categorical_features,
    matryoshka_dims,
    serve_dim,
    table_report,
)
from userseq.losses import NextItemLoss
from userseq.metrics.ranking import (
    evaluate,
    matrix_scorer,
    popularity_scorer,
    repeat_scorer,
    scan_catalogue,
)
from userseq.nextitem.config import RunConfig, split_kwargs
from userseq.nextitem.stream import UserState, advance, check_recurrent, empty_state

MODEL_FILE = "model.safetensors"
HISTORIES_FILE = "histories.safetensors"
RUN_FILE = "run.json"


def data_fingerprint(log: EventLog) -> str:
    offsets, items = log.sequences()
    return fingerprint(offsets, items, extra=f"{log.n_users}:{log.n_items}")


class NextItemRecommender(Estimator[RunConfig]):
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
        self.device_ = torch.device("cpu")
        self._item_dict: tuple[pl.Series, dict] | None = None

    @property
    def user_ids(self) -> pl.Series | None:
        """The training users' original ids, in the order of `user_embeddings()`."""
        return self.user_ids_

    @property
    def item_ids(self) -> pl.Series | None:
        """The catalogue's original item ids (item index i + 1), order of `item_embeddings()`."""
        return self.item_ids_

    # ------------------------------------------------------------------ training
    def fit(self, log: EventLog, split: Split | None = None, run_dir: str | Path | None = None,
            resume: bool = False, quiet: bool = False,
            item_meta: pl.DataFrame | None = None) -> NextItemRecommender:
        """Train on `split` (default: the configured split of `log`). `item_meta` (item_id +
        attribute columns) gives text items their text; by default it comes from `data.item_text`
        or from the named dataset's item metadata (see docs/items.md). With `run_dir`, the run is
        saved there (with metrics.json and train_log.json) and `resume` continues its checkpoint."""
        cfg = self.config
        split = split or make_split(log, cfg.data.split, **split_kwargs(cfg))
        torch.manual_seed(cfg.train.seed)
        catalogue, items = self._build_item_repr(log, split, item_meta)
        self.encoder_ = encoder = build_encoder(cfg.model, len(catalogue), items)
        self.user_ids_, self.item_ids_ = log.user_ids, catalogue
        self.histories_ = log.sequences()
        self.data_fingerprint_ = data_fingerprint(log)
        rows = training_windows(split.train_offsets, split.train_items, cfg.model.max_len)
        if len(rows) == 0:
            raise UserseqError(f"{log.source}: no training sequence has 2 or more events; "
                               "nothing to learn from.")
        # popularity for negative sampling comes from the training events only (no test leakage)
        n_items = len(catalogue)
        counts = np.bincount(split.train_items, minlength=n_items + 1)
        loss = NextItemLoss(cfg.loss, n_items, counts)
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device_ = trainer.device
        batches, n_batches = self._batches(split, rows, trainer.device)
        valid = self._valid_subset(split.valid)
        state = trainer.fit(encoder, batches, n_batches, lambda m, b: self._loss(m, b, loss),
                            lambda m: self._validate(valid), resume)
        self.train_state_ = _train_state(state, trainer, len(rows))
        if run_dir is not None:
            self.save(run_dir)
            write_json(state.history, Path(run_dir) / "train_log.json")
            self.write_metrics(run_dir, self.report(log, split))
        return self

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
            for idx in length_bucketed_batches(lengths, bs, rng):
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

    def _build_item_repr(self, log: EventLog, split: Split, meta: pl.DataFrame | None
                         ) -> tuple[pl.Series, ItemRepr | None]:
        """The catalogue (the log's items, then items that only the attribute table knows) and the
        configured item representation (None: the encoder's default id table)."""
        from userseq.items.text import catalogue_extension, item_text_for, text_matrix

        m = self.config.model
        catalogue, self.item_info_ = log.item_ids, {}
        source = "item_meta argument"
        if meta is None and (m.items != "id" or m.item_table == "unified"):
            meta, source = self._item_meta(log)
        text = None
        if m.items != "id":
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
        known = torch.from_numpy(np.bincount(split.train_items, minlength=len(catalogue) + 1) > 0)
        return catalogue, build_items(m, len(catalogue), text=text, known=known, features=features)

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
        if model.causal:
            inputs, targets = rows[:, :-1], rows[:, 1:]
            mask = inputs > 0
            h = model(inputs, mask)
            sel = mask & (targets > 0)
            return self._objective(h[sel], targets[sel], W, loss)
        # masked-item (Cloze) objective: hide a random share of real positions, predict them
        x = rows[:, 1:]
        real = x > 0
        hide = (torch.rand(x.shape, device=x.device) < self._mask_prob()) & real
        none = ~hide.any(1)
        hide[none, -1] = real[none, -1]  # every row predicts at least its last item
        inputs = torch.where(hide, torch.full_like(x, model.mask_token()), x)
        h = model(inputs, real)
        return self._objective(h[hide], x[hide], W, loss)

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
            if mask_tok is None:
                x = pad_left(starts, ends, items, L)
            else:  # BERT4Rec reads the [mask] appended after the history
                x = np.concatenate([pad_left(starts, ends, items, L - 1),
                                    np.full((len(rows), 1), mask_tok)], 1)
            width = int(min(L, max(1, lengths[rows].max() + (mask_tok is not None))))
            xt = torch.from_numpy(x[:, -width:]).to(self.device_)
            out[torch.from_numpy(rows)] = enc.last(xt, xt > 0).float().cpu()
        return self._serving(out)

    def item_matrix(self) -> torch.Tensor:
        """(n_items + 1, D) item output vectors (D = the Matryoshka serving prefix where set)."""
        enc = self.check_is_fitted()
        with torch.no_grad():
            return self._serving(enc.items.output_matrix().detach().float().cpu())

    def _serving(self, vectors: torch.Tensor) -> torch.Tensor:
        d = serve_dim(self.config.model)
        return vectors if d == vectors.shape[1] else vectors[:, :d].contiguous()

    def _evaluate(self, eval_set: EvalSet, ks: Sequence[int],
                  filter_seen: bool) -> dict[str, float]:
        users = self.encode(eval_set.offsets, eval_set.items)
        seen = (eval_set.offsets, eval_set.items) if filter_seen else None
        c = self.config.eval
        return evaluate(matrix_scorer(users, self.item_matrix()), len(self.item_ids_),
                        eval_set.targets, seen, ks, c.user_chunk, c.item_chunk)

    def evaluate(self, eval_set: EvalSet, ks: Sequence[int] | None = None,
                 filter_seen: bool | None = None) -> dict:
        """Full-ranking NDCG/HR/MRR/coverage of `eval_set` targets given their histories."""
        c = self.config.eval
        seen = c.filter_seen if filter_seen is None else filter_seen
        return self._evaluate(eval_set, ks or c.ks, seen)

    def report(self, log: EventLog, split: Split) -> dict[str, Any]:
        """The `metrics.json` content: validation and test metrics, baselines on the same test
        targets, the protocol, training figures and the data description."""
        c = self.config.eval
        seen = (split.test.offsets, split.test.items) if c.filter_seen else None
        n_items = len(self.item_ids_)
        counts = np.bincount(split.train_items, minlength=n_items + 1)
        test = split.test
        pop = evaluate(popularity_scorer(counts), n_items, test.targets, seen, c.ks, c.user_chunk,
                       c.item_chunk)
        # the repeat baseline only scores history items: evaluated without seen-item filtering
        rep = evaluate(repeat_scorer(test.offsets, test.items), n_items, test.targets, None,
                       c.ks, c.user_chunk, c.item_chunk)
        tables = table_report(self.check_is_fitted().items, self.config.model)
        return {
            "valid": self.evaluate(split.valid), "test": self.evaluate(test),
            "item_table_bytes": tables["item_table_bytes"], "item_table": tables,
            **self.item_info_, "filter_seen": c.filter_seen, "ties": "pessimistic",
            "split": split.kind, "split_info": split.info, "model": self.config.model.name,
            "loss": self.config.loss.name, "train": self.train_state_,
            "data": {"source": log.source, "users": log.n_users, "items": log.n_items,
                     "catalogue": n_items, "events": log.n_events,
                     "fingerprint": self.data_fingerprint_, "timestamp_kind": log.timestamp_kind},
            "baselines": {"popularity": pop, "repeat (no seen filter)": rep},
        }

    # ------------------------------------------------------------------ recommending
    def _topk(self, offsets: np.ndarray, items: np.ndarray, k: int, filter_seen: bool):
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
            raise UserseqError(f"k must be a positive integer (got {k!r}).")
        users = self.encode(offsets, items)
        seen = (offsets, items) if filter_seen else None
        c = self.config.eval
        _, top, top_s = scan_catalogue(matrix_scorer(users, self.item_matrix()),
                                       len(self.item_ids_), len(users), None, seen, int(k),
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

    def recommend(self, users: Sequence[Any], k: int = 10,
                  filter_seen: bool = True) -> pl.DataFrame:
        """Top-k items for known users (original ids), from each user's full history."""
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
        return self._frame(users, *self._topk(h_off, h_items, k, filter_seen))

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
                          ids: Sequence[Any] | None = None) -> pl.DataFrame:
        """Top-k items for explicit histories of original item ids (oldest first); works for new
        users."""
        offsets, items = self.history_indices(histories)
        return self._frame(ids if ids is not None else list(range(len(histories))),
                           *self._topk(offsets, items, k, filter_seen))

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
        h, _ = load_tensors(d / HISTORIES_FILE)
        self.histories_ = (h["offsets"].numpy(), h["items"].numpy())
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


def _lookup(id_map: pl.Series, ids: Sequence[Any]) -> np.ndarray:
    return lookup_ids(id_map, ids, offset=0)
