"""Adversarial audit of text detectors: the user-facing estimator and the one-call run.

>>> target = TargetDetector.load("runs/hlstm")
>>> att = Attacker(method="petgen").fit(data, target, split)   # white-box: the target's gradients
>>> posts = att.generate(split.test)                             # one new post per test user
>>> att.evaluate(target, split.test, posts)                      # clean vs attacked metrics
>>> att.save("runs/att"); Attacker.load("runs/att").generate(split.test) == posts

Black-box: `fit(data, target, split, surrogate=other)` optimises against `other` (gradients or
score queries); the texts are then scored by the target. Every method writes plain text, so any
detector (also the MiniLM one) can be evaluated on any attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.attack.baselines import (
    Copycat,
    Neighbours,
    copycat_pool,
    hotflip,
    learn_trigger,
    textbugger,
    with_trigger,
)
from userseq.attack.config import GRADIENT_METHODS, METHODS, AttackConfig
from userseq.attack.data import (
    AttackUsers,
    attack_users,
    check_histories,
    context_known,
    read_users,
    write_users,
)
from userseq.attack.generator import PostGenerator
from userseq.attack.petgen import (
    cached_generator,
    generate_posts,
    load_generator,
    save_generator,
    train_attack,
)
from userseq.attack.quality import SentenceVectors, text_quality
from userseq.attack.target import TargetDetector, detector_split_config
from userseq.core.artifacts import load_ids, read_json, save_ids, write_json, write_parquet
from userseq.core.errors import ArtifactError, ConfigError, DataError, UserseqError
from userseq.core.estimator import Estimator
from userseq.detect.data import DetectSplit, TextData, load_text_data, stratified_split
from userseq.detect.estimator import build_vocab
from userseq.metrics.classification import binary_metrics, wilson_interval

EFFICACY_KEYS = ("accuracy", "f1", "roc_auc", "precision", "recall", "pr_auc")
STATE_FILE = "attacker.json"
USERS_FILE = "attack_users.parquet"
VOCAB_FILE = "vocab.parquet"
POOL_FILE = "copycat_pool.parquet"
GENERATOR_FILE = "generator.safetensors"
PRETRAINED_FILE = "pretrained.safetensors"
COPYCAT_METHODS = ("copycat", "hotflip", "trigger", "textbugger")
LM_METHODS = ("petgen", "lm", "textbugger", "malcom")  # need the MLE-pretrained generator
GENERATOR_METHODS = ("petgen", "lm", "malcom")  # write posts with a trained generator


class Attacker(Estimator[AttackConfig]):
    """One attack method fitted against one detector (white-box) or a surrogate (black-box).

    Fitted state: `users_` (the attack inputs of every user of the fitted data), `source_` (the
    detector whose gradients or scores the attack used), `vocab_`, `generator_` (petgen, lm),
    `pretrained_` (the MLE-pretrained generator; saved for textbugger only, whose word
    substitutions use its embedding), `copycat_`, `trigger_`, `runs_` (the run directories of the
    target and the source detector) and `info_` (what fit did)."""

    task = "attack"
    config_class = AttackConfig
    fitted_attribute = "users_"

    def __init__(self, method: str | None = None, config: AttackConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        over = dict(overrides or {})
        if method is not None:
            over["method"] = check_method(method)
        super().__init__(config, over)
        self.users_: AttackUsers | None = None
        self.source_: TargetDetector | None = None
        self.vocab_: list[str] | None = None
        self.generator_: PostGenerator | None = None
        self.pretrained_: PostGenerator | None = None
        self.copycat_: Copycat | None = None
        self.trigger_: list[str] | None = None
        self.runs_: dict[str, str | None] = {}
        self.info_: dict[str, Any] = {}

    @property
    def method(self) -> str:
        return self.config.method

    # ------------------------------------------------------------------ fitting
    def fit(self, data: TextData, detector: TargetDetector, split: DetectSplit,
            surrogate: TargetDetector | None = None, cache_dir: str | Path | None = None,
            pretrained: PostGenerator | None = None, quiet: bool = False) -> Attacker:
        """Prepare the attack on training users (validation users select epochs); test users are
        not used."""
        users, source, vocab = self._prepare(data, detector, surrogate, split)
        _check_pretrained(pretrained, source, vocab)
        train, valid = np.asarray(split.train), np.asarray(split.valid)
        copycat = None
        if self.method in COPYCAT_METHODS:
            copycat = Copycat(users, copycat_pool(users, train))
        info = self._fit_info(users, source, vocab, black_box=surrogate is not None)
        lm = None
        if self.method in LM_METHODS:
            g = method_config(self.config)
            lm = pretrained or cached_generator(cache_dir, users, vocab, train, valid, g.generator,
                                                g.pretrain, source.max_tokens, True, quiet)
            info["pretrain"] = getattr(lm, "train_state", {})
        generator = self._fit_generator(lm, users, vocab, source, train, valid, info, quiet)
        trigger = self._fit_trigger(copycat, users, source, train, info)
        self.users_, self.source_, self.vocab_, self.info_ = users, source, vocab, info
        self.copycat_, self.pretrained_, self.generator_, self.trigger_ = (
            copycat, lm, generator, trigger)
        self.runs_ = {"detector": _run_path(detector), "source": _run_path(source)}
        return self

    def _prepare(self, data: TextData, detector: TargetDetector, surrogate: TargetDetector | None,
                 split: DetectSplit) -> tuple[AttackUsers, TargetDetector, list[str]]:
        """Checked attack inputs, the detector the attack optimises against, the vocabulary."""
        if data.labels is None:
            raise DataError(f"{data.source}: the attack needs user labels (who is malicious).")
        source = surrogate or detector
        if self.method in GRADIENT_METHODS:
            source.require_white_box(self.method)
        users = attack_users(data, min(detector.max_posts, source.max_posts))
        check_histories(users.history)
        vocab = _vocab(data, split, source)
        context_known(users.contexts, vocab)
        return users, source, vocab

    def _fit_info(self, users: AttackUsers, source: TargetDetector, vocab: list[str],
                  black_box: bool) -> dict[str, Any]:
        no_context = sum(1 for c in users.contexts if not (c or "").strip())
        return {"method": self.method, "source": source.name, "black_box": black_box,
                "vocab": len(vocab), "truncated_histories": users.truncated,
                "users_without_context": int(no_context)}

    def _fit_generator(self, pretrained: PostGenerator | None, users: AttackUsers,
                       vocab: list[str], source: TargetDetector, train: np.ndarray,
                       valid: np.ndarray, info: dict[str, Any], quiet: bool,
                       ) -> PostGenerator | None:
        """petgen: the PETGEN objective; lm: the same without the attack loss; malcom: see
        `method_config`."""
        if self.method not in GENERATOR_METHODS:
            return None
        assert pretrained is not None
        cfg = method_config(self.config)
        weights = cfg.losses if self.method != "lm" else cfg.losses.model_copy(
            update={"attack": 0.0})
        generator, info["train"] = train_attack(
            pretrained, users, vocab, source if weights.attack > 0 else None, train, valid, cfg,
            weights, quiet)
        info["losses"] = weights.model_dump()
        return generator

    def _fit_trigger(self, copycat: Copycat | None, users: AttackUsers, source: TargetDetector,
                     train: np.ndarray, info: dict[str, Any]) -> list[str] | None:
        """trigger: universal trigger tokens learned on the training malicious users."""
        if self.method != "trigger":
            return None
        assert copycat is not None and users.labels is not None
        b = self.config.baselines
        mal = train[users.labels[train] == 1]
        trigger = learn_trigger(source, users, mal, copycat.posts(mal), b.trigger_tokens,
                                b.trigger_iters, b.trigger_candidates, b.trigger_seed)
        info["trigger"] = " ".join(trigger)
        return trigger

    # ------------------------------------------------------------------ generating
    def generate(self, users: np.ndarray) -> list[str]:
        """The new post of each given user (indices into the fitted data); deterministic given
        the config (`sample_seed` seeds the generator's sampling)."""
        au: AttackUsers = self.check_is_fitted()
        source, vocab = self.source_, self.vocab_
        assert source is not None and vocab is not None
        idx = np.asarray(users, dtype=np.int64)
        cfg = self.config
        if self.method in GENERATOR_METHODS:
            assert self.generator_ is not None
            return generate_posts(self.generator_, au, vocab, idx, cfg.sample_temperature,
                                  cfg.sample_seed)
        assert self.copycat_ is not None
        base = self.copycat_.posts(idx)
        if self.method == "copycat":
            return base
        if self.method == "hotflip":
            return hotflip(source, au, idx, base, cfg.baselines.hotflip_flips)
        if self.method == "trigger":
            assert self.trigger_ is not None
            return with_trigger(self.trigger_, base, source.max_tokens)
        assert self.pretrained_ is not None
        nb = Neighbours(vocab, self.pretrained_.emb.weight, cfg.baselines.textbugger_neighbours)
        return textbugger(source, au, idx, base, cfg.baselines.textbugger_max_share, nb)

    # ------------------------------------------------------------------ evaluating
    def evaluate(self, target: TargetDetector, users: np.ndarray,
                 posts: list[str]) -> dict[str, Any]:
        """Efficacy of `posts` against `target`: clean vs attacked metrics and the success rate."""
        return efficacy(target, self.check_is_fitted(), np.asarray(users, dtype=np.int64), posts)

    def quality(self, users: np.ndarray, posts: list[str], vectors: SentenceVectors,
                lm: PostGenerator | None, max_tokens: int) -> dict[str, Any]:
        au: AttackUsers = self.check_is_fitted()
        idx = np.asarray(users, dtype=np.int64)
        return text_quality(posts, [au.final[i] for i in idx], [au.history[i] for i in idx],
                            [au.contexts[i] for i in idx], vectors, self.vocab_ or [], lm,
                            max_tokens)

    # ------------------------------------------------------------------ persistence
    def _save_state(self, d: Path) -> None:
        """Everything `generate` needs, without pickle: the users (Parquet), the vocabulary, the
        copycat pool, generator weights (safetensors), the trigger, `info_`, and the detector
        runs (the source detector is loaded again from its run directory)."""
        if self.runs_.get("source") is None:
            raise ArtifactError(
                "cannot save this attacker: the detector it attacks was not loaded from a run "
                "directory. Save the detector (det.save(DIR)), fit against "
                "TargetDetector.load(DIR) and save again.")
        au = self.check_is_fitted()
        write_users(au, d / USERS_FILE)
        save_ids(pl.Series("id", self.vocab_ or []), d / VOCAB_FILE)
        if self.copycat_ is not None:
            write_parquet(pl.DataFrame({"post": self.copycat_.pool}), d / POOL_FILE)
        if self.generator_ is not None:
            save_generator(self.generator_, d / GENERATOR_FILE)
        if self.pretrained_ is not None and self.method == "textbugger":  # its word neighbours
            save_generator(self.pretrained_, d / PRETRAINED_FILE)
        write_json({"runs": self.runs_, "trigger": self.trigger_, "truncated": au.truncated,
                    "info": self.info_}, d / STATE_FILE)

    def _load_state(self, d: Path) -> None:
        state = read_json(d / STATE_FILE)
        runs = state.get("runs", {})
        self.runs_ = runs
        self.source_ = load_detector_run(runs.get("source"), d)
        self.users_ = read_users(d / USERS_FILE, int(state.get("truncated", 0)))
        self.vocab_ = vocab = [str(w) for w in load_ids(d / VOCAB_FILE).to_list()]
        if self.source_.white_box:  # fitted over its vocabulary: the run must not have changed
            self.source_.check_vocab(vocab, f"saved attacker {d}")
        if self.method in COPYCAT_METHODS:
            self.copycat_ = Copycat(self.users_, _read_pool(d / POOL_FILE))
        if self.method in GENERATOR_METHODS:
            self.generator_ = load_generator(d / GENERATOR_FILE, vocab)
        if self.method == "textbugger":
            self.pretrained_ = load_generator(d / PRETRAINED_FILE, vocab)
        self.trigger_ = state.get("trigger")
        self.info_ = state.get("info", {})


def method_config(cfg: AttackConfig) -> AttackConfig:
    """The config a method really trains with. malcom (MALCOM-style, Le et al. 2020): the
    generator is conditioned on the target context only (no history: no style personalisation),
    no recency / relevancy terms, and the relativistic GAN term on (losses.gan, or 1 if 0)."""
    if cfg.method != "malcom":
        return cfg
    losses = cfg.losses.model_copy(update={"recency": 0.0, "relevancy": 0.0,
                                           "gan": cfg.losses.gan or 1.0})
    generator = cfg.generator.model_copy(update={"condition": "context-only"})
    return cfg.model_copy(update={"losses": losses, "generator": generator})


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ConfigError(f"unknown attack method '{name}'. Choose one of: {', '.join(METHODS)}.")
    return name


def _check_pretrained(pretrained: PostGenerator | None, source: TargetDetector,
                      vocab: list[str]) -> None:
    if pretrained is None:
        return
    if pretrained.words is not None and source.white_box:
        source.check_vocab(pretrained.words, "pretrained generator")
    elif pretrained.vocab != len(vocab):
        raise DataError(f"vocabulary mismatch: the pretrained generator has "
                        f"{pretrained.vocab:,} tokens, the attack's vocabulary {len(vocab):,}; "
                        "pretrain it over the same vocabulary.")


def _vocab(data: TextData, split: DetectSplit, source: TargetDetector) -> list[str]:
    """The detector's vocabulary (white-box), else one of the training users for the attacker's
    own LM."""
    if source.white_box:
        return source.vocab
    m = source.det.config.model
    return build_vocab(data.posts, np.asarray(split.train), m.vocab_size, m.min_token_count,
                       m.max_tokens)


def _run_path(det: TargetDetector) -> str | None:
    return str(det.run_dir.resolve()) if det.run_dir is not None else None


def _read_pool(path: Path) -> list[str]:
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; the attack run directory is incomplete.")
    return [str(p) for p in pl.read_parquet(path)["post"].to_list()]


def load_detector_run(path: str | None, attack_dir: Path) -> TargetDetector:
    """The detector of a saved attacker, from its run directory (a clear error if it is gone)."""
    if path is None:
        raise ArtifactError(f"{attack_dir / STATE_FILE}: names no detector run; the attack run "
                            "directory is incomplete. Run the attack again.")
    if not Path(path).is_dir():
        raise ArtifactError(f"{attack_dir}: the detector run this attacker attacks, {path}, is "
                            "missing. Restore it there (the attacker needs its weights and "
                            "vocabulary), or run the attack again against a detector run.")
    return TargetDetector.load(path)


def reference_quality(att: Attacker, users: np.ndarray, vectors: SentenceVectors,
                      lm: PostGenerator) -> dict[str, Any]:
    """The quality metrics of the real final posts (BLEU against themselves is left out)."""
    au: AttackUsers = att.check_is_fitted()
    q = att.quality(users, [au.final[i] for i in users], vectors, lm, lm.max_tokens)
    return {**q, "bleu2": None, "bleu3": None, "bleu4": None}


def _metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    m = binary_metrics(y, s, threshold)
    return {k: m[k] for k in EFFICACY_KEYS}


def efficacy(target: TargetDetector, users: AttackUsers, idx: np.ndarray,
             posts: list[str]) -> dict[str, Any]:
    """Detector metrics on `idx` with the real final posts (clean), with `posts` written by the
    malicious users only (attacked: the threat model), and by every user (attacked_all: PETGEN's
    code protocol). success_rate: share of the malicious users flagged on the clean sequence that
    are not flagged after (`malicious_flipped` of `malicious_flagged_clean`, with a 95% Wilson
    interval `success_ci95`)."""
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
            "success_ci95": list(wilson_interval(int(flipped.sum()), int(flagged.sum()))),
            "malicious_flipped": int(flipped.sum()),
            "malicious_flagged_clean": int(flagged.sum()), "malicious": int((y == 1).sum()),
            "mean_score_malicious": {"clean": float(clean[y == 1].mean()),
                                     "attacked": float(gen[y == 1].mean())},
            "threshold": thr, "scores": {"clean": clean.tolist(), "generated": gen.tolist()}}


# ---------------------------------------------------------------------- run directories
def saved_split(path: Path, user_ids: list[str], seed: int) -> DetectSplit:
    """The user split a detector run saved (RUN/users.parquet: user_id, split), in the order of
    `user_ids`; every user must be in it."""
    t = pl.read_parquet(path, columns=["user_id", "split"])
    where = dict(zip(t["user_id"].cast(pl.String).to_list(), t["split"].to_list(), strict=True))
    missing = [u for u in user_ids if u not in where]
    if missing:
        raise DataError(f"{path}: {len(missing)} users of the data are not in the detector's run "
                        f"(e.g. {missing[:3]}); attack the data the detector was trained on.")
    names = np.array([where[u] for u in user_ids])
    return DetectSplit(np.flatnonzero(names == "train"), np.flatnonzero(names == "valid"),
                       np.flatnonzero(names == "test"), seed)


def run_split(run_dir: str | Path, data: TextData, det: TargetDetector) -> DetectSplit:
    """The detector run's user split: RUN/users.parquet if present, else recomputed from its
    config."""
    p = Path(run_dir) / "users.parquet"
    ids = [str(x) for x in data.user_ids.to_list()]
    valid, test, seed = detector_split_config(det.det)
    if p.is_file():
        return saved_split(p, ids, seed)
    if data.labels is None:
        raise DataError(f"{data.source}: labels needed to rebuild the detector's split.")
    return stratified_split(data.labels, valid, test, seed)


def same_split(a: DetectSplit, b: DetectSplit, what: str) -> None:
    if not (np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)):
        raise DataError(f"{what}: the surrogate detector was trained on a different user split "
                        "than the target, so its training users may be the target's test users. "
                        "Train both with the same --seed and split fractions.")


def _load_detectors(detector: str | Path, surrogate: str | Path | None, data: TextData,
                    target: TargetDetector | None = None,
                    ) -> tuple[TargetDetector, TargetDetector | None, DetectSplit]:
    """The target (and surrogate) detector runs and the target's user split."""
    target = target or TargetDetector.load(detector)
    split = run_split(detector, data, target)
    source = None
    if surrogate is not None:
        source = TargetDetector.load(surrogate)
        mine, theirs = fixed_posts_of(target), fixed_posts_of(source)
        if mine != theirs:
            raise DataError(f"{surrogate}: the surrogate read {theirs[0]} ({theirs[1]}) posts "
                            f"per user but the target {detector} read {mine[0]} ({mine[1]}); "
                            "train both with the same --fixed-posts.")
        same_split(split, run_split(surrogate, data, source), f"{surrogate}")
    return target, source, split


def fixed_posts_of(det: TargetDetector) -> tuple[int | str, str]:
    """(fixed post count, which posts) a detector run was trained with ('dataset default' for
    runs that left it to the dataset)."""
    c = det.det.config
    return (c.fixed_posts if c.fixed_posts is not None else "dataset default", c.fixed_keep)


def _text_quality(att: Attacker, target: TargetDetector, data: TextData, split: DetectSplit,
                  posts: list[str], vectors: SentenceVectors | None, eval_lm: PostGenerator | None,
                  cache_dir: str | Path | None, quiet: bool) -> dict[str, Any]:
    """Quality of the generated posts and of the real final posts (separately trained LM)."""
    cfg, au, test = att.config, att.check_is_fitted(), np.asarray(split.test)
    if vectors is None:
        vectors = SentenceVectors(cfg.quality_embedding,
                                  [p for u in split.train for p in data.posts[u]])
    if eval_lm is None:
        eval_lm = cached_generator(
            cache_dir, au, att.vocab_ or [], np.asarray(split.train), np.asarray(split.valid),
            cfg.generator, cfg.eval_lm.model_copy(update={"seed": cfg.eval_lm.seed + 1}),
            target.max_tokens if target.white_box else 30, False, quiet)
    return {"quality": att.quality(test, posts, vectors, eval_lm, eval_lm.max_tokens),
            "quality_real_final_posts": reference_quality(att, test, vectors, eval_lm)}


def _generations(au: AttackUsers, test: np.ndarray, posts: list[str],
                 scores: dict[str, list[float]]) -> pl.DataFrame:
    return pl.DataFrame({
        "user_id": [au.user_ids[i] for i in test],
        "label": au.labels[test] if au.labels is not None else None,
        "context": [au.contexts[i] for i in test], "real_final": [au.final[i] for i in test],
        "generated": posts, "score_clean": scores["clean"], "score_attacked": scores["generated"]})


def _write_train_posts(att: Attacker, split: DetectSplit, path: Path) -> int:
    """The attack's post for every malicious training user (adversarial training input)."""
    au: AttackUsers = att.check_is_fitted()
    if au.labels is None:
        raise DataError("train posts need labels")
    tr = np.asarray(split.train)
    mal = tr[au.labels[tr] == 1]
    pl.DataFrame({"user_id": [au.user_ids[i] for i in mal], "post": att.generate(mal)}
                 ).write_parquet(path)
    return len(mal)


def run_attack(detector: str | Path, data: str | Path, method: str | None, out: str | Path,
               surrogate: str | Path | None = None, labels: str | Path | None = None,
               config: AttackConfig | None = None, overrides: dict[str, Any] | None = None,
               cache_dir: str | Path | None = None, train_posts: bool = False,
               quiet: bool = False, vectors: SentenceVectors | None = None,
               eval_lm: PostGenerator | None = None) -> dict[str, Any]:
    """Fit the attack, generate for the test users, evaluate, and write OUT: the fitted attacker
    (`Attacker.load(OUT)`), metrics.json, generations.parquet, report.md, report.html and
    scores.png. `train_posts` also writes the attack's posts for malicious training users
    (OUT/train_posts.parquet, the input of `userseq detect train --adversarial OUT`). `method`
    None: the config's."""
    from userseq.attack.report import write_report

    o = Path(out)
    if o.exists() and not o.is_dir():
        raise UserseqError(f"--out {o}: exists and is not a directory.")
    target = TargetDetector.load(detector)
    c = target.det.config  # the attack reads the users the detector was trained on
    d = load_text_data(str(data) if isinstance(data, Path) else data, labels,
                       fixed_posts=c.fixed_posts, keep=c.fixed_keep)
    target, source, split = _load_detectors(detector, surrogate, d, target)
    att = Attacker(method, config, overrides).fit(d, target, split, surrogate=source,
                                                  cache_dir=cache_dir, quiet=quiet)
    test = np.asarray(split.test)
    posts = att.generate(test)
    result = att.evaluate(target, test, posts)
    scores = result.pop("scores")
    metrics = {"method": att.method, "detector": str(detector), "detector_model": target.model,
               "surrogate": str(surrogate) if surrogate else None,
               "setting": "black-box" if surrogate else "white-box", **result,
               **_text_quality(att, target, d, split, posts, vectors, eval_lm, cache_dir, quiet),
               "attack": att.info_,
               "split": {"train": len(split.train), "valid": len(split.valid), "test": len(test)}}
    att.save(o)
    gens = _generations(att.check_is_fitted(), test, posts, scores)
    gens.write_parquet(o / "generations.parquet")
    if train_posts:
        metrics["train_posts"] = _write_train_posts(att, split, o / "train_posts.parquet")
    metrics = att.write_metrics(o, metrics)
    write_report(metrics, gens, o, att.config.examples)
    return metrics
