"""The loss registry and what a registered loss is given.

A registered loss is a function `loss(h, targets, items, ctx) -> scalar tensor`:

* `h` (N, D): hidden states at the positions that have a target;
* `targets` (N,): their target items, indices 1..n_items;
* `items`: the item output side, `items.output_matrix()` -> (n_items + 1, D) (row 0 = padding)
  and `items.output_rows(ids)` -> the rows of some items (sampled losses read only those);
* `ctx` (`LossContext`): the loss config, the catalogue size and negative samplers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from userseq.core.registry import Registry, decorator
from userseq.losses.sampler import NegativeSampler


class Loss(Protocol):
    def __call__(self, h: torch.Tensor, targets: torch.Tensor, items: Any,
                 ctx: LossContext) -> torch.Tensor: ...


LOSSES: Registry[Loss] = Registry("loss", "Add one with userseq.register_loss (docs/extending.md).")
register_loss = decorator(LOSSES)


@dataclass
class LossContext:
    """What a loss gets besides the batch: its config (`LossConfig`), the number of items, the
    training item counts (popularity sampling), `sampler(kind)`, one cached sampler per kind, and
    `state`, a dict a loss may keep per-run state in (it lives as long as the `NextItemLoss`)."""

    config: Any
    n_items: int
    item_counts: np.ndarray | None = None
    samplers: dict[str, NegativeSampler] = field(default_factory=dict)
    # what a loss keeps between batches of one training run (ICSRec: prototypes, memory)
    state: dict[str, Any] = field(default_factory=dict)

    def sampler(self, kind: str | None = None) -> NegativeSampler:
        """The negative sampler of `kind` (uniform | popularity; default: `config.sampler`)."""
        kind = kind or self.config.sampler
        if kind not in self.samplers:
            self.samplers[kind] = NegativeSampler(self.n_items, kind, self.item_counts)
        return self.samplers[kind]


class MatrixItems:
    """A plain (n_items + 1, D) output matrix seen as an item representation."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix

    def output_matrix(self) -> torch.Tensor:
        return self.matrix

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.matrix[ids]


class Rows:
    """`W[ids]` through an item representation's `output_rows` (for the functional losses)."""

    def __init__(self, items: Any) -> None:
        self.items = items

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.items.output_rows(ids)
