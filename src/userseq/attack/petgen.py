"""Training the generator with the one Trainer: MLE pretraining, then the PETGEN objective.

1. `pretrain_generator`: teacher-forced NLL of training users' posts. Each sampled post j of a
   user is predicted from the context-aware encoding of the posts before it; the final post is
   also conditioned on its target context and same-context flags (earlier posts have no known
   context). With `conditional=False` the same code trains the plain LM that scores perplexity.
2. `train_attack`: starting from the pretrained generator, minimise a weighted sum of mle (real
   final posts of training users), lm (NLL of the generated post under the frozen pretrained
   generator: realism), attack (BCE through the detector toward 'benign' on malicious users),
   recency (MMD to the last posts) and relevancy (MMD to same-context posts, else the context).
   Representations for the MMD terms come from the frozen pretrained encoder, so they cannot
   collapse.

The epoch kept is the best on validation users (never test users).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from userseq.attack.config import AttackConfig, GeneratorConfig, LossWeights
from userseq.attack.data import AttackUsers, EncodedUsers, decode, encode_users
from userseq.attack.generator import PostGenerator
from userseq.attack.losses import Discriminator, attack_loss, rsgan_losses, set_mmd, soft_nll
from userseq.attack.target import TargetDetector
from userseq.core.artifacts import load_tensors, save_tensors
from userseq.core.config import TrainConfig
from userseq.core.errors import ArtifactError
from userseq.core.trainer import Trainer
from userseq.data.batches import shard_rows
from userseq.detect.estimator import encode_posts

# posts predicted per user and pretraining step (the final post + 3 random earlier ones)
TARGETS_PER_USER = 4


def build_generator(vocab: list[str], g: GeneratorConfig, max_tokens: int,
                    conditional: bool = True) -> PostGenerator:
    gen = PostGenerator(len(vocab), g.emb_dim, g.hidden, min(g.max_tokens, max_tokens),
                        g.min_tokens, g.dropout, conditional=conditional, decoder=g.decoder,
                        layers=g.layers, heads=g.heads, condition=g.condition)
    gen.words = list(vocab)  # the vocabulary it was built over (checked against the detector's)
    return gen


GENERATOR_SIZES = ("vocab", "emb_dim", "hidden", "max_tokens", "min_tokens", "dropout",
                   "conditional")
# added later: (constructor argument, attribute); generators saved before them use the defaults
GENERATOR_OPTIONS = (("decoder", "decoder_kind"), ("layers", "layers"), ("heads", "heads"),
                     ("condition", "condition_kind"))


def save_generator(gen: PostGenerator, path: Path) -> None:
    """Weights (safetensors) with the sizes and the training summary in the metadata."""
    meta = {k: json.dumps(getattr(gen, k)) for k in GENERATOR_SIZES}
    meta.update({k: json.dumps(getattr(gen, a)) for k, a in GENERATOR_OPTIONS})
    meta["train_state"] = json.dumps(getattr(gen, "train_state", {}))
    save_tensors(gen.state_dict(), path, meta)


def load_generator(path: Path, words: list[str]) -> PostGenerator:
    """A generator written by `save_generator`, over the vocabulary `words`."""
    tensors, meta = load_tensors(path)
    missing = [k for k in GENERATOR_SIZES if k not in meta]
    if missing:
        raise ArtifactError(f"{path}: not a saved generator (no {', '.join(missing)} metadata).")
    sizes = {k: json.loads(meta[k]) for k in GENERATOR_SIZES}
    sizes.update({k: json.loads(meta[k]) for k, _ in GENERATOR_OPTIONS if k in meta})
    if sizes["vocab"] != len(words):
        raise ArtifactError(f"{path}: the generator has {sizes['vocab']:,} tokens but the saved "
                            f"vocabulary {len(words):,}; the run directory is inconsistent.")
    gen = PostGenerator(**sizes)
    try:
        gen.load_state_dict(tensors)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not match their sizes: "
                            f"{str(e).splitlines()[0]}") from None
    gen.words = list(words)
    gen.train_state = json.loads(meta.get("train_state", "{}"))  # type: ignore[attr-defined]
    return gen.eval()


def _batches(users: np.ndarray, bs: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(users)
    for b in range(0, len(order), bs):
        yield shard_rows(order[b:b + bs])  # this rank's share under data-parallel training


def user_states(gen: PostGenerator, enc: EncodedUsers, t: torch.Tensor) -> torch.Tensor:
    """Context-aware states (B, hidden) of the encoded users `t` under `gen`."""
    return gen.condition(enc.history[t], enc.n_hist[t], enc.relevancy[t], enc.context[t],
                         enc.has_context[t])


# ---------------------------------------------------------------------- pretraining
def _all_posts(users: AttackUsers, vocab: list[str], max_tokens: int) -> torch.Tensor:
    """(N, P+1, T) ids of history + final post."""
    seqs = [[*h, f] for h, f in zip(users.history, users.final, strict=True)]
    ids = encode_posts(seqs, vocab, max(len(s) for s in seqs), max_tokens)
    return torch.from_numpy(ids.astype(np.int64))


def _pretrain_rows(gen: PostGenerator, enc: EncodedUsers, posts: torch.Tensor, idx: np.ndarray,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions (M, H) or None, targets (M, T)) for the users `idx`."""
    t = torch.from_numpy(idx)
    n = enc.n_hist[t]
    if not gen.conditional:
        rows = [(b, j) for b in range(len(idx)) for j in range(int(n[b]) + 1)]
        bi, ji = map(torch.tensor, zip(*rows, strict=True))
        return None, posts[t][bi, ji]  # type: ignore[return-value]
    pairs = []
    for b in range(len(idx)):
        nb = int(n[b])
        earlier = np.arange(1, nb)
        if len(earlier) > TARGETS_PER_USER - 1:
            earlier = rng.choice(earlier, TARGETS_PER_USER - 1, replace=False)
        pairs += [(b, int(j)) for j in earlier] + [(b, nb)]
    bi, ji = (torch.tensor(x) for x in zip(*pairs, strict=True))
    up = posts[t]
    B, S, T = up.shape
    states = gen.encode_posts(up.reshape(B * S, T)).view(B, S, -1)
    final = ji == n[bi]
    rel = torch.zeros(len(bi), S)
    rel[:, : enc.relevancy.shape[1]] = enc.relevancy[t][bi] * final[:, None]
    ctx = gen.encode_posts(enc.context[t])
    u = gen.mix(states[bi], ji, rel, ctx[bi], enc.has_context[t][bi] & final)
    return u, up[bi, ji]


def _pretrain_validation(gen: PostGenerator, enc: EncodedUsers, posts: torch.Tensor,
                         valid: np.ndarray) -> dict[str, float]:
    """NLL of the validation users' final posts (conditional) or of all their posts (plain LM)."""
    total, count = 0.0, 0
    for b in range(0, len(valid), 64):
        idx = valid[b:b + 64]
        if gen.conditional:
            t = torch.from_numpy(idx)
            u, tgt = user_states(gen, enc, t), enc.final[t]
        else:
            u, tgt = _pretrain_rows(gen, enc, posts, idx, np.random.default_rng(0))
        s, c = gen.nll(tgt, u)
        total, count = total + float(s), count + int(c)
    nll = total / max(count, 1)
    return {"neg_nll": -nll, "perplexity": float(np.exp(nll))}


def pretrain_generator(users: AttackUsers, vocab: list[str], train: np.ndarray,
                       valid: np.ndarray, g: GeneratorConfig, tc: TrainConfig, max_tokens: int,
                       conditional: bool = True, quiet: bool = False) -> PostGenerator:
    """MLE-train a (conditional) generator on training users' posts (`tc.seed` seeds it);
    validation NLL on valid users' final posts (conditional) or all their posts (plain LM)."""
    gen = build_generator(vocab, g, max_tokens, conditional)
    enc = encode_users(users, vocab, gen.max_tokens)
    posts = _all_posts(users, vocab, gen.max_tokens)
    trainer = Trainer(tc.model_copy(update={"monitor": "neg_nll", "device": "cpu"}), None,
                      quiet=quiet)
    # a plain-LM batch holds every post of a user
    bs = tc.batch_size if conditional else max(1, tc.batch_size // 8)

    def batches(epoch: int) -> Iterator[np.ndarray]:
        yield from _batches(train, bs, tc.seed * 1000 + epoch)

    def loss_fn(model: torch.nn.Module, idx: np.ndarray) -> torch.Tensor:
        u, tgt = _pretrain_rows(gen, enc, posts, idx, np.random.default_rng(int(idx.sum())))
        s, c = gen.nll(tgt, u)
        return s / c

    def validate(model: torch.nn.Module) -> dict[str, float]:
        return _pretrain_validation(gen, enc, posts, valid)

    trainer.fit(gen, batches, -(-len(train) // bs), loss_fn, validate)
    gen.eval()
    st = trainer.state
    curve = [round(-float(v), 4) for r in st.history for k, v in r.items()
             if k.endswith("neg_nll")]
    gen.train_state = {  # type: ignore[attr-defined]
        "epochs": st.epoch, "best_epoch": st.best_epoch,
        "valid_perplexity": float(np.exp(-st.best_metric)), "seconds": round(st.seconds, 1),
        "stopped": st.stopped, "unconverged": st.best_epoch == st.epoch,
        "valid_nll_curve": curve}
    return gen


def cached_generator(cache: str | Path | None, users: AttackUsers, vocab: list[str],
                     train: np.ndarray, valid: np.ndarray, g: GeneratorConfig, tc: TrainConfig,
                     max_tokens: int, conditional: bool, quiet: bool = False) -> PostGenerator:
    """`pretrain_generator`, reusing a copy saved in `cache` for the same vocabulary, users,
    split and config."""
    key = json.dumps([vocab, users.user_ids, users.final, train.tolist(), valid.tolist(),
                      g.model_dump(), tc.model_dump(), max_tokens, conditional])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = f"{'generator' if conditional else 'lm'}-{digest}.safetensors"
    path = Path(cache) / name if cache else None
    if path is not None and path.is_file():
        gen = build_generator(vocab, g, max_tokens, conditional)
        tensors, meta = load_tensors(path)
        gen.load_state_dict(tensors)
        gen.train_state = json.loads(meta.get("train_state", "{}"))  # type: ignore[attr-defined]
        return gen.eval()
    gen = pretrain_generator(users, vocab, train, valid, g, tc, max_tokens, conditional, quiet)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_generator(gen, path)
    return gen


# ---------------------------------------------------------------------- the PETGEN objective
class PetgenObjective:
    """The weighted PETGEN losses for a batch of users (a callable `loss_fn` for the Trainer)."""

    def __init__(self, gen: PostGenerator, frozen: PostGenerator, users: AttackUsers,
                 vocab: list[str], source: TargetDetector | None, weights: LossWeights,
                 recent: int, tau: float, hard: bool, disc_lr: float = 1e-4,
                 disc_seed: int = 0) -> None:
        self.gen, self.frozen, self.users, self.w = gen, frozen, users, weights
        self.source, self.tau, self.hard = source, tau, hard
        if weights.attack > 0:
            if source is None:
                raise ValueError("the attack loss needs a detector")
            source.require_white_box("petgen")
            source.check_vocab(vocab, "generator")
        self.enc = encode_users(users, vocab, gen.max_tokens)
        with torch.no_grad():
            frozen.eval()
            self.hist_states = frozen.history_states(self.enc.history)  # (N, P, H)
            self.ctx_states = frozen.encode_posts(self.enc.context)  # (N, H)
        P = self.enc.history.shape[1]
        pos = torch.arange(P)[None, :]
        n = self.enc.n_hist[:, None]
        self.recent_mask = (pos < n) & (pos >= n - recent)
        self.rel_mask = (self.enc.relevancy > 0) & (pos < n)
        labels = users.labels if users.labels is not None else np.zeros(users.n_users)
        self.labels = torch.from_numpy(labels).float()
        self.disc: Discriminator | None = None
        if weights.gan > 0:
            with torch.random.fork_rng():  # its initial weights follow the seed, not the history
                torch.manual_seed(disc_seed)
                self.disc = Discriminator(gen.vocab)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=disc_lr)
            self.real_rows = self.enc.final.clamp(max=gen.vocab - 1)

    def terms(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Each weighted-on loss term (and the mean P(malicious) of the malicious users)."""
        t = torch.from_numpy(idx)
        w = self.w
        u = user_states(self.gen, self.enc, t)
        out: dict[str, torch.Tensor] = {}
        if w.mle > 0:
            s, c = self.gen.nll(self.enc.final[t], u)
            out["mle"] = s / c
        rows, ids, mask = self.gen.sample(u, tau=self.tau, hard=self.hard)
        if w.lm > 0:
            out["lm"] = self._realism(t, rows, mask)
        if w.attack > 0:
            out.update(self._attack(idx, t, rows, mask))
        if w.recency > 0 or w.relevancy > 0:
            out.update(self._personal(t, rows, mask))
        if self.disc is not None:
            out["gan"] = self._gan(t, rows)
        return out

    def _gan(self, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Relativistic GAN: one discriminator step (its own Adam; while training) on real final
        posts vs these generated rows, then the generator's rsgan loss."""
        assert self.disc is not None
        real = F.one_hot(self.real_rows[t], self.gen.vocab).float()
        if self.gen.training and torch.is_grad_enabled():
            self.disc.train()
            _, d_loss = rsgan_losses(self.disc(real), self.disc(rows.detach()))
            self.disc_opt.zero_grad()
            d_loss.backward()
            self.disc_opt.step()
        self.disc.eval()
        for p in self.disc.parameters():
            p.requires_grad_(False)
        g_loss, _ = rsgan_losses(self.disc(real), self.disc(rows))
        for p in self.disc.parameters():
            p.requires_grad_(True)
        return g_loss

    def _realism(self, t: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """NLL of the sampled rows under the frozen pretrained generator."""
        with torch.no_grad():
            uf = user_states(self.frozen, self.enc, t)
        # the tokens and the end-of-post
        counted = torch.arange(rows.shape[1])[None, :] <= mask.sum(1, keepdim=True)
        return soft_nll(self.frozen.out(self.frozen.states(rows, uf)[counted]), rows[counted])

    def _attack(self, idx: np.ndarray, t: torch.Tensor, rows: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """BCE toward 'benign' through the detector, on the malicious users."""
        assert self.source is not None
        v = self.source.onehot_post_vectors(rows, mask)
        logit = self.source.user_logits(self.users, idx, v)
        return {"attack": attack_loss(logit, self.labels[t]),
                "p_malicious": torch.sigmoid(logit.detach())[self.labels[t] > 0].mean()}

    def _personal(self, t: torch.Tensor, rows: torch.Tensor,
                  mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """MMD to the recent posts and to the same-context posts (else the context)."""
        out: dict[str, torch.Tensor] = {}
        x = self.frozen.encode_posts(rows, mask)
        if self.w.recency > 0:
            out["recency"] = set_mmd(x, self.hist_states[t], self.recent_mask[t]).mean()
        if self.w.relevancy > 0:
            ys = torch.cat([self.hist_states[t], self.ctx_states[t][:, None]], 1)
            has_rel = self.rel_mask[t].any(1)
            m = torch.cat([self.rel_mask[t], (~has_rel & self.enc.has_context[t])[:, None]], 1)
            out["relevancy"] = set_mmd(x, ys, m).mean()
        return out

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [getattr(self.w, k) * v for k, v in terms.items() if k != "p_malicious"]
        return sum(parts)  # type: ignore[return-value]

    def validation(self, valid: np.ndarray, seed: int) -> dict[str, float]:
        """Mean terms over the validation users, with the same Gumbel noise every epoch."""
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        sums: dict[str, float] = {}
        n = 0
        for b in range(0, len(valid), 64):
            idx = valid[b:b + 64]
            terms = self.terms(idx)
            terms["total"] = self.total(terms)
            for k, v in terms.items():
                if torch.isfinite(v):
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            n += len(idx)
        torch.random.set_rng_state(state)
        out = {k: v / n for k, v in sums.items()}
        out["neg_loss"] = -out.pop("total")
        return out


def train_attack(pretrained: PostGenerator, users: AttackUsers, vocab: list[str],
                 source: TargetDetector | None, train: np.ndarray, valid: np.ndarray,
                 cfg: AttackConfig, weights: LossWeights,
                 quiet: bool = False) -> tuple[PostGenerator, dict[str, Any]]:
    """A copy of the pretrained generator trained on the PETGEN objective (`cfg.train.seed`
    seeds it); returns it and a summary of the training."""
    gen = copy.deepcopy(pretrained)
    frozen = copy.deepcopy(pretrained).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    obj = PetgenObjective(gen, frozen, users, vocab, source, weights, cfg.generator.recent_posts,
                          cfg.tau, cfg.hard, cfg.discriminator_lr, cfg.train.seed)
    tc = cfg.train.model_copy(update={"monitor": "neg_loss", "device": "cpu"})
    trainer = Trainer(tc, None, quiet=quiet)
    if cfg.tau_schedule == "exp":  # RelGAN: inverse temperature 1 -> tau_max over the epochs

        def anneal(model: torch.nn.Module, epoch: int) -> None:
            obj.tau = 1.0 / cfg.tau_max ** ((epoch - 1) / max(tc.epochs - 1, 1))

        trainer.on_epoch_start.append(anneal)

    def batches(epoch: int) -> Iterator[np.ndarray]:
        yield from _batches(train, tc.batch_size, tc.seed * 1000 + epoch)

    def loss_fn(model: torch.nn.Module, idx: np.ndarray) -> torch.Tensor:
        return obj.total(obj.terms(idx))

    def validate(model: torch.nn.Module) -> dict[str, float]:
        return obj.validation(valid, tc.seed + 7)

    trainer.fit(gen, batches, -(-len(train) // tc.batch_size), loss_fn, validate)
    gen.eval()
    st = trainer.state
    best = st.history[st.best_epoch - 1] if st.history else {}
    return gen, {"epochs": st.epoch, "best_epoch": st.best_epoch,
                 "seconds": round(st.seconds, 1), "stopped": st.stopped,
                 "valid": {k[6:]: v for k, v in best.items() if k.startswith("valid_")}}


@torch.no_grad()
def generate_posts(gen: PostGenerator, users: AttackUsers, vocab: list[str], idx: np.ndarray,
                   temperature: float, seed: int) -> list[str]:
    """One sampled post per user `idx`; `seed` seeds the sampling (the same posts every call)."""
    gen.eval()
    enc = encode_users(users, vocab, gen.max_tokens)
    rng = torch.Generator().manual_seed(seed)
    out: list[str] = []
    for b in range(0, len(idx), 256):
        t = torch.from_numpy(np.asarray(idx[b:b + 256]))
        _, ids, _ = gen.sample(user_states(gen, enc, t), hard=True, temperature=temperature,
                               generator=rng)
        out += decode(ids, vocab)
    return out
