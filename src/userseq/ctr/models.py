"""CTR models over behaviour histories: shared embedding and MLP blocks, one interest module each.

Every model scores `[target, user, interest, target * interest, context] -> MLP -> logit`; they
differ only in how `interest` is read from the history (METHODS.md sections 2-4):

* `nohist`  no history (item + category + user features only)
* `mean`    mean of the last `max_len` behaviour embeddings
* `din`     DIN local activation unit g([e_j, t, e_j - t, e_j * t]) with Dice, weights not
            normalized (paper) or softmax-normalized (`din_softmax`, the demo code)
* `sim`     SIM-hard: search = the most recent `top_k` behaviours of the target's category, then
            target attention over them
* `twin`    TWIN: search = top-`top_k` of the attention scores over the last `long_len`
            behaviours, then target attention (re-softmax over the top-k) with the same embeddings
* `dare`    TWIN with decoupled tables: attention (search + weights) and representation (values,
            target) embeddings are separate, the attention ones optionally smaller
* `awmoe`   AW-MoE: expert MLPs mixed by a gate (gate unit + target attention) that reads the
            last `max_len` behaviours; a contrastive loss aligns the gates of a masked view
* `sdim`    SimHash signatures (m hashes of tau bits) of target and behaviours; the behaviours in
            the target's bucket are summed, L2-normalized and averaged over hashes, no attention

A behaviour's embedding is [item ; category] plus an embedding of its feature bucket (its rating),
so both what the user saw and what they thought of it are read. Attention scores add a learned bias
per position bucket counted back from the target (DARE's position table, as a scalar).

Serving: `score_candidates(history, candidates)` scores many candidates for one history; it
encodes the history once (keys/values; SDIM's bucket sums) so search models cost one matrix
product over the history per candidate batch and SDIM costs O(m * tau * d) per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from userseq.core.registry import Registry
from userseq.ctr.config import CTRModelConfig

NEG = -1e9


class Dice(nn.Module):
    """Dice activation (DIN): p = sigmoid(BN(s)), f = p * s + (1 - p) * alpha * s, with running
    statistics at inference. One-row training batches use the running statistics."""

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=eps)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.training and flat.shape[0] > 1:
            z = self.bn(flat).reshape(shape)
        else:  # running statistics, written out (traces to ONNX without a batch_norm node)
            z = (x - self.bn.running_mean) * torch.rsqrt(self.bn.running_var + self.bn.eps)
        p = torch.sigmoid(z)
        return p * x + (1 - p) * self.alpha * x


def make_act(kind: str, dim: int) -> nn.Module:
    if kind == "dice":
        return Dice(dim)
    return nn.PReLU(dim, init=0.1)


class MLP(nn.Module):
    """Linear -> activation (-> dropout) blocks, then a linear output of size `out`."""

    def __init__(self, d_in: int, hidden: list[int], act: str, out: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), make_act(act, h)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d_in = h
        layers.append(nn.Linear(d_in, out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ItemEmbedding(nn.Module):
    """[item ; category] for targets; plus a feature-bucket embedding for behaviours."""

    def __init__(self, n_items: int, n_cats: int, n_feats: int, item_dim: int,
                 cat_dim: int) -> None:
        super().__init__()
        self.dim = item_dim + cat_dim
        self.item = nn.Embedding(n_items + 1, item_dim, padding_idx=0)
        self.cat = nn.Embedding(n_cats + 1, cat_dim, padding_idx=0)
        self.feat = nn.Embedding(n_feats + 1, self.dim, padding_idx=0)
        for emb in (self.item, self.cat, self.feat):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()

    def target(self, item: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item(item), self.cat(cat)], -1)

    def behaviour(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.target(b["hist_item"], b["hist_cat"]) + self.feat(b["hist_feat"])


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `mask`; all-masked rows give zeros (not NaN)."""
    p = torch.softmax(scores.masked_fill(~mask, NEG), -1) * mask
    return p / p.sum(-1, keepdim=True).clamp_min(1e-12)


def _expand(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[0] == n else t.expand(n, *t.shape[1:])


def _take(x: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    """Rows idx (n, k) of the per-history vectors x (n or 1, L, d) -> (n, k, d)."""
    return torch.gather(_expand(x, n), 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class CTRModel(nn.Module):
    """Base: embeddings, optional user/context features, prediction MLP. Subclasses set
    `interest`."""

    has_interest = True

    def __init__(self, cfg: CTRModelConfig, n_items: int, n_cats: int, n_feats: int, n_users: int,
                 n_context: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = ItemEmbedding(n_items, n_cats, n_feats, cfg.item_dim, cfg.cat_dim)
        d = self.emb.dim
        self.user = nn.Embedding(n_users + 1, cfg.user_dim) if cfg.user_dim else None
        if self.user is not None:
            nn.init.normal_(self.user.weight, std=0.05)
        self.n_context = n_context
        d_in = d + (cfg.user_dim or 0) + n_context + (2 * d if self.has_interest else 0)
        self.mlp = MLP(d_in, cfg.mlp, cfg.activation, 1, cfg.dropout)
        self.aux_logit: torch.Tensor | None = None

    def target_repr(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.emb.target(b["item"], b["cat"])

    def interest(self, b: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, b: dict[str, torch.Tensor], t: torch.Tensor,
             u: torch.Tensor | None) -> torch.Tensor:
        parts = [t]
        if self.user is not None:
            parts.append(self.user(b["user"]))
        if u is not None:
            parts += [u, t * u]
        if self.n_context:
            parts.append(b["context"])
        return self.mlp(torch.cat(parts, -1)).squeeze(-1)

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B,). History tensors may have batch size 1 (one history shared by all
        targets)."""
        t = self.target_repr(b)
        u = self.interest(b, t) if self.has_interest else None
        return self.head(b, t, u)

    # ---------------------------------------------------------------- serving
    def encode_history(self, h: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-history state reused for every candidate (default: the raw history tensors)."""
        return h

    reads_hist_row = False  # True: `interest` indexes the R encoded histories by b["hist_row"]

    def score_state(self, state: dict[str, torch.Tensor],
                    b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for candidate targets `b` (B,) against one encoded history (state tensors of
        batch 1), or against R of them with `b["hist_row"]` (B,) naming each candidate's history
        (the state rows are gathered per candidate unless the model reads `hist_row` itself)."""
        rows = b.get("hist_row")
        if rows is not None and not self.reads_hist_row:
            state = {k: v.index_select(0, rows) for k, v in state.items()}
            b = {k: v for k, v in b.items() if k != "hist_row"}
        return self.forward({**state, **b})

    def candidate_chunk(self, hist_len: int) -> int:
        """Candidates per chunk when scoring one history (bounds the (chunk, L, .) activations)."""
        return 1 << 30


class NoHistory(CTRModel):
    has_interest = False


class MeanPool(CTRModel):
    def interest(self, b, t):
        if b["hist_item"].shape[1] == 0:
            return torch.zeros_like(t)
        e = self.emb.behaviour(b)
        m = b["mask"].unsqueeze(-1).to(e.dtype)
        u = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
        return _expand(u, t.shape[0])


class DIN(CTRModel):
    """Local activation unit over the last `max_len` behaviours (computed on real positions
    only)."""

    reads_hist_row = True

    def __init__(self, cfg, *a, **k) -> None:
        super().__init__(cfg, *a, **k)
        d = self.emb.dim
        self.att = MLP(4 * d, cfg.att_hidden, "dice", 1)

    def interest(self, b, t):
        n, L = t.shape[0], b["hist_item"].shape[1]
        if L == 0:
            return torch.zeros_like(t)
        e = self.emb.behaviour(b)  # (B or 1, L, d)
        d = e.shape[-1]
        # The first layer on [e, t, e - t, e * t] computed as
        # e (W1 + W3)^T + t (W2 - W3)^T + (e * t) W4^T: the same function, without materializing
        # the 4d-wide input (about 2x faster on CPU).
        first = self.att.net[0]
        w1, w2, w3, w4 = first.weight.split(d, dim=1)
        pe = torch.matmul(e, (w1 + w3).t())  # per behaviour, shared by all targets of a history
        pt = torch.matmul(t, (w2 - w3).t()) + first.bias
        rows = b.get("hist_row")  # serving R histories: candidate -> its history's row
        mask = b["mask"].index_select(0, rows) if rows is not None else _expand(b["mask"], n)
        bi, li = mask.nonzero(as_tuple=True)
        if rows is not None:
            hb = rows[bi]
        else:
            hb = bi if e.shape[0] == n else torch.zeros_like(bi)
        ev = e[hb, li]
        h1 = pe[hb, li] + pt[bi] + torch.matmul(ev * t[bi], w4.t())
        w = torch.zeros(n, L, dtype=e.dtype, device=e.device)
        w[bi, li] = self.att.net[1:](h1).squeeze(-1).to(w.dtype)
        if self.cfg.din_softmax:
            w = masked_softmax(w / math.sqrt(d), mask)
        if rows is not None:  # sum the weighted real behaviours of each candidate's history
            return torch.zeros_like(t).index_add_(0, bi, w[bi, li].unsqueeze(-1) * ev)
        if e.shape[0] == n:
            return torch.einsum("bl,bld->bd", w, e)
        return w @ e[0]

    def candidate_chunk(self, hist_len: int) -> int:
        return max(1, 1_000_000 // max(hist_len, 1))


class SearchAttention(CTRModel):
    """Two-stage long-sequence model: a search unit keeps `top_k` behaviours, target attention
    reads them.

    search = "hard" (SIM): the most recent behaviours of the target's category;
    search = "soft" (TWIN, DARE): the top-k attention scores over the whole window.
    decoupled (DARE): separate attention and representation embedding tables.
    """

    def __init__(self, cfg, n_items, n_cats, n_feats, n_users, n_context=0, search="soft",
                 decoupled=False) -> None:
        super().__init__(cfg, n_items, n_cats, n_feats, n_users, n_context)
        self.search, self.decoupled = search, decoupled
        if decoupled:
            self.att_emb = ItemEmbedding(n_items, n_cats, n_feats,
                                         cfg.attn_item_dim or cfg.item_dim,
                                         cfg.attn_cat_dim or cfg.cat_dim)
        self.pos_bias = nn.Embedding(cfg.pos_buckets, 1)
        nn.init.zeros_(self.pos_bias.weight)
        if cfg.aux_loss and search == "soft":
            d = self.emb.dim
            self.aux_mlp = MLP(3 * d, [cfg.mlp[0]], cfg.activation, 1)

    @property
    def attention_embedding(self) -> ItemEmbedding:
        return self.att_emb if self.decoupled else self.emb

    def encode_history(self, h):
        if h["hist_item"].shape[1] == 0:
            return dict(h)
        state = dict(h)
        state["values"] = self.emb.behaviour(h)
        state["keys"] = self.attention_embedding.behaviour(h) if self.decoupled else state["values"]
        state["bias"] = self.pos_bias(h["hist_pos"]).squeeze(-1)
        return state

    def _scores(self, q: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # (B, L): q (B, dA) against keys (B or 1, L, dA), plus the position bias
        s = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1])
        return s + bias

    def interest(self, b, t):
        st = b if "values" in b else self.encode_history(b)
        n, L = t.shape[0], b["hist_item"].shape[1]
        self.aux_logit = None
        if L == 0:
            return torch.zeros_like(t)
        q = self.attention_embedding.target(b["item"], b["cat"]) if self.decoupled else t
        mask = _expand(b["mask"], n)
        k = min(self.cfg.top_k, L)
        if self.search == "hard":
            # the most recent same-category behaviours (left-padded: later column = more recent)
            same = (_expand(b["hist_cat"], n) == b["cat"].unsqueeze(1)) & mask
            recency = torch.arange(L, device=t.device, dtype=t.dtype).expand(n, L)
            top = torch.topk(torch.where(same, recency, torch.full_like(recency, -1.0)), k, dim=1)
            idx, keep = top.indices, top.values >= 0
            keys = _take(st["keys"], n, idx)
            bias = torch.gather(_expand(st["bias"], n), 1, idx)
            w = masked_softmax(self._scores(q, keys, bias), keep)
        else:
            scores = self._scores(q, st["keys"], st["bias"]).masked_fill(~mask, NEG)
            top = torch.topk(scores, k, dim=1)
            idx = top.indices
            keep = torch.gather(mask, 1, idx)
            w = masked_softmax(top.values, keep)
            if self.training and self.cfg.aux_loss:
                v_all = _expand(st["values"], n)
                u_all = torch.einsum("bl,bld->bd", masked_softmax(scores, mask), v_all)
                self.aux_logit = self.aux_mlp(torch.cat([t, u_all, t * u_all], -1)).squeeze(-1)
        vals = _take(st["values"], n, idx)
        return torch.einsum("bk,bkd->bd", w, vals)

    def candidate_chunk(self, hist_len: int) -> int:
        return max(1, 20_000_000 // max(hist_len, 1))


class SDIM(CTRModel):
    """Sampling-based interest: SimHash buckets instead of attention (fixed random projection)."""

    reads_hist_row = True

    def __init__(self, cfg, *a, **k) -> None:
        super().__init__(cfg, *a, **k)
        g = torch.Generator().manual_seed(cfg.hash_seed)
        m, tau = cfg.num_hashes, cfg.hash_bits
        self.register_buffer("proj", torch.randn(self.emb.dim, m * tau, generator=g))
        # bits -> bucket id as one matmul (exact in fp32 for tau <= 16)
        powers = torch.zeros(m * tau, m)
        for j in range(m):
            powers[j * tau : (j + 1) * tau, j] = 2.0 ** torch.arange(tau)
        self.register_buffer("powers", powers, persistent=False)

    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., m) bucket ids in [0, 2^tau), as float (exact small integers)."""
        bits = torch.matmul(x.detach().float(), self.proj).gt_(0)
        return torch.matmul(bits, self.powers)

    def behaviour_signatures(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Signatures of the behaviours' [item ; category] embeddings (the feature embedding is a
        value, not hashed, so a behaviour and a target of the same item share buckets). Computed
        once per distinct item in the batch."""
        uniq, inv = torch.unique(b["hist_item"], return_inverse=True)
        cats = torch.zeros_like(uniq).scatter_(0, inv.reshape(-1), b["hist_cat"].reshape(-1))
        return self.signatures(self.emb.target(uniq, cats))[inv]

    @staticmethod
    def _normalize_mean(sums: torch.Tensor) -> torch.Tensor:
        """(B, m, d) bucket sums -> L2-normalize each (empty buckets stay zero) -> mean over
        hashes."""
        return (sums / sums.norm(dim=-1, keepdim=True).clamp_min(1e-12)).mean(1)

    def interest(self, b, t):
        if "buckets" in b:  # serving: gather the target's bucket from the precomputed sums
            sig = self.signatures(t).long()  # (B, m)
            m = sig.shape[1]
            hashes = torch.arange(m, device=t.device).unsqueeze(0)
            rows = b.get("hist_row")
            if rows is None:
                sums = b["buckets"][0][hashes, sig]  # (B, m, d)
            else:  # R histories (R, m, 2^tau, d): each candidate reads its own
                sums = b["buckets"][rows.unsqueeze(1), hashes, sig]
            return self._normalize_mean(sums)
        n, L = t.shape[0], b["hist_item"].shape[1]
        if L == 0:
            return torch.zeros_like(t)
        v = self.emb.behaviour(b)  # values (B or 1, L, d)
        hk = self.behaviour_signatures(b)  # (B or 1, L, m)
        match = (hk == self.signatures(t).unsqueeze(1)) & b["mask"].unsqueeze(-1)  # (B, L, m)
        sums = torch.matmul(match.to(v.dtype).transpose(1, 2), _expand(v, n))  # (B, m, d)
        return self._normalize_mean(sums)

    def encode_history(self, h):
        """Bucket sums (R, m, 2^tau, d) of R histories: the per-user state of SDIM's BSE
        service."""
        if h["hist_item"].shape[1] == 0:
            return dict(h)
        ri, li = h["mask"].nonzero(as_tuple=True)  # real behaviours, history by history
        v = self.emb.behaviour(h)[ri, li]  # (K, d)
        sig = self.behaviour_signatures(h)[ri, li].long()  # (K, m)
        m, n_b = self.cfg.num_hashes, 2 ** self.cfg.hash_bits
        r = h["hist_item"].shape[0]
        # (K, m) in [0, R * m * 2^tau): history, hash, bucket
        flat = sig + torch.arange(m, device=v.device) * n_b + (ri * (m * n_b)).unsqueeze(1)
        sums = torch.zeros(r * m * n_b, v.shape[-1], dtype=v.dtype, device=v.device)
        sums.index_add_(0, flat.reshape(-1), v.repeat_interleave(m, 0))
        return {**h, "buckets": sums.reshape(r, m, n_b, -1)}


class AWMoE(CTRModel):
    """AW-MoE (JD, ICDE 2023): a mixture of expert MLPs whose inputs and gate both read the
    behaviour sequence.

    Behaviours (the last `max_len`) are read twice: target attention (scaled dot product plus the
    position bias) gives `u`, masked mean pooling gives `m`. Each of `num_experts` expert MLPs
    scores `[target ; user ; u ; target * u ; m ; context]`; the gate is a gate unit on the
    sequence summary `m` plus an activation unit on the target-attention output `[u ; target]`,
    softmax over experts; logit = sum_k gate_k * expert_k. Training adds a masked view: each
    behaviour is dropped with probability `moe_mask_prob` (a simulated long-tail user) and an
    InfoNCE loss (temperature `moe_temperature`, weight `moe_cl_weight`) pulls the gate
    representation of the two views of one sample together and pushes other samples' apart.
    """

    has_interest = False

    def __init__(self, cfg, n_items, n_cats, n_feats, n_users, n_context=0) -> None:
        super().__init__(cfg, n_items, n_cats, n_feats, n_users, n_context)
        d, k, h = self.emb.dim, cfg.num_experts, cfg.att_hidden[0]
        d_in = 4 * d + (cfg.user_dim or 0) + n_context
        self.experts = nn.ModuleList(MLP(d_in, cfg.mlp, cfg.activation, 1, cfg.dropout)
                                     for _ in range(k))
        self.mlp = None  # type: ignore[assignment]  # the experts replace the single MLP
        self.gate_unit = nn.Sequential(nn.Linear(d, h), nn.PReLU(h, init=0.1))
        self.gate_attn = nn.Sequential(nn.Linear(2 * d, h), nn.PReLU(h, init=0.1))
        self.gate_out = nn.Linear(h, k)
        self.pos_bias = nn.Embedding(cfg.pos_buckets, 1)
        nn.init.zeros_(self.pos_bias.weight)
        self.aux_loss: torch.Tensor | None = None

    def _read(self, b: dict[str, torch.Tensor], t: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target-attention output u, mean of the behaviours m), both (B, d)."""
        n = t.shape[0]
        if b["hist_item"].shape[1] == 0:
            return torch.zeros_like(t), torch.zeros_like(t)
        e = self.emb.behaviour(b)  # (B or 1, L, d)
        s = torch.matmul(e, t.unsqueeze(-1)).squeeze(-1) / math.sqrt(t.shape[-1])
        w = masked_softmax(s + self.pos_bias(b["hist_pos"]).squeeze(-1), mask)  # (B, L)
        u = torch.einsum("bl,bld->bd", w, _expand(e, n))
        mf = mask.unsqueeze(-1).to(e.dtype)
        m = (_expand(e, n) * mf).sum(1) / mf.sum(1).clamp_min(1.0)
        return u, m

    def _gate(self, u: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The gate representation (B, h): gate unit on the sequence + activation unit on the
        target attention."""
        return self.gate_unit(m) + self.gate_attn(torch.cat([u, t], -1))

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.target_repr(b)
        n = t.shape[0]
        mask = _expand(b["mask"], n)
        u, m = self._read(b, t, mask)
        g = self._gate(u, m, t)
        parts = [t, u, t * u, m]
        if self.user is not None:
            parts.append(self.user(b["user"]))
        if self.n_context:
            parts.append(b["context"])
        x = torch.cat(parts, -1)
        logits = torch.cat([ex(x) for ex in self.experts], -1)  # (B, K)
        out = (torch.softmax(self.gate_out(g), -1) * logits).sum(-1)
        self.aux_loss = None
        if self.training and self.cfg.moe_cl_weight > 0 and mask.shape[1] > 0:
            keep = torch.rand(mask.shape, device=mask.device) >= self.cfg.moe_mask_prob
            u2, m2 = self._read(b, t, mask & keep)
            g2 = self._gate(u2, m2, t)
            za, zb = F.normalize(g, dim=-1), F.normalize(g2, dim=-1)
            sim = za @ zb.t() / self.cfg.moe_temperature
            target = torch.arange(n, device=t.device)
            self.aux_loss = self.cfg.moe_cl_weight * F.cross_entropy(sim.float(), target)
        return out

    def candidate_chunk(self, hist_len: int) -> int:
        return max(1, 20_000_000 // max(hist_len, 1))


CTR_MODELS: Registry[Callable[..., CTRModel]] = Registry(
    "CTR model", "Set it with model.name (CLI: userseq ctr train --model NAME).")
CTR_MODELS.register("nohist", NoHistory, help="no history: target, category and user features")
CTR_MODELS.register("mean", MeanPool, help="mean of the last max_len behaviours")
CTR_MODELS.register("din", DIN, help="DIN local activation unit over the last max_len behaviours")
CTR_MODELS.register("sim", partial(SearchAttention, search="hard"),
                    help="SIM-hard: same-category search, then target attention")
CTR_MODELS.register("twin", partial(SearchAttention, search="soft"),
                    help="TWIN: top-k attention search, then target attention")
CTR_MODELS.register("dare", partial(SearchAttention, search="soft", decoupled=True),
                    help="DARE: TWIN with decoupled attention and representation tables")
CTR_MODELS.register("sdim", SDIM, help="SDIM: SimHash buckets of the history, no attention")
CTR_MODELS.register("awmoe", AWMoE, help="AW-MoE: experts and gate read the sequence; gate "
                    "contrastive loss on a masked view")


def build_ctr_model(cfg: CTRModelConfig, n_items: int, n_cats: int, n_feats: int, n_users: int,
                    n_context: int = 0) -> CTRModel:
    """The CTR model named by `cfg.name` (see CTR_MODELS)."""
    return CTR_MODELS.get(cfg.name).obj(cfg, n_items, n_cats, n_feats, n_users, n_context)
