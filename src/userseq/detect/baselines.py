"""Simple non-sequential baselines: what do sequence models add?

* `hand_features`: per-user aggregates of the edit-time features over the first k events (means,
  first-event features, log count) -> standardised logistic regression (`logreg`) or gradient
  boosted trees (`gbdt`).
* `bag_of_pages`: binary user x page matrix over the first k events -> logistic regression (`pages`).
* `tfidf` (post texts): TF-IDF of the user's first k posts (unigrams of the detectors' tokenizer,
  sublinear tf, words in >= 2 training users) -> logistic regression.

All use the same splits; hyper-parameters are fixed (no tuning on test). Needs scikit-learn.
"""

from __future__ import annotations

import numpy as np

from userseq.detect.data import EventData, TextData, tokenize
from userseq.errors import ConfigError

BASELINES = ("logreg", "gbdt", "pages")
TEXT_BASELINES = ("tfidf",)


def _prefix_rows(data: EventData, k: int | None, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    users, rows = _prefix_rows(data, k)
    F = data.features
    n = np.bincount(users, minlength=data.n_users).astype(np.float64)
    sums = np.zeros((data.n_users, F.shape[1]))
    np.add.at(sums, users, F[rows])
    offsets, _ = data.log.sequences()
    first = F[offsets[:-1]]
    X = np.concatenate([sums / n[:, None], first, np.log1p(n)[:, None]], axis=1)
    names = [f"mean_{f}" for f in data.feature_names] + [f"first_{f}" for f in data.feature_names] + ["log_events"]
    return X.astype(np.float32), names


def bag_of_pages(data: EventData, k: int | None = None, min_users: int = 2):
    """Sparse binary (users x pages) matrix over the first k events; pages with < min_users users dropped."""
    from scipy.sparse import csr_matrix

    users, rows = _prefix_rows(data, k)
    items = data.log.frame["item"].to_numpy()[rows]
    M = csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(data.n_users, data.log.n_items + 1))
    M.data[:] = 1.0
    M.sum_duplicates()
    M.data[:] = 1.0
    return M


def user_documents(data: TextData, k: int | None = None) -> list[str]:
    """One document per user: their first k posts joined by newlines."""
    return ["\n".join(ps[:k]) for ps in data.posts]


def _fit_tfidf(data: TextData, train: np.ndarray, k: int | None):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    assert data.labels is not None
    vec = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, min_df=2, sublinear_tf=True)
    docs = user_documents(data, k)
    X = vec.fit_transform([docs[i] for i in train])
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(X, data.labels[train])

    def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
        dk = docs if kk == k else user_documents(data, kk)
        return clf.predict_proba(vec.transform([dk[i] for i in users]))[:, 1]
    return score


def fit_baseline(name: str, data: EventData | TextData, train: np.ndarray, seed: int = 0, k: int | None = None):
    """A fitted scoring function `score(users, k) -> P(malicious)` for baseline `name`
    (`logreg`, `gbdt`, `pages` on event data; `tfidf` on post texts)."""
    if isinstance(data, TextData) != (name in TEXT_BASELINES):
        if name not in BASELINES + TEXT_BASELINES:
            raise ConfigError(f"unknown baseline '{name}'. Choose one of: {', '.join(BASELINES + TEXT_BASELINES)}.")
        what = "post texts" if name in TEXT_BASELINES else "event sequences"
        raise ConfigError(f"baseline '{name}' reads {what}; got {type(data).__name__}.")
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ConfigError("baselines need scikit-learn: pip install scikit-learn") from None
    assert data.labels is not None
    if isinstance(data, TextData):
        return _fit_tfidf(data, train, k)
    y = data.labels
    if name in ("logreg", "gbdt"):
        X, _ = hand_features(data, k)
        if name == "logreg":
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        else:
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=seed)
        clf.fit(X[train], y[train])

        def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
            Xk = X if kk == k else hand_features(data, kk)[0]
            return clf.predict_proba(Xk[users])[:, 1]
        return score
    if name == "pages":
        M = bag_of_pages(data, k)
        keep = np.asarray((M[train] > 0).sum(0)).ravel() >= 2
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(M[train][:, keep], y[train])

        def score(users: np.ndarray, kk: int | None = None) -> np.ndarray:
            Mk = M if kk == k else bag_of_pages(data, kk)
            return clf.predict_proba(Mk[users][:, keep])[:, 1]
        return score
    raise ConfigError(f"unknown baseline '{name}'. Choose one of: {', '.join(BASELINES + TEXT_BASELINES)}.")
