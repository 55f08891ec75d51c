"""Detection data: labelled user sequences (events or posts), labels, edit-time features, splits.

* `EventData`: an `EventLog` plus per-event features derived *at edit time* (only the user's own
  past and the event itself: gaps, re-edits, namespace, hour, ...) and a 0/1 label per user.
* `TextData`: per-user lists of posts (PETGEN layout) with labels.
* `load_wiki_vandals()` / `load_petgen_wiki()`: the two named detection datasets.
* `read_labels()` / `attach_labels()`: the user-label table (`user_id`, `label`), validated like
  events.
* `stratified_split()` / `stratified_folds()`: seeded, stratified splits by user.

Columns known only after the fact (`isReverted`, `revertTime`, `cluebotRevert`, STiKi scores) are
kept apart in `EventData.leakage` and never enter `features` unless asked for explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from userseq.core.errors import DataError
from userseq.data.datasets import dataset_path
from userseq.data.datasets.wiki import read_petgen_wiki, read_wiki_vandals
from userseq.data.eventlog import Columns, EventLog, lookup_ids
from userseq.data.io import collect_table, scan_table

LEAKAGE_COLUMNS = ("isReverted", "revertTime", "cluebotRevert", "stiki_score", "stiki_REP_USER")

# Wikipedia namespaces (meta pages); anything else with a colon is an article title with a colon.
NAMESPACES = ("User", "User talk", "Talk", "Wikipedia", "Wikipedia talk", "Template",
              "Template talk", "File", "File talk", "Category", "Category talk", "Draft",
              "Draft talk", "Help", "Help talk", "Portal", "Portal talk", "Book", "Module",
              "MediaWiki", "Special")
NS_GROUPS = ("main", "user", "user_talk", "talk", "wikipedia", "template", "file", "category",
             "draft", "other_ns")


def _ns_group(ns: str) -> str:
    if ns == "":
        return "main"
    low = ns.lower()
    if low == "user":
        return "user"
    if low == "user talk":
        return "user_talk"
    if low == "talk":
        return "talk"
    base = low.removesuffix(" talk")
    return base if base in NS_GROUPS else "other_ns"


FEATURE_NAMES = (
    "first_event", "gap_log", "gap_lt_3min", "gap_3_15min", "gap_gt_15min",
    "same_page_as_previous", "page_edited_before", "own_user_page", "page_new_in_log",
    "position_log", "hour_sin", "hour_cos",
    *(f"ns_{g}" for g in NS_GROUPS),
)


@dataclass
class EventData:
    """Labelled event sequences with edit-time features aligned with `log.frame` rows."""

    log: EventLog
    features: np.ndarray  # (n_events, F) float32
    feature_names: list[str]
    labels: np.ndarray | None  # (n_users,) int64 0/1, or None (scoring)
    leakage: pl.DataFrame | None = None  # after-the-fact columns, aligned with log.frame
    source: str = ""

    @property
    def n_users(self) -> int:
        return self.log.n_users

    @property
    def user_ids(self) -> pl.Series:
        return self.log.user_ids

    def page_ids(self) -> pl.Series:
        """Original item (page) id of every event, in `log.frame` order."""
        return self.log.item_ids.gather(self.log.frame["item"].to_numpy() - 1)


@dataclass
class TextData:
    """Per-user ordered posts with labels (and an optional target context per user)."""

    user_ids: pl.Series
    posts: list[list[str]]
    labels: np.ndarray | None
    contexts: list[str] | None = None
    source: str = ""
    relevancy: list[list[int]] | None = None  # per history post: 1 if on the target context
    post_count: dict[str, Any] | None = None  # what `fix_post_count` did (None: untouched)

    @property
    def n_users(self) -> int:
        return len(self.posts)


@dataclass
class DetectSplit:
    """User indices of each part; no user is in two parts."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    seed: int = 0
    fold: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- named datasets
def dataset_dir(name: str, needs: str) -> Path:
    """Local directory of a detection dataset, found like every named dataset (`dataset_path`)."""
    path = dataset_path(name)
    if path is None or not (path / needs).is_file():
        raise DataError(f"dataset {name!r}: no local copy found (looked for {name}/{needs} under "
                        "$USERSEQ_DATA, ../shared/data and the cache). Set $USERSEQ_DATA to the "
                        "directory holding it.")
    return path


def load_wiki_vandals(with_leakage: bool = False, directory: Path | None = None) -> EventData:
    """VEWS edits as `EventData`; `with_leakage` adds the after-the-fact columns as features."""
    events, labels = read_wiki_vandals(directory)
    log = EventLog.from_frame(events, source="wiki-vandals")
    return event_data(log, labels, with_leakage=with_leakage)


def load_petgen_wiki(directory: Path | None = None) -> TextData:
    """PETGEN Wikipedia post sequences (794 users, 5-20 posts, balanced)."""
    df = read_petgen_wiki(directory)
    return TextData(user_ids=df["user_id"], posts=df["posts"].to_list(),
                    labels=df["label"].to_numpy().astype(np.int64),
                    contexts=df["context"].to_list(),
                    source="petgen-wiki", relevancy=df["relevancy"].to_list())


# ---------------------------------------------------------------------- fixed post counts
# petgen-wiki is confounded by post count (benign median 20 posts, malicious 12: a length-only rule
# reaches ROC-AUC 0.667), so detectors and attacks read a fixed number of posts per user there.
# 8 keeps 683 of 794 users (drops 41 benign, 70 malicious); 'last' keeps the PETGEN layout (the
# target context and same-context flags belong to the last post).
DATASET_FIXED_POSTS = {"petgen-wiki": 8}
KEEP = ("last", "first")


def fix_post_count(data: TextData, n: int, keep: str = "last", drop_short: bool = True,
                   ) -> TextData:
    """Every user with exactly `n` posts: the last (or first) `n`; users with fewer are dropped
    (counted per class in `post_count`). `n` = 0 returns `data` unchanged. `drop_short=False`
    keeps users with fewer posts whole (scoring with a detector trained on `n` posts per user;
    `post_count["short_kept"]` counts them)."""
    if n == 0:
        return data
    if n < 2:
        raise DataError(f"fixed_posts must be 0 (off) or at least 2 (got {n}): a user needs "
                        "history posts and a final post.")
    if keep not in KEEP:
        raise DataError(f"fixed_keep must be one of {', '.join(KEEP)} (got {keep!r}).")
    if data.post_count is not None:
        if data.post_count["fixed_posts"] == n and data.post_count["keep"] == keep:
            return data
        raise DataError(f"{data.source}: posts were already fixed to "
                        f"{data.post_count['fixed_posts']} ({data.post_count['keep']}); load the "
                        "data again to fix them to another count.")
    lengths = np.array([len(p) for p in data.posts])
    kept = np.flatnonzero(lengths >= n) if drop_short else np.arange(len(lengths))
    if len(kept) == 0 and drop_short:
        raise DataError(f"{data.source}: no user has {n} posts (most: {int(lengths.max())}); "
                        "choose a smaller fixed_posts.")

    def cut(seq: list[Any], total: int) -> list[Any]:
        return list(seq[max(0, total - n):]) if keep == "last" else list(seq[:n])

    relevancy = None
    if data.relevancy is not None:
        # flags belong to the posts before the last; 'first' keeps posts whose target context
        # is not the original one, so their flags no longer apply (zeros)
        relevancy = [list(data.relevancy[u][-(n - 1):]) if keep == "last"
                     else [0] * (min(n, len(data.posts[u])) - 1) for u in kept]
    contexts = None
    if data.contexts is not None:
        contexts = [data.contexts[u] if keep == "last" else "" for u in kept]
    dropped: dict[str, int] = {"all": int(len(lengths) - len(kept))}
    if data.labels is not None and drop_short:
        short = lengths < n
        dropped = {"benign": int((short & (data.labels == 0)).sum()),
                   "malicious": int((short & (data.labels == 1)).sum()), **dropped}
    info: dict[str, Any] = {"fixed_posts": n, "keep": keep, "users": int(len(kept)),
                            "dropped": dropped}
    if not drop_short:
        info["short_kept"] = int((lengths < n).sum())
    return TextData(user_ids=data.user_ids.gather(kept),
                    posts=[cut(data.posts[u], len(data.posts[u])) for u in kept],
                    labels=None if data.labels is None else data.labels[kept],
                    contexts=contexts, source=f"{data.source} ({keep} {n} posts per user)",
                    relevancy=relevancy, post_count=info)


def default_fixed_posts(data: Any) -> int:
    """The fixed post count used when none is given: the dataset's (petgen-wiki: 8), else 0."""
    return DATASET_FIXED_POSTS.get(data, 0) if isinstance(data, str) else 0


# ---------------------------------------------------------------------- labels
def read_labels(source: Any, user_col: str = "user_id", label_col: str = "label") -> pl.DataFrame:
    """Read and validate a user-label table: one row per user, labels 0/1 (or true/false)."""
    lf, name = scan_table(source)
    cols = lf.collect_schema().names()
    for col, what in ((user_col, "user id"), (label_col, "label")):
        if col not in cols:
            raise DataError(f"{name}: missing {what} column '{col}'. Found columns: {cols}. "
                            f"A label table needs columns '{user_col}' and '{label_col}' "
                            "(0 benign, 1 malicious).")
    df = collect_table(lf.select(user_col, label_col), name, id_columns=[user_col])
    return validate_labels(df.rename({user_col: "user_id", label_col: "label"}), name)


def _label_values(lab: pl.Series, name: str) -> pl.Series:
    """0/1 (Int64, nulls kept) from boolean, 0/1/true/false text or 0/1 numbers; else DataError."""
    must = f"{name}: column 'label' must be 0/1 (benign/malicious);"
    if lab.dtype == pl.Boolean:
        return lab.cast(pl.Int64)
    if lab.dtype == pl.String:
        low = lab.str.strip_chars().str.to_lowercase()
        values = low.replace_strict({"0": 0, "1": 1, "false": 0, "true": 1}, default=None,
                                    return_dtype=pl.Int64)
        bad = values.is_null() & low.is_not_null()
        if bool(bad.any()):
            i = int(bad.arg_max())
            raise DataError(f"{must} row {i + 1} has {lab[i]!r}.")
        return values
    if lab.dtype.is_numeric():
        ok = lab.is_in([0, 1]) | lab.is_null()
        if not bool(ok.all()):
            i = int((~ok).arg_max())
            raise DataError(f"{must} row {i + 1} has {lab[i]!r}.")
        return lab.cast(pl.Int64)
    raise DataError(f"{name}: column 'label' has type {lab.dtype}; expected 0/1 integers or "
                    "true/false.")


def validate_labels(df: pl.DataFrame, name: str = "<labels>") -> pl.DataFrame:
    """A label table (`user_id`, `label`) with 0/1 labels, one row per user; else DataError."""
    if df.height == 0:
        raise DataError(f"{name}: the label table has no rows.")
    lab = _label_values(df["label"], name)
    if lab.null_count():
        i = int(lab.is_null().arg_max())
        raise DataError(f"{name}: {lab.null_count()} missing labels (first at row {i + 1}); every "
                        "user needs 0 or 1.")
    if df["user_id"].null_count():
        raise DataError(f"{name}: {df['user_id'].null_count()} rows without a user id.")
    out = pl.DataFrame({"user_id": df["user_id"], "label": lab})
    n_labels = out.group_by("user_id").agg(pl.col("label").n_unique().alias("n"))
    dup = n_labels.filter(pl.col("n") > 1)
    if dup.height:
        raise DataError(f"{name}: {dup.height} users have conflicting labels "
                        f"(e.g. {dup['user_id'].head(3).to_list()}).")
    return out.unique("user_id", keep="first", maintain_order=True)


def attach_labels(user_ids: pl.Series, labels: pl.DataFrame,
                  source: str = "<labels>") -> np.ndarray:
    """Label per user index. Every user with events needs a label (an error names the first
    missing ones)."""
    idx = lookup_ids(user_ids, labels["user_id"], offset=0)
    y = np.full(len(user_ids), -1, dtype=np.int64)
    known = idx >= 0
    y[idx[known]] = labels["label"].to_numpy()[known]
    missing = np.flatnonzero(y < 0)
    if len(missing):
        example = user_ids.gather(missing[:3]).to_list()
        raise DataError(f"{source}: {len(missing):,} of {len(user_ids):,} users with events have "
                        f"no label (e.g. {example}). Add them to the label table or drop their "
                        "events.")
    if len(np.unique(y)) < 2:
        raise DataError(f"{source}: all users have label {int(y[0])}; a detector needs both "
                        "classes.")
    return y


# ---------------------------------------------------------------------- edit-time features
def _page_history(user: np.ndarray, item: np.ndarray,
                  ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event: has this user edited the page before; is this the page's first edit by anyone
    (global time order, ties by input order)."""
    n = len(user)
    frame = pl.DataFrame({"u": user, "i": item, "r": np.arange(n)})
    seen = frame.select((pl.col("r").rank("ordinal").over(["u", "i"]) > 1).alias("x"))["x"]
    order = np.lexsort((np.arange(n), ts))
    _, first_pos = np.unique(item[order], return_index=True)
    page_new = np.zeros(n, dtype=bool)
    page_new[order[first_pos]] = True
    return seen.to_numpy(), page_new


def _page_names(log: EventLog, user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event: is the page the user's own user (talk) page; the page's namespace group."""
    users = log.user_ids.cast(pl.String).gather(user)
    pages = log.item_ids.cast(pl.String).gather(item - 1)
    ns = pages.str.extract(r"^([A-Za-z][A-Za-z ]*?):", 1).fill_null("")
    ns = pl.Series(np.where(ns.is_in(list(NAMESPACES)).to_numpy(), ns.to_numpy(), ""))
    ns_group = ns.map_elements(_ns_group, return_dtype=pl.String) if len(ns.unique()) > 0 else ns
    u, p = pl.col("u"), pl.col("p")
    own = pl.DataFrame({"p": pages, "u": users}).select(
        (p == ("User:" + u)) | p.str.starts_with("User:" + u + "/") | (p == ("User talk:" + u)))
    return own["p"].to_numpy(), ns_group.to_numpy()


def edit_features(log: EventLog) -> tuple[np.ndarray, list[str]]:
    """Per-event features computed from the user's own past and the event itself (no future data).

    Gaps use timestamp units (seconds for date/time columns). `page_new_in_log` looks at all users'
    earlier events in the log (causal in time).
    """
    f = log.frame
    user = f["user"].to_numpy()
    item = f["item"].to_numpy()
    ts = f["timestamp"].to_numpy().astype(np.float64)
    n = len(user)
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    gap = np.zeros(n)
    gap[1:] = np.maximum(ts[1:] - ts[:-1], 0)
    gap[first] = 0
    not_first = ~first
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = (item[1:] == item[:-1])
    same_prev &= not_first
    pos = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
    seen_before, page_new = _page_history(user, item, ts)
    own, ns_group = _page_names(log, user, item)
    is_time = log.timestamp_kind == "time"
    hour = (ts % 86400) / 3600.0 if is_time else np.zeros(n)
    cols = {
        "first_event": first,
        "gap_log": np.log1p(gap) / 10.0,
        "gap_lt_3min": not_first & (gap < 180),
        "gap_3_15min": not_first & (gap >= 180) & (gap < 900),
        "gap_gt_15min": not_first & (gap >= 900),
        "same_page_as_previous": same_prev,
        "page_edited_before": seen_before,
        "own_user_page": own,
        "page_new_in_log": page_new,
        "position_log": np.log1p(pos) / 5.0,
        "hour_sin": np.sin(2 * np.pi * hour / 24) * is_time,
        "hour_cos": np.cos(2 * np.pi * hour / 24) * is_time,
        **{f"ns_{name}": ns_group == name for name in NS_GROUPS},
    }
    names = list(cols)
    assert tuple(names) == FEATURE_NAMES
    return np.stack([np.asarray(v, dtype=np.float32) for v in cols.values()], axis=1), names


def leakage_features(frame: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """After-the-fact columns as features (for the clearly labelled leakage row only)."""
    cols = [pl.col("isReverted").cast(pl.Float32).fill_null(0),
            (pl.col("cluebotRevert").cast(pl.Float32).fill_null(0) > 0).cast(pl.Float32),
            pl.col("stiki_score").cast(pl.Float32).fill_null(0),
            pl.col("stiki_REP_USER").cast(pl.Float32).fill_null(0)]
    names = ["leak_is_reverted", "leak_cluebot_revert", "leak_stiki_score", "leak_stiki_rep_user"]
    return frame.select(cols).to_numpy().astype(np.float32), names


def event_data(log: EventLog, labels: pl.DataFrame | None, with_leakage: bool = False,
               label_source: str = "<labels>") -> EventData:
    feats, names = edit_features(log)
    present = [c for c in LEAKAGE_COLUMNS if c in log.frame.columns]
    leak = log.frame.select(present) if present else None
    if with_leakage:
        if len(present) < len(LEAKAGE_COLUMNS):
            raise DataError(f"{log.source}: leakage features need the columns "
                            f"{list(LEAKAGE_COLUMNS)}.")
        lf, lnames = leakage_features(log.frame)
        feats, names = np.concatenate([feats, lf], axis=1), names + lnames
    y = attach_labels(log.user_ids, labels, label_source) if labels is not None else None
    return EventData(log=log, features=feats, feature_names=names, labels=y, leakage=leak,
                     source=log.source)


def load_event_data(data: Any, labels: Any = None, columns: Columns | None = None,
                    with_leakage: bool = False) -> EventData:
    """`--data` for event detectors: 'wiki-vandals' or an events file/DataFrame (+ a label
    table)."""
    if isinstance(data, str) and data == "wiki-vandals":
        events, default_labels = read_wiki_vandals()
        log = EventLog.from_frame(events, source="wiki-vandals")
        lab = read_labels(labels) if labels is not None else default_labels
        source = str(labels or "wiki-vandals users.tsv.gz")
        return event_data(log, lab, with_leakage=with_leakage, label_source=source)
    if isinstance(data, str) and data == "petgen-wiki":
        raise DataError("petgen-wiki holds post texts: use a text model (--model hlstm, cnn or "
                        "minilm).")
    log = EventLog.read(data, columns=columns or Columns())
    lab = read_labels(labels) if labels is not None else None
    return event_data(log, lab, with_leakage=with_leakage, label_source=str(labels))


def load_text_data(data: Any, labels: Any = None, columns: Columns | None = None,
                   fixed_posts: int | None = None, keep: str = "last") -> TextData:
    """`--data` for text detectors: 'petgen-wiki' or an events file with a text column
    (+ labels). `fixed_posts`: posts per user (`fix_post_count`); None = the dataset's default
    (petgen-wiki: 8, files: all), 0 = all."""
    n = default_fixed_posts(data) if fixed_posts is None else fixed_posts
    return fix_post_count(_load_text_data(data, labels, columns), n, keep)


def _load_text_data(data: Any, labels: Any, columns: Columns | None) -> TextData:
    if isinstance(data, str) and data == "petgen-wiki":
        td = load_petgen_wiki()
        if labels is not None:
            td.labels = attach_labels(td.user_ids, read_labels(labels), str(labels))
        return td
    if isinstance(data, str) and data == "wiki-vandals":
        raise DataError("wiki-vandals has no edit text: use an event model (--model gru or "
                        "transformer).")
    columns = columns or Columns()
    log = EventLog.read(data, columns=columns)
    if "text" not in log.frame.columns:
        raise DataError(f"{log.source}: text models need a '{columns.text}' column with the post "
                        "text of each event.")
    offsets, _ = log.sequences()
    text = log.frame["text"].cast(pl.String).fill_null("").to_list()
    posts = [text[offsets[u]:offsets[u + 1]] for u in range(log.n_users)]
    y = None
    if labels is not None:
        y = attach_labels(log.user_ids, read_labels(labels), str(labels))
    return TextData(user_ids=log.user_ids, posts=posts, labels=y, source=log.source)


def user_lengths(data: EventData | TextData) -> np.ndarray:
    """Events (posts) per user, uncut."""
    if isinstance(data, TextData):
        return np.array([len(p) for p in data.posts], dtype=np.int64)
    return np.diff(data.log.sequences()[0]).astype(np.int64)


# ---------------------------------------------------------------------- text
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


# ---------------------------------------------------------------------- splits
def stratified_split(labels: np.ndarray, valid: float = 0.1, test: float = 0.2,
                     seed: int = 0) -> DetectSplit:
    """Seeded split by user, stratified by label: train / valid / test fractions."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_valid = int(round(len(idx) * test)), int(round(len(idx) * valid))
        parts["test"].append(idx[:n_test])
        parts["valid"].append(idx[n_test:n_test + n_valid])
        parts["train"].append(idx[n_test + n_valid:])
    out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    if min(len(v) for v in out.values()) == 0:
        raise DataError(f"too few users ({len(labels)}) for a train/valid/test split; need at "
                        "least a few per class.")
    return DetectSplit(out["train"], out["valid"], out["test"], seed=seed)


def stratified_folds(labels: np.ndarray, k: int = 5, valid: float = 0.1,
                     seed: int = 0) -> list[DetectSplit]:
    """k stratified folds by user; each fold's validation users are carved from its training
    users."""
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds (got {k}).")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % k
    out = []
    for f in range(k):
        test = np.flatnonzero(fold_of == f)
        rest = np.flatnonzero(fold_of != f)
        inner_rng = np.random.default_rng(seed + f + 1)
        vparts = []
        for c in np.unique(labels):
            idx = inner_rng.permutation(rest[labels[rest] == c])
            vparts.append(idx[: max(1, int(round(len(idx) * valid / (1 - 1 / k))))])
        vset = np.sort(np.concatenate(vparts))
        out.append(DetectSplit(np.setdiff1d(rest, vset), vset, test, seed=seed, fold=f))
    return out
