"""Training losses over the item catalogue, chosen by name (`loss.name`) from `LOSSES`.

One file per family: `softmax.py` (full CE `ce`, `sampled_softmax` with logQ correction),
`bce.py` (`bce`, gSASRec's `gbce`), `icsrec.py` (ICSRec's intent contrast on top of a
recommendation loss), `sampler.py` (negative sampling). `NextItemLoss` runs the
configured one.

A registered loss has one signature:

    @register_loss("name")
    def my_loss(h, targets, items, ctx) -> torch.Tensor:  # a scalar
        ...

* `h` (N, D): hidden states at the positions that have a target;
* `targets` (N,): the target items, indices 1..n_items;
* `items`: the item output side: `items.output_matrix()` (n_items + 1, D), row 0 = padding, and
  `items.output_rows(ids)` (sampled losses read only the rows they need: hashed and text tables
  then never build the matrix);
* `ctx` (`LossContext`): `ctx.config` (the `LossConfig`), `ctx.n_items`, `ctx.item_counts` and
  `ctx.sampler(kind=None)` (a cached `NegativeSampler`; default kind: `loss.sampler`).
"""

from __future__ import annotations

# importing the built-in losses (bce, softmax) registers them
from userseq.losses.bce import bce_loss, gbce, gbce_loss
from userseq.losses.config import ICSRecConfig, LossConfig
from userseq.losses.icsrec import icsrec_loss
from userseq.losses.nextitem import NextItemLoss
from userseq.losses.registry import LOSSES, Loss, LossContext, MatrixItems, Rows, register_loss
from userseq.losses.sampler import NegativeSampler
from userseq.losses.softmax import ce_loss, full_ce, sampled_softmax, sampled_softmax_loss

__all__ = [
    "LOSSES", "ICSRecConfig", "Loss", "LossConfig", "LossContext", "MatrixItems",
    "NegativeSampler", "NextItemLoss",
    "Rows", "bce_loss", "ce_loss", "full_ce", "gbce", "gbce_loss", "icsrec_loss", "register_loss",
    "sampled_softmax", "sampled_softmax_loss",
]
