"""Issue #19 (text side): fixed post counts, text baselines, PETGEN's transformer generator,
relativistic GAN term, switchable conditioning, the MALCOM-style method."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from test_attack import DET, TINY, synthetic_posts

from userseq.attack.config import parse_attack_config
from userseq.attack.estimator import Attacker, method_config
from userseq.attack.generator import PostGenerator
from userseq.attack.losses import Discriminator, rsgan_losses
from userseq.attack.target import TargetDetector
from userseq.core.errors import DataError
from userseq.core.estimator import Estimator
from userseq.detect.data import TextData, fix_post_count, load_text_data, stratified_split
from userseq.detect.estimator import UserDetector
from userseq.detect.text_baselines import fit_text_baseline
from userseq.metrics.classification import roc_auc


def small() -> TextData:
    return TextData(user_ids=pl.Series("user_id", ["a", "b", "c", "d"]),
                    posts=[["a1", "a2"], ["b1", "b2", "b3", "b4", "b5"], ["c1", "c2", "c3"],
                           ["d1", "d2", "d3", "d4"]],
                    labels=np.array([1, 0, 1, 0]), contexts=["ca", "cb", "cc", "cd"],
                    source="small", relevancy=[[1], [0, 0, 1, 1], [0, 1], [1, 0, 0]])


# ---------------------------------------------------------------------- fixed post counts
def test_fix_post_count_keeps_the_last_n_and_counts_drops_per_class():
    out = fix_post_count(small(), 3)
    assert out.user_ids.to_list() == ["b", "c", "d"]
    assert out.posts == [["b3", "b4", "b5"], ["c1", "c2", "c3"], ["d2", "d3", "d4"]]
    assert out.relevancy == [[1, 1], [0, 1], [0, 0]]  # flags of the kept history posts
    assert out.contexts == ["cb", "cc", "cd"] and out.labels.tolist() == [0, 1, 0]
    assert out.post_count == {"fixed_posts": 3, "keep": "last", "users": 3,
                              "dropped": {"benign": 0, "malicious": 1, "all": 1}}
    assert fix_post_count(out, 3) is out  # already fixed the same way
    first = fix_post_count(small(), 4, keep="first")
    assert first.posts == [["b1", "b2", "b3", "b4"], ["d1", "d2", "d3", "d4"]]
    assert first.contexts == ["", ""] and first.relevancy == [[0, 0, 0], [0, 0, 0]]
    assert fix_post_count(small(), 0).posts == small().posts
    with pytest.raises(DataError, match="at least 2"):
        fix_post_count(small(), 1)
    with pytest.raises(DataError, match="already fixed to 3"):
        fix_post_count(out, 2)
    with pytest.raises(DataError, match="no user has 9 posts"):
        fix_post_count(small(), 9)


def test_petgen_wiki_default_is_the_last_8_posts(petgen_dir):
    data = load_text_data("petgen-wiki")
    assert data.post_count["dropped"] == {"benign": 41, "malicious": 70, "all": 111}
    assert {len(p) for p in data.posts} == {8} and data.n_users == 683
    raw = load_text_data("petgen-wiki", fixed_posts=0)
    assert raw.n_users == 794 and raw.post_count is None


@pytest.fixture
def petgen_dir():
    from userseq.data.datasets import dataset_path

    if dataset_path("petgen-wiki") is None:
        pytest.skip("petgen-wiki is not available locally (set $USERSEQ_DATA)")


# ---------------------------------------------------------------------- text baselines
def test_length_baseline_is_chance_once_post_counts_are_fixed():
    data = synthetic_posts(120)
    fixed = fix_post_count(data, 3)
    split = stratified_split(fixed.labels, 0.2, 0.3, 0)
    score, info = fit_text_baseline("length", fixed, split.train, split.valid)
    assert roc_auc(fixed.labels[split.test], score(split.test)) == 0.5
    score, info = fit_text_baseline("tfidf-lr", fixed, split.train, split.valid)
    assert roc_auc(fixed.labels[split.test], score(split.test)) > 0.9 and info["C"] > 0
    with pytest.raises(Exception, match="unknown text baseline 'nope'"):
        fit_text_baseline("nope", fixed, split.train, split.valid)


# ---------------------------------------------------------------------- generator pieces
def test_rsgan_losses_hand_values_and_discriminator_gradient():
    g, d = rsgan_losses(torch.zeros(3), torch.zeros(3))
    assert math.isclose(float(g), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(d), math.log(2), rel_tol=1e-6)
    g, d = rsgan_losses(torch.tensor([2.0]), torch.tensor([0.0]))  # real looks more real
    assert math.isclose(float(g), math.log1p(math.exp(2)), rel_tol=1e-6)
    assert math.isclose(float(d), math.log1p(math.exp(-2)), rel_tol=1e-6)
    disc = Discriminator(12, emb_dim=8, channels=4)
    rows = torch.softmax(torch.randn(2, 6, 12), -1).requires_grad_(True)
    disc(rows).sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0


def test_transformer_generator_and_switchable_conditioning():
    torch.manual_seed(0)
    gen = PostGenerator(20, 8, 16, max_tokens=6, min_tokens=2, dropout=0.0,
                        decoder="transformer", layers=1, heads=2).eval()
    hist = torch.randint(2, 20, (3, 4, 5))
    n = torch.tensor([4, 2, 3])
    rel, ctx, has = torch.zeros(3, 4), torch.randint(2, 20, (3, 5)), torch.ones(3, dtype=bool)
    u = gen.condition(hist, n, rel, ctx, has)
    s, c = gen.nll(torch.tensor([[3, 4, 5, 0, 0, 0]]), u[:1])
    assert int(c) == 4 and float(s.detach()) > 0  # 3 tokens + the end of post
    rows, ids, mask = gen.sample(u, hard=True, generator=torch.Generator().manual_seed(0))
    assert rows.shape[0] == 3 and rows.shape[2] == 20 and (mask.sum(1) >= 2).all()
    assert torch.equal(rows.argmax(-1)[mask], ids[mask])
    # teacher forcing and step-by-step decoding agree (causal mask)
    full = gen.states(ids, u)
    assert torch.allclose(gen.out(full[:, 0]), gen.out(gen._transform(gen.bos.expand(3, 1, -1),
                                                                       u)[:, 0]), atol=1e-5)
    ctx_only = PostGenerator(20, 8, 16, condition="context-only").eval()
    a = ctx_only.condition(hist, n, rel, ctx, has)
    b = ctx_only.condition(torch.randint(2, 20, (3, 4, 5)), n, rel, ctx, has)
    assert torch.allclose(a, b)  # MALCOM: the history is not read
    mean = PostGenerator(20, 8, 16, condition="mean-history").eval()
    h = mean.history_states(hist)
    assert torch.allclose(mean.condition(hist, n, rel, ctx, has)[1], h[1, :2].mean(0), atol=1e-6)


# ---------------------------------------------------------------------- the attack methods
@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    data = synthetic_posts()
    split = stratified_split(data.labels, 0.15, 0.25, 0)
    torch.set_num_threads(1)
    det = UserDetector("hlstm", overrides=DET).fit(data, split, quiet=True)
    run = det.save(tmp_path_factory.mktemp("det") / "hlstm")
    return data, split, TargetDetector.load(run)


def test_published_petgen_transformer_gan_saves_and_records_the_nll_curve(world2, tmp_path):
    data, split, target = world2
    over = {**TINY, "generator.decoder": "transformer", "generator.layers": 1,
            "losses.gan": 1.0, "tau_schedule": "exp", "tau_max": 10.0, "train.epochs": 3}
    att = Attacker("petgen", overrides=over).fit(data, target, split, quiet=True)
    pre = att.info_["pretrain"]
    assert len(pre["valid_nll_curve"]) == pre["epochs"] == 3
    assert all(v > 0 for v in pre["valid_nll_curve"])
    assert "gan" in att.info_["train"]["valid"] and att.generator_.decoder_kind == "transformer"
    posts = att.generate(split.test)
    att.save(tmp_path / "att")
    back = Estimator.load(tmp_path / "att")
    assert back.generator_.decoder_kind == "transformer" and back.generate(split.test) == posts


def test_malcom_conditions_on_the_context_only(world2):
    data, split, target = world2
    cfg = method_config(parse_attack_config({"method": "malcom"}))
    assert cfg.generator.condition == "context-only"
    assert (cfg.losses.recency, cfg.losses.relevancy, cfg.losses.gan) == (0.0, 0.0, 1.0)
    att = Attacker("malcom", overrides={**TINY, "train.epochs": 2}).fit(data, target, split,
                                                                         quiet=True)
    assert att.generator_.condition_kind == "context-only"
    assert "recency" not in att.info_["train"]["valid"] and "gan" in att.info_["train"]["valid"]
    res = att.evaluate(target, split.test, att.generate(split.test))
    assert res["malicious"] == int(data.labels[split.test].sum())


# ---------------------------------------------------------------------- honest comparison, defence
def test_wilson_interval_hand_values():
    from userseq.metrics.classification import wilson_interval

    lo, hi = wilson_interval(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and math.isclose(hi, 0.1611, abs_tol=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_efficacy_reports_the_denominator_and_ensemble_is_query_only(world2):
    from userseq.attack.baselines import Copycat, copycat_pool
    from userseq.attack.data import attack_users
    from userseq.attack.estimator import efficacy
    from userseq.attack.target import TargetEnsemble
    from userseq.core.errors import ConfigError

    data, split, target = world2
    users = attack_users(data, target.max_posts)
    posts = Copycat(users, copycat_pool(users, split.train)).posts(split.test)
    r = efficacy(target, users, split.test, posts)
    assert r["malicious_flipped"] <= r["malicious_flagged_clean"] <= r["malicious"]
    if r["malicious_flagged_clean"]:
        assert r["success_rate"] == r["malicious_flipped"] / r["malicious_flagged_clean"]
        lo, hi = r["success_ci95"]
        assert lo <= r["success_rate"] <= hi
    ens = TargetEnsemble([target, target])
    np.testing.assert_allclose(ens.score(users, split.test, posts),
                               target.score(users, split.test, posts), rtol=1e-6)
    thr = ens.calibrate(users, split.valid)
    assert 0 <= thr <= 1 and ens.threshold == thr and not ens.white_box
    with pytest.raises(ConfigError, match="no single differentiable path"):
        ens.require_white_box("petgen")
    with pytest.raises(ConfigError, match="at least 2 detectors"):
        TargetEnsemble([target])
    with pytest.raises(ConfigError, match="no single differentiable path"):
        Attacker("hotflip", overrides=TINY).fit(data, ens, split, quiet=True)


def test_surrogate_with_another_post_count_is_a_clear_error(world2, tmp_path):
    from userseq.attack.estimator import _load_detectors

    data, split, target = world2
    det = UserDetector("hlstm", overrides={**DET, "fixed_posts": 3}).fit(data, split, quiet=True)
    run = det.save(tmp_path / "other")
    with pytest.raises(DataError, match=r"read 3 \(last\) posts per user but the target"):
        _load_detectors(target.run_dir, run, data, target)


def test_cli_fixed_posts_reach_the_attack(cli, tmp_path):
    import json

    from test_attack import _write_events

    data = synthetic_posts(80, seed=1)
    events, labels = _write_events(data, tmp_path)
    r = cli("detect", "train", "--data", events, "--labels", labels, "--model", "bow-attn",
            "--fixed-posts", "4", "--epochs", "3", "--dim", "16", "--quiet", "--out",
            tmp_path / "d")
    assert r.code == 0, r.output
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    short = np.array([len(p) < 4 for p in data.posts])
    assert m["post_count"]["dropped"] == {"benign": int((short & (data.labels == 0)).sum()),
                                          "malicious": int((short & (data.labels == 1)).sum()),
                                          "all": int(short.sum())}
    assert m["split"]["train"] + m["split"]["valid"] + m["split"]["test"] == int((~short).sum())
    cfg = tmp_path / "attack.yaml"
    cfg.write_text("pretrain: {epochs: 1}\ntrain: {epochs: 1}\neval_lm: {epochs: 1}\n"
                   "generator: {hidden: 16, emb_dim: 8, decoder: transformer, layers: 1}\n"
                   "quality_embedding: tfidf\n")
    r = cli("attack", "run", "--detector", tmp_path / "d", "--data", events, "--labels", labels,
            "--method", "malcom", "--config", cfg, "--out", tmp_path / "a", "--quiet")
    assert r.code == 0, r.output
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert a["method"] == "malcom" and a["malicious_flagged_clean"] <= a["malicious"]
    assert len(a["success_ci95"]) == 2
    att = Attacker.load(tmp_path / "a")
    assert {len(h) for h in att.users_.history} == {3}  # 4 posts: 3 history + the attacked one
