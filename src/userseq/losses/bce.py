"""Binary cross-entropy losses with sampled negatives.

* `bce`: one uniform negative per position, binary cross-entropy (original SASRec);
* `gbce`: K uniform negatives per position, generalized BCE with calibration t (gSASRec, Petrov &
  Macdonald 2023).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from userseq.losses.registry import LossContext, Rows, register_loss


@register_loss("bce")
def bce_loss(h: torch.Tensor, targets: torch.Tensor, items: Any, ctx: LossContext) -> torch.Tensor:
    """Binary cross-entropy with one uniform negative per position (original SASRec)."""
    neg = ctx.sampler("uniform").sample((h.shape[0], 1), h.device)
    return gbce(h, targets, Rows(items), neg, beta=1.0)


@register_loss("gbce")
def gbce_loss(h: torch.Tensor, targets: torch.Tensor, items: Any, ctx: LossContext) -> torch.Tensor:
    """gSASRec's generalized BCE: `loss.negatives` uniform negatives per position, calibration
    `loss.gbce_t` (beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = k / (n_items - 1))."""
    k = ctx.config.negatives
    neg = ctx.sampler("uniform").sample((h.shape[0], k), h.device)
    alpha = k / (ctx.n_items - 1)
    t = ctx.config.gbce_t
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    return gbce(h, targets, Rows(items), neg, beta=beta)


def gbce(h: torch.Tensor, targets: torch.Tensor, W: torch.Tensor, neg: torch.Tensor,
         beta: float) -> torch.Tensor:
    """BCE with per-position negatives; beta < 1 is gSASRec's generalized BCE, beta = 1 plain
    BCE."""
    pos = (h * W[targets]).sum(-1).float()  # (N,)
    negs = torch.einsum("nd,nkd->nk", h, W[neg]).float()  # (N, K)
    if abs(beta - 1.0) > 1e-9:
        # gamma(s) = log(1 / (sigmoid(s)^-beta - 1)), computed in float64 for stability
        p = torch.sigmoid(pos.double()).clamp(min=1e-10, max=1 - 1e-10)
        pos = torch.log(1.0 / (p.pow(-beta) - 1.0).clamp(min=1e-10)).float()
    neg_mask = (neg != targets.unsqueeze(-1)).float()
    loss_pos = F.softplus(-pos)
    loss_neg = (F.softplus(negs) * neg_mask).sum(-1)
    return ((loss_pos + loss_neg) / (1 + neg.shape[1])).mean()
