"""Generative retrieval: the user-facing estimator (fit / recommend / evaluate / save / load).

`GenerativeRecommender` is an `Estimator[GenerativeConfig]`. Fitting learns (or takes) the item
semantic IDs, then trains the encoder-decoder through the one training loop
(`core.trainer.Trainer`), selecting on validation NDCG of trie-constrained beam search. A saved
run holds `config.yaml`, `estimator.json`, `model.safetensors`, `semantic_ids/` (the tokenizer and
the item codes), `user_ids.parquet` / `item_ids.parquet`, `histories.safetensors`,
`preferences.safetensors` (with a preference slot) and `run.json`; no pickle.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator, Sequence
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
from userseq.core.errors import ArtifactError, ConfigError, DataError, UserseqError
from userseq.core.estimator import Estimator, IdMaps
from userseq.core.trainer import Trainer, resolve_device
from userseq.data.batches import csr_take, length_bucketed_batches, pad_left, training_windows
from userseq.data.eventlog import EventLog, lookup_ids
from userseq.data.split import EvalSet, Split, make_split, split_options
from userseq.generative.config import GenerativeConfig
from userseq.generative.decoding import DecodeSettings, decode
from userseq.generative.model import GenerativeRetriever
from userseq.generative.semantic_ids import (
    ItemSemanticIds,
    PrefixTrie,
    fit_item_ids,
    item_vectors,
)
from userseq.metrics.ranking import coverage, evaluate, popularity_scorer, ranking_metrics

MODEL_FILE = "model.safetensors"
HISTORIES_FILE = "histories.safetensors"
PREFERENCES_FILE = "preferences.safetensors"
SEMANTIC_DIR = "semantic_ids"
RUN_FILE = "run.json"
PREFERENCE_DIM = 384  # MiniLM (items.text.TEXT_ENCODERS["all-minilm-l6-v2"])


def encode_preferences(texts: Sequence[str]) -> np.ndarray:
    """MiniLM vectors (n, 384) of preference texts (cached like item text vectors)."""
    from userseq.items.text import encode_texts

    return encode_texts(list(texts))[0]


class GenerativeRecommender(IdMaps, Estimator[GenerativeConfig]):
    """Generative retrieval with semantic IDs (TIGER-style) and Diverse Beam Search.

    >>> rec = GenerativeRecommender(overrides={"items.source": "run:runs/sasrec"}).fit(log)
    >>> rec.recommend(["user-1"], k=10)                                   # beam search
    >>> rec.recommend(["user-1"], k=10, decode="diverse", groups=5, diversity=0.5)
    >>> rec.recommend_history([["item-a", "item-b"]], preference=["cheap vegan skin care"])

    Fitted state: `model_` (the network), `semantic_ids_` (tokenizer + item codes), `trie_`,
    `user_ids_`, `item_ids_`, `histories_`, `preferences_` (user index -> vector, or None),
    `train_state_`.
    """

    task = "generative"
    config_class = GenerativeConfig
    fitted_attribute = "model_"

    def __init__(self, config: GenerativeConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        super().__init__(config, overrides)
        self.model_: GenerativeRetriever | None = None
        self.semantic_ids_: ItemSemanticIds | None = None
        self.trie_: PrefixTrie | None = None
        self.user_ids_: pl.Series | None = None
        self.item_ids_: pl.Series | None = None
        self.histories_: tuple[np.ndarray, np.ndarray] | None = None
        self.preferences_: tuple[np.ndarray, np.ndarray] | None = None  # (vectors, has)
        self.data_fingerprint_: str | None = None
        self.train_state_: dict[str, Any] = {}
        self.device_ = torch.device("cpu")

    # ------------------------------------------------------------------ training
    def fit(self, log: EventLog, split: Split | None = None, run_dir: str | Path | None = None,
            semantic_ids: ItemSemanticIds | str | Path | None = None,
            vectors: np.ndarray | None = None, preferences: pl.DataFrame | None = None,
            resume: bool = False, quiet: bool = False) -> GenerativeRecommender:
        """Train on `split` (default: the configured split of `log`). The item semantic IDs come
        from `semantic_ids` (fitted, or a directory written by `userseq semantic-ids fit`), else
        are fitted here on `vectors` (n_items, E) in the log's item order, else on the vectors of
        `items.source`. `preferences` (user_id, preference) fills the preference slot."""
        cfg = self.config
        split = split or make_split(log, cfg.data.split, **split_options(cfg.data))
        self.semantic_ids_ = sid = self._semantic_ids(log, semantic_ids, vectors)
        self.trie_ = PrefixTrie(sid.codes[1:], sid.sizes)
        self.user_ids_, self.item_ids_ = log.user_ids, log.item_ids
        self.histories_ = log.sequences()
        offsets, items = self.histories_
        self.data_fingerprint_ = fingerprint(offsets, items, extra=f"{log.n_users}:{log.n_items}")
        self.preferences_ = self._read_preferences(log, preferences)
        torch.manual_seed(cfg.train.seed)
        self.model_ = model = self._build_model()
        lengths_all = np.diff(split.train_offsets)
        users = np.flatnonzero(lengths_all >= 2)
        rows = training_windows(split.train_offsets, split.train_items, cfg.model.max_len)
        if len(rows) == 0:
            raise UserseqError(f"{log.source}: no training sequence has 2 or more events; "
                               "nothing to learn from.")
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device_ = trainer.device
        valid = self._valid_subset(split.valid)
        bs = cfg.train.batch_size
        state = trainer.fit(model, self._batches(split, rows, users, trainer.device),
                            (len(rows) + bs - 1)
                            // bs, lambda m, b: m.loss(*b),
                            lambda m: self.evaluate(valid), resume)
        per_epoch = [h["epoch_seconds"] for h in state.history]
        self.train_state_ = {
            "epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid": state.best_metric,
            "seconds": round(state.seconds, 2), "stopped": state.stopped,
            "seconds_per_epoch": round(float(np.mean(per_epoch)), 2) if per_epoch else None,
            "train_sequences": int(len(rows)), "device": str(trainer.device),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        }
        if run_dir is not None:
            self.save(run_dir)
            write_json(state.history, Path(run_dir) / "train_log.json")
            self.write_metrics(run_dir, self.report(log, split))
        return self

    def _semantic_ids(self, log: EventLog, given: ItemSemanticIds | str | Path | None,
                      vectors: np.ndarray | None) -> ItemSemanticIds:
        cfg = self.config
        if given is not None:
            sid = given if isinstance(given, ItemSemanticIds) else ItemSemanticIds.load(given)
            if not sid.item_ids.equals(log.item_ids):
                raise DataError("semantic IDs: their items differ from the data's catalogue "
                                f"({len(sid.item_ids)} vs {log.n_items} items); fit them on the "
                                "same data (userseq semantic-ids fit --data ...).")
            return sid
        if vectors is not None:
            info: dict[str, Any] = {"source": "vectors argument"}
            if len(vectors) != log.n_items:
                raise DataError(f"vectors: {len(vectors)} rows for {log.n_items} items; give one "
                                "row per item, in the log's item order.")
        else:
            vectors, info = item_vectors(cfg.items.source, log.item_ids, cfg.dataset,
                                         cfg.data.item_text)
        return fit_item_ids(vectors, log.item_ids, cfg.semantic_ids, info)

    def _read_preferences(self, log: EventLog, table: pl.DataFrame | None
                          ) -> tuple[np.ndarray, np.ndarray] | None:
        cfg = self.config
        if table is None and cfg.preferences:
            from userseq.data.io import collect_table, scan_table

            lf, name = scan_table(Path(cfg.preferences))
            table = collect_table(lf, name, ["user_id"])
        if table is None:
            return None
        if not cfg.model.preference:
            raise ConfigError("preferences were given but model.preference is false; set "
                              "--set model.preference=true to add the preference slot.")
        if "user_id" not in table.columns or "preference" not in table.columns:
            raise DataError(f"preferences: need columns user_id and preference (got "
                            f"{', '.join(table.columns)}).")
        idx = lookup_ids(log.user_ids, table["user_id"].cast(log.user_ids.dtype).to_list(),
                         offset=0)
        keep = (idx >= 0) & table["preference"].is_not_null().to_numpy()
        vec = np.zeros((log.n_users, PREFERENCE_DIM), np.float32)
        has = np.zeros(log.n_users, bool)
        if keep.any():
            vec[idx[keep]] = encode_preferences(table["preference"].filter(pl.Series(keep))
                                                .to_list())
            has[idx[keep]] = True
        return vec, has

    def _build_model(self) -> GenerativeRetriever:
        m, sid = self.config.model, self.semantic_ids_
        return GenerativeRetriever(
            torch.from_numpy(sid.codes), sid.sizes, dim=m.dim, layers=m.layers,
            decoder_layers=m.decoder_layers, heads=m.heads, ffn_dim=m.ffn_dim, dropout=m.dropout,
            max_len=m.max_len, preference_dim=PREFERENCE_DIM if m.preference else None,
            init_std=m.init_std)

    def _batches(self, split: Split, rows: np.ndarray, users: np.ndarray, device: torch.device):
        """epoch -> length-bucketed batches of (left-padded rows, preference vectors or None);
        with `data.train_windows: random`, long histories are cropped anew every epoch."""
        cfg = self.config
        bs, seed = cfg.train.batch_size, cfg.train.seed
        rows_t = torch.from_numpy(rows)
        lengths = (rows > 0).sum(1)
        prefs = self.preferences_

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            rng = np.random.default_rng(seed + epoch)
            rows_e = rows_t
            if cfg.data.train_windows == "random":
                rows_e = torch.from_numpy(training_windows(
                    split.train_offsets, split.train_items, cfg.model.max_len, rng=rng))
            for idx in length_bucketed_batches(lengths, bs, rng, cfg.train.bucket_batches):
                width = int(lengths[idx].max())
                x = rows_e[torch.from_numpy(idx)][:, -width:].to(device, non_blocking=True)
                p = None
                if prefs is not None:
                    p = torch.from_numpy(prefs[0][users[idx]]).to(device)
                yield x, p

        return batches

    def _valid_subset(self, valid: EvalSet) -> EvalSet:
        n = self.config.train.valid_users
        if not n or len(valid) <= n:
            return valid
        pick = np.sort(np.random.default_rng(self.config.train.seed).choice(len(valid), n,
                                                                            replace=False))
        off, items = csr_take(valid.offsets, valid.items, valid.offsets[pick],
                              valid.offsets[pick + 1])
        return EvalSet(valid.users[pick], valid.targets[pick], off, items)

    # ------------------------------------------------------------------ decoding
    def settings(self, decode: str | None = None, beams: int | None = None,
                 groups: int | None = None, diversity: float | None = None) -> DecodeSettings:
        """The decoding settings: the run's `decode` section, changed by the arguments."""
        d = self.config.decode
        method = decode or d.method
        if method not in ("beam", "diverse"):
            raise ConfigError(f"decode '{method}': expected beam or diverse.")
        if method == "beam":
            if (groups or 1) != 1 or diversity:
                raise ConfigError("--groups/--diversity need --decode diverse.")
            return DecodeSettings(beams or d.beams, 1, 0.0)
        g = groups if groups is not None else (d.groups if d.method == "diverse" else 2)
        lam = diversity if diversity is not None else (d.diversity if d.method == "diverse"
                                                       else 0.5)
        return DecodeSettings(beams or d.beams, g, lam)

    def decode_csr(self, offsets: np.ndarray, items: np.ndarray, k: int,
                   settings: DecodeSettings | None = None, filter_seen: bool = True,
                   preferences: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices (n, k) and log-probabilities for CSR histories of item indices
        (item 0 / -inf where fewer than k items could be decoded)."""
        model = self.check_is_fitted()
        settings = settings or self.settings()
        settings.check(k, self.trie_.n_items)
        n = len(offsets) - 1
        top = np.zeros((n, k), np.int64)
        top_s = np.full((n, k), -np.inf, np.float32)
        lengths = np.diff(offsets)
        order = np.argsort(lengths, kind="stable")
        chunk, L = self.config.eval.user_chunk, self.config.model.max_len
        for i in range(0, n, chunk):
            rows = order[i : i + chunk]
            starts, ends = offsets[rows], offsets[rows + 1]
            width = int(max(1, min(L, lengths[rows].max())))
            x = torch.from_numpy(pad_left(starts, ends, items, width)).to(self.device_)
            seen = [items[s:e] for s, e in zip(starts, ends, strict=True)] if filter_seen else None
            p = None
            if preferences is not None:
                p = torch.from_numpy(preferences[rows]).to(self.device_)
            it, sc = decode(model, self.trie_, x, settings, k, seen, p)
            top[rows], top_s[rows] = it.numpy(), sc.numpy()
        return top, top_s

    def user_preferences(self, users: np.ndarray) -> np.ndarray | None:
        """The stored preference vectors of user rows (None without stored preferences)."""
        if self.preferences_ is None:
            return None
        return self.preferences_[0][users]

    def evaluate(self, eval_set: EvalSet, ks: Sequence[int] | None = None,
                 filter_seen: bool | None = None, settings: DecodeSettings | None = None,
                 return_lists: bool = False) -> Any:
        """Recall (= HR with one target) / NDCG / MRR at `ks` and catalogue coverage of the
        decoded top lists; the target's rank is its position in the list (beyond the list: not
        found). With `return_lists`, also the (n, max k) item lists."""
        c = self.config.eval
        ks = sorted(set(ks or c.ks))
        seen = c.filter_seen if filter_seen is None else filter_seen
        top, _ = self.decode_csr(eval_set.offsets, eval_set.items, max(ks), settings, seen,
                                 self.user_preferences(eval_set.users))
        hit = top == eval_set.targets[:, None]
        ranks = np.where(hit.any(1), hit.argmax(1) + 1, np.iinfo(np.int64).max).astype(np.float64)
        out = ranking_metrics(ranks, ks)
        for k in ks:
            out[f"recall@{k}"] = out[f"hr@{k}"]
        out.update(coverage(top, len(self.item_ids_), ks))
        out["users"] = float(len(eval_set))
        return (out, top) if return_lists else out

    def report(self, log: EventLog, split: Split) -> dict[str, Any]:
        """The `metrics.json` content: validation and test metrics, a popularity baseline on the
        same test targets, the semantic-ID report and training figures."""
        c = self.config.eval
        n_items = len(self.item_ids_)
        counts = np.bincount(split.train_items, minlength=n_items + 1)
        test = split.test
        seen = (test.offsets, test.items) if c.filter_seen else None
        pop = evaluate(popularity_scorer(counts), n_items, test.targets, seen, c.ks)
        s = self.settings()
        return {
            "valid": self.evaluate(split.valid), "test": self.evaluate(test),
            "decode": {"method": "diverse" if s.groups > 1 else "beam", "beams": s.beams,
                       "groups": s.groups, "diversity": s.diversity},
            "semantic_ids": self.semantic_ids_.report, "filter_seen": c.filter_seen,
            "split": split.kind, "model": "generative", "train": self.train_state_,
            "data": {"source": log.source, "users": log.n_users, "items": log.n_items,
                     "events": log.n_events, "fingerprint": self.data_fingerprint_},
            "baselines": {"popularity": pop},
        }

    # ------------------------------------------------------------------ recommending
    def _frame(self, ids: Sequence[Any], idx: np.ndarray, s: np.ndarray) -> pl.DataFrame:
        n, k = idx.shape
        codes = self.semantic_ids_.codes[idx.reshape(-1)]
        df = pl.DataFrame({
            "user_id": np.repeat(np.arange(n), k), "rank": np.tile(np.arange(1, k + 1), n),
            "item_id": self.item_ids_.gather(np.clip(idx.reshape(-1) - 1, 0, None)),
            "score": s.reshape(-1), "semantic_id": codes.tolist(),
        }).filter(pl.Series(np.isfinite(s.reshape(-1))))
        return df.with_columns(pl.Series("user_id", list(ids)).gather(df["user_id"]))

    def recommend(self, users: Sequence[Any], k: int = 10, filter_seen: bool = True,
                  decode: str | None = None, beams: int | None = None,
                  groups: int | None = None, diversity: float | None = None,
                  preference: Sequence[str | None] | None = None) -> pl.DataFrame:
        """Top-k items for known users, decoded with beam search (`decode="beam"`) or Diverse
        Beam Search (`"diverse"`, `groups` G, Hamming penalty `diversity`); `score` is the
        item's log-probability. `preference` texts (one per user) override stored ones."""
        self.check_is_fitted()
        _check_k(k)
        users = list(users)
        idx = lookup_ids(self.user_ids_, users, offset=0)
        if (idx < 0).any():
            bad = [u for u, i in zip(users, idx, strict=True) if i < 0][:5]
            raise UserseqError(f"unknown user(s) {bad}: not in the training data. Recommend from "
                               "an explicit history instead (API: recommend_history; CLI: "
                               "--history ITEM,ITEM,...).")
        offsets, items = self.histories_
        h_off, h_items = csr_take(offsets, items, offsets[idx], offsets[idx + 1])
        prefs = self.preference_vectors(len(users), preference, self.user_preferences(idx))
        top, s = self.decode_csr(h_off, h_items, k, self.settings(decode, beams, groups,
                                                                   diversity), filter_seen, prefs)
        return self._frame(users, top, s)

    def recommend_history(self, histories: Sequence[Sequence[Any]], k: int = 10,
                          filter_seen: bool = True, ids: Sequence[Any] | None = None,
                          decode: str | None = None, beams: int | None = None,
                          groups: int | None = None, diversity: float | None = None,
                          preference: Sequence[str | None] | None = None) -> pl.DataFrame:
        """Top-k items for explicit histories of original item ids (oldest first)."""
        self.check_is_fitted()
        _check_k(k)
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        if (lengths == 0).any():
            raise UserseqError(f"history #{int(np.flatnonzero(lengths == 0)[0])} is empty; give "
                               "at least one item.")
        flat = [i for h in histories for i in h]
        idx = lookup_ids(self.item_ids_, flat, offset=0) + 1
        if (idx <= 0).any():
            bad = [flat[j] for j in np.flatnonzero(idx <= 0)[:5]]
            raise UserseqError(f"unknown item id(s) {bad} in history: not in the training "
                               "catalogue.")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        prefs = self.preference_vectors(len(histories), preference, None)
        top, s = self.decode_csr(offsets, idx.astype(np.int64), k,
                                 self.settings(decode, beams, groups, diversity), filter_seen,
                                 prefs)
        return self._frame(ids if ids is not None else list(range(len(histories))), top, s)

    def preference_vectors(self, n: int, texts: Sequence[str | None] | None,
                           stored: np.ndarray | None) -> np.ndarray | None:
        """Preference vectors of n users: `stored`, replaced by the MiniLM vectors of the given
        texts (a None text keeps the stored vector)."""
        if texts is None:
            return stored
        if not self.config.model.preference:
            raise ConfigError("this run has no preference slot (model.preference is false); "
                              "train with --set model.preference=true to condition on text.")
        texts = list(texts)
        if len(texts) != n:
            raise UserseqError(f"preference: {len(texts)} texts for {n} users; give one per user "
                               "(None keeps the stored one).")
        out = stored.copy() if stored is not None else np.zeros((n, PREFERENCE_DIM), np.float32)
        given = [i for i, t in enumerate(texts) if t]
        if given:
            out[given] = encode_preferences([texts[i] for i in given])
        return out

    def item_semantic_ids(self) -> pl.DataFrame:
        """item_id, semantic_id of the catalogue."""
        return self.semantic_ids_.frame()

    # ------------------------------------------------------------------ persistence
    def _save_state(self, d: Path) -> None:
        model = self.check_is_fitted()
        save_tensors(model.state_dict(), d / MODEL_FILE,
                     {"task": self.task, "n_items": str(len(self.item_ids_))})
        self.semantic_ids_.save(d / SEMANTIC_DIR)
        save_ids(self.user_ids_, d / "user_ids.parquet")
        save_ids(self.item_ids_, d / "item_ids.parquet")
        offsets, items = self.histories_
        save_tensors({"offsets": torch.from_numpy(offsets.astype(np.int64)),
                      "items": torch.from_numpy(items.astype(np.int64))}, d / HISTORIES_FILE)
        if self.preferences_ is not None:
            save_tensors({"vectors": torch.from_numpy(self.preferences_[0]),
                          "has": torch.from_numpy(self.preferences_[1])}, d / PREFERENCES_FILE)
        write_json({"train": self.train_state_, "data_fingerprint": self.data_fingerprint_},
                   d / RUN_FILE)

    def _load_state(self, d: Path) -> None:
        if not (d / MODEL_FILE).is_file():
            raise ArtifactError(f"{d}: {MODEL_FILE} is missing; the generative run is incomplete "
                                "(train it with `userseq generative train`).")
        tensors, _ = load_tensors(d / MODEL_FILE)
        self.semantic_ids_ = ItemSemanticIds.load(d / SEMANTIC_DIR)
        self.trie_ = PrefixTrie(self.semantic_ids_.codes[1:], self.semantic_ids_.sizes)
        self.item_ids_ = load_ids(d / "item_ids.parquet")
        self.user_ids_ = load_ids(d / "user_ids.parquet")
        self.device_ = resolve_device(self.config.train.device)
        model = self._build_model()
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match config.yaml: "
                                f"{str(e).splitlines()[0]}") from None
        self.model_ = model.to(self.device_).eval()
        h, _ = load_tensors(d / HISTORIES_FILE)
        self.histories_ = (h["offsets"].numpy(), h["items"].numpy())
        if (d / PREFERENCES_FILE).is_file():
            p, _ = load_tensors(d / PREFERENCES_FILE)
            self.preferences_ = (p["vectors"].numpy(), p["has"].numpy())
        if (d / RUN_FILE).is_file():
            run = read_json(d / RUN_FILE)
            self.train_state_ = run.get("train", {})
            self.data_fingerprint_ = run.get("data_fingerprint")


def _check_k(k: Any) -> None:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k <= 0:
        raise UserseqError(f"k must be a positive integer (got {k!r}).")
