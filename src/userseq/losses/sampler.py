"""Negative sampling over the item catalogue (indices 1..n_items)."""

from __future__ import annotations

import math

import numpy as np
import torch


class NegativeSampler:
    """Uniform or popularity-proportional sampling of item indices 1..n_items."""

    def __init__(self, n_items: int, kind: str = "uniform",
                 counts: np.ndarray | None = None) -> None:
        self.n_items, self.kind = n_items, kind
        if kind == "popularity":
            if counts is None:
                raise ValueError("popularity sampler needs item counts")
            # add-one keeps every item reachable
            p = counts[1 : n_items + 1].astype(np.float64) + 1.0
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
