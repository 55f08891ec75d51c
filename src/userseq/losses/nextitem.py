"""`NextItemLoss`: the configured loss (`loss.name`, looked up in `LOSSES`) of a training run."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from userseq.losses.config import LossConfig
from userseq.losses.registry import LOSSES, LossContext, MatrixItems


class NextItemLoss:
    """`loss(h, targets, items)` with the registered loss `cfg.name` over `n_items` items.
    `items` is an item representation (`output_matrix()` / `output_rows(ids)`) or a plain
    (n_items + 1, D) output matrix; `item_counts` (training events per item) feed popularity
    sampling."""

    def __init__(self, cfg: LossConfig, n_items: int,
                 item_counts: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.fn = LOSSES.get(cfg.name).obj
        self.ctx = LossContext(cfg, n_items, item_counts)

    @property
    def wants_epoch_hidden(self) -> bool:
        """Whether the loss refreshes state from training hidden states before every epoch (a
        registered loss with an `epoch_start(ctx, h, targets)` attribute, e.g. ICSRec)."""
        return hasattr(self.fn, "epoch_start")

    def epoch_start(self, h: torch.Tensor, targets: torch.Tensor) -> None:
        """Give the loss the hidden states (N, D) and targets (N,) of training positions."""
        self.fn.epoch_start(self.ctx, h, targets)

    def __call__(self, h: torch.Tensor, targets: torch.Tensor, items: Any) -> torch.Tensor:
        if torch.is_tensor(items):
            items = MatrixItems(items)
        return self.fn(h, targets, items, self.ctx)
