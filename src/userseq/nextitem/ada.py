"""Ada-Retrieval (Li, Lian, Zhou, Xie; AAAI 2024): adaptive multi-round retrieval.

Instead of the top-K of one user vector, K items are retrieved in T rounds of K/T. After each
round both the input and the user vector adapt to what was already retrieved:

* **item representation adapter** (`ItemAdapter`): the embeddings of the items retrieved so far
  pass through a learnable frequency filter (FMLP-Rec's filter layer: rFFT over the retrieved
  list, a learned complex weight per frequency and dimension, inverse FFT, dropout, residual,
  LayerNorm); the history embeddings attend to them (`softmax(H C^T / sqrt d) C`), dropout,
  residual, LayerNorm -> the encoder's new input embeddings. It is applied through a forward
  hook on the encoder's item representation, so it works with any registered encoder.
* **user representation adapter** (`UserAdapter`): a one-layer GRU over the previous rounds'
  user vectors; its last state, concatenated with the current user vector, goes through an MLP
  (2d -> 2d -> d, ReLU), dropout, residual, LayerNorm.
* items retrieved in earlier rounds (and the padding id, and with `filter_seen` the history)
  score -inf in later rounds.

Round 0 is the base encoder unchanged. Fine-tuning (`fit_ada`, `userseq ada fit`) starts from a
trained run and minimises the round-weighted loss `sum_r lambda^r CE_r`, where CE_r is the full
softmax cross-entropy of round r's user vector with the items retrieved in earlier rounds removed
from the softmax (the target always stays). The paper uses sigmoid BCE with 100 sampled
negatives; full CE matches how userseq's base encoders are trained (METHODS.md section 5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from userseq.core.errors import ConfigError
from userseq.data.batches import pad_left
from userseq.encoders import SequenceEncoder
from userseq.encoders.blocks import Dropout

ADA_FILE = "ada.safetensors"


class FrequencyFilter(nn.Module):
    """FMLP-Rec's learnable filter over a list of `length` vectors (B, length, D): rFFT along the
    list, times a learned complex weight, inverse rFFT, dropout, residual, LayerNorm."""

    def __init__(self, length: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.length = length
        self.weight = nn.Parameter(torch.randn(length // 2 + 1, dim, 2) * 0.02)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = torch.fft.rfft(x.float(), dim=1, norm="ortho")
        y = torch.fft.irfft(X * torch.view_as_complex(self.weight), n=self.length, dim=1,
                            norm="ortho")
        return self.norm(self.drop(y) + x)


class ItemAdapter(nn.Module):
    """History embeddings H (B, L, D) attend to the filtered embeddings of the retrieved items."""

    def __init__(self, length: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.length = length
        self.filter = FrequencyFilter(length, dim, dropout)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, retrieved: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
        """`retrieved` (B, length, D) left-padded with zero rows where `present` (B, length) is
        False."""
        c = self.filter(retrieved) * present.unsqueeze(-1)
        att = (h @ c.transpose(1, 2)) / math.sqrt(h.shape[-1])
        att = att.masked_fill(~present.unsqueeze(1), float("-inf")).softmax(-1)
        return self.norm(h + self.drop(att @ c))


class UserAdapter(nn.Module):
    """GRU over the previous rounds' user vectors + MLP on [state, current], residual, LayerNorm."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, u: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        _, state = self.gru(previous)
        return self.norm(u + self.drop(self.mlp(torch.cat([state[-1], u], -1))))


class AdaRetrieval(nn.Module):
    """A trained encoder plus the two adapters (the module fine-tuned by the Trainer)."""

    def __init__(self, encoder: SequenceEncoder, rounds: int, train_k: int,
                 dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.rounds, self.train_k = rounds, train_k
        self.length = max(1, (rounds - 1) * (train_k // rounds))
        self.item_adapter = ItemAdapter(self.length, encoder.dim, dropout)
        self.user_adapter = UserAdapter(encoder.dim, dropout)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def _user_vector(self, x: torch.Tensor, mask: torch.Tensor, retrieved: torch.Tensor,
                     previous: list[torch.Tensor]) -> torch.Tensor:
        enc = self.encoder
        if not previous:
            return enc.last(x, mask)
        r = retrieved[:, -self.length :]
        n = r.shape[1]
        c = enc.items.embed(r)
        present = torch.ones(r.shape, dtype=torch.bool, device=r.device)
        if n < self.length:  # left-pad to the filter length
            c = F.pad(c, (0, 0, self.length - n, 0))
            present = F.pad(present, (self.length - n, 0), value=False)

        def adapt(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            return self.item_adapter(out, c, present)

        handle = enc.items.register_forward_hook(adapt)
        try:
            u = enc.last(x, mask)
        finally:
            handle.remove()
        return self.user_adapter(u, torch.stack(previous, 1))

    def retrieve(self, x: torch.Tensor, k: int, seen: torch.Tensor | None = None,
                 targets: torch.Tensor | None = None, round_weight: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(items (B, k) in retrieval order, their scores, the round-weighted loss when
        `targets` are given). `seen` (B, L') item ids to exclude (0 = none)."""
        if k % self.rounds:
            raise ConfigError(f"k ({k}) is not a multiple of retrieval.ada.rounds ({self.rounds}); "
                              f"ask for a multiple of {self.rounds}.")
        per = k // self.rounds
        mask = x > 0
        W = self.encoder.items.output_matrix()
        B, n_rows = len(x), W.shape[0]
        if k > n_rows - 1:
            raise ConfigError(f"k ({k}) is larger than the catalogue ({n_rows - 1} items).")
        base = torch.zeros(B, n_rows, dtype=torch.bool, device=x.device)
        base[:, 0] = True
        if seen is not None:
            base.scatter_(1, seen.long(), True)
            base[:, 0] = True
        taken = torch.zeros_like(base)
        retrieved = torch.zeros(B, 0, dtype=torch.long, device=x.device)
        previous: list[torch.Tensor] = []
        scores_out, loss = [], None
        rows = torch.arange(B, device=x.device)
        for r in range(self.rounds):
            u = self._user_vector(x, mask, retrieved, previous)
            previous.append(u)
            s = u.float() @ W.float().T
            if targets is not None:
                drop = taken.clone()
                drop[rows, targets] = False  # the target always stays in the softmax
                drop[:, 0] = True
                logits = s.masked_fill(drop, float("-inf"))
                term = F.cross_entropy(logits, targets) * round_weight ** r
                loss = term if loss is None else loss + term
            s = s.detach().masked_fill(base | taken, float("-inf"))
            top_s, top_i = s.topk(per, dim=1)
            taken = taken.scatter(1, top_i, True)
            retrieved = torch.cat([retrieved, top_i], 1)
            scores_out.append(top_s)
        return retrieved, torch.cat(scores_out, 1), loss


def ada_batches(rows: np.ndarray, batch_size: int, seed: int, device: torch.device
                ) -> Any:
    """epoch -> batches of (inputs, targets): each training row cut at a random position (every
    prefix of a sequence is a training sample over the epochs), left-padded."""
    rows_t = torch.from_numpy(rows)
    L = rows.shape[1]
    lengths = (rows > 0).sum(1)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(seed + epoch)
        # the target is one of the last (length - 1) items: at least one item before it
        keep = rng.integers(1, np.maximum(lengths, 2))  # items dropped from the end, 1..len-1
        keep = np.minimum(keep, np.maximum(lengths - 1, 1)) - 1
        order = rng.permutation(len(rows))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            shift = torch.from_numpy(keep[idx])
            r = rows_t[torch.from_numpy(idx)]
            cols = torch.arange(L)[None, :] - shift[:, None]
            cut = torch.where(cols >= 0, r.gather(1, cols.clamp(min=0)), torch.zeros_like(r))
            width = int((cut > 0).sum(1).max())
            cut = cut[:, -width:]
            yield cut[:, :-1].to(device), cut[:, -1].to(device)

    return batches


@torch.no_grad()
def ada_topk(model: AdaRetrieval, offsets: np.ndarray, items: np.ndarray, k: int, max_len: int,
             filter_seen: bool, device: torch.device, batch_size: int = 512
             ) -> tuple[np.ndarray, np.ndarray]:
    """(top items (n, k), scores) by multi-round retrieval for CSR histories."""
    model.eval()
    n = len(offsets) - 1
    top = np.zeros((n, k), dtype=np.int64)
    top_s = np.zeros((n, k), dtype=np.float32)
    lengths = np.diff(offsets)
    order = np.argsort(lengths, kind="stable")
    for i in range(0, n, batch_size):
        rows = order[i : i + batch_size]
        starts, ends = offsets[rows], offsets[rows + 1]
        width = int(min(max_len, max(1, lengths[rows].max())))
        x = torch.from_numpy(pad_left(starts, ends, items, width)).long().to(device)
        seen = None
        if filter_seen:
            full = int(max(1, lengths[rows].max()))
            seen = torch.from_numpy(pad_left(starts, ends, items, full)).long().to(device)
        t, s, _ = model.retrieve(x, k, seen)
        top[rows], top_s[rows] = t.cpu().numpy(), s.float().cpu().numpy()
    return top, top_s
