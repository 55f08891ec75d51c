"""Streaming user state for recurrent encoders (`ssm`, `gru4rec`).

A `UserState` holds, for a batch of users, the encoder's recurrent state after each user's last
event (`encoder.init_state` / `encoder.step`), the user vector at that point and the number of
events seen. `advance` feeds new events one step at a time, so an update costs O(new events),
whatever the length of the history. The state tensors are plain float tensors (complex SSM states
as real pairs): `to_tensors` / `from_tensors` give a flat safetensors-ready dict.

Scores from a state equal those of re-encoding the history (`NextItemRecommender.encode`) while
the history fits in `model.max_len`; beyond it the state keeps summarising the whole history
(the batch encoder reads the last `max_len` events).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from userseq.core.errors import UserseqError
from userseq.encoders import SequenceEncoder

VECTOR, COUNT = "vector", "n_events"


@dataclass(frozen=True)
class UserState:
    """Recurrent state of `len(self)` users: `tensors` (name -> (B, ...)), `vector` (B, D) the
    user vectors after the last event (zeros before any), `n_events` (B,) events seen."""

    tensors: dict[str, torch.Tensor]
    vector: torch.Tensor
    n_events: np.ndarray

    def __len__(self) -> int:
        return len(self.n_events)

    def row(self, i: int) -> UserState:
        """The state of user i alone (a batch of one)."""
        return UserState({k: v[i : i + 1].clone() for k, v in self.tensors.items()},
                         self.vector[i : i + 1].clone(), self.n_events[i : i + 1].copy())

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict for safetensors: the state tensors, `vector` and `n_events`."""
        return {**{f"state.{k}": v.contiguous() for k, v in self.tensors.items()},
                VECTOR: self.vector.contiguous(),
                COUNT: torch.from_numpy(self.n_events.astype(np.int64))}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> UserState:
        tensors = {k.removeprefix("state."): v for k, v in t.items() if k.startswith("state.")}
        return cls(tensors, t[VECTOR], t[COUNT].numpy().astype(np.int64))

    @staticmethod
    def concat(states: list[UserState]) -> UserState:
        keys = states[0].tensors
        return UserState({k: torch.cat([s.tensors[k] for s in states]) for k in keys},
                         torch.cat([s.vector for s in states]),
                         np.concatenate([s.n_events for s in states]))


def check_recurrent(encoder: SequenceEncoder, name: str) -> None:
    if not encoder.recurrent:
        raise UserseqError(f"encoder '{name}' has no recurrent state: streaming updates need a "
                           "recurrent encoder (ssm without attention blocks, or gru4rec); "
                           "re-encode the history instead (recommend_history).")


def empty_state(encoder: SequenceEncoder, batch: int, device: torch.device) -> UserState:
    """The state of `batch` users with no events."""
    return UserState(encoder.init_state(batch, device), torch.zeros(batch, encoder.dim),
                     np.zeros(batch, dtype=np.int64))


@torch.no_grad()
def advance(encoder: SequenceEncoder, state: UserState, events: list[np.ndarray],
            device: torch.device) -> UserState:
    """The state after each user's new events (item indices 1..n_items, oldest first; users may
    get different numbers, including none). `state` is not modified."""
    if encoder.training:
        encoder.eval()
    n = np.array([len(e) for e in events], dtype=np.int64)
    B, T = len(events), int(n.max()) if len(events) else 0
    ids = np.zeros((B, T), dtype=np.int64)
    for i, e in enumerate(events):
        ids[i, : len(e)] = e
    ids_t = torch.from_numpy(ids).to(device)
    tensors = {k: v.to(device) for k, v in state.tensors.items()}
    vector = state.vector.to(device).clone()
    for t in range(T):
        real = ids_t[:, t] > 0
        new, h = encoder.step(tensors, ids_t[:, t].clamp(min=1))
        tensors = {k: torch.where(real.view(-1, *[1] * (v.dim() - 1)), new[k], v)
                   for k, v in tensors.items()}
        vector = torch.where(real.unsqueeze(1), h.float(), vector)
    return UserState({k: v.cpu() for k, v in tensors.items()}, vector.cpu(), state.n_events + n)
