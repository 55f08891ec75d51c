"""Simple non-sequential baselines: what do sequence models add?

* `hand_features`: per-user aggregates of the edit-time features over the first k events (means,
  first-event features, log count) -> standardised logistic regression (`logreg`) or gradient
  boosted trees (`gbdt`).
* `bag_of_pages`: binary user x page matrix over the first k events -> logistic regression
  (`pages`).
* `gbdt-prefix`: one GBDT per prefix length k, trained on the training users' first k events:
  hand features + the pages' vandal rate among *training* users (`page_vandal_rate`; a training
  user's own label is left out). `gbdt-prefix-name` adds features of the user name
  (`username_features`), which is known at edit time but is not behaviour.
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

from userseq.core.errors import ConfigError
from userseq.core.registry import Registry
from userseq.detect.data import EventData, TextData, tokenize


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


def hand_features(data: EventData, k: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-user: mean of every edit-time feature over the first k events, the first event's
    features, and log(number of events considered)."""
    users, rows = prefix_rows(data, k)
    F = data.features
    n = np.bincount(users, minlength=data.n_users).astype(np.float64)
    sums = np.zeros((data.n_users, F.shape[1]))
    np.add.at(sums, users, F[rows])
    offsets, _ = data.log.sequences()
    first = F[offsets[:-1]]
    X = np.concatenate([sums / n[:, None], first, np.log1p(n)[:, None]], axis=1)
    names = ([f"mean_{f}" for f in data.feature_names] + [f"first_{f}" for f in data.feature_names]
             + ["log_events"])
    return X.astype(np.float32), names


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


def page_vandal_rate(data: EventData, train: np.ndarray,
                     smoothing: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Per event: the smoothed share of malicious users among the *training* users who edited the
    event's page, and log(1 + that many users). Labels of other users are never read; for an event
    of a training user, that user is left out of its page's counts (no label leaks into its own
    features). Smoothing pulls rare pages towards the training base rate."""
    assert data.labels is not None
    f = data.log.frame
    users, items = f["user"].to_numpy(), f["item"].to_numpy()
    is_train = np.zeros(data.n_users, dtype=bool)
    is_train[train] = True
    y = data.labels
    n_items = data.log.n_items + 1
    pairs = np.unique(users.astype(np.int64) * n_items + items)  # one vote per (user, page)
    pu, pi = pairs // n_items, pairs % n_items
    keep = is_train[pu]
    n = np.bincount(pi[keep], minlength=n_items).astype(np.float64)
    v = np.bincount(pi[keep], weights=y[pu[keep]], minlength=n_items)
    n_e, v_e = n[items].copy(), v[items].copy()
    own = is_train[users]
    n_e[own] -= 1
    v_e[own] -= y[users[own]]
    prior = float(y[train].mean())
    return (v_e + smoothing * prior) / (n_e + smoothing), np.log1p(n_e)


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
    models: dict[int | None, tuple[np.ndarray, Any]] = {}

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        if kk not in models:  # one model per prefix length, trained on first-kk features
            Xk = prefix_features(data, kk, rate, log_users, with_name)
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=seed)
            models[kk] = (Xk, clf.fit(Xk[train], y[train]))
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
    (`BASELINES`: logreg, gbdt, pages, gbdt-prefix[-name] on event data; tfidf on post texts)."""
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
