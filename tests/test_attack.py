"""Adversarial audit: quality metrics, losses, the detector view, PETGEN + baselines, the
estimator contract (save/load), bad input, CLI, defence."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.base import clone

from userseq.attack.baselines import char_bugs, hotflip, textbugger
from userseq.attack.config import parse_attack_config
from userseq.attack.data import attack_users
from userseq.attack.estimator import Attacker, efficacy
from userseq.attack.generator import PostGenerator
from userseq.attack.losses import set_mmd
from userseq.attack.quality import (
    SentenceVectors,
    degenerate,
    self_bleu,
    sentence_bleu,
    text_quality,
)
from userseq.attack.target import TargetDetector
from userseq.core.errors import ArtifactError, ConfigError, DataError, NotFittedError
from userseq.core.estimator import Estimator
from userseq.detect.augment import adversarial_augment
from userseq.detect.data import TextData, stratified_split, tokenize
from userseq.detect.estimator import UserDetector

GOOD = ("the article history section was updated with sources from the library museum "
        "records").split()
BAD = "lol buy cheap stuff here you idiot page sucks free money click".split()
TOPICS = ["river", "castle", "music", "football", "science", "paris"]
DET = {"train.epochs": 3, "model.dim": 16, "train.batch_size": 4, "train.lr": 1e-2,
       "model.min_token_count": 1, "train.threads": 1, "prefix_prob": 0.0, "model.dropout": 0.0}
TINY = {"pretrain.epochs": 3, "train.epochs": 6, "eval_lm.epochs": 1, "generator.hidden": 32,
        "generator.emb_dim": 16, "generator.max_tokens": 10, "baselines.trigger_iters": 2,
        "baselines.trigger_candidates": 4, "pretrain.max_minutes": None, "train.max_minutes": None,
        "pretrain.lr": 1e-2, "train.lr": 1e-2, "train.batch_size": 8, "pretrain.batch_size": 32,
        "losses.attack": 10.0, "pretrain.threads": 1, "train.threads": 1}


def synthetic_posts(n_users: int = 80, seed: int = 0) -> TextData:
    """Benign users write GOOD words; a fifth of a malicious user's words are BAD. Posts on odd
    positions are on the user's target topic (same-context flag 1)."""
    rng = np.random.default_rng(seed)
    posts, labels, ctx, rel = [], [], [], []
    for u in range(n_users):
        n = int(rng.integers(3, 7))
        topic = TOPICS[u % len(TOPICS)]
        posts.append([" ".join(np.where(rng.random(7) < 0.2 * (u % 2), rng.choice(BAD, 7),
                                        rng.choice(GOOD, 7)))
                      + (f" {topic}" if j % 2 else "") for j in range(n)])
        labels.append(u % 2)
        ctx.append(f"the {topic} article")
        rel.append([j % 2 for j in range(n - 1)])
    return TextData(user_ids=pl.Series("user_id", [f"u{i}" for i in range(n_users)]), posts=posts,
                    labels=np.array(labels), contexts=ctx, source="synthetic", relevancy=rel)


@pytest.fixture(scope="module")
def world():
    data = synthetic_posts()
    split = stratified_split(data.labels, 0.15, 0.25, 0)
    torch.set_num_threads(1)
    det = UserDetector("hlstm", overrides=DET).fit(data, split, quiet=True)
    return data, split, det, TargetDetector(det, "hlstm")


# ---------------------------------------------------------------------- metrics
def test_bleu_matches_hand_computed_values():
    cand, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    # unigram 5/6, bigram 3/5, trigram 1/4, 4-gram 0 matches of 3 (smoothed to 0.1/3); no brevity
    # penalty
    assert sentence_bleu(cand, [ref], 2) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert sentence_bleu(cand, [ref], 3) == pytest.approx(0.5)
    assert sentence_bleu(cand, [ref], 4) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** 0.25)
    brevity = math.exp(1 - 6 / 2)
    assert sentence_bleu("the cat".split(), [ref], 2) == pytest.approx(brevity)
    assert sentence_bleu([], [ref], 2) == 0.0
    assert self_bleu([cand, cand, cand], 3) == pytest.approx(1.0)
    assert self_bleu([cand, "a b c d".split()], 2) < 0.1


def test_degenerate_and_char_bugs():
    assert degenerate([]) and degenerate("a a a a b".split()) and not degenerate("a b c d".split())
    assert char_bugs("hello") == ["he llo", "helo", "hlelo", "h3llo"]
    assert char_bugs("ok") == [] and char_bugs("x-y") == []


def test_set_mmd_is_zero_on_the_set_and_grows_with_distance():
    ys = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]]])
    mask = torch.tensor([[True], [True], [False]])
    x = torch.tensor([[1.0, 0.0], [4.0, 3.0], [9.0, 9.0]])
    m = set_mmd(x, ys, mask)
    assert m[0] == pytest.approx(0.0, abs=1e-6)
    assert m[1] > 0.5
    assert m[2] == 0.0  # empty set


def test_text_quality_of_copies_is_perfect():
    hist = [["the river article was updated"], ["buy cheap stuff"]]
    final = ["the river article history", "cheap stuff here and now"]
    vec = SentenceVectors("tfidf", [p for h in hist for p in h] + final)
    q = text_quality(final, final, hist, ["river article", "stuff"], vec,
                     ["<pad>", "<unk>", "the", "river"], None, 30)
    assert q["bleu2"] == pytest.approx(1.0) and q["bleu4"] == pytest.approx(1.0)
    assert q["oov_token_share"] == pytest.approx(7 / 9)
    assert q["similarity"].startswith("TF-IDF")
    assert 0 < q["style_similarity"] <= 1 and 0 < q["context_relevance"] <= 1


def test_context_aware_history_weights_and_sampling():
    gen = PostGenerator(12, emb_dim=4, hidden=3, max_tokens=6, min_tokens=2)
    h, c, e = torch.eye(3)[None], torch.zeros(1, 3), math.e
    with torch.no_grad():
        u = gen.mix(h, torch.tensor([3]), torch.tensor([[0.0, 1.0, 0.0]]), c, torch.tensor([True]))
        # softmax([0, 1, 0 | context 1]) with the recency scale at 0: the same-context post and
        # the context weigh e
        assert u[0].tolist() == pytest.approx([1 / (2 + 2 * e), e / (2 + 2 * e), 1 / (2 + 2 * e)])
        u = gen.mix(h, torch.tensor([2]), torch.tensor([[0.0, 1.0, 0.0]]), c, torch.tensor([True]))
        # the third post is not history
        assert u[0].tolist() == pytest.approx([1 / (1 + 2 * e), e / (1 + 2 * e), 0.0])
    torch.manual_seed(0)
    rows, ids, mask = gen.sample(torch.randn(64, 3), tau=1.0, hard=True)
    # one-hot rows (straight-through)
    assert torch.allclose(rows.sum(-1), torch.ones(rows.shape[:2]))
    assert (rows.argmax(-1)[mask] == ids[mask]).all() and (ids[~mask] == 0).all()
    assert mask[:, :2].all() and not (ids == 1).any()  # min_tokens respected, <unk> never generated
    length = mask.sum(1)
    assert (mask == (torch.arange(mask.shape[1])[None] < length[:, None])).all()  # a prefix


# ---------------------------------------------------------------------- the detector as attacked
def test_target_scores_equal_detector_predictions(world):
    data, split, det, target = world
    users = attack_users(data, det.config.model.max_posts)
    s = target.score(users, split.test, [users.final[i] for i in split.test])
    np.testing.assert_allclose(s, det.predict_proba(data, split.test), atol=1e-6)
    assert det.evaluate(data, split.test)["test"]["roc_auc"] > 0.9  # the synthetic detector works


def test_baselines_only_lower_scores(world):
    data, split, det, target = world
    att = Attacker("copycat").fit(data, target, split)
    mal = split.test[data.labels[split.test] == 1]
    base = att.generate(mal)
    assert all(len(tokenize(p)) >= 3 for p in base)
    train_posts = {p for u in split.train if data.labels[u] == 0 for p in data.posts[u]}
    assert set(base) <= train_posts  # copycat reuses benign training posts only
    users = att.users_
    s0 = target.score(users, mal, base)
    flipped = hotflip(target, users, mal, base, flips=3)
    bugged = textbugger(target, users, mal, base, 0.5, None)
    assert (target.score(users, mal, flipped) <= s0 + 1e-6).all()
    assert (target.score(users, mal, bugged) <= s0 + 1e-6).all()
    assert (target.score(users, mal, flipped) < s0 - 1e-4).any()


def test_petgen_beats_the_generator_without_attack_loss(world):
    data, split, det, target = world
    scores, success = {}, {}
    for method in ("lm", "petgen"):
        att = Attacker(method, overrides=TINY).fit(data, target, split, quiet=True)
        posts = att.generate(split.test)
        assert len(posts) == len(split.test) and all(isinstance(p, str) for p in posts)
        assert "<unk>" not in " ".join(posts)
        res = att.evaluate(target, split.test, posts)
        scores[method] = res["mean_score_malicious"]["attacked"]
        success[method] = res["success_rate"]
        real = [att.users_.final[i] for i in split.test]
        assert res["clean"] == efficacy(target, att.users_, split.test, real)["clean"]
    assert scores["petgen"] < scores["lm"] - 0.03, scores
    assert success["petgen"] > success["lm"], success


# ---------------------------------------------------------------------- the estimator contract
@pytest.fixture(scope="module")
def saved_target(world, tmp_path_factory):
    """The world's detector saved and loaded back: an attacker records the run it attacks."""
    _, _, det, _ = world
    run = det.save(tmp_path_factory.mktemp("det") / "hlstm")
    return TargetDetector.load(run)


def test_attacker_params_clone_and_old_seed_name():
    att = Attacker("trigger", overrides={"baselines.trigger_tokens": 3})
    assert att.get_params()["baselines__trigger_tokens"] == 3 and att.method == "trigger"
    twin = clone(att)
    assert twin.config == att.config and twin.config is not att.config and not twin.is_fitted
    assert Attacker(config=att.config).config is att.config  # a config object is kept as is
    old = Attacker(overrides={"seed": 3}).config  # the old name seeded sampling and the trigger
    assert (old.sample_seed, old.baselines.trigger_seed, old.train.seed) == (3, 3, 0)
    cfg = parse_attack_config({"seed": 4, "baselines": {"trigger_seed": 9}})
    assert (cfg.sample_seed, cfg.baselines.trigger_seed) == (4, 9)  # the new name wins
    assert "seed" not in cfg.model_dump() and "sample_seed: 4" in cfg.to_yaml()
    with pytest.raises(ConfigError, match="generator.nope"):
        Attacker(overrides={"generator.nope": 1})
    with pytest.raises(ConfigError, match="unknown attack method 'nope'"):
        Attacker("nope")
    with pytest.raises(NotFittedError):
        Attacker("copycat").generate(np.arange(3))


@pytest.mark.parametrize("method", ["petgen", "hotflip", "trigger", "textbugger"])
def test_saved_attacker_generates_the_same_posts(world, saved_target, tmp_path, method):
    data, split, _, _ = world
    att = Attacker(method, overrides=TINY).fit(data, saved_target, split, quiet=True)
    posts = att.generate(split.test)
    assert att.generate(split.test) == posts  # deterministic given the config's seeds
    att.save(tmp_path / "att")
    back = Estimator.load(tmp_path / "att")
    assert isinstance(back, Attacker) and back.config == att.config and back.method == method
    assert back.generate(split.test) == posts
    assert back.info_ == json.loads(json.dumps(att.info_))
    assert back.users_.user_ids == att.users_.user_ids and back.vocab_ == att.vocab_
    assert back.runs_["source"] == str(saved_target.run_dir.resolve())
    res = back.evaluate(saved_target, split.test, posts)
    assert res == att.evaluate(saved_target, split.test, posts)
    if method == "trigger":
        assert back.trigger_ == att.trigger_ and len(back.trigger_) == 5
    if method == "petgen":
        for k, v in att.generator_.state_dict().items():
            assert torch.equal(v, back.generator_.state_dict()[k]), k
        other = back.set_params(sample_seed=1).generate(split.test)  # the seed is what varies
        assert other != posts and back.set_params(sample_seed=0).generate(split.test) == posts


def test_saving_needs_the_detector_run_and_loading_finds_it(world, tmp_path):
    data, split, det, target = world
    att = Attacker("copycat").fit(data, target, split)  # a detector built in memory: no run
    with pytest.raises(ArtifactError, match="not loaded from a run directory"):
        att.save(tmp_path / "a")
    run = det.save(tmp_path / "det")
    Attacker("copycat").fit(data, TargetDetector.load(run), split).save(tmp_path / "b")
    run.rename(tmp_path / "moved")
    with pytest.raises(ArtifactError, match=f"{run.resolve()}, is missing"):
        Attacker.load(tmp_path / "b")


# ---------------------------------------------------------------------- bad input
def test_white_box_on_minilm_names_the_black_box_option(world):
    data, split, _, _ = world
    det = UserDetector("minilm", overrides={"model.dim": 16})
    det.net_ = det._build(0, 0, 0)  # an untrained network is enough: the refusal comes first
    target = TargetDetector(det, "minilm-run")
    for method in ("petgen", "hotflip", "trigger"):
        with pytest.raises(ConfigError, match="black-box-surrogate"):
            Attacker(method).fit(data, target, split)


def test_empty_history_and_unknown_context_are_clear_errors(world):
    data, split, _, target = world
    one_post = TextData(user_ids=data.user_ids,
                        posts=[p[:1] if i == 3 else p for i, p in enumerate(data.posts)],
                        labels=data.labels, contexts=data.contexts, relevancy=data.relevancy,
                        source="x")
    with pytest.raises(DataError, match="fewer than 2 posts.*'u3'"):
        Attacker("copycat").fit(one_post, target, split)
    blank = TextData(user_ids=data.user_ids,
                     posts=[["", " ", p[-1]] if i == 5 else p for i, p in enumerate(data.posts)],
                     labels=data.labels, contexts=data.contexts,
                     relevancy=[[0, 0] if i == 5 else r for i, r in enumerate(data.relevancy)],
                     source="x")
    with pytest.raises(DataError, match="empty history"):
        Attacker("copycat").fit(blank, target, split)
    unknown = TextData(user_ids=data.user_ids, posts=data.posts, labels=data.labels,
                       relevancy=data.relevancy,
                       contexts=["zzz qqq" if i == 7 else c for i, c in enumerate(data.contexts)],
                       source="x")
    with pytest.raises(DataError, match="unknown context.*position 7"):
        Attacker("copycat").fit(unknown, target, split)
    wrong_flags = TextData(user_ids=data.user_ids, posts=data.posts, labels=data.labels,
                           contexts=data.contexts, relevancy=[[1] for _ in data.posts], source="x")
    with pytest.raises(DataError, match="relevancy"):
        Attacker("copycat").fit(wrong_flags, target, split)


def test_vocabulary_mismatch_between_generator_and_detector(world):
    data, split, _, target = world
    small = UserDetector("hlstm", overrides={**DET, "train.epochs": 1, "model.vocab_size": 12})
    small.fit(data, split, quiet=True)
    other = TargetDetector(small, "small-vocab")
    att = Attacker("lm", overrides=TINY).fit(data, other, split, quiet=True)
    with pytest.raises(DataError, match="vocabulary mismatch"):
        Attacker("petgen", overrides=TINY).fit(data, target, split, pretrained=att.pretrained_)
    rows = torch.zeros(2, 5, 12)
    with pytest.raises(DataError, match="vocabulary mismatch"):
        target.onehot_post_vectors(rows, torch.ones(2, 5, dtype=torch.bool))


# ---------------------------------------------------------------------- defence
def test_adversarial_augment_adds_training_copies_only(world):
    data, split, _, _ = world
    mal = [u for u in split.train if data.labels[u] == 1]
    posts = pl.DataFrame({"user_id": [f"u{u}" for u in mal],
                          "post": [f"benign words {u}" for u in mal]})
    aug, s2 = adversarial_augment(data, split, posts, share=0.5, seed=0)
    k = int(round(0.5 * len(mal)))
    assert aug.n_users == data.n_users + k and len(s2.train) == len(split.train) + k
    np.testing.assert_array_equal(s2.test, split.test)
    new = aug.user_ids.to_list()[data.n_users:]
    assert all(u.endswith("#adv") for u in new) and (aug.labels[data.n_users:] == 1).all()
    i = int(new[0][1:-4])
    assert aug.posts[data.n_users][:-1] == data.posts[i][:-1]
    assert aug.posts[data.n_users][-1] == f"benign words {i}"
    test_user = pl.DataFrame({"user_id": [f"u{split.test[0]}"], "post": ["x"]})
    with pytest.raises(DataError, match="not a training user"):
        adversarial_augment(data, split, test_user)


# ---------------------------------------------------------------------- CLI end to end
def _write_events(data: TextData, path) -> tuple:
    rows = [(u, f"page{j}", j, p) for u, ps in zip(data.user_ids.to_list(), data.posts, strict=True)
            for j, p in enumerate(ps)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "text"], orient="row"
                 ).write_csv(path / "events.csv")
    pl.DataFrame({"user_id": data.user_ids, "label": data.labels}).write_csv(path / "labels.csv")
    return path / "events.csv", path / "labels.csv"


def test_cli_attack_run_report_and_adversarial_training(cli, tmp_path):
    events, labels = _write_events(synthetic_posts(80, seed=1), tmp_path)
    det_args = ["--data", events, "--labels", labels, "--epochs", "4", "--dim", "16",
                "--batch-size", "16", "--quiet"]
    assert cli("detect", "train", *det_args, "--model", "hlstm", "--out", tmp_path / "h").code == 0
    assert cli("detect", "train", *det_args, "--model", "cnn", "--out", tmp_path / "c").code == 0
    cfg = tmp_path / "attack.yaml"
    cfg.write_text("pretrain: {epochs: 1}\ntrain: {epochs: 1}\neval_lm: {epochs: 1}\n"
                   "generator: {hidden: 16, emb_dim: 8}\nquality_embedding: tfidf\n")
    run = ["attack", "run", "--detector", tmp_path / "h", "--data", events, "--labels", labels]
    r = cli(*run, "--method", "petgen", "--black-box-surrogate", tmp_path / "c", "--config", cfg,
            "--set", "losses.recency=0.0", "--set", "generator.hidden=12", "--seed", "3",
            "--train-posts", "--out", tmp_path / "a", "--quiet")
    assert r.code == 0, r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    det_test = json.loads((tmp_path / "h" / "metrics.json").read_text())["test"]
    assert m["setting"] == "black-box" and m["attack"]["source"].endswith("c")
    for k in ("accuracy", "f1", "roc_auc"):  # clean = the detector's own test metrics
        assert m["clean"][k] == pytest.approx(det_test[k])
        assert 0 <= m["attacked"][k] <= 1
    assert set(m["quality"]) >= {"bleu2", "bleu3", "bleu4", "self_bleu3", "perplexity",
                                 "style_similarity", "context_relevance", "oov_token_share",
                                 "degenerate_share"}
    assert m["quality"]["perplexity"] > 1 and m["quality"]["similarity"].startswith("TF-IDF")
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| clean (real final posts) |" in report and "generated:" in report
    assert (tmp_path / "a" / "scores.png").stat().st_size > 1000
    assert "<table" in (tmp_path / "a" / "report.html").read_text()
    tp = pl.read_parquet(tmp_path / "a" / "train_posts.parquet")
    assert len(tp) == m["train_posts"] > 0
    assert m["task"] == "attack"  # written by Estimator.write_metrics
    att = Attacker.load(tmp_path / "a")  # the fitted attacker is saved with the report
    c = att.config  # --config, then --set, then --seed (seeds every phase)
    assert (c.losses.recency, c.generator.hidden, c.quality_embedding) == (0.0, 12, "tfidf")
    assert (c.train.seed, c.pretrain.seed, c.eval_lm.seed, c.sample_seed) == (3, 3, 3, 3)
    gens = pl.read_parquet(tmp_path / "a" / "generations.parquet")
    where = {u: i for i, u in enumerate(att.users_.user_ids)}
    assert att.generate([where[u] for u in gens["user_id"]]) == gens["generated"].to_list()
    r = cli("detect", "train", *det_args, "--model", "hlstm", "--adversarial", tmp_path / "a",
            "--out", tmp_path / "h2")
    assert r.code == 0, r.output
    assert "adversarial" in json.loads((tmp_path / "h2" / "metrics.json").read_text())["dataset"]
    bad = cli(*run, "--method", "nope", "--out", tmp_path / "b")
    assert bad.code == 2 and "unknown attack method" in bad.error
    bad = cli(*run, "--set", "generator.nope=1", "--out", tmp_path / "b")
    assert bad.code == 2 and "generator.nope" in bad.error
