"""Losses: the fused full-softmax CE matches PyTorch's; sampled losses behave as defined; every
loss is chosen by name from the registry and called the same way."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from userseq.core.errors import ConfigError
from userseq.losses import (
    LOSSES,
    LossConfig,
    LossContext,
    MatrixItems,
    NegativeSampler,
    NextItemLoss,
    full_ce,
    gbce,
    sampled_softmax,
)


def test_fused_full_ce_matches_reference_value_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(300, 16, requires_grad=True)
    W = torch.randn(41, 16, requires_grad=True)
    t = torch.randint(1, 41, (300,))
    loss = full_ce(h, t, W, chunk=64)
    loss.backward()
    gh, gW = h.grad.clone(), W.grad.clone()
    h.grad = W.grad = None
    logits = h @ W.T
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)
    ref = F.cross_entropy(logits, t)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gW, W.grad, rtol=1e-4, atol=1e-6)
    assert gW[0].abs().max() == 0  # padding row gets no gradient


def test_bf16_logits_stay_close_to_fp32():
    torch.manual_seed(0)
    h, W = torch.randn(200, 16) * 0.3, torch.randn(41, 16) * 0.3
    t = torch.randint(1, 41, (200,))
    a = full_ce(h, t, W, dtype=torch.float32)
    b = full_ce(h, t, W, dtype=torch.bfloat16)
    assert b.item() == pytest.approx(a.item(), rel=1e-2)


def test_bce_equals_manual_binary_cross_entropy():
    torch.manual_seed(1)
    h, W = torch.randn(5, 4), torch.randn(10, 4)
    t = torch.tensor([1, 2, 3, 4, 5])
    neg = torch.tensor([[6], [7], [8], [9], [1]])
    pos_s = (h * W[t]).sum(-1)
    neg_s = (h * W[neg[:, 0]]).sum(-1)
    manual = (F.softplus(-pos_s) + F.softplus(neg_s)) / 2
    assert gbce(h, t, W, neg, beta=1.0).item() == pytest.approx(manual.mean().item(), rel=1e-6)


def test_gbce_beta_matches_paper_formula():
    # beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = k / (|I| - 1); t = 0 -> beta = 1 (plain BCE)
    loss = NextItemLoss(LossConfig(name="gbce", negatives=4, gbce_t=0.0), n_items=9)
    torch.manual_seed(0)
    h, W, t = torch.randn(6, 4), torch.randn(10, 4), torch.randint(1, 10, (6,))
    torch.manual_seed(5)
    a = loss(h, t, W)
    torch.manual_seed(5)
    neg = loss.ctx.sampler("uniform").sample((6, 4), h.device)
    assert a.item() == pytest.approx(gbce(h, t, W, neg, beta=1.0).item(), rel=1e-6)
    # transformed positive logit: gamma(s) = log(1 / (sigmoid(s)^-beta - 1));
    # beta < 1 lowers the positive's loss
    s = torch.tensor([0.3])
    beta = 0.5
    gamma = torch.log(1 / (torch.sigmoid(s) ** -beta - 1))
    assert F.softplus(-gamma).item() < F.softplus(-s).item()
    calibrated = NextItemLoss(LossConfig(name="gbce", negatives=4, gbce_t=1.0), n_items=9)
    torch.manual_seed(5)
    assert calibrated(h, t, W).item() != pytest.approx(a.item())  # t = 1 -> beta = alpha = 0.5


def test_sampled_softmax_logq_and_accidental_hits():
    h = torch.zeros(2, 3)
    W = torch.zeros(6, 3)
    t = torch.tensor([1, 2])
    neg = torch.tensor([1, 3, 4])  # item 1 is an accidental hit for row 0
    uniform = NegativeSampler(5)
    # zero scores, uniform logQ cancels: row 0 has 2 valid negatives -> log(3); row 1: 3 -> log(4)
    loss = sampled_softmax(h, t, W, neg, uniform)
    assert loss.item() == pytest.approx((math.log(3) + math.log(4)) / 2, rel=1e-6)
    pop = NegativeSampler(5, "popularity", counts=np.array([0, 99, 0, 0, 0, 0]))
    assert pop.log_prob(torch.tensor([1])).item() > pop.log_prob(torch.tensor([2])).item()
    draws = pop.sample((2000,), torch.device("cpu"))
    assert (draws == 1).float().mean() > 0.8 and draws.min() >= 1 and draws.max() <= 5


# --------------------------------------------------------------------------- the registry


def test_builtin_losses_are_registered_and_the_name_is_validated():
    assert {"ce", "sampled_softmax", "bce", "gbce"} <= set(LOSSES.names())
    with pytest.raises(ConfigError, match="unknown loss 'cee'. Did you mean 'ce'.*sampled_softmax"):
        from userseq.nextitem.config import RunConfig

        RunConfig.parse({"loss": {"name": "cee"}}, "c.yaml")


class _RowsOnly:
    """An item representation that only serves rows (like hashed and text tables)."""

    def __init__(self, W):
        self.W = W

    def output_matrix(self):
        return self.W

    def output_rows(self, ids):
        return self.W[ids]


@pytest.mark.parametrize("name", ["ce", "sampled_softmax", "bce", "gbce"])
def test_every_loss_takes_a_matrix_or_an_item_representation(name):
    torch.manual_seed(0)
    h, W, t = torch.randn(8, 4), torch.randn(13, 4), torch.randint(1, 13, (8,))
    loss = NextItemLoss(LossConfig(name=name, negatives=5), n_items=12)
    torch.manual_seed(3)
    a = loss(h, t, W)
    torch.manual_seed(3)
    b = loss(h, t, _RowsOnly(W))
    assert a.ndim == 0 and torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-6)
    # the registered function is called with (h, targets, items, ctx)
    torch.manual_seed(3)
    c = LOSSES.get(name).obj(h, t, MatrixItems(W), LossContext(loss.cfg, 12))
    assert c.item() == pytest.approx(a.item(), rel=1e-6)


def test_sampled_softmax_draws_from_the_configured_sampler():
    counts = np.array([0, 1000, 0, 0, 0, 0])
    loss = NextItemLoss(LossConfig(name="sampled_softmax", sampler="popularity"), 5, counts)
    assert loss.ctx.sampler().kind == "popularity"
    assert loss.ctx.sampler("uniform").kind == "uniform"  # gbce/bce ask for uniform negatives
    assert loss.ctx.sampler() is loss.ctx.sampler()  # one sampler per kind
