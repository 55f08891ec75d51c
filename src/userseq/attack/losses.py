"""PETGEN's personalisation and attack losses (each switchable and weighted by `LossWeights`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernels(sq_dist: torch.Tensor, bandwidth: torch.Tensor, n_kernels: int = 5,
                     multiplier: float = 2.0) -> torch.Tensor:
    """Sum of Gaussian kernels with bandwidths bandwidth * multiplier^(i - n//2) (PETGEN's MMD
    kernel)."""
    out = torch.zeros_like(sq_dist)
    for i in range(n_kernels):
        out = out + torch.exp(-sq_dist / (bandwidth * multiplier ** (i - n_kernels // 2)))
    return out


def set_mmd(x: torch.Tensor, ys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row squared MMD between the one-point set {x_b} (B, d) and the set ys_b (B, K, d) where
    mask (B, K).

    Rows with an empty set give 0. The bandwidth is the batch's mean squared distance (no gradient).
    """
    m = mask.float()
    k = m.sum(1)
    dxy = ((x[:, None, :] - ys) ** 2).sum(-1)  # (B, K)
    dyy = ((ys[:, :, None, :] - ys[:, None, :, :]) ** 2).sum(-1)  # (B, K, K)
    pair = m[:, :, None] * m[:, None, :]
    denom = (m.sum() + pair.sum()).clamp(min=1)
    bw = ((dxy * m).sum() + (dyy * pair).sum()).detach() / denom
    bw = bw.clamp(min=1e-6)
    kxx = gaussian_kernels(torch.zeros_like(k), bw)
    kxy = (gaussian_kernels(dxy, bw) * m).sum(1) / k.clamp(min=1)
    kyy = (gaussian_kernels(dyy, bw) * pair).sum((1, 2)) / (k * k).clamp(min=1)
    return torch.where(k > 0, kxx - 2 * kxy + kyy, torch.zeros_like(k))


def attack_loss(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE toward 'benign' (label 0) on the rows with weight 1 (the malicious users); mean over
    them."""
    per = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (per * weight).sum() / weight.sum().clamp(min=1)


def soft_nll(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean NLL of (soft) one-hot rows (N, V) under logits (N, V)."""
    return -(rows * F.log_softmax(logits, -1)).sum(-1).mean()
