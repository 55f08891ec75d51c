"""Persona-Plug's input-aware user embedder (Liu et al., ACL 2025), trained without an LLM.

Given the current input's text vector x (e.g. the article a user is about to edit) and the text
vectors h_1..h_n of the user's history, relevance scores s_i = (W_q x)·(W_k h_i) / sqrt(d)
(+ a learned bias per position from the end) give weights a = softmax(s); the top-weighted history
items are the retrieved context, and u = sum_i a_i h_i projected by P to `context_dim` is the one
user vector (the soft-prompt slot of an external LLM). Without an LLM, the next post's text vector
is predicted as u + head([P u, x]) (the head starts at zero, so training starts from the
relevance-weighted history mean), trained with an in-batch contrastive loss + cosine, so the
aggregator learns which history items matter for an input and what the projected vector adds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ContextAggregator(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 128, context_dim: int = 64,
                 max_history: int = 50, recency: bool = True) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.context_dim = in_dim, hidden, context_dim
        self.query = nn.Linear(in_dim, hidden)
        self.key = nn.Linear(in_dim, hidden)
        self.recency = nn.Parameter(torch.zeros(max_history)) if recency else None
        self.project = nn.Linear(in_dim, context_dim)  # the soft-prompt projector
        self.head = nn.Linear(context_dim + in_dim, in_dim)
        nn.init.zeros_(self.head.weight)  # starts as the relevance-weighted history mean
        nn.init.zeros_(self.head.bias)

    def weights(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, n) relevance weights of the history items (0 on padding). `h` is left-padded:
        position n-1 is the most recent item."""
        s = torch.einsum("bd,bnd->bn", self.query(x), self.key(h)) / math.sqrt(self.hidden)
        if self.recency is not None:
            n = h.shape[1]
            back = torch.arange(n - 1, -1, -1, device=h.device).clamp(max=len(self.recency) - 1)
            s = s + self.recency[back]
        s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1).nan_to_num(0.0)

    def forward(self, x: torch.Tensor, h: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights (B, n), user vector (B, context_dim), predicted next-item vector (B, E))."""
        a = self.weights(x, h, mask)
        pooled = torch.einsum("bn,bne->be", a, h)
        z = self.project(pooled)
        return a, z, pooled + self.head(torch.cat([z, x], -1))


def context_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch contrastive loss (each prediction against every target of the batch) plus
    1 - cosine with its own target."""
    p, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    logits = p @ t.T / temperature
    nce = F.cross_entropy(logits, torch.arange(len(p), device=p.device))
    return nce + (1 - (p * t).sum(-1)).mean()
