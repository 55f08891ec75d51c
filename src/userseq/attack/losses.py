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


class Discriminator(torch.nn.Module):
    """RelGAN's CNN discriminator over (soft) one-hot post rows (B, T, V): token embedding (a
    product with the one-hot rows, so the generator's Gumbel-softmax rows stay differentiable),
    convolutions of widths 2-5, masked max-pool, highway layer, one logit per post."""

    def __init__(self, vocab: int, emb_dim: int = 64, channels: int = 64,
                 widths: tuple[int, ...] = (2, 3, 4, 5), dropout: float = 0.25) -> None:
        super().__init__()
        from userseq.detect.models import TokenEmbedding

        self.emb = TokenEmbedding(vocab, emb_dim)
        self.convs = torch.nn.ModuleList(torch.nn.Conv1d(emb_dim, channels, w, padding=w - 1)
                                         for w in widths)
        d = channels * len(widths)
        self.highway = torch.nn.Linear(d, 2 * d)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(d, 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.emb(rows).transpose(1, 2)  # (B, E, T)
        T = rows.shape[1]
        keep = (rows[..., 1:].sum(-1) > 0)  # column 0 is padding / end of post
        feats = []
        for conv in self.convs:
            y = F.relu(conv(x))[..., :T]
            feats.append(y.masked_fill(~keep[:, None], -1e4).amax(-1) * keep.any(1, True))
        h = torch.cat(feats, 1)
        t, g = self.highway(h).chunk(2, -1)
        gate = torch.sigmoid(g)
        h = gate * F.relu(t) + (1 - gate) * h
        return self.out(self.drop(h)).squeeze(-1)


def rsgan_losses(d_real: torch.Tensor, d_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relativistic standard GAN losses (RelGAN's `rsgan`): (generator loss, discriminator
    loss) = (softplus(-(D(fake) - D(real))), softplus(-(D(real) - D(fake)))), batch means."""
    return F.softplus(-(d_fake - d_real)).mean(), F.softplus(-(d_real - d_fake)).mean()
