"""Malicious-user detection: the user-facing estimator (fit / predict_proba / embed / save / load).

>>> det = UserDetector("gru").fit(load_wiki_vandals())
>>> det.predict_proba(data, first_k=1)     # score every user from their first edit only
>>> det.embed(data)                         # user vectors for clustering

`UserDetector` is an `Estimator[DetectConfig]` (task 'detect'). Event models ('gru',
'transformer', or any registered encoder) run the shared encoders (`userseq.encoders`) over edit
events (page embedding + edit-time features passed as the encoders' per-event `features`, see
`detect.models.EventInputs`); text models ('hlstm', 'cnn', 'minilm') read post sequences. The
models are named in `detect.models.DETECT_MODELS`. All end in the same classification head,
trained with binary cross-entropy by the one training loop; the epoch kept is the best validation
ROC-AUC. Fitted state: `net_`, `pages_`, `vocab_`, `feature_names_`, `thresholds_`, `train_state_`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from userseq.core import distributed
from userseq.core.artifacts import (
    load_ids,
    load_tensors,
    read_json,
    save_ids,
    save_tensors,
    write_json,
)
from userseq.core.errors import ArtifactError, ConfigError, DataError, UserseqError
from userseq.core.estimator import CONFIG_FILE, Estimator
from userseq.core.trainer import Trainer, TrainState, resolve_device
from userseq.data.batches import length_bucketed_batches, pad_left
from userseq.data.eventlog import lookup_ids
from userseq.detect.config import DetectConfig, DetectModelConfig
from userseq.detect.data import (
    DetectSplit,
    EventData,
    TextData,
    fix_post_count,
    stratified_folds,
    stratified_split,
    tokenize,
    user_lengths,
)
from userseq.detect.models import DetectModel, Detector, detect_model
from userseq.detect.text import build_vocab, encode_posts, minilm_token_table, minilm_vectors
from userseq.metrics.classification import best_threshold, binary_metrics

__all__ = ["DetectConfig", "DetectModelConfig", "UserDetector", "build_vocab", "encode_posts",
           "readable_user_features", "train_and_evaluate"]

MODEL_FILE = "model.safetensors"
PAGE_SINCE_FILE = "page_since.safetensors"  # causal page vocabulary: when each page became known
LEGACY_CONFIG_FILE = "detect.yaml"  # the config file of runs written by userseq 0.1
Data = EventData | TextData


def _given_keys(config: dict[str, Any] | None) -> set[str]:
    """Dotted keys set in a config mapping ({"train": {"lr": 1}} -> {"train.lr"})."""
    keys: set[str] = set()
    for sec, sub in (config or {}).items():
        if isinstance(sub, dict):
            keys.update(f"{sec}.{k}" for k in sub)
        else:
            keys.add(sec)
    return keys


def _model_defaults(config: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The chosen model's defaults (`DetectModel.defaults`) that the config mapping does not set."""
    config = config if isinstance(config, dict) else None
    section = (config or {}).get("model")
    in_config = section.get("name") if isinstance(section, dict) else None
    default = DetectModelConfig.model_fields["name"].default
    name = overrides.get("model.name") or in_config or default
    try:
        spec = detect_model(name)
    except ConfigError:
        return {}  # validating the config names the problem
    given = _given_keys(config)
    return {k: v for k, v in spec.defaults.items() if k not in given}


def _labels(data: Data, what: str) -> np.ndarray:
    if data.labels is None:
        raise DataError(f"{data.source}: {what} needs user labels "
                        "(--labels FILE with user_id,label).")
    return data.labels


def at_least(users: np.ndarray, lengths: np.ndarray, k: int | None) -> np.ndarray:
    """The users with at least k events/posts (all for k None): first-k metrics score only those,
    so a short account (its length leaks the label) is never scored as a 'prefix'."""
    users = np.asarray(users, dtype=np.int64)
    return users if k is None else users[lengths[users] >= k]


# ---------------------------------------------------------------------- the estimator
class UserDetector(Estimator[DetectConfig]):
    """Binary user classifier over event or post sequences (scikit-learn style)."""

    task = "detect"
    config_class = DetectConfig
    fitted_attribute = "net_"
    legacy_config_files = (LEGACY_CONFIG_FILE,)

    def __init__(self, model: str | None = None,
                 config: DetectConfig | dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        """`model` is a detector model name (`detect.models.model_names()`). A `DetectConfig` is
        used as given (`model`/`overrides` applied on top); a mapping or None builds a new config:
        the model's defaults (`DETECT_MODELS`), then the mapping, then `overrides` (None values
        skipped)."""
        over = {k: v for k, v in (overrides or {}).items() if v is not None}
        if model is not None:
            detect_model(model)  # an unknown name is one clear ConfigError
            over["model.name"] = model
        if not isinstance(config, DetectConfig):
            over = {**_model_defaults(config, over), **over}
        super().__init__(config, over)
        self.net_: Detector | None = None
        self.pages_: pl.Series | None = None  # page vocabulary (event models): table rows 2..
        self.page_since_: np.ndarray | None = None  # per page: read from this time on (causal)
        self.vocab_: list[str] | None = None  # token vocabulary (hlstm, cnn)
        self.feature_names_: list[str] = []
        self.thresholds_: dict[str, float] = {}
        self.train_state_: dict[str, Any] = {}
        self.device_ = torch.device("cpu")
        self._prep_cache: tuple[Data, dict[str, Any]] | None = None

    def _spec(self) -> DetectModel:
        return detect_model(self.config.model.name)

    @property
    def inputs(self) -> str:
        """What the model reads: 'events', 'tokens' (post token ids) or 'vectors' (MiniLM post
        vectors)."""
        return self._spec().inputs

    @property
    def kind(self) -> str:
        """'event' (reads edit events) or 'text' (reads post texts)."""
        return self._spec().kind

    # ------------------------------------------------------------------ building
    def _check_data(self, data: Data) -> None:
        want = EventData if self.kind == "event" else TextData
        if not isinstance(data, want):
            what = ("event sequences (EventData)" if self.kind == "event"
                    else "post texts (TextData)")
            raise DataError(f"model '{self.config.model.name}' reads {what}; "
                            f"got {type(data).__name__}.")

    def _build(self, n_pages: int, n_features: int, vocab: int) -> Detector:
        m = self.config.model
        user_encoder = self._spec().build(m, n_pages=n_pages, n_features=n_features, vocab=vocab)
        return Detector(user_encoder, user_encoder.dim, m.dropout)

    def _new_net(self, data: Data, train_users: np.ndarray) -> Detector:
        """A fresh network, with the vocabularies read off the training users."""
        m = self.config.model
        if isinstance(data, EventData):
            self.pages_, self.page_since_ = self._page_vocab(data, train_users)
            self.feature_names_ = list(data.feature_names)
            return self._build(len(self.pages_) + 1, data.features.shape[1], 0)
        if self._spec().inputs == "tokens":
            self.vocab_ = build_vocab(data.posts, train_users, m.vocab_size, m.min_token_count,
                                      m.max_tokens)
        net = self._build(0, 0, len(self.vocab_ or []))
        if self._spec().token_init == "minilm":  # pretrained word vectors, frozen
            table = net.user_encoder.tokens.weight
            table.data.copy_(torch.from_numpy(minilm_token_table(self.vocab_ or [])))
            table.requires_grad_(False)
        return net

    def _page_vocab(self, data: EventData, users: np.ndarray,
                    ) -> tuple[pl.Series, np.ndarray | None]:
        """The pages at least `page_min_users` *training* users edited, and (`causal_pages`) for
        each the time it got there: the page_min_users-th training user's first edit of it. An
        event reads a page's vector only after that time (`_event_tables`), so no event's input
        depends on later edits, and test users' events never enter the vocabulary."""
        k = self.config.model.page_min_users
        f = data.log.frame
        u = f["user"].to_numpy()
        is_train = np.zeros(data.n_users, dtype=bool)
        is_train[np.asarray(users, dtype=np.int64)] = True
        m = is_train[u]
        firsts = (pl.DataFrame({"u": u[m], "i": f["item"].to_numpy()[m],
                                "t": f["timestamp"].to_numpy().astype(np.float64)[m]})
                  .group_by("u", "i").agg(pl.col("t").min()))
        per_page = (firsts.group_by("i").agg(pl.len().alias("n"), pl.col("t").sort())
                    .filter(pl.col("n") >= k).sort("i"))
        pages = data.log.item_ids.gather(per_page["i"].to_numpy() - 1)
        if not self.config.model.causal_pages:
            return pages, None
        return pages, per_page["t"].list.get(k - 1).to_numpy().astype(np.float64)

    def page_rows(self, ids: Any) -> np.ndarray:
        """Rows of the page table for page `ids` (1 = rare or unknown page), at any time: with
        `causal_pages` an event reads the row only once the page is known (`event_tables`)."""
        self.check_is_fitted()
        assert self.pages_ is not None
        idx = lookup_ids(self.pages_, ids, offset=2)  # unknown -> 0
        return np.where(idx == 0, 1, idx)

    def event_tables(self, data: EventData) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-event model inputs of `data` (row 0 = padding, then one row per `data.log.frame`
        row): the detector's page index (1 = rare/unknown page) and the edit-time features."""
        self.check_is_fitted()
        return self._event_tables(data)

    def _event_tables(self, data: EventData) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-event model inputs, row 0 = padding: page index (1 = rare/unknown page), features."""
        assert self.pages_ is not None
        per_event = self.page_rows(data.log.item_ids)[data.log.frame["item"].to_numpy() - 1]
        if self.page_since_ is not None:  # causal: a page is rare until enough users edited it
            since = np.concatenate([[np.inf, np.inf], self.page_since_])
            ts = data.log.frame["timestamp"].to_numpy().astype(np.float64)
            per_event = np.where(since[per_event] < ts, per_event, 1)
        if data.features.shape[1] != len(self.feature_names_):
            raise DataError(f"{data.source}: events have {data.features.shape[1]} features but the "
                            f"model was trained with {len(self.feature_names_)} "
                            f"({self.feature_names_}).")
        pages = torch.from_numpy(np.concatenate([[0], per_event]).astype(np.int64))
        feats = torch.from_numpy(data.features).float()
        feats = torch.cat([torch.zeros(1, feats.shape[1]), feats])
        return pages, feats

    def posts_read(self, data: Data) -> Data:
        """`data` as this detector reads it. A text detector trained with `fixed_posts` N reads
        each user's last (or first, `fixed_keep`) N posts; users with fewer keep all theirs
        (training dropped them: load with `load_text_data(..., fixed_posts=N)` to do the same).
        Event data, and detectors trained on all posts (0) or without a recorded count (None),
        read `data` as given. Posts already fixed to another count are a DataError."""
        n, keep = self.config.fixed_posts, self.config.fixed_keep
        if not isinstance(data, TextData) or n is None:
            return data
        pc = data.post_count
        if pc is not None and (pc["fixed_posts"], pc["keep"]) != (n, keep):
            trained = f"the last {n}" if keep == "last" else f"the first {n}"
            raise DataError(
                f"{data.source}: posts were fixed to {pc['fixed_posts']} ({pc['keep']}) per user "
                f"but the detector ('{self.config.model.name}') was trained on "
                f"{'all posts' if n == 0 else trained + ' posts'} per user; load the data with "
                f"fixed_posts={n}" + ("" if n == 0 else f", keep='{keep}'") + ".")
        if pc is not None or n == 0:
            return data
        return fix_post_count(data, n, keep, drop_short=False)

    # ------------------------------------------------------------------ inputs per batch
    def _prepare(self, data: Data) -> dict[str, Any]:
        """Per-dataset arrays the batches are cut from."""
        m = self.config.model
        if isinstance(data, EventData):
            pages, feats = self._event_tables(data)
            offsets, _ = data.log.sequences()
            return {"offsets": offsets, "n_events": data.log.n_events, "event_pages": pages,
                    "event_features": feats}
        n_posts = np.array([min(len(p), m.max_posts) for p in data.posts], dtype=np.int64)
        if self._spec().inputs == "vectors":
            vectors = minilm_vectors(data.posts, m.max_posts)
            return {"vectors": torch.from_numpy(vectors), "n_posts": n_posts}
        assert self.vocab_ is not None
        tokens = encode_posts(data.posts, self.vocab_, m.max_posts, m.max_tokens).astype(np.int64)
        return {"tokens": torch.from_numpy(tokens), "n_posts": n_posts}

    def _lengths(self, prep: dict[str, Any]) -> np.ndarray:
        if "offsets" in prep:
            return np.minimum(np.diff(prep["offsets"]), self.config.model.max_len)
        return prep["n_posts"]

    def _inputs(self, prep: dict[str, Any], users: np.ndarray,
                k: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for `users`, each cut to its first k[i] events/posts."""
        dev = self.device_
        if "offsets" in prep:
            starts = prep["offsets"][users]
            events = np.arange(1, prep["n_events"] + 1, dtype=np.int64)
            ev = torch.from_numpy(pad_left(starts, starts + k, events, int(k.max())))
            return {"pages": prep["event_pages"][ev].to(dev),
                    "features": prep["event_features"][ev].to(dev)}
        P = int(k.max())
        pm = torch.arange(P)[None, :] < torch.from_numpy(k)[:, None]
        u = torch.from_numpy(users)
        if "vectors" in prep:
            return {"post_vectors": prep["vectors"][u, :P].to(dev), "post_mask": pm.to(dev)}
        tok = prep["tokens"][u, :P] * pm[..., None]
        T = max(1, int((tok > 0).sum(-1).max()))
        return {"tokens": tok[..., :T].to(dev), "post_mask": pm.to(dev)}

    # ------------------------------------------------------------------ training
    def fit(self, data: Data, split: DetectSplit | None = None, run_dir: str | Path | None = None,
            quiet: bool = False, augment: Any = None) -> UserDetector:
        """Train on `split.train`, select the epoch on `split.valid` (ROC-AUC); test users are never
        seen. Without a split, the config's (`valid`, `test`, `split_seed`) is drawn.
        `augment(data, split) -> (data, split)` may add training users (adversarial training)."""
        self._check_data(data)
        data = self.posts_read(data)
        labels = _labels(data, "training")
        cfg = self.config
        split = split or stratified_split(labels, cfg.valid, cfg.test, cfg.split_seed)
        if augment is not None:
            data, split = augment(data, split)
        y = _labels(data, "training")
        torch.manual_seed(cfg.train.seed)
        net = self._new_net(data, split.train)
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device_ = trainer.device
        self.net_ = net.to(self.device_)
        prep = self._prepare(data)
        state = self._train(trainer, prep, y, split)
        net.eval()
        # thresholds per prefix length, chosen on validation users only
        self.thresholds_ = {}
        full = user_lengths(data)
        for k in [*cfg.first_k, None]:
            v = at_least(split.valid, full, k)
            if len(v) and len(np.unique(y[v])) == 2:
                self.thresholds_[str(k or "all")] = best_threshold(y[v], self._scores(prep, v, k))
        self.train_state_ = self._train_summary(state)
        self._prep_cache = (data, prep)
        if run_dir is not None and distributed.is_main():  # data-parallel: rank 0 writes
            self.save(run_dir)
        return self

    def _train(self, trainer: Trainer, prep: dict[str, Any], y: np.ndarray,
               split: DetectSplit) -> TrainState:
        lengths = self._lengths(prep)
        y_t = torch.from_numpy(y).float()

        def batches(epoch: int) -> Iterator[dict[str, Any]]:
            return self._batches(prep, lengths, split.train, y_t, epoch)

        if self._spec().objective == "contrast":  # unsupervised: labels are never read
            return self._train_unsupervised(trainer, prep, lengths, split)

        def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(model(**batch["inputs"]), batch["y"])

        def validate(model: torch.nn.Module) -> dict[str, float]:
            met = binary_metrics(y[split.valid], self._scores(prep, split.valid, None))
            return {"roc_auc": met["roc_auc"], "accuracy": met["accuracy"]}

        n_batches = math.ceil(len(split.train) / self.config.train.batch_size)
        return trainer.fit(self.check_is_fitted(), batches, n_batches, loss_fn, validate)

    def _train_unsupervised(self, trainer: Trainer, prep: dict[str, Any], lengths: np.ndarray,
                            split: DetectSplit) -> TrainState:
        """Contrastive training of an unsupervised user encoder (`behavior-ae`); validation: the
        same loss on validation users with fixed crops. Then the anomaly reference point is set
        from the training users' embeddings. No label is read."""
        net = self.check_is_fitted()
        enc = net.user_encoder
        dummy = torch.zeros(len(lengths))
        cfg = self.config

        def batches(epoch: int) -> Iterator[dict[str, Any]]:
            return self._batches(prep, lengths, split.train, dummy, epoch)

        def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
            return enc.contrastive_loss(**batch["inputs"])

        def validate(model: torch.nn.Module) -> dict[str, float]:
            gen = torch.Generator().manual_seed(cfg.train.seed)
            losses = []
            with torch.no_grad():
                v = np.asarray(split.valid)
                for b in range(0, len(v), cfg.train.batch_size):
                    u = v[b:b + cfg.train.batch_size]
                    if len(u) < 2:
                        continue
                    inp = self._inputs(prep, u, np.maximum(lengths[u], 1))
                    losses.append(float(enc.contrastive_loss(**inp, gen=gen)))
            return {"neg_loss": -float(np.mean(losses)) if losses else 0.0}

        n_batches = math.ceil(len(split.train) / cfg.train.batch_size)
        state = trainer.fit(net, batches, n_batches, loss_fn, validate)
        net.eval()
        enc.set_center(torch.from_numpy(self._run(prep, np.asarray(split.train), None,
                                                  embed=True)))
        return state

    def _batches(self, prep: dict[str, Any], lengths: np.ndarray, users: np.ndarray,
                 y: torch.Tensor, epoch: int) -> Iterator[dict[str, Any]]:
        """One epoch of training batches; a seeded share of the users is cut to a random prefix."""
        cfg = self.config
        rng = np.random.default_rng(cfg.train.seed * 1000 + epoch)
        full = lengths[users]
        k = full.copy()
        cut = rng.random(len(k)) < cfg.prefix_prob
        # prefix lengths log-uniform in [1, full]: early detection sees many short prefixes
        short = np.floor(np.exp(rng.random(cut.sum()) * np.log(full[cut] + 1))).astype(np.int64)
        k[cut] = np.minimum(full[cut], short)
        k = np.maximum(k, 1)
        for idx in length_bucketed_batches(k, cfg.train.batch_size, rng,
                                           cfg.train.bucket_batches):
            u = users[idx]
            yield {"inputs": self._inputs(prep, u, k[idx]),
                   "y": y[torch.from_numpy(u)].to(self.device_)}

    def _train_summary(self, state: TrainState) -> dict[str, Any]:
        return {"epochs": state.epoch, "best_epoch": state.best_epoch,
                "best_valid_roc_auc": state.best_metric, "monitor": self.config.train.monitor,
                "seconds": round(state.seconds, 1),
                "stopped": state.stopped, "device": str(self.device_), "history": state.history}

    # ------------------------------------------------------------------ inference
    def _prep_for(self, data: Data) -> dict[str, Any]:
        cache = self._prep_cache
        if cache is not None and cache[0] is data:
            return cache[1]
        prep = self._prepare(self.posts_read(data))
        self._prep_cache = (data, prep)
        return prep

    @torch.no_grad()
    def _run(self, prep: dict[str, Any], users: np.ndarray, first_k: int | None, embed: bool,
             batch_size: int = 512) -> np.ndarray:
        net = self.check_is_fitted()
        net.eval()
        full = self._lengths(prep)[users]
        k = np.minimum(full, first_k) if first_k else full
        k = np.maximum(k, 1)
        order = np.argsort(k, kind="stable")  # similar lengths together: little padding
        out: list[np.ndarray] = []
        for b in range(0, len(users), batch_size):
            sel = order[b:b + batch_size]
            inp = self._inputs(prep, users[sel], k[sel])
            r = net.embed(**inp) if embed else torch.sigmoid(net(**inp))
            out.append(r.float().cpu().numpy())
        res = np.concatenate(out) if out else np.zeros((0,))
        back = np.empty_like(res)
        back[order] = res
        return back

    def _scores(self, prep: dict[str, Any], users: np.ndarray, first_k: int | None) -> np.ndarray:
        return self._run(prep, users, first_k, embed=False)

    def _users(self, data: Data, users: np.ndarray | None) -> np.ndarray:
        return np.arange(data.n_users) if users is None else np.asarray(users, dtype=np.int64)

    def predict_proba(self, data: Data, users: np.ndarray | None = None,
                      first_k: int | None = None) -> np.ndarray:
        """P(malicious) per user (all users of `data`, or the given user indices), optionally from
        each user's first `first_k` events/posts only."""
        self.check_is_fitted()
        self._check_data(data)
        if first_k is not None and first_k < 1:
            raise UserseqError(f"first_k must be a positive integer (got {first_k}).")
        return self._scores(self._prep_for(data), self._users(data, users), first_k)

    def threshold(self, first_k: int | None = None) -> float:
        """The validation-chosen decision threshold for scores from the first `first_k`
        events/posts (the full-sequence one for lengths it has none for)."""
        return self.thresholds_.get(str(first_k or "all"), self.thresholds_.get("all", 0.5))

    def predict(self, data: Data, users: np.ndarray | None = None,
                first_k: int | None = None) -> np.ndarray:
        """0/1 decisions with the validation-chosen threshold for that prefix length."""
        scores = self.predict_proba(data, users, first_k)
        return (scores >= self.threshold(first_k)).astype(np.int64)

    def embed(self, data: Data, users: np.ndarray | None = None,
              first_k: int | None = None) -> np.ndarray:
        """User vectors (n, D): the input of the classification head."""
        self.check_is_fitted()
        self._check_data(data)
        return self._run(self._prep_for(data), self._users(data, users), first_k, embed=True)

    def evaluate(self, data: Data, users: np.ndarray,
                 first_k: list[int] | None = None) -> dict[str, Any]:
        """Test metrics (full sequences) and early-detection metrics from the first k
        events/posts, over the users with at least k of them (`n` says how many)."""
        labels = _labels(data, "evaluation")
        y = labels[users]
        s = self.predict_proba(data, users)
        out: dict[str, Any] = {"test": binary_metrics(y, s, self.thresholds_.get("all", 0.5)),
                               "first_k": {}}
        full = user_lengths(self.posts_read(data))
        for k in first_k if first_k is not None else self.config.first_k:
            uk = at_least(np.asarray(users), full, k)  # only users who made k events
            if len(np.unique(labels[uk])) < 2:
                continue
            sk = self.predict_proba(data, uk, first_k=k)
            out["first_k"][str(k)] = binary_metrics(labels[uk], sk, self.threshold(k))
        out["first_k"]["all"] = out["test"]
        return out

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, run_dir: str | Path) -> UserDetector:
        """A detector run written by `save` / `userseq detect train` (also by userseq 0.1)."""
        d = Path(run_dir)
        if not d.is_dir():
            raise ArtifactError(f"{d}: not a detector run directory (not found); create one with "
                                "`userseq detect train`.")
        return super().load(d)

    def _save_state(self, d: Path) -> None:
        net = self.check_is_fitted()
        sizes = {"n_pages": len(self.pages_) + 1 if self.pages_ is not None else 0,
                 "n_features": len(self.feature_names_), "vocab": len(self.vocab_ or [])}
        meta = {"task": self.task, **{k: str(v) for k, v in sizes.items()}}
        save_tensors(net.state_dict(), d / MODEL_FILE, meta)
        if self.pages_ is not None:
            save_ids(self.pages_, d / "pages.parquet")
        if self.page_since_ is not None:
            save_tensors({"since": torch.from_numpy(self.page_since_)}, d / PAGE_SINCE_FILE)
        if self.vocab_ is not None:
            save_ids(pl.Series("id", self.vocab_), d / "vocab.parquet")
        write_json({"feature_names": self.feature_names_, "thresholds": self.thresholds_,
                    "train": {k: v for k, v in self.train_state_.items() if k != "history"}},
                   d / "detector.json")
        write_json(self.train_state_.get("history", []), d / "train_log.json")

    def _load_state(self, d: Path) -> None:
        tensors, meta = load_tensors(d / MODEL_FILE)
        info = read_json(d / "detector.json")
        self.feature_names_, self.thresholds_ = info["feature_names"], info["thresholds"]
        self.train_state_ = info.get("train", {})
        if (d / "pages.parquet").exists():
            self.pages_ = load_ids(d / "pages.parquet")
        if (d / PAGE_SINCE_FILE).exists():  # runs before the causal vocabulary: read any time
            since = load_tensors(d / PAGE_SINCE_FILE)[0]["since"].numpy()
            if self.pages_ is None or len(since) != len(self.pages_):
                raise ArtifactError(f"{d / PAGE_SINCE_FILE}: {len(since)} page times for "
                                    f"{0 if self.pages_ is None else len(self.pages_)} pages in "
                                    f"{d / 'pages.parquet'}; the run directory is inconsistent.")
            self.page_since_ = since
        if (d / "vocab.parquet").exists():
            self.vocab_ = load_ids(d / "vocab.parquet").to_list()
        net = self._build(*(int(meta.get(k, 0)) for k in ("n_pages", "n_features", "vocab")))
        try:
            net.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match the run's {CONFIG_FILE}: "
                                f"{str(e).splitlines()[0]}") from None
        self.device_ = resolve_device(self.config.train.device)
        self.net_ = net.to(self.device_).eval()


# ------------------------------------------------------- one call: split, fit, evaluate, write
def readable_user_features(data: Data, max_len: int | None = None) -> pl.DataFrame:
    """Per-user features an analyst can read (used to explain clusters)."""
    if isinstance(data, EventData):
        from userseq.detect.baselines import prefix_rows

        users, rows = prefix_rows(data, None, max_len)
        n = np.bincount(users, minlength=data.n_users).astype(np.float64)
        sums = np.zeros((data.n_users, data.features.shape[1]))
        np.add.at(sums, users, data.features[rows])
        cols = {f: sums[:, j] / n for j, f in enumerate(data.feature_names)
                if f not in ("first_event", "position_log", "hour_sin", "hour_cos", "gap_log")}
        cols["events"] = np.diff(data.log.sequences()[0]).astype(np.float64)
        return pl.DataFrame(cols)
    n_posts = np.array([len(p) for p in data.posts], dtype=np.float64)
    toks = [[len(tokenize(p)) for p in ps] for ps in data.posts]
    has_url = [np.mean([("http" in p or "www" in p) for p in ps]) if ps else 0.0
               for ps in data.posts]
    return pl.DataFrame({"posts": n_posts,
                         "mean_tokens": [float(np.mean(t)) if t else 0.0 for t in toks],
                         "share_posts_with_url": has_url})


def _split_names(n: int, split: DetectSplit) -> np.ndarray:
    names = np.full(n, "train", dtype=object)
    names[split.valid] = "valid"
    names[split.test] = "test"
    return names


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = runs[0].keys()
    out: dict[str, Any] = {}
    for k in keys:
        vals = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = float(vals.mean())
        if k != "n":
            out[f"{k}_std"] = float(vals.std())
    return out


def _run_metrics(data: Data, detector: UserDetector, split: DetectSplit,
                 results: list[dict[str, Any]], folds: int | None) -> dict[str, Any]:
    """metrics.json of a run: test and first-k metrics (means over folds), split sizes, training."""
    cfg = detector.config
    metrics: dict[str, Any] = {
        "model": cfg.model.name, "dataset": cfg.dataset or data.source,
        "leakage_features": bool(cfg.with_leakage), "folds": folds or None,
        "split": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                  "split_seed": cfg.split_seed},
        "test": _mean_metrics([r["test"] for r in results]),
        "first_k": {k: _mean_metrics([r["first_k"][k] for r in results])
                    for k in results[0]["first_k"] if all(k in r["first_k"] for r in results)},
        "train": {k: v for k, v in detector.train_state_.items() if k != "history"},
        "thresholds": detector.thresholds_,
    }
    if isinstance(data, TextData):
        metrics["post_count"] = data.post_count or {"fixed_posts": 0}
    if folds:
        metrics["per_fold"] = [r["test"] for r in results]
    return metrics


def _write_user_tables(d: Path, detector: UserDetector, data: Data, split: DetectSplit) -> None:
    """The clustering inputs: user embeddings, a user table (id, label, split, score, readable
    features) and, for event data, which pages each user edited."""
    emb = torch.from_numpy(detector.embed(data))
    save_tensors({"embeddings": emb}, d / "embeddings.safetensors")
    users = pl.DataFrame({"user_id": data.user_ids.cast(pl.String), "label": _labels(data, "a run"),
                          "split": _split_names(data.n_users, split).tolist(),
                          "score": detector.predict_proba(data)})
    features = readable_user_features(data, detector.config.model.max_len)
    pl.concat([users, features], how="horizontal").write_parquet(d / "users.parquet")
    if isinstance(data, EventData):
        pages = data.page_ids().cast(pl.String)
        user_pages = pl.DataFrame({"user": data.log.frame["user"], "page": pages})
        user_pages.write_parquet(d / "user_pages.parquet")


def train_and_evaluate(data: Data, detector: UserDetector, out: str | Path | None = None,
                       folds: int | None = None, quiet: bool = False,
                       augment: Any = None) -> dict[str, Any]:
    """Split by user (seeded by `split_seed`, stratified), fit, evaluate on test (full + first-k),
    write the run; `detector` ends up holding the (last) fitted model.

    With `folds`, run stratified k-fold cross-validation: metrics are means (and std) over folds;
    the saved model is the last fold's. The run directory gets `metrics.json` and, for clustering,
    `embeddings.safetensors` + `users.parquet` (id, label, split, score, readable features).
    """
    cfg = detector.config
    if isinstance(data, TextData) and cfg.fixed_posts:
        data = fix_post_count(data, cfg.fixed_posts, cfg.fixed_keep)
    labels = _labels(data, "training")
    splits = (stratified_folds(labels, folds, cfg.valid, cfg.split_seed) if folds
              else [stratified_split(labels, cfg.valid, cfg.test, cfg.split_seed)])
    results = []
    for split in splits:
        fresh = UserDetector(config=cfg)
        fresh.fit(data, split, run_dir=out, quiet=quiet, augment=augment)
        results.append(fresh.evaluate(data, split.test))
        detector.__dict__.update(fresh.__dict__)
    metrics = _run_metrics(data, detector, splits[-1], results, folds)
    if out is not None:
        detector.write_metrics(out, metrics)
        _write_user_tables(Path(out), detector, data, splits[-1])
    return metrics
