"""Simple non-sequential baselines: what do sequence models add?

* `hand_features`: per-user aggregates of the edit-time features over the first k events (means,
  first-event features; no length feature) -> standardised logistic regression (`logreg`) or
  gradient boosted trees (`gbdt`).
* `length` (log number of events -> logistic regression) and `counts` (events, distinct pages,
  active days, time span -> GBDT): what account length and activity alone give (a block ends a
  vandal's account, so length leaks the label); a row beside every detector row.
* `bag_of_pages`: binary user x page matrix over the first k events -> logistic regression
  (`pages`).
* `gbdt-prefix`: one GBDT per prefix length k, trained on the training users' first k events:
  hand features + the pages' vandal rate among *training* users, causal (`page_vandal_rate`: only
  edits before the scored event and labels known by then, i.e. of users blocked before it).
  `gbdt-prefix-name` adds features of the user name (`username_features`), which is known at edit
  time but is not behaviour.
* `tfidf` (post texts): TF-IDF of the user's first k posts (unigrams of the detectors' tokenizer,
  sublinear tf, words in >= 2 training users) -> logistic regression.

All use the same splits; hyper-parameters are fixed (no tuning on test). Needs scikit-learn.
Each is registered in `BASELINES` by name (`fit_baseline(name, ...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from userseq.core.errors import ConfigError
from userseq.core.registry import Registry
from userseq.detect.data import EventData, TextData, tokenize, user_lengths


def prefix_rows(data: EventData, k: int | None,
                max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user of each kept event, event row index) for each user's first k events."""
    offsets, _ = data.log.sequences()
    lengths = np.diff(offsets)
    cap = lengths if k is None else np.minimum(lengths, k)
    if max_len is not None:
        cap = np.minimum(cap, max_len)
    users = np.repeat(np.arange(data.n_users), cap)
    starts = np.repeat(offsets[:-1], cap)
    within = np.arange(len(users)) - np.repeat(np.cumsum(cap) - cap, cap)
    return users, starts + within


LENGTH_PROXIES = ("first_event", "position_log")  # their means over a prefix encode its length


def hand_features(data: EventData, k: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-user: mean of every edit-time feature over the first k events (except those whose mean
    only encodes the number of events, `LENGTH_PROXIES`) and the first event's features. No
    length feature: account length leaks the label (a block ends a vandal's account); the
    `length` and `counts` baselines measure what length alone gives."""
    users, rows = prefix_rows(data, k)
    F = data.features
    n = np.bincount(users, minlength=data.n_users).astype(np.float64)
    sums = np.zeros((data.n_users, F.shape[1]))
    np.add.at(sums, users, F[rows])
    offsets, _ = data.log.sequences()
    first = F[offsets[:-1]]
    keep = [j for j, f in enumerate(data.feature_names) if f not in LENGTH_PROXIES]
    X = np.concatenate([(sums / np.maximum(n, 1)[:, None])[:, keep], first], axis=1)
    names = ([f"mean_{data.feature_names[j]}" for j in keep]
             + [f"first_{f}" for f in data.feature_names])
    return X.astype(np.float32), names


def count_features(data: EventData, k: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-user activity counts over the first k events: log events, log distinct pages, log
    active days, log span (seconds, or timestamp units) between the first and the k-th event."""
    users, rows = prefix_rows(data, k)
    f = data.log.frame
    n = np.bincount(users, minlength=data.n_users).astype(np.float64)
    t = _event_times(data)[rows]
    pages = pl.DataFrame({"u": users, "i": f["item"].to_numpy()[rows],
                          "d": np.floor(t / 86400.0)})
    distinct = np.zeros(data.n_users)
    days = np.zeros(data.n_users)
    agg = pages.group_by("u").agg(pl.col("i").n_unique(), pl.col("d").n_unique())
    distinct[agg["u"].to_numpy()] = agg["i"].to_numpy()
    days[agg["u"].to_numpy()] = agg["d"].to_numpy()
    lo = np.full(data.n_users, np.inf)
    hi = np.full(data.n_users, -np.inf)
    np.minimum.at(lo, users, t)
    np.maximum.at(hi, users, t)
    span = np.where(n > 0, hi - lo, 0.0)
    X = np.stack([np.log1p(n), np.log1p(distinct), np.log1p(days), np.log1p(span)], axis=1)
    return X.astype(np.float32), ["log_events", "log_distinct_pages", "log_active_days",
                                  "log_span"]


def bag_of_pages(data: EventData, k: int | None = None, min_users: int = 2):
    """Sparse binary (users x pages) matrix over the first k events; pages with < min_users users
    dropped."""
    from scipy.sparse import csr_matrix

    users, rows = prefix_rows(data, k)
    items = data.log.frame["item"].to_numpy()[rows]
    ones = np.ones(len(users), dtype=np.float32)
    M = csr_matrix((ones, (users, items)), shape=(data.n_users, data.log.n_items + 1))
    M.data[:] = 1.0
    M.sum_duplicates()
    M.data[:] = 1.0
    return M


def count_earlier(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, q_times: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """For each query (key, time): the (weighted) number of entries with the same key and a time
    strictly earlier than the query's."""
    _, rank = np.unique(np.concatenate([times, q_times]), return_inverse=True)
    span = np.int64(rank.max() + 2)
    comp = keys.astype(np.int64) * span + rank[:len(times)]
    order = np.argsort(comp, kind="stable")
    comp = comp[order]
    w = np.ones(len(comp)) if weights is None else np.asarray(weights, np.float64)[order]
    cum = np.concatenate([[0.0], np.cumsum(w)])
    q_key = q_keys.astype(np.int64) * span
    hi = np.searchsorted(comp, q_key + rank[len(times):], side="left")
    lo = np.searchsorted(comp, q_key, side="left")
    return cum[hi] - cum[lo]


def page_vandal_rate(data: EventData, train: np.ndarray,
                     smoothing: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Per event, causally: the smoothed share of malicious users among the *training* users whose
    label was known before the event and who edited its page, and log(1 + the number of training
    users who had edited the page before the event).

    A training user's label counts as known from their block, i.e. after their last edit in the
    log (strictly earlier than the scored event's time); their edits count from their time. So no
    edit after the scored event and no label learnt after it enters its features, and a user's own
    label never enters their features (it is known only after their last edit). Smoothing pulls
    rare pages towards the base rate of the training labels known by then (Laplace-smoothed)."""
    assert data.labels is not None
    f = data.log.frame
    users, items = f["user"].to_numpy(), f["item"].to_numpy()
    ts = _event_times(data)
    is_train = np.zeros(data.n_users, dtype=bool)
    is_train[train] = True
    y = data.labels.astype(np.float64)
    last = np.full(data.n_users, -np.inf)
    np.maximum.at(last, users, ts)
    # one vote per (training user, page): when the user first edited it
    pairs = (pl.DataFrame({"u": users, "i": items, "t": ts})
             .filter(pl.Series(is_train[users]))
             .group_by("u", "i").agg(pl.col("t").min()))
    pu, pi, pt = (pairs["u"].to_numpy(), pairs["i"].to_numpy(),
                  pairs["t"].to_numpy().astype(np.float64))
    n_known = count_earlier(pi, last[pu], items, ts)
    v_known = count_earlier(pi, last[pu], items, ts, weights=y[pu])
    n_before = count_earlier(pi, pt, items, ts)
    own = is_train[users] & _edited_earlier(users, items, ts)
    n_before -= own
    tr = np.flatnonzero(is_train)
    base_n = count_earlier(np.zeros(len(tr)), last[tr], np.zeros(len(ts)), ts)
    base_v = count_earlier(np.zeros(len(tr)), last[tr], np.zeros(len(ts)), ts, weights=y[tr])
    prior = (base_v + 1.0) / (base_n + 2.0)  # base rate of the labels known by then (Laplace)
    rate = (v_known + smoothing * prior) / (n_known + smoothing)
    return rate, np.log1p(n_before)


def _edited_earlier(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per event: did the same user edit the same page at an earlier time."""
    first = (pl.DataFrame({"u": users, "i": items, "t": ts})
             .select(pl.col("t").min().over("u", "i"))["t"].to_numpy())
    return first < ts


def _event_times(data: EventData) -> np.ndarray:
    """Every event's timestamp (float), aligned with `data.log.frame` rows."""
    return data.log.frame["timestamp"].to_numpy().astype(np.float64)


def username_features(data: EventData) -> tuple[np.ndarray, list[str]]:
    """Per user, from the account name: length, digits, upper-case letters, has a space."""
    import polars as pl

    names = pl.DataFrame({"u": data.user_ids.cast(pl.String)}).select(
        pl.col("u").str.len_chars().alias("name_length"),
        pl.col("u").str.count_matches(r"\d").alias("name_digits"),
        pl.col("u").str.count_matches(r"[A-Z]").alias("name_upper"),
        pl.col("u").str.contains(" ").alias("name_has_space"))
    return names.to_numpy().astype(np.float32), names.columns


def prefix_features(data: EventData, k: int | None, rate: np.ndarray, log_users: np.ndarray,
                    with_name: bool = False) -> np.ndarray:
    """`hand_features` of the first k events + mean and max page vandal rate and mean log page users
    over them (+ user-name features)."""
    X, _ = hand_features(data, k)
    users, rows = prefix_rows(data, k)
    n = np.bincount(users, minlength=data.n_users).astype(np.float64)
    mean_rate = np.bincount(users, weights=rate[rows], minlength=data.n_users) / n
    max_rate = np.zeros(data.n_users)
    np.maximum.at(max_rate, users, rate[rows])
    mean_log = np.bincount(users, weights=log_users[rows], minlength=data.n_users) / n
    parts = [X, mean_rate[:, None], max_rate[:, None], mean_log[:, None]]
    if with_name:
        parts.append(username_features(data)[0])
    return np.concatenate(parts, axis=1).astype(np.float32)


def user_documents(data: TextData, k: int | None = None) -> list[str]:
    """One document per user: their first k posts joined by newlines."""
    return ["\n".join(ps[:k]) for ps in data.posts]


Scorer = Callable[..., np.ndarray]  # score(users, k=None) -> P(malicious) per user


@dataclass(frozen=True)
class Baseline:
    """A baseline: the data it reads and `fit(data, train, seed, k) -> score(users, k)`."""

    reads: Literal["events", "texts"]
    fit: Callable[[Any, np.ndarray, int, int | None], Scorer]


BASELINES: Registry[Baseline] = Registry("baseline")


def _baseline(name: str, reads: Literal["events", "texts"] = "events") -> Callable[..., Any]:
    def add(fit: Callable[..., Scorer]) -> Callable[..., Scorer]:
        BASELINES.register(name, Baseline(reads, fit), help=(fit.__doc__ or "").strip())
        return fit

    return add


def _hand_model(data: EventData, train: np.ndarray, k: int | None, clf: Any) -> Scorer:
    X, _ = hand_features(data, k)
    assert data.labels is not None
    clf.fit(X[train], data.labels[train])

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        Xk = X if kk == k else hand_features(data, kk)[0]
        return clf.predict_proba(Xk[users])[:, 1]

    return score


@_baseline("logreg")
def _fit_logreg(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """hand features -> standardised logistic regression"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    return _hand_model(data, train, k, clf)


@_baseline("gbdt")
def _fit_gbdt(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """hand features -> gradient boosted trees"""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=seed)
    return _hand_model(data, train, k, clf)


@_baseline("pages")
def _fit_pages(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """bag of pages -> logistic regression"""
    from sklearn.linear_model import LogisticRegression

    assert data.labels is not None
    M = bag_of_pages(data, k)
    keep = np.asarray((M[train] > 0).sum(0)).ravel() >= 2
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(M[train][:, keep], data.labels[train])

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        Mk = M if kk == k else bag_of_pages(data, kk)
        return clf.predict_proba(Mk[users][:, keep])[:, 1]

    return score


def _fit_prefix_gbdt(data: EventData, train: np.ndarray, seed: int, with_name: bool) -> Scorer:
    from sklearn.ensemble import HistGradientBoostingClassifier

    assert data.labels is not None
    y = data.labels
    rate, log_users = page_vandal_rate(data, train)
    lengths = user_lengths(data)
    models: dict[int | None, tuple[np.ndarray, Any]] = {}

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        if kk not in models:  # one model per prefix length, trained on first-kk features
            Xk = prefix_features(data, kk, rate, log_users, with_name)
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=seed)
            fit_on = train if kk is None else train[lengths[train] >= kk]  # as they are scored
            models[kk] = (Xk, clf.fit(Xk[fit_on], y[fit_on]))
        Xk, clf = models[kk]
        return clf.predict_proba(Xk[users])[:, 1]

    return score


@_baseline("gbdt-prefix")
def _fit_gbdt_prefix(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """one GBDT per prefix length: hand features + training pages' vandal rate"""
    return _fit_prefix_gbdt(data, train, seed, with_name=False)


@_baseline("gbdt-prefix-name")
def _fit_gbdt_prefix_name(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """gbdt-prefix + user-name features"""
    return _fit_prefix_gbdt(data, train, seed, with_name=True)


def _fit_counts(X_of: Callable[[int | None], np.ndarray], data: EventData, train: np.ndarray,
                k: int | None, clf: Any) -> Scorer:
    assert data.labels is not None
    X = X_of(k)
    clf.fit(X[train], data.labels[train])

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        Xk = X if kk == k else X_of(kk)
        return clf.predict_proba(Xk[users])[:, 1]

    return score


@_baseline("length")
def _fit_length(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """log(number of events) -> logistic regression: what account length alone gives"""
    from sklearn.linear_model import LogisticRegression

    return _fit_counts(lambda kk: count_features(data, kk)[0][:, :1], data, train, k,
                       LogisticRegression(max_iter=1000))


@_baseline("counts")
def _fit_count_gbdt(data: EventData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """activity counts (events, distinct pages, active days, time span) -> gradient boosted
    trees"""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return _fit_counts(lambda kk: count_features(data, kk)[0], data, train, k,
                       HistGradientBoostingClassifier(max_iter=200, random_state=seed))


@_baseline("tfidf", reads="texts")
def _fit_tfidf(data: TextData, train: np.ndarray, seed: int, k: int | None) -> Scorer:
    """TF-IDF of the first k posts -> logistic regression"""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    assert data.labels is not None
    vec = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, min_df=2,
                          sublinear_tf=True)
    docs = user_documents(data, k)
    X = vec.fit_transform([docs[i] for i in train])
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(X, data.labels[train])

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        dk = docs if kk == k else user_documents(data, kk)
        return clf.predict_proba(vec.transform([dk[i] for i in users]))[:, 1]

    return score


def fit_baseline(name: str, data: EventData | TextData, train: np.ndarray, seed: int = 0,
                 k: int | None = None) -> Scorer:
    """A fitted scoring function `score(users, k) -> P(malicious)` for baseline `name`
    (`BASELINES`: logreg, gbdt, pages, gbdt-prefix[-name], length, counts on event data; tfidf on
    post texts)."""
    baseline = BASELINES.get(name).obj
    if isinstance(data, TextData) != (baseline.reads == "texts"):
        what = "post texts" if baseline.reads == "texts" else "event sequences"
        raise ConfigError(f"baseline '{name}' reads {what}; got {type(data).__name__}.")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError("baselines need scikit-learn: pip install scikit-learn") from None
    if data.labels is None:
        raise ConfigError(f"{data.source}: baseline '{name}' needs user labels.")
    return baseline.fit(data, train, seed, k)
