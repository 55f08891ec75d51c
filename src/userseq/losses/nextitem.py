"""Next-item losses over the catalogue.

All take hidden states `h` (N, D) at the positions that have a target, the targets (N,) as item
indices 1..n_items, and the item output matrix `W` (n_items + 1, D), row 0 = padding. `NextItemLoss`
also takes an item representation (anything with `output_matrix()` / `output_rows(ids)`): the
sampled losses then compute only the rows they need (hashed and text tables never build the matrix).

* `ce`: full softmax cross-entropy over every item (SASRec+ / BERT4Rec objective).
* `sampled_softmax`: softmax over the positive and K shared sampled negatives, with logQ correction
  (Yi et al. 2019) so the estimate is unbiased for non-uniform samplers; accidental hits masked.
* `bce`: one uniform negative per position, binary cross-entropy (original SASRec).
* `gbce`: K negatives per position, generalized BCE with calibration t (gSASRec, Petrov & Macdonald 2023).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from userseq.losses.config import LossConfig


class NegativeSampler:
    """Uniform or popularity-proportional sampling of item indices 1..n_items."""

    def __init__(self, n_items: int, kind: str = "uniform", counts: np.ndarray | None = None) -> None:
        self.n_items, self.kind = n_items, kind
        if kind == "popularity":
            if counts is None:
                raise ValueError("popularity sampler needs item counts")
            p = counts[1 : n_items + 1].astype(np.float64) + 1.0  # add-one keeps every item reachable
            self.probs = torch.tensor(p / p.sum(), dtype=torch.float32)
            self.log_q = torch.log(self.probs)
        else:
            self.probs = None
            self.log_q = None

    def sample(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.probs is None:
            return torch.randint(1, self.n_items + 1, shape, device=device)
        n = math.prod(shape)
        idx = torch.multinomial(self.probs, n, replacement=True) + 1
        return idx.view(shape).to(device)

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        if self.log_q is None:
            return torch.full(items.shape, -math.log(self.n_items), device=items.device)
        return self.log_q.to(items.device)[items - 1]


class NextItemLoss:
    def __init__(self, cfg: LossConfig, n_items: int, item_counts: np.ndarray | None = None) -> None:
        self.cfg, self.n_items = cfg, n_items
        kind = cfg.sampler if cfg.name == "sampled_softmax" else "uniform"
        self.sampler = NegativeSampler(n_items, kind, item_counts)

    def __call__(self, h: torch.Tensor, targets: torch.Tensor, W) -> torch.Tensor:
        name = self.cfg.name
        if not torch.is_tensor(W):
            W = W.output_matrix() if name == "ce" else _Rows(W)
        if name == "ce":
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(self.cfg.logits_dtype)
            return full_ce(h, targets, W, dtype=dtype)
        if name == "sampled_softmax":
            neg = self.sampler.sample((self.cfg.negatives,), h.device)
            return sampled_softmax(h, targets, W, neg, self.sampler if self.cfg.logq else None)
        if name == "bce":
            neg = self.sampler.sample((h.shape[0], 1), h.device)
            return gbce(h, targets, W, neg, beta=1.0)
        if name == "gbce":
            k = self.cfg.negatives
            neg = self.sampler.sample((h.shape[0], k), h.device)
            alpha = k / (self.n_items - 1)
            t = self.cfg.gbce_t
            beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
            return gbce(h, targets, W, neg, beta=beta)
        raise ValueError(name)


class _Rows:
    """`W[idx]` through an item representation's `output_rows`."""

    def __init__(self, items) -> None:
        self.items = items

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.items.output_rows(idx)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean CE of softmax(h @ W.T) against targets, with gradients computed in the forward pass,
    chunk by chunk: never stores the (N, |I|) logits for autograd and makes one pass over them.
    Column 0 (padding) is excluded from the softmax. The loss is accumulated in float64."""

    @staticmethod
    def forward(ctx, h, W, targets, chunk: int, compute_dtype):
        n = h.shape[0]
        fp32 = compute_dtype == torch.float32
        hc, Wc = h.detach().to(compute_dtype), W.detach().to(compute_dtype)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
        grad_W = torch.zeros(W.shape, dtype=torch.float32, device=W.device)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        buf = torch.empty((min(chunk, n), W.shape[0]), dtype=torch.float32, device=h.device) if fp32 else None
        for i in range(0, n, chunk):
            hi, t = hc[i : i + chunk], targets[i : i + chunk]
            m = len(t)
            # one logits buffer reused across chunks; softmax, loss and gradient in place (5 passes)
            logits = torch.mm(hi, Wc.T, out=buf[:m]) if fp32 else (hi @ Wc.T).float()
            logits[:, 0] = float("-inf")
            rows = torch.arange(m, device=h.device)
            target_logit = logits[rows, t]
            top = logits.amax(1, keepdim=True)
            p = logits.sub_(top).exp_()
            z = p.sum(1, keepdim=True)
            total += (top.squeeze(1) + z.log().squeeze(1) - target_logit).sum(dtype=torch.float64)
            p.mul_(z.reciprocal_().div_(n))  # softmax / n
            p[rows, t] -= 1.0 / n  # d(mean CE)/d(logits)
            if fp32:
                torch.mm(p, Wc, out=grad_h[i : i + m])
                grad_W.addmm_(p.T, hi)
            else:
                p = p.to(compute_dtype)
                grad_h[i : i + m] = p @ Wc
                grad_W += p.T @ hi
        ctx.save_for_backward(grad_h.to(h.dtype), grad_W.to(W.dtype))
        return (total / n).to(torch.float32)

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * g, grad_W * g, None, None, None


def full_ce(h: torch.Tensor, targets: torch.Tensor, W: torch.Tensor, chunk: int = 8192,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Full softmax cross-entropy over items 1..n_items (mean over rows). `dtype` is the matmul
    precision (default: the autocast dtype when autocast is on, else fp32)."""
    if dtype is None:
        on = torch.is_autocast_enabled(h.device.type)
        dtype = torch.get_autocast_dtype(h.device.type) if on else torch.float32
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h, W, targets, chunk, dtype)


def sampled_softmax(
    h: torch.Tensor, targets: torch.Tensor, W: torch.Tensor, neg: torch.Tensor, sampler: NegativeSampler | None
) -> torch.Tensor:
    pos = (h * W[targets]).sum(-1, keepdim=True)  # (N, 1)
    negs = h @ W[neg].T  # (N, K)
    if sampler is not None:
        pos = pos - sampler.log_prob(targets).unsqueeze(-1)
        negs = negs - sampler.log_prob(neg).unsqueeze(0)
    negs = negs.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(-1), float("-inf"))
    logits = torch.cat([pos, negs], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=h.device))


def gbce(h: torch.Tensor, targets: torch.Tensor, W: torch.Tensor, neg: torch.Tensor, beta: float) -> torch.Tensor:
    """BCE with per-position negatives; beta < 1 is gSASRec's generalized BCE, beta = 1 plain BCE."""
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
