"""Adversarial audit of text detectors: the user-facing estimator and the one-call run.

>>> target = TargetDetector.load("runs/hlstm")
>>> att = Attacker(method="petgen").fit(data, target, split)        # white-box: the target's gradients
>>> posts = att.generate(split.test)                                  # one new post per test user
>>> att.evaluate(target, split.test, posts)                           # clean vs attacked metrics

Black-box: `fit(data, target, split, surrogate=other)` optimises against `other` (gradients or score
queries); the texts are then scored by the target. Every method writes plain text, so any detector
(also the MiniLM one) can be evaluated on any attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.attack.baselines import Copycat, Neighbours, hotflip, learn_trigger, textbugger, with_trigger
from userseq.attack.config import GRADIENT_METHODS, AttackConfig, parse_attack_config
from userseq.attack.data import AttackUsers, attack_users, check_histories, context_known
from userseq.attack.generator import PostGenerator
from userseq.attack.petgen import cached_generator, generate_posts, train_attack
from userseq.attack.quality import SentenceVectors, text_quality
from userseq.attack.target import TargetDetector
from userseq.core.artifacts import write_json
from userseq.core.errors import ConfigError, DataError, UserseqError
from userseq.detect.data import DetectSplit, TextData, load_text_data, stratified_split
from userseq.detect.estimator import build_vocab
from userseq.metrics.classification import binary_metrics

EFFICACY_KEYS = ("accuracy", "f1", "roc_auc", "precision", "recall", "pr_auc")


class Attacker:
    """One attack method fitted against one detector (white-box) or a surrogate (black-box)."""

    def __init__(self, method: str | None = None, config: AttackConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        cfg = config if isinstance(config, AttackConfig) else parse_attack_config(config)
        over = dict(overrides or {})
        if method is not None:
            over["method"] = method
        self.config = cfg.updated(over) if over else cfg
        self.users: AttackUsers | None = None
        self.source: TargetDetector | None = None
        self.vocab: list[str] = []
        self.generator: PostGenerator | None = None
        self.pretrained: PostGenerator | None = None
        self.trigger: list[str] = []
        self.copycat: Copycat | None = None
        self.info: dict[str, Any] = {}

    @property
    def method(self) -> str:
        return self.config.method

    # ------------------------------------------------------------------ fitting
    def fit(self, data: TextData, detector: TargetDetector, split: DetectSplit, surrogate: TargetDetector | None = None,
            cache_dir: str | Path | None = None, pretrained: PostGenerator | None = None,
            quiet: bool = False) -> Attacker:
        """Prepare the attack on training users (validation users select epochs); test users are not used."""
        cfg = self.config
        if data.labels is None:
            raise DataError(f"{data.source}: the attack needs user labels (who is malicious).")
        source = surrogate or detector
        if self.method in GRADIENT_METHODS:
            source.require_white_box(self.method)
        self.source = source
        self.users = users = attack_users(data, min(detector.max_posts, source.max_posts))
        check_histories(users.history)
        self.vocab = vocab = self._vocab(data, split, source)
        context_known(users.contexts, vocab)
        if pretrained is not None and pretrained.words is not None and source.white_box:
            source.check_vocab(pretrained.words, "pretrained generator")
        elif pretrained is not None and pretrained.vocab != len(vocab):
            raise DataError(f"vocabulary mismatch: the pretrained generator has {pretrained.vocab:,} tokens, the "
                            f"attack's vocabulary {len(vocab):,}; pretrain it over the same vocabulary.")
        train, valid = np.asarray(split.train), np.asarray(split.valid)
        self.info = {"method": self.method, "source": source.name, "black_box": surrogate is not None,
                     "vocab": len(vocab), "truncated_histories": users.truncated,
                     "users_without_context": int(sum(1 for c in users.contexts if not (c or "").strip()))}
        if self.method in ("copycat", "hotflip", "trigger", "textbugger"):
            self.copycat = Copycat(users, train)
        if self.method in ("petgen", "lm", "textbugger"):
            self.pretrained = pretrained or cached_generator(
                cache_dir, users, vocab, train, valid, cfg.generator, cfg.pretrain, source.max_tokens, True, quiet)
            self.info["pretrain"] = getattr(self.pretrained, "train_state", {})
        if self.method in ("petgen", "lm"):
            weights = cfg.losses if self.method == "petgen" else cfg.losses.model_copy(update={"attack": 0.0})
            assert self.pretrained is not None
            self.generator, self.info["train"] = train_attack(
                self.pretrained, users, vocab, source if weights.attack > 0 else None, train, valid, cfg, weights,
                quiet)
            self.info["losses"] = weights.model_dump()
        if self.method == "trigger":
            assert self.copycat is not None and users.labels is not None
            mal = train[users.labels[train] == 1]
            self.trigger = learn_trigger(source, users, mal, self.copycat.posts(mal), cfg.baselines.trigger_tokens,
                                         cfg.baselines.trigger_iters, cfg.baselines.trigger_candidates, cfg.seed)
            self.info["trigger"] = " ".join(self.trigger)
        return self

    def _vocab(self, data: TextData, split: DetectSplit, source: TargetDetector) -> list[str]:
        if source.white_box:
            return source.vocab
        m = source.det.config.model  # a token vocabulary of the training users for the attacker's own LM
        return build_vocab(data.posts, np.asarray(split.train), m.vocab_size, m.min_token_count, m.max_tokens)

    def _check_fitted(self) -> tuple[AttackUsers, TargetDetector]:
        if self.users is None or self.source is None:
            raise UserseqError("the attacker is not fitted; call fit() first.")
        return self.users, self.source

    # ------------------------------------------------------------------ generating
    def generate(self, users: np.ndarray) -> list[str]:
        """The new post of each given user (indices into the fitted data)."""
        au, source = self._check_fitted()
        idx = np.asarray(users, dtype=np.int64)
        cfg = self.config
        if self.method in ("petgen", "lm"):
            assert self.generator is not None
            return generate_posts(self.generator, au, self.vocab, idx, cfg.sample_temperature, cfg.seed)
        assert self.copycat is not None
        base = self.copycat.posts(idx)
        if self.method == "copycat":
            return base
        if self.method == "hotflip":
            return hotflip(source, au, idx, base, cfg.baselines.hotflip_flips)
        if self.method == "trigger":
            return with_trigger(self.trigger, base, source.max_tokens)
        assert self.pretrained is not None
        nb = Neighbours(self.vocab, self.pretrained.emb.weight, cfg.baselines.textbugger_neighbours)
        return textbugger(source, au, idx, base, cfg.baselines.textbugger_max_share, nb)

    # ------------------------------------------------------------------ evaluating
    def evaluate(self, target: TargetDetector, users: np.ndarray, posts: list[str]) -> dict[str, Any]:
        """Efficacy of `posts` against `target`: clean vs attacked metrics and the success rate."""
        au, _ = self._check_fitted()
        return efficacy(target, au, np.asarray(users, dtype=np.int64), posts)

    def quality(self, users: np.ndarray, posts: list[str], vectors: SentenceVectors,
                lm: PostGenerator | None, max_tokens: int) -> dict[str, Any]:
        au, _ = self._check_fitted()
        idx = np.asarray(users, dtype=np.int64)
        return text_quality(posts, [au.final[i] for i in idx], [au.history[i] for i in idx],
                            [au.contexts[i] for i in idx], vectors, self.vocab, lm, max_tokens)


def reference_quality(att: Attacker, users: np.ndarray, vectors: SentenceVectors, lm: PostGenerator) -> dict[str, Any]:
    """The quality metrics of the real final posts (BLEU against themselves is left out)."""
    assert att.users is not None
    q = att.quality(users, [att.users.final[i] for i in users], vectors, lm, lm.max_tokens)
    return {**q, "bleu2": None, "bleu3": None, "bleu4": None}


def _metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    m = binary_metrics(y, s, threshold)
    return {k: m[k] for k in EFFICACY_KEYS}


def efficacy(target: TargetDetector, users: AttackUsers, idx: np.ndarray, posts: list[str]) -> dict[str, Any]:
    """Detector metrics on `idx` with the real final posts (clean), with `posts` written by the malicious
    users only (attacked: the threat model), and by every user (attacked_all: PETGEN's code protocol).
    success_rate: share of the malicious users flagged on the clean sequence that are not flagged after."""
    if users.labels is None:
        raise DataError("efficacy needs labels.")
    if len(posts) != len(idx):
        raise DataError(f"{len(posts)} posts for {len(idx)} users.")
    y = users.labels[idx]
    thr = target.threshold
    clean = target.score(users, idx, [users.final[i] for i in idx])
    gen = target.score(users, idx, posts)
    attacked = np.where(y == 1, gen, clean)
    flagged = (y == 1) & (clean >= thr)
    flipped = flagged & (gen < thr)
    return {"clean": _metrics(y, clean, thr), "attacked": _metrics(y, attacked, thr),
            "attacked_all": _metrics(y, gen, thr),
            "success_rate": float(flipped.sum() / flagged.sum()) if flagged.any() else None,
            "malicious_flagged_clean": int(flagged.sum()), "malicious": int((y == 1).sum()),
            "mean_score_malicious": {"clean": float(clean[y == 1].mean()), "attacked": float(gen[y == 1].mean())},
            "threshold": thr, "scores": {"clean": clean.tolist(), "generated": gen.tolist()}}


# ---------------------------------------------------------------------- run directories
def run_split(run_dir: str | Path, data: TextData, det: TargetDetector) -> DetectSplit:
    """The detector run's user split: RUN/users.parquet if present, else recomputed from its config."""
    p = Path(run_dir) / "users.parquet"
    ids = [str(x) for x in data.user_ids.to_list()]
    if p.is_file():
        t = pl.read_parquet(p, columns=["user_id", "split"])
        where = dict(zip(t["user_id"].cast(pl.String).to_list(), t["split"].to_list(), strict=True))
        missing = [u for u in ids if u not in where]
        if missing:
            raise DataError(f"{p}: {len(missing)} users of the data are not in the detector's run (e.g. "
                            f"{missing[:3]}); attack the data the detector was trained on.")
        names = np.array([where[u] for u in ids])
        return DetectSplit(np.flatnonzero(names == "train"), np.flatnonzero(names == "valid"),
                           np.flatnonzero(names == "test"), seed=det.det.config.split_seed)
    if data.labels is None:
        raise DataError(f"{data.source}: labels needed to rebuild the detector's split.")
    c = det.det.config
    return stratified_split(data.labels, c.valid, c.test, c.split_seed)


def same_split(a: DetectSplit, b: DetectSplit, what: str) -> None:
    if not (np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)):
        raise DataError(f"{what}: the surrogate detector was trained on a different user split than the target, so "
                        "its training users may be the target's test users. Train both with the same --seed and "
                        "split fractions.")


def run_attack(detector: str | Path, data: str | Path, method: str, out: str | Path,
               surrogate: str | Path | None = None, labels: str | Path | None = None,
               config: AttackConfig | None = None, overrides: dict[str, Any] | None = None,
               cache_dir: str | Path | None = None, train_posts: bool = False, quiet: bool = False,
               vectors: SentenceVectors | None = None, eval_lm: PostGenerator | None = None) -> dict[str, Any]:
    """Fit the attack, generate for the test users, evaluate and write OUT/metrics.json, generations.parquet,
    report.md, report.html and scores.png. `train_posts` also writes the attack's posts for malicious
    training users (OUT/train_posts.parquet, the input of `userseq detect train --adversarial OUT`)."""
    from userseq.attack.report import write_report

    target = TargetDetector.load(detector)
    d = load_text_data(str(data) if isinstance(data, Path) else data, labels)
    split = run_split(detector, d, target)
    source = None
    if surrogate is not None:
        source = TargetDetector.load(surrogate)
        same_split(split, run_split(surrogate, d, source), f"{surrogate}")
    att = Attacker(method, config, overrides)
    cfg = att.config
    att.fit(d, target, split, surrogate=source, cache_dir=cache_dir, quiet=quiet)
    assert att.users is not None
    test = np.asarray(split.test)
    posts = att.generate(test)
    result = att.evaluate(target, test, posts)
    if vectors is None:
        vectors = SentenceVectors(cfg.quality_embedding, [p for u in split.train for p in d.posts[u]])
    if eval_lm is None:
        eval_lm = cached_generator(cache_dir, att.users, att.vocab, np.asarray(split.train), np.asarray(split.valid),
                                   cfg.generator, cfg.eval_lm.model_copy(update={"seed": cfg.eval_lm.seed + 1}),
                                   target.max_tokens if target.white_box else 30, False, quiet)
    quality = att.quality(test, posts, vectors, eval_lm, eval_lm.max_tokens)
    reference = reference_quality(att, test, vectors, eval_lm)
    scores = result.pop("scores")
    metrics = {"method": method, "detector": str(detector), "detector_model": target.model,
               "surrogate": str(surrogate) if surrogate else None,
               "setting": "black-box" if surrogate else "white-box", **result,
               "quality": quality, "quality_real_final_posts": reference, "attack": att.info,
               "split": {"train": len(split.train), "valid": len(split.valid), "test": len(test)}}
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    au = att.users
    gens = pl.DataFrame({"user_id": [au.user_ids[i] for i in test], "label": au.labels[test] if au.labels is not None
                         else None, "context": [au.contexts[i] for i in test], "real_final": [au.final[i] for i in test],
                         "generated": posts, "score_clean": scores["clean"], "score_attacked": scores["generated"]})
    gens.write_parquet(o / "generations.parquet")
    if train_posts:
        if au.labels is None:
            raise DataError("train posts need labels")
        tr = np.asarray(split.train)
        mal = tr[au.labels[tr] == 1]
        pl.DataFrame({"user_id": [au.user_ids[i] for i in mal], "post": att.generate(mal)}).write_parquet(
            o / "train_posts.parquet")
        metrics["train_posts"] = len(mal)
    write_json(metrics, o / "metrics.json")
    write_report(metrics, gens, o, cfg.examples)
    return metrics


def check_method(name: str) -> str:
    from userseq.attack.config import METHODS

    if name not in METHODS:
        raise ConfigError(f"unknown attack method '{name}'. Choose one of: {', '.join(METHODS)}.")
    return name
