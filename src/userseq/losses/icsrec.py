"""ICSRec (Qin et al., WSDM 2024): intent contrastive learning with cross subsequences.

Every position of a training sequence is a subsequence (a prefix) with its next item as target.
Two subsequences that share their target express the same intent (usually from different users).
The loss (`--loss icsrec`, settings in `loss.icsrec.*`) is

    L = L_rec + cicl_weight * L_CICL + ficl_weight * L_FICL

* `L_rec`: the recommendation loss `loss.icsrec.rec_loss` (default full-softmax `ce`, as ICSRec);
* **CICL** (coarse-grained intent contrast): InfoNCE between a subsequence h_i and a partner with
  the same target, dot similarity / `temperature`, the other pairs of the batch as negatives. The
  partner is another position of the batch with the same target (gradients on both sides) or,
  when the batch has none, the most recent representation of a subsequence with that target from
  earlier batches (a per-item memory, detached). Symmetric (both directions averaged).
* **FICL** (fine-grained intent contrast): every epoch the representations of (a sample of)
  all training subsequences are clustered with k-means (`intents` prototypes, L2, as ICSRec's
  faiss k-means); each subsequence is pulled toward its nearest prototype by a softmax over all
  prototypes (dot / `temperature`).
* **False-negative masking** (`fnm`, ICSRec's `--f_neg`): in CICL, other pairs with the same
  target are removed from the negatives (in FICL every prototype appears once, so the
  prototype softmax has no duplicate of the positive).

The contrastive terms use at most `pairs` randomly drawn positions per batch (ICSRec uses the
last position of 256 subsequences), so their cost stays bounded whatever the batch shape.
Defaults follow ICSRec's Beauty settings (lambda 0.3, beta 0.1, 256 intents, temperature 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from userseq.core.errors import ConfigError
from userseq.losses.registry import LOSSES, LossContext, register_loss


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Centroids (k, D) of L2 k-means over the rows of `x` (random distinct rows as the start;
    an empty cluster takes the point farthest from its centroid)."""
    n = len(x)
    if k > n:
        raise ConfigError(f"loss.icsrec.intents ({k}) is larger than the number of training "
                          f"positions clustered ({n}); choose at most {n}.")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    c = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    xx = (x * x).sum(1, keepdim=True)
    for _ in range(iters):
        d = xx - 2 * x @ c.T + (c * c).sum(1)[None]
        best, assign = d.min(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        new = sums / counts.clamp(min=1)[:, None]
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            new[empty] = x[torch.argsort(best, descending=True)[: len(empty)]]
        c = new
    return c


def refresh_prototypes(ctx: LossContext, h: torch.Tensor, targets: torch.Tensor) -> None:
    """The per-epoch step: k-means prototypes over the hidden states of training positions."""
    c = ctx.config.icsrec
    seed = ctx.state.get("epochs", 0)
    ctx.state["prototypes"] = kmeans(h.detach(), c.intents, c.kmeans_iters, seed)
    ctx.state["epochs"] = seed + 1


def _partners(z: torch.Tensor, t: torch.Tensor, ctx: LossContext
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(partner vectors, has-partner mask): another row of the batch with the same target, else
    the memory of that target (from earlier batches)."""
    n = len(t)
    order = torch.argsort(t, stable=True)
    st = t[order]
    start_flag = torch.ones(n, dtype=torch.bool, device=t.device)
    start_flag[1:] = st[1:] != st[:-1]
    run_id = start_flag.cumsum(0) - 1
    starts = torch.nonzero(start_flag).flatten()
    lens = torch.diff(torch.cat([starts, torch.tensor([n], device=t.device)]))
    pos = torch.arange(n, device=t.device)
    s0, ln = starts[run_id], lens[run_id]
    nxt = s0 + (pos - s0 + 1) % ln
    partner_idx = torch.empty_like(order)
    partner_idx[order] = order[nxt]
    in_batch = torch.empty_like(start_flag)
    in_batch[order] = ln > 1
    bank, filled = ctx.state.get(f"bank{z.shape[1]}"), ctx.state.get(f"filled{z.shape[1]}")
    partner = z[partner_idx]
    has = in_batch.clone()
    if bank is not None:
        from_bank = ~in_batch & filled[t]
        partner = torch.where(from_bank[:, None], bank[t].to(z.dtype), partner)
        has |= from_bank
    return partner, has


def _remember(z: torch.Tensor, t: torch.Tensor, ctx: LossContext) -> None:
    d = z.shape[1]  # one memory per vector width (Matryoshka losses call with prefixes)
    if f"bank{d}" not in ctx.state:
        ctx.state[f"bank{d}"] = torch.zeros(ctx.n_items + 1, d, device=z.device)
        ctx.state[f"filled{d}"] = torch.zeros(ctx.n_items + 1, dtype=torch.bool, device=z.device)
    ctx.state[f"bank{d}"][t] = z.detach().float()
    ctx.state[f"filled{d}"][t] = True


def _sim_space(x: torch.Tensor, c: Any) -> torch.Tensor:
    """Vectors whose dot products are the configured similarity (unit vectors for cosine)."""
    return F.normalize(x, dim=-1) if c.similarity == "cosine" else x


def cicl_loss(z: torch.Tensor, t: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Coarse-grained intent InfoNCE between subsequences and same-target partners."""
    c = ctx.config.icsrec
    partner, has = _partners(z, t, ctx)
    if int(has.sum()) < 2:
        return z.sum() * 0.0
    a, b, tt = _sim_space(z[has], c), _sim_space(partner[has], c), t[has]
    logits = (a @ b.T).float() / c.temperature
    if c.fnm:
        same = (tt[:, None] == tt[None, :]) & ~torch.eye(len(tt), dtype=torch.bool,
                                                          device=z.device)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(tt), device=z.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def ficl_loss(z: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Fine-grained intent contrast: softmax over the k-means prototypes, the nearest one the
    positive."""
    protos = ctx.state.get("prototypes")
    if protos is None:
        return z.sum() * 0.0
    protos = protos[:, : z.shape[1]].to(z.device)  # a Matryoshka prefix: the prototypes' prefix
    with torch.no_grad():
        d = (z.float() ** 2).sum(1, keepdim=True) - 2 * z.float() @ protos.T \
            + (protos ** 2).sum(1)[None]
        intent = d.argmin(1)
    c = ctx.config.icsrec
    logits = (_sim_space(z.float(), c) @ _sim_space(protos, c).T) / c.temperature
    return F.cross_entropy(logits, intent)


@register_loss("icsrec")
def icsrec_loss(h: torch.Tensor, targets: torch.Tensor, items: Any,
                ctx: LossContext) -> torch.Tensor:
    """ICSRec: `rec_loss` + cicl_weight * CICL + ficl_weight * FICL (see the module docstring)."""
    c = ctx.config.icsrec
    if c.rec_loss == "icsrec":
        raise ConfigError("loss.icsrec.rec_loss cannot be 'icsrec'; choose a recommendation "
                          "loss such as ce, sampled_softmax or bce.")
    rec = LOSSES.get(c.rec_loss).obj(h, targets, items, ctx)
    n = len(targets)
    if n > c.pairs:
        idx = torch.randperm(n, device=h.device)[: c.pairs]
        z, t = h[idx], targets[idx]
    else:
        z, t = h, targets
    loss = rec
    if c.cicl_weight:
        loss = loss + c.cicl_weight * cicl_loss(z, t, ctx)
    if c.ficl_weight:
        loss = loss + c.ficl_weight * ficl_loss(z, ctx)
    _remember(z, t, ctx)
    return loss


icsrec_loss.epoch_start = refresh_prototypes  # type: ignore[attr-defined]
