"""Train/validation/test splits for next-item evaluation.

* Leave-one-out: per user, the last event is the test target, the second-to-last the validation
  target; training uses the rest. Needs >= 3 events per user.
* Global temporal split: two cut-off times. Training events are strictly before the validation
  cut-off; each user's first event in [valid_cut, test_cut) is a validation target, and each
  user's first event at/after test_cut is a test target, with everything before it as history.
  No training event is at or after the validation cut-off (tested).
* Cold start: a seeded random share of the items is held out of training entirely (every event
  on them is removed from the training sequences); half of them are validation items, half test
  items. A user whose last event is a held-out test (validation) item is a test (validation)
  user, with all earlier events as history. Test targets are therefore never in training.
  Every other user (last event on a warm item, 2+ events) has that last event held out too: the
  `warm` test group (`Split.groups`), so one run measures cold, warm and all targets.

Histories are CSR arrays (offsets, items) over the `EventLog`'s item indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from userseq.core.errors import DataError
from userseq.data.batches import csr_take
from userseq.data.eventlog import EventLog


@dataclass
class EvalSet:
    """Targets to rank: for user `users[i]`, history `items[offsets[i]:offsets[i+1]]`, target
    `targets[i]`."""

    users: np.ndarray
    targets: np.ndarray
    offsets: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def history(self, i: int) -> np.ndarray:
        return self.items[self.offsets[i] : self.offsets[i + 1]]


@dataclass
class Split:
    """Training sequences per user (CSR) plus validation and test target sets."""

    kind: str
    train_offsets: np.ndarray
    train_items: np.ndarray
    valid: EvalSet
    test: EvalSet
    info: dict = field(default_factory=dict)
    train_max_timestamp: float | None = None
    # further named test sets, reported beside `test` (cold-start: "warm", leave-one-out targets
    # of the users whose last event is a warm item)
    groups: dict[str, EvalSet] = field(default_factory=dict)


def leave_one_out(log: EventLog) -> Split:
    offsets, items = log.sequences()
    lengths = np.diff(offsets)
    short = np.flatnonzero(lengths < 3)
    if len(short):
        u = short[0]
        raise DataError(
            f"{log.source}: leave-one-out needs at least 3 events per user (train, validation, "
            f"test), but {len(short):,} users have fewer (e.g. user {log.user_ids[int(u)]!r} has "
            f"{int(lengths[u])}). "
            "Drop them with min_user_events: 3 (CLI: --min-user-events 3; the count is reported) "
            "or use the temporal split."
        )
    users = np.arange(log.n_users, dtype=np.int64)
    starts, ends = offsets[:-1], offsets[1:]
    train_offsets, train_items = csr_take(offsets, items, starts, ends - 2)
    valid = EvalSet(users, items[ends - 2].copy(), train_offsets, train_items)
    test_offsets, test_items = csr_take(offsets, items, starts, ends - 1)
    test = EvalSet(users, items[ends - 1].copy(), test_offsets, test_items)
    return Split("leave-one-out", train_offsets, train_items, valid, test,
                 info={"users": log.n_users})


def temporal_split(
    log: EventLog, test_quantile: float = 0.9, valid_quantile: float = 0.8,
    test_cut: float | None = None, valid_cut: float | None = None,
) -> Split:
    """Global time split at the given quantiles of event time (or explicit cut-off values)."""
    ts = log.timestamps()
    if test_cut is None:
        test_cut = float(np.quantile(ts, test_quantile, method="higher"))
    if valid_cut is None:
        valid_cut = float(np.quantile(ts, valid_quantile, method="higher"))
    if not valid_cut <= test_cut:
        raise DataError(f"temporal split: valid cut-off {valid_cut} must not be after test "
                        f"cut-off {test_cut}.")
    offsets, items = log.sequences()
    starts, ends = offsets[:-1], offsets[1:]
    users = np.arange(log.n_users)
    # per user: number of events before a cut = searchsorted within the user's (sorted) timestamps
    user_of_event = np.repeat(users, np.diff(offsets))
    before_valid = np.bincount(user_of_event[ts < valid_cut], minlength=log.n_users)
    before_test = np.bincount(user_of_event[ts < test_cut], minlength=log.n_users)
    train_offsets, train_items = csr_take(offsets, items, starts, starts + before_valid)
    info: dict = {"valid_cut": valid_cut, "test_cut": test_cut}

    def targets(n_before: np.ndarray, upper: float | None, name: str) -> EvalSet:
        pos = starts + n_before
        has = pos < ends
        if upper is not None:
            has &= ts[np.minimum(pos, len(ts) - 1)] < upper
        no_history = has & (n_before == 0)
        keep = has & (n_before > 0)
        info[f"{name}_users"] = int(keep.sum())
        info[f"{name}_users_without_history"] = int(no_history.sum())
        u = users[keep]
        h_off, h_items = csr_take(offsets, items, starts[u], pos[u])
        return EvalSet(u, items[pos[u]].copy(), h_off, h_items)

    valid = targets(before_valid, test_cut, "valid")
    test = targets(before_test, None, "test")
    if len(test) == 0:
        raise DataError(f"{log.source}: temporal split left no test users; lower test_quantile "
                        "or set test_cut.")
    _, train_ts = csr_take(offsets, ts, starts, starts + before_valid)
    return Split("temporal", train_offsets, train_items, valid, test, info,
                 train_max_timestamp=float(train_ts.max()) if len(train_ts) else None)


def cold_start_split(log: EventLog, cold_fraction: float = 0.2, seed: int = 0) -> Split:
    """Hold `cold_fraction` of the items out of training; users whose last event is one of them
    are evaluated on it (half the items for validation, half for test)."""
    offsets, items = log.sequences()
    n_cold = int(round(cold_fraction * log.n_items))
    if n_cold < 2:
        raise DataError(f"{log.source}: cold-start split: cold_fraction {cold_fraction} of "
                        f"{log.n_items} items holds out fewer than 2 items; raise "
                        "data.cold_fraction.")
    cold = np.random.default_rng(seed).permutation(np.arange(1, log.n_items + 1))[:n_cold]
    role = np.zeros(log.n_items + 1, dtype=np.int8)  # 1 = validation item, 2 = test item
    role[cold[: n_cold // 2]], role[cold[n_cold // 2 :]] = 1, 2
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    users = np.arange(log.n_users, dtype=np.int64)
    last = items[np.maximum(ends - 1, 0)]
    keep = role[items] == 0
    warm_users = users[(lengths >= 2) & (role[last] == 0)]
    keep[ends[warm_users] - 1] = False  # their last event is the warm test target
    user_of_event = np.repeat(users, lengths)
    kept_per_user = np.bincount(user_of_event[keep], minlength=log.n_users)
    train_offsets = np.concatenate([[0], np.cumsum(kept_per_user)])
    train_items = items[keep]
    info: dict = {"cold_items": n_cold, "cold_fraction": cold_fraction, "split_seed": seed,
                  "train_events_removed": int((~keep).sum())}

    def targets(r: int, name: str) -> EvalSet:
        u = users[(lengths >= 2) & (role[last] == r)]
        h_off, h_items = csr_take(offsets, items, starts[u], ends[u] - 1)
        info[f"{name}_users"] = int(len(u))
        return EvalSet(u, last[u].copy(), h_off, h_items)

    valid, test = targets(1, "valid"), targets(2, "test")
    w_off, w_items = csr_take(offsets, items, starts[warm_users], ends[warm_users] - 1)
    warm = EvalSet(warm_users, last[warm_users].copy(), w_off, w_items)
    info["warm_test_users"] = len(warm_users)
    if len(test) == 0 or len(valid) == 0:
        part = "test" if len(test) == 0 else "validation"
        raise DataError(f"{log.source}: cold-start split left no {part} users (no user's last "
                        "event is a held-out item); raise data.cold_fraction or change "
                        "data.split_seed.")
    return Split("cold-start", train_offsets, train_items, valid, test, info,
                 groups={"warm": warm})


def subsample_train_users(split: Split, fraction: float, seed: int = 0) -> Split:
    """The split with the training events of a seeded `fraction` of the users only (at least one
    user); its validation and test sets are unchanged."""
    if fraction >= 1:
        return split
    n = len(split.train_offsets) - 1
    pick = np.sort(np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))])
    starts, ends = split.train_offsets[:-1], split.train_offsets[1:]
    keep = np.zeros(n, dtype=bool)
    keep[pick] = True
    lengths = np.where(keep, ends - starts, 0)
    _, items = csr_take(split.train_offsets, split.train_items, starts[keep], ends[keep])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(split.train_offsets.dtype)
    info = {**split.info, "train_user_fraction": fraction, "train_users": int(len(pick))}
    return Split(split.kind, offsets, items, split.valid, split.test, info,
                 split.train_max_timestamp, split.groups)


def split_options(data: Any) -> dict[str, Any]:
    """The keyword arguments of `make_split` for a `DataConfig`'s split (quantiles, cold-start
    share and seed)."""
    if data.split == "temporal":
        return {"test_quantile": data.test_quantile, "valid_quantile": data.valid_quantile}
    if data.split == "cold-start":
        return {"cold_fraction": data.cold_fraction, "seed": data.split_seed}
    return {}


def make_split(log: EventLog, kind: str = "loo", **kw) -> Split:
    if kind in ("loo", "leave-one-out"):
        return leave_one_out(log)
    if kind in ("temporal", "time"):
        return temporal_split(log, **kw)
    if kind == "cold-start":
        return cold_start_split(log, **kw)
    raise DataError(f"unknown split '{kind}'. Use 'loo' (leave-one-out), 'temporal' or "
                    "'cold-start'.")
