"""State-space encoders: the S4D kernel by hand, FFT convolution == recurrence (with left
padding), causality, Hydra's bidirectionality, the hybrid stack, and training on a learnable log."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from userseq import EventLog, NextItemRecommender
from userseq.core.errors import ConfigError
from userseq.encoders import build_encoder, encoder_config
from userseq.encoders.blocks import TransformerBlock
from userseq.encoders.ssm import DiagonalSSM, SSMBlock, causal_conv


def _perturb(enc, seed=1):
    """Move every parameter off its initial value (a trained-like model, larger dt)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return enc


def test_kernel_matches_the_closed_form_by_hand():
    ssm = DiagonalSSM(dim=1, state=1)
    with torch.no_grad():
        ssm.log_dt.fill_(math.log(0.5))
        ssm.log_neg_re.fill_(math.log(0.5))
        ssm.im.fill_(0.0)  # A = -0.5 (real): Ā = exp(-0.25), B̄ = (Ā - 1) / A
        ssm.C.copy_(torch.tensor([[[1.0, 0.0]]]))
    a = math.exp(-0.25)
    b = (a - 1) / -0.5
    expected = [2 * b * a**k for k in range(4)]
    torch.testing.assert_close(ssm.kernel(4)[0], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    u = torch.tensor([[[1.0, 2.0, 0.0, -1.0]]])
    y = causal_conv(u, ssm.kernel(4))[0, 0]
    by_hand = [sum(expected[t - s] * u[0, 0, s].item() for s in range(t + 1)) for t in range(4)]
    torch.testing.assert_close(y, torch.tensor(by_hand), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,settings", [("ssm", {}), ("gru4rec", {}),
                                           ("ssm", {"state_dim": 4, "layers": 3})])
def test_parallel_and_recurrent_modes_agree_with_left_padding(name, settings):
    torch.manual_seed(0)
    enc = build_encoder(encoder_config(name, dim=16, max_len=300, **settings), n_items=50)
    enc = _perturb(enc).eval()
    x = torch.randint(1, 51, (4, 300))
    x[0, :120] = 0
    x[1, :299] = 0
    x[2, :7] = 0
    with torch.no_grad():
        h = enc(x, x > 0)
        state, steps = enc.init_state(4), []
        for t in range(x.shape[1]):
            real = x[:, t] > 0
            new, ht = enc.step(state, x[:, t].clamp(min=1))
            state = {k: torch.where(real.view(-1, *[1] * (v.dim() - 1)), new[k], v)
                     for k, v in state.items()}
            steps.append(ht)
    rec = torch.stack(steps, 1)
    assert enc.recurrent
    for row in range(4):
        real = x[row] > 0
        assert (rec[row][real] - h[row][real]).abs().max() <= 1e-4
    assert (rec[:, -1] - enc.last(x, x > 0)).abs().max() <= 1e-4


def test_ssm_is_causal_and_padding_invariant_at_every_position():
    torch.manual_seed(0)
    enc = _perturb(build_encoder(encoder_config("ssm", dim=16, max_len=64), n_items=30)).eval()
    x = torch.randint(1, 31, (2, 20))
    y = x.clone()
    y[:, -1] = y[:, -1] % 30 + 1
    with torch.no_grad():
        torch.testing.assert_close(enc(x, x > 0)[:, :-1], enc(y, y > 0)[:, :-1])
        wide = torch.cat([torch.zeros(2, 30, dtype=torch.long), x], 1)
        torch.testing.assert_close(enc(wide, wide > 0)[:, 30:], enc(x, x > 0), atol=1e-5,
                                   rtol=1e-5)


def test_hydra_is_bidirectional_masked_and_not_recurrent():
    torch.manual_seed(0)
    enc = _perturb(build_encoder(encoder_config("hydra", dim=16, max_len=20), n_items=30)).eval()
    assert not enc.causal and not enc.recurrent and enc.mask_token() == 31
    assert enc.items.output_matrix().shape == (31, 16)
    x = torch.randint(1, 31, (2, 12))
    x[0, :4] = 0
    y = x.clone()
    y[:, -1] = y[:, -1] % 30 + 1
    with torch.no_grad():
        assert not torch.allclose(enc(x, x > 0)[:, 5], enc(y, y > 0)[:, 5])
        first = x.clone()
        first[1, 0] = first[1, 0] % 30 + 1  # an earlier event changes later outputs too
        assert not torch.allclose(enc(x, x > 0)[1, -1], enc(first, first > 0)[1, -1])
    with pytest.raises(ValueError, match="bidirectional.*no recurrent state"):
        enc.init_state(1)


def test_hybrid_stack_interleaves_ssm_and_attention_blocks():
    cfg = encoder_config("ssm", dim=16, max_len=20, blocks=["ssm", "attn", "ssm"], heads=2)
    enc = build_encoder(cfg, n_items=30).eval()
    assert [type(b) for b in enc.blocks] == [SSMBlock, TransformerBlock, SSMBlock]
    assert not enc.recurrent
    x = torch.randint(1, 31, (2, 10))
    y = x.clone()
    y[:, -1] = y[:, -1] % 30 + 1
    torch.testing.assert_close(enc(x, x > 0)[:, :-1], enc(y, y > 0)[:, :-1])  # still causal
    with pytest.raises(ValueError, match=r"hybrid stack \['ssm', 'attn', 'ssm'\]"):
        enc.step(enc.init_state(1), x[:, 0])
    with pytest.raises(ConfigError, match="blocks"):
        encoder_config("ssm", blocks=["ssm", "mamba"])
    with pytest.raises(ConfigError, match="blocks"):
        encoder_config("ssm", blocks=[])
    with pytest.raises(ConfigError, match=r"dt_max \(0.001\) must be >= dt_min \(0.01\)"):
        encoder_config("ssm", dt_min=0.01, dt_max=0.001)


def _cyclic_log(n_users=100, n_items=30, length=12):
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{(s + t) % n_items}", t)
            for u, s in enumerate(rng.integers(0, n_items, n_users)) for t in range(length)]
    return EventLog.from_frame(pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"],
                                            orient="row"))


@pytest.mark.parametrize("name,extra", [
    ("ssm", {}), ("hydra", {"model.mask_prob": 0.3}),
    ("ssm", {"model.blocks": ["ssm", "attn"], "model.heads": 2})])
def test_state_space_encoders_learn_the_cyclic_walk(name, extra, tmp_path):
    log = _cyclic_log()
    rec = NextItemRecommender(name, overrides={
        "model.dim": 32, "model.max_len": 12, "train.epochs": 15, "train.lr": 5e-3,
        "train.batch_size": 32, "eval.ks": [10], **extra}).fit(log, quiet=True)
    from userseq.data.split import leave_one_out

    ndcg = rec.evaluate(leave_one_out(log).test)["ndcg@10"]
    assert ndcg > 0.5, ndcg  # popularity is ~0.1 on this log
    rec.save(tmp_path / "run")
    again = NextItemRecommender.load(tmp_path / "run")
    assert again.config.model.name == name
    np.testing.assert_array_equal(again.user_embeddings(), rec.user_embeddings())


# --------------------------------------------------------------------------- set2set


def test_set2set_encoder_is_permutation_invariant_and_causal():
    torch.manual_seed(0)
    enc = _perturb(build_encoder(encoder_config("set2set", dim=16, max_len=20), n_items=40)).eval()
    x = torch.randint(1, 41, (3, 12))
    x[0, :5] = 0
    x[2, :11] = 0
    with torch.no_grad():
        h = enc(x, x > 0)
        torch.testing.assert_close(enc.last(x, x > 0), h[:, -1], atol=1e-5, rtol=1e-5)
        for seed in range(3):  # shuffle the real items of every row: same user vector
            g = torch.Generator().manual_seed(seed)
            y = x.clone()
            for r in range(3):
                real = torch.nonzero(x[r] > 0).squeeze(1)
                y[r, real] = x[r, real[torch.randperm(len(real), generator=g)]]
            assert not torch.equal(x, y) or seed
            torch.testing.assert_close(enc.last(y, y > 0), h[:, -1], atol=1e-5, rtol=1e-5)
        z = x.clone()
        z[:, -1] = z[:, -1] % 40 + 1
        torch.testing.assert_close(enc(z, z > 0)[:, :-1], h[:, :-1])  # causal prefix sets
        wide = torch.cat([torch.zeros(3, 6, dtype=torch.long), x], 1)
        torch.testing.assert_close(enc(wide, wide > 0)[:, 6:], h, atol=1e-5, rtol=1e-5)


def test_set2set_readout_wraps_any_causal_encoder(tmp_path):
    cfg = encoder_config("gru4rec", dim=16, max_len=12, readout="set2set", readout_steps=2)
    enc = build_encoder(cfg, n_items=30).eval()
    assert type(enc).__name__ == "Set2SetReadout" and enc.items.output_matrix().shape == (31, 16)
    keys = set(enc.state_dict())
    assert "items.table.weight" in keys and not any(k.startswith("inner.items") for k in keys)
    x = torch.randint(1, 31, (2, 8))
    x[0, :3] = 0
    with torch.no_grad():
        torch.testing.assert_close(enc.last(x, x > 0), enc(x, x > 0)[:, -1], atol=1e-5,
                                   rtol=1e-5)
    with pytest.raises(ConfigError, match="set2set needs a causal encoder"):
        build_encoder(encoder_config("bert4rec", dim=16, readout="set2set"), n_items=30)
    log = _cyclic_log(n_users=40, length=8)
    rec = NextItemRecommender("sasrec", overrides={
        "model.dim": 16, "model.max_len": 8, "model.readout": "set2set", "train.epochs": 1,
        "eval.ks": [10]}).fit(log, quiet=True)
    rec.save(tmp_path / "r")
    np.testing.assert_array_equal(NextItemRecommender.load(tmp_path / "r").user_embeddings(),
                                  rec.user_embeddings())


def test_cli_trains_hybrid_and_hydra(cli, synthetic_csv, tiny_config, tmp_path):
    r = cli("train", "--data", synthetic_csv, "--model", "ssm", "--config", tiny_config,
            "--epochs", "1", "--set", "model.blocks=[ssm, attn]", "--out", tmp_path / "hy",
            "--quiet")
    assert r.code == 0, r.output
    assert cli("config", "show", tmp_path / "hy").stdout.count("attn") >= 1
    r = cli("train", "--data", synthetic_csv, "--model", "hydra", "--config", tiny_config,
            "--epochs", "1", "--out", tmp_path / "hydra", "--quiet")
    assert r.code == 0, r.output
    rec = cli("recommend", tmp_path / "hydra", "--history", "i1,i2,i3", "-k", "3", "--json")
    assert rec.code == 0 and rec.stdout.count("item_id") == 3
    bad = cli("train", "--data", synthetic_csv, "--model", "ssm", "--config", tiny_config,
              "--set", "model.blocks=[ssm, lstm]", "--out", tmp_path / "bad")
    assert bad.code == 2 and "model.blocks" in bad.error
