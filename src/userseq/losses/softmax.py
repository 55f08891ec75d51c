"""Softmax losses over the catalogue.

* `ce`: full softmax cross-entropy over every item (SASRec+ / BERT4Rec objective), fused so the
  (N, |I|) logits are never stored for autograd;
* `sampled_softmax`: softmax over the positive and K shared sampled negatives, with logQ correction
  (Yi et al. 2019) so the estimate is unbiased for non-uniform samplers; accidental hits masked.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from userseq.losses.registry import LossContext, Rows, register_loss
from userseq.losses.sampler import NegativeSampler

LOGITS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@register_loss("ce")
def ce_loss(h: torch.Tensor, targets: torch.Tensor, items: Any, ctx: LossContext) -> torch.Tensor:
    """Full softmax cross-entropy over every item (`loss.logits_dtype`: matmul precision)."""
    dtype = LOGITS_DTYPES.get(ctx.config.logits_dtype)
    return full_ce(h, targets, items.output_matrix(), dtype=dtype)


@register_loss("sampled_softmax")
def sampled_softmax_loss(h: torch.Tensor, targets: torch.Tensor, items: Any,
                         ctx: LossContext) -> torch.Tensor:
    """Softmax over the positive and `loss.negatives` shared negatives from `loss.sampler`,
    logQ-corrected when `loss.logq`."""
    sampler = ctx.sampler()
    neg = sampler.sample((ctx.config.negatives,), h.device)
    return sampled_softmax(h, targets, Rows(items), neg, sampler if ctx.config.logq else None)


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
        # one logits buffer reused across chunks (a fresh multi-MB tensor per chunk costs page
        # faults on CPU); with bf16 matmuls a second, bf16 buffer holds the matmul output
        buf = torch.empty((min(chunk, n), W.shape[0]), dtype=torch.float32, device=h.device)
        low = None if fp32 else torch.empty(buf.shape, dtype=compute_dtype, device=h.device)
        for i in range(0, n, chunk):
            hi, t = hc[i : i + chunk], targets[i : i + chunk]
            m = len(t)
            rows = torch.arange(m, device=h.device)
            if fp32:
                # fused log-softmax, then probabilities in place (3 passes over the block); the
                # 1/n of the mean is applied to the small gradient matrices at the end.
                # Measured (benchmarks/epoch_time.py, fp32): 13.7 s per epoch vs 16.2 s with the
                # five-pass form below
                logits = torch.mm(hi, Wc.T, out=buf[:m])
                logits[:, 0] = float("-inf")
                lp = torch.log_softmax(logits, 1)
                total -= lp[rows, t].sum(dtype=torch.float64)
                p = lp.exp_()
                p[rows, t] -= 1.0  # n x d(mean CE)/d(logits)
                torch.mm(p, Wc, out=grad_h[i : i + m])
                grad_W.addmm_(p.T, hi)
                continue
            # bf16 matmuls: the five-pass in-place form (measured faster here than log_softmax
            # reading the bf16 block: 11.0 s vs 14.4 s per epoch)
            logits = buf[:m].copy_(torch.mm(hi, Wc.T, out=low[:m]))
            logits[:, 0] = float("-inf")
            target_logit = logits[rows, t]
            top = logits.amax(1, keepdim=True)
            p = logits.sub_(top).exp_()
            z = p.sum(1, keepdim=True)
            total += (top.squeeze(1) + z.log().squeeze(1) - target_logit).sum(dtype=torch.float64)
            p.mul_(z.reciprocal_())  # softmax
            p[rows, t] -= 1.0  # n x d(mean CE)/d(logits)
            pl = low[:m].copy_(p)
            grad_h[i : i + m] = pl @ Wc
            grad_W += pl.T @ hi
        grad_h.div_(n)
        grad_W.div_(n)
        ctx.save_for_backward(grad_h.to(h.dtype), grad_W.to(W.dtype))
        return (total / n).to(torch.float32)

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_W = ctx.saved_tensors
        return grad_h * g, grad_W * g, None, None, None


# Elements of one chunk's logits block: 2**20 fp32 values (4 MiB) stay in the L2/L3 cache during
# the five in-place passes; measured on 2 EPYC cores (ML-1M, 3,417 columns, 14k rows per batch):
# 8,192-row chunks 222 ms per batch (fp32) / 200 ms (bf16), 256-1,024-row chunks 150-190 ms /
# 80-110 ms.
CE_BLOCK_ELEMENTS = 2**20


def ce_chunk_rows(n_columns: int, block: int = CE_BLOCK_ELEMENTS) -> int:
    """Rows per chunk of the fused CE: a logits block of about `block` elements, 64 to 8,192
    rows (ML-1M's 3,417 columns: 306 rows)."""
    return max(64, min(8192, block // max(n_columns, 1)))


def full_ce(h: torch.Tensor, targets: torch.Tensor, W: torch.Tensor, chunk: int | None = None,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Full softmax cross-entropy over items 1..n_items (mean over rows). `dtype` is the matmul
    precision (default: the autocast dtype when autocast is on, else fp32); `chunk`: rows per
    logits block (default `ce_chunk_rows(W.shape[0])`)."""
    chunk = chunk or ce_chunk_rows(W.shape[0])
    if dtype is None:
        on = torch.is_autocast_enabled(h.device.type)
        dtype = torch.get_autocast_dtype(h.device.type) if on else torch.float32
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h, W, targets, chunk, dtype)


def sampled_softmax(h: torch.Tensor, targets: torch.Tensor, W: torch.Tensor, neg: torch.Tensor,
                    sampler: NegativeSampler | None) -> torch.Tensor:
    """Softmax over the positive and the shared negatives `neg` (K,); logQ-corrected with
    `sampler`'s probabilities unless it is None; negatives equal to a row's target are masked."""
    pos = (h * W[targets]).sum(-1, keepdim=True)  # (N, 1)
    negs = h @ W[neg].T  # (N, K)
    if sampler is not None:
        pos = pos - sampler.log_prob(targets).unsqueeze(-1)
        negs = negs - sampler.log_prob(neg).unsqueeze(0)
    negs = negs.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(-1), float("-inf"))
    logits = torch.cat([pos, negs], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=h.device))
