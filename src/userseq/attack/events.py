"""Attacks on behaviour-sequence detectors (wiki-vandals): which next events should a flagged
vandal make to look benign?

* `event-gradient` (white box): a HotFlip-style search over the event vocabulary. For each of the
  next `steps` events, the gradient of the detector's logit with respect to the new event's page
  embedding ranks every plausible page to first order; the `shortlist` best pages times every
  plausible time gap are then scored exactly and the best is appended (greedy). A vandal stops as
  soon as it is no longer flagged.
* `event-transfer` (what is usually called "black box"): the same search on a *surrogate*
  detector trained on the same user split (so it has seen no test user), evaluated on the target.

Plausibility: a new event's page must be in the target's training page vocabulary and in the
user's neighbourhood (pages edited by training users who edited one of the user's pages, most
shared first; the most edited pages when the user has no neighbours), and its gap to the
previous event is one of the quantiles of benign training users' gaps. Appended events get their
edit-time features recomputed from the whole log, exactly as the detector would see them
(`event_data` on the log with the new events), before the target scores them.

Detectors read each user's first `model.max_len` events, so a vandal with that many events
already cannot change the detector's input by editing more: they stay in the denominator (as not
flipped) and `metrics.json` counts them.

    userseq attack run --detector RUN --data wiki-vandals --method event-gradient --out OUT
    userseq attack run --detector RUN --data wiki-vandals --method event-transfer \
        --black-box-surrogate RUN2 --out OUT
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from pydantic import Field

from userseq.attack.estimator import saved_split
from userseq.core.artifacts import read_json, write_json
from userseq.core.config import StrictModel, validate_config
from userseq.core.errors import ConfigError, DataError, UserseqError
from userseq.data.eventlog import EventLog
from userseq.detect.augment import TRAIN_EVENTS_FILE
from userseq.detect.data import (
    DetectSplit,
    EventData,
    event_data,
    load_event_data,
    stratified_split,
)
from userseq.detect.estimator import UserDetector
from userseq.detect.models import EventInputs, detect_model
from userseq.metrics.classification import binary_metrics, roc_auc_interval, wilson_interval

EVENT_METHODS = ("event-gradient", "event-transfer")
ATTACK_EVENTS_FILE = "attack_events.parquet"


class EventAttackConfig(StrictModel):
    """Settings of the event-sequence attacks (`--set KEY=VALUE`)."""

    steps: int = Field(5, ge=1, description="most events appended per vandal")
    shortlist: int = Field(8, ge=1, description="pages scored exactly per step (first-order best)")
    neighbourhood: int = Field(300, ge=1, description="plausible pages per user")
    gap_quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9],
                                       description="time gaps tried: quantiles of benign gaps")
    batch_size: int = Field(128, ge=1)
    max_users: int = Field(0, ge=0, description="attack at most this many users (seeded sample; "
                           "0 = all)")
    seed: int = 0


# ---------------------------------------------------------------------- detectors
def event_detector(run: str | Path) -> UserDetector:
    """An event-sequence detector run (a clear error for text detectors)."""
    det = UserDetector.load(run)
    if det.kind != "event":
        raise DataError(f"{run}: a text detector ('{det.config.model.name}'); event attacks need "
                        "an event-sequence detector (gru, transformer, ...). Attack text detectors "
                        "with --method petgen|hotflip|trigger|textbugger|copycat.")
    return det


def event_inputs(det: UserDetector, run: str | Path) -> EventInputs:
    """The detector's page-embedding input module: the differentiable path the white-box search
    needs; a ConfigError (suggesting the transfer attack) when the detector has none."""
    net = det.check_is_fitted()
    if detect_model(det.config.model.name).objective != "classify":
        raise ConfigError(f"{run}: model '{det.config.model.name}' is unsupervised (no detector "
                          "score was trained), so there is no classifier gradient to follow. "
                          "Attack a supervised event detector, or use --method event-transfer "
                          "with --black-box-surrogate RUN (a gru or transformer detector trained "
                          "on the same split).")
    found = [m for m in net.modules() if isinstance(m, EventInputs)]
    head = getattr(net, "head", None)
    if not found or head is None:
        raise ConfigError(f"{run}: model '{det.config.model.name}' has no differentiable event "
                          "input path (no page-embedding input and classification head), so "
                          "a white-box attack cannot take its gradients. Use --method "
                          "event-transfer with --black-box-surrogate RUN (a gru or transformer "
                          "detector trained on the same split).")
    return found[0]


# ---------------------------------------------------------------------- plausibility
def neighbourhood_pages(data: EventData, train: np.ndarray, users: np.ndarray, vocab_pages: set,
                        size: int, max_degree: int = 200,
                        n_popular: int = 50) -> list[np.ndarray]:
    """Per user: up to `size` log item indices edited by training users who share a page with the
    user (most shared first), plus the `n_popular` most edited pages, all in the detector's page
    vocabulary."""
    f = data.log.frame
    u_all, i_all = f["user"].to_numpy(), f["item"].to_numpy()
    is_train = np.zeros(data.n_users, dtype=bool)
    is_train[train] = True
    in_vocab = np.array([i in vocab_pages for i in range(data.log.n_items + 1)])
    pairs = pl.DataFrame({"u": u_all, "i": i_all}).unique()
    tr_pairs = pairs.filter(pl.Series(is_train[pairs["u"].to_numpy()]))
    popular = (tr_pairs.filter(pl.Series(in_vocab[tr_pairs["i"].to_numpy()]))
               .group_by("i").len().sort(["len", "i"], descending=[True, False])["i"]
               .to_numpy()[:size])
    mine = pairs.filter(pl.col("u").is_in(users.tolist()))
    # training neighbours through a shared page (not through the most edited pages, which link
    # everyone), then the vocabulary pages they edited
    degree = tr_pairs.group_by("i").len()
    links = tr_pairs.join(degree.filter(pl.col("len") <= max_degree), on="i").select("u", "i")
    nb = mine.join(links.rename({"u": "v"}), on="i").select("u", "v").unique()
    reach = nb.join(tr_pairs.rename({"u": "v"}), on="v").select("u", "i")
    reach = reach.filter(pl.Series(in_vocab[reach["i"].to_numpy()]))
    cand = reach.group_by("u", "i").len().sort(["u", "len", "i"],
                                               descending=[False, True, False])
    by_user = {int(k[0]): g["i"].to_numpy()[:size]
               for k, g in cand.group_by("u", maintain_order=True)}
    common = popular[:n_popular]  # pages anyone edits (the most edited ones) are plausible too
    return [np.unique(np.concatenate([by_user.get(int(u), popular[:0]), common]))
            for u in users]


def benign_gaps(data: EventData, train: np.ndarray, quantiles: list[float]) -> list[float]:
    """Quantiles (timestamp units) of the gaps between consecutive edits of benign training
    users."""
    assert data.labels is not None
    f = data.log.frame
    u, ts = f["user"].to_numpy(), f["timestamp"].to_numpy().astype(np.float64)
    same = u[1:] == u[:-1]
    benign = np.zeros(data.n_users, dtype=bool)
    benign[train[data.labels[train] == 0]] = True
    keep = same & benign[u[1:]]
    gaps = (ts[1:] - ts[:-1])[keep]
    if not len(gaps):
        raise DataError(f"{data.source}: no benign training user has two events; the attack "
                        "needs benign time gaps.")
    return [float(max(1.0, round(float(np.quantile(gaps, q))))) for q in quantiles]


# ---------------------------------------------------------------------- appending events
def with_appended(data: EventData, appended: pl.DataFrame) -> EventData:
    """`data` with extra events (user_id, item_id, timestamp) appended; every edit-time feature
    recomputed over the whole log, as at scoring time."""
    log = data.log
    f = log.frame
    base = pl.DataFrame({"user_id": log.user_ids.cast(pl.String).gather(f["user"].to_numpy()),
                         "item_id": log.item_ids.cast(pl.String).gather(f["item"].to_numpy() - 1),
                         "timestamp": f["timestamp"]})
    extra = appended.select(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String),
                            pl.col("timestamp").cast(base["timestamp"].dtype))
    new_log = EventLog.from_frame(pl.concat([base, extra]), source=f"{log.source} + attack",
                                  timestamp_kind=log.timestamp_kind)
    labels = None
    if data.labels is not None:
        labels = pl.DataFrame({"user_id": log.user_ids.cast(pl.String), "label": data.labels})
    return event_data(new_log, labels, label_source="attacked copy")


def _user_index(data: EventData, ids: list[str]) -> np.ndarray:
    where = {str(u): i for i, u in enumerate(data.user_ids.cast(pl.String).to_list())}
    return np.array([where[str(u)] for u in ids], dtype=np.int64)


# ---------------------------------------------------------------------- the search
class EventSearch:
    """Greedy gradient-guided search of appended events against one (white-box) detector."""

    def __init__(self, det: UserDetector, run: str | Path, data: EventData, train: np.ndarray,
                 cfg: EventAttackConfig) -> None:
        self.det, self.cfg, self.data = det, cfg, data
        self.inputs = event_inputs(det, run)
        self.net = det.check_is_fitted().eval()
        self.max_len = det.config.model.max_len
        self.gaps = benign_gaps(data, train, cfg.gap_quantiles)
        assert det.pages_ is not None
        self.page_index, self.feats = det.event_tables(data)
        self.offsets = data.log.sequences()[0]
        # log item -> detector page index (1 = rare page); appended events come after the user's
        # last one, when (causal vocabulary) most pages are known: the final scoring is exact
        item_pages = np.ones(data.log.n_items + 1, dtype=np.int64)
        item_pages[1:] = det.page_rows(data.log.item_ids)
        self.item_pages = item_pages
        self.vocab_items = {int(i) for i in np.flatnonzero(item_pages > 1)}
        self.train = train
        self.names = det.feature_names_
        self.ns = namespace_columns(data, self.names)

    # features of a new event (search-time approximation; the final scoring recomputes exactly)
    def _new_features(self, prev_item: int, item: int, gap: float, ts: float, pos: int,
                      seen: set[int]) -> np.ndarray:
        x = np.zeros(len(self.names), dtype=np.float32)
        vals = {"gap_log": np.log1p(gap) / 10.0, "gap_lt_3min": gap < 180,
                "gap_3_15min": 180 <= gap < 900, "gap_gt_15min": gap >= 900,
                "same_page_as_previous": item == prev_item, "page_edited_before": item in seen,
                "position_log": np.log1p(pos) / 5.0}
        if self.data.log.timestamp_kind == "time":
            hour = (ts % 86400) / 3600.0
            vals["hour_sin"], vals["hour_cos"] = np.sin(2 * np.pi * hour / 24), np.cos(
                2 * np.pi * hour / 24)
        for j, n in enumerate(self.names):
            if n in vals:
                x[j] = float(vals[n])
        x += self.ns[item]
        return x

    def _batch(self, seqs: list[tuple[list[int], list[np.ndarray]]]) -> dict[str, torch.Tensor]:
        L = max(len(p) for p, _ in seqs)
        F = len(self.names)
        pages = torch.zeros(len(seqs), L, dtype=torch.long)
        feats = torch.zeros(len(seqs), L, F)
        for r, (p, x) in enumerate(seqs):
            pages[r, L - len(p):] = torch.tensor(p)
            feats[r, L - len(p):] = torch.from_numpy(np.stack(x))
        return {"pages": pages.to(self.det.device_), "features": feats.to(self.det.device_)}

    def _logits(self, seqs) -> np.ndarray:
        with torch.no_grad():
            return self.net(**self._batch(seqs)).float().cpu().numpy()

    def _gradients(self, seqs) -> np.ndarray:
        """d logit / d (page embedding of the last event), per sequence."""
        grads: dict[str, torch.Tensor] = {}

        def hook(_m, _inp, out):
            out.retain_grad()
            grads["emb"] = out
            return out

        h = self.inputs.pages.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logit = self.net(**self._batch(seqs))
                logit.sum().backward()
        finally:
            h.remove()
        self.net.zero_grad(set_to_none=True)
        g = grads["emb"].grad
        assert g is not None
        return g[:, -1].float().cpu().numpy()

    def run(self, users: np.ndarray, threshold: float,
            candidates: list[np.ndarray]) -> tuple[list[list[tuple[int, float]]], np.ndarray]:
        """Appended (item, timestamp) events per user and their final search-time logits."""
        E = self.inputs.pages.output_matrix().detach().float().cpu().numpy()
        thr_logit = float(np.log(threshold / max(1e-12, 1 - threshold))) if 0 < threshold < 1 \
            else 0.0
        items = self.data.log.frame["item"].to_numpy()
        ts_all = self.data.log.frame["timestamp"].to_numpy().astype(np.float64)
        out: list[list[tuple[int, float]]] = []
        final = np.zeros(len(users))
        bs = self.cfg.batch_size
        for b0 in range(0, len(users), bs):
            ub = users[b0:b0 + bs]
            state = []
            for u in ub:
                s, e = self.offsets[u], self.offsets[u + 1]
                p = self.page_index[1 + s:1 + e].tolist()
                x = [self.feats[1 + r].numpy() for r in range(s, e)]
                state.append({"p": p, "x": x, "items": items[s:e].tolist(),
                              "t": float(ts_all[e - 1]), "seen": set(items[s:e].tolist()),
                              "added": [], "done": False})
            for _step in range(self.cfg.steps):
                live = [k for k, st in enumerate(state)
                        if not st["done"] and len(st["p"]) < self.max_len]
                if not live:
                    break
                # placeholder event (most plausible page, median gap) -> gradient at its slot
                probe = []
                for k in live:
                    st = state[k]
                    it = int(candidates[b0 + k][0])
                    probe.append(self._extend(st, it, self.gaps[len(self.gaps) // 2]))
                g = self._gradients(probe)
                trials, owners = [], []
                for j, k in enumerate(live):
                    cand = candidates[b0 + k]
                    first_order = E[self.item_pages[cand]] @ g[j]
                    best = cand[np.argsort(first_order, kind="stable")[:self.cfg.shortlist]]
                    for it in best:
                        for gap in self.gaps:
                            trials.append(self._extend(state[k], int(it), gap))
                            owners.append((k, int(it), gap))
                logits = self._logits(trials)
                for k in live:
                    rows = [r for r, o in enumerate(owners) if o[0] == k]
                    r = rows[int(np.argmin(logits[rows]))]
                    _, it, gap = owners[r]
                    st = state[k]
                    p, x = trials[r]
                    st["p"], st["x"] = p, x
                    st["t"] += gap
                    st["items"].append(it)
                    st["seen"].add(it)
                    st["added"].append((it, st["t"]))
                    st["logit"] = float(logits[r])
                    st["done"] = float(logits[r]) < thr_logit
            for k, st in enumerate(state):
                out.append(st["added"])
                final[b0 + k] = st.get("logit", np.nan)
        return out, final

    def _extend(self, st: dict[str, Any], item: int, gap: float):
        x = self._new_features(st["items"][-1], item, gap, st["t"] + gap, len(st["p"]), st["seen"])
        return [*st["p"], int(self.item_pages[item])], [*st["x"], x]


def namespace_columns(data: EventData, names: list[str]) -> np.ndarray:
    """Per log item: the one-hot of its namespace group in the feature layout `names` (read off
    the item's events in `data.features`)."""
    out = np.zeros((data.log.n_items + 1, len(names)), dtype=np.float32)
    cols = [j for j, n in enumerate(names) if n.startswith("ns_") or n == "own_user_page"]
    cols = [j for j in cols if names[j] != "own_user_page"]
    items = data.log.frame["item"].to_numpy()
    out[items[:, None], np.array(cols)[None, :]] = data.features[:, cols]
    return out


# ---------------------------------------------------------------------- evaluation
def _metrics(y: np.ndarray, s: np.ndarray, thr: float, seed: int) -> dict[str, Any]:
    m = binary_metrics(y, s, thr)
    m["roc_auc_ci"] = roc_auc_interval(y, s, seed=seed)
    return m


def attack_split(run: str | Path, data: EventData, det: UserDetector) -> DetectSplit:
    """The detector run's user split: RUN/users.parquet, else recomputed from its config."""
    p = Path(run) / "users.parquet"
    cfg = det.config
    if not p.is_file():
        assert data.labels is not None
        return stratified_split(data.labels, cfg.valid, cfg.test, cfg.split_seed)
    return saved_split(p, data.user_ids.cast(pl.String).to_list(), cfg.split_seed)


def find_attacks(det: UserDetector, run: str | Path, data: EventData, split: DetectSplit,
                 users: np.ndarray, cfg: EventAttackConfig, threshold: float,
                 ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Search appended events for `users` against `det` (white box); a table (user_id, item_id,
    timestamp, step) of the new events and search facts."""
    search = EventSearch(det, run, data, np.asarray(split.train), cfg)
    cand = neighbourhood_pages(data, np.asarray(split.train), users, search.vocab_items,
                               cfg.neighbourhood)
    added, _ = search.run(users, threshold, cand)
    ids = data.user_ids.cast(pl.String).to_list()
    item_ids = data.log.item_ids.cast(pl.String)
    rows = [(ids[u], str(item_ids[it - 1]), t, j) for u, evs in zip(users, added, strict=True)
            for j, (it, t) in enumerate(evs)]
    ts_dtype = data.log.frame["timestamp"].dtype
    table = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String,
                                       "timestamp": pl.Float64, "step": pl.Int64}, orient="row")
    table = table.with_columns(pl.col("timestamp").cast(ts_dtype))
    n_added = np.array([len(a) for a in added])
    info = {"gaps": search.gaps, "mean_events_appended": float(n_added.mean()) if len(added)
            else 0.0, "candidates_per_user": float(np.mean([len(c) for c in cand])) if cand
            else 0.0}
    return table, info


def run_event_attack(detector: str | Path, data: str | Any, method: str, out: str | Path,
                     surrogate: str | Path | None = None, labels: str | Path | None = None,
                     overrides: dict[str, Any] | None = None, train_events: bool = False,
                     ) -> dict[str, Any]:
    """Attack the detector's flagged test vandals; write OUT/metrics.json (`clean`, `attacked`,
    the flip rate with its denominator and 95% interval), OUT/attack_events.parquet and, with
    `train_events`, OUT/train_events.parquet (the attack on flagged training vandals, the input of
    `userseq detect train --adversarial OUT`)."""
    if method not in EVENT_METHODS:
        raise ConfigError(f"unknown event attack '{method}'. Choose one of: "
                          f"{', '.join(EVENT_METHODS)}.")
    cfg = validate_config(EventAttackConfig,
                          {k.removeprefix("events."): v for k, v in (overrides or {}).items()},
                          "--set (event attack)")
    target = event_detector(detector)
    if method == "event-transfer" and surrogate is None:
        raise ConfigError("event-transfer searches on a surrogate: pass --black-box-surrogate RUN "
                          "(an event detector trained on the same user split as --detector).")
    if method == "event-gradient" and surrogate is not None:
        raise ConfigError("event-gradient is white box (the target's own gradients); use "
                          "--method event-transfer with --black-box-surrogate.")
    d = data if isinstance(data, EventData) else load_event_data(
        data, labels, with_leakage=target.config.with_leakage)
    if d.labels is None:
        raise DataError(f"{d.source}: the attack needs user labels (who is a vandal).")
    split = attack_split(detector, d, target)
    source, source_run = target, detector
    if surrogate is not None:
        from userseq.attack.estimator import same_split

        source, source_run = event_detector(surrogate), surrogate
        same_split(split, attack_split(surrogate, d, source), str(surrogate))
    event_inputs(source, source_run)  # white box on the source: a clear error if impossible
    t0 = __import__("time").time()
    result, attacked_table = evaluate_attack(target, source, source_run, d, split,
                                             np.asarray(split.test), cfg)
    result.update({"method": method, "detector": str(detector),
                   "detector_model": target.config.model.name,
                   "surrogate": str(surrogate) if surrogate else None,
                   "setting": ("transfer from a surrogate trained on the same split" if surrogate
                               else "white-box"),
                   "config": cfg.model_dump(), "seconds": round(__import__("time").time() - t0, 1),
                   "split": {"train": len(split.train), "valid": len(split.valid),
                             "test": len(split.test)}})
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    attacked_table.write_parquet(o / ATTACK_EVENTS_FILE)
    if train_events:
        tr = np.asarray(split.train)
        s_tr = source.predict_proba(d, tr)
        room = np.diff(d.log.sequences()[0])[tr] < source.config.model.max_len
        flagged = tr[(d.labels[tr] == 1) & (s_tr >= source.threshold(None)) & room]
        table, _ = find_attacks(source, source_run, d, split, _cap(flagged, cfg), cfg,
                                source.threshold(None))
        table.write_parquet(o / TRAIN_EVENTS_FILE)
        result["train_events"] = {"users": int(table["user_id"].n_unique()),
                                  "events": table.height}
    write_json(result, o / "metrics.json")
    return result


def _cap(users: np.ndarray, cfg: EventAttackConfig) -> np.ndarray:
    if cfg.max_users and len(users) > cfg.max_users:
        rng = np.random.default_rng(cfg.seed)
        return np.sort(rng.choice(users, cfg.max_users, replace=False))
    return users


def evaluate_attack(target: UserDetector, source: UserDetector, source_run: str | Path,
                    data: EventData, split: DetectSplit, test: np.ndarray,
                    cfg: EventAttackConfig) -> tuple[dict[str, Any], pl.DataFrame]:
    """Clean vs attacked metrics of `target` on `test` users; the attack is searched on `source`
    for the test vandals the target flags (that have room in the detector's window)."""
    assert data.labels is not None
    y = data.labels[test]
    thr = target.threshold(None)
    clean = target.predict_proba(data, test)
    flagged = test[(y == 1) & (clean >= thr)]
    lengths = np.diff(data.log.sequences()[0])
    window = min(target.config.model.max_len, source.config.model.max_len)
    room = flagged[lengths[flagged] < window]
    attacked_users = _cap(room, cfg)
    table, info = find_attacks(source, source_run, data, split, attacked_users, cfg,
                               source.threshold(None))
    scores = clean.copy()
    if table.height:
        new = with_appended(data, table)
        ids = data.user_ids.cast(pl.String).to_list()
        idx_new = _user_index(new, [ids[u] for u in attacked_users])
        s_new = target.predict_proba(new, idx_new)
        pos = {u: i for i, u in enumerate(test.tolist())}
        scores[[pos[u] for u in attacked_users.tolist()]] = s_new
    flipped = int(((scores < thr) & (clean >= thr) & (y == 1)).sum())
    n_flag = int(len(flagged))
    lo, hi = wilson_interval(flipped, n_flag)
    n_sample = len(attacked_users)
    sample_flips = int((scores[np.isin(test, attacked_users)] < thr).sum())
    result = {
        "clean": _metrics(y, clean, thr, cfg.seed), "attacked": _metrics(y, scores, thr, cfg.seed),
        "threshold": thr,
        "flip_rate": flipped / n_flag if n_flag else None, "flip_rate_ci": [lo, hi],
        "flipped": flipped, "flagged_vandals": n_flag, "test_vandals": int((y == 1).sum()),
        "flagged_without_room": int(len(flagged) - len(room)),
        "attacked_users": n_sample, "flips_among_attacked": sample_flips,
        "note": ("flip rate = flagged test vandals no longer flagged / flagged test vandals; "
                 "vandals whose first max_len events already fill the detector's window, and "
                 "those outside the max_users sample, count as not flipped"),
        **info,
    }
    return result, table


def load_metrics(out: str | Path) -> dict[str, Any]:
    p = Path(out) / "metrics.json"
    if not p.is_file():
        raise UserseqError(f"{p}: not found; run `userseq attack run` first.")
    return read_json(p)
