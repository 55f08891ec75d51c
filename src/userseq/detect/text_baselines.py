"""Non-sequential text baselines for post-sequence detection (what do sequence models add?).

* `length`: logistic regression on the number of posts only. With a fixed post count
  (`detect.data.fix_post_count`) every user has the same count and this row falls to ROC-AUC 0.5;
  on the raw petgen-wiki data it shows the length confound (benign median 20 posts, malicious 12).
* `tokens`: logistic regression on post-length statistics (mean / std / total tokens per post):
  the remaining length signal after the post count is fixed.
* `tfidf-lr`: TF-IDF of word 1-2-grams and character 2-5-grams of all of a user's posts ->
  logistic regression, C chosen on validation users.
* `minilm-lr`: mean, max and last of the user's MiniLM post vectors -> logistic regression, C
  chosen on validation users.

`fit_text_baseline(name, data, train, valid)` returns `score(users) -> P(malicious)`; the
regularisation strength is picked on `valid` (never on test users). Needs scikit-learn (and the
`text` extra for minilm-lr).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from userseq.core.errors import ConfigError, DataError
from userseq.detect.data import TextData, tokenize
from userseq.detect.text import minilm_vectors
from userseq.metrics.classification import roc_auc

TEXT_BASELINES = ("length", "tokens", "tfidf-lr", "minilm-lr")
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
Scorer = Callable[[np.ndarray], np.ndarray]


def length_features(data: TextData) -> np.ndarray:
    """(n_users, 1) log(1 + number of posts)."""
    return np.log1p(np.array([[len(p)] for p in data.posts], dtype=np.float64))


def token_features(data: TextData) -> np.ndarray:
    """(n_users, 3) mean and std of tokens per post and log(1 + total tokens)."""
    rows = []
    for ps in data.posts:
        n = np.array([len(tokenize(p)) for p in ps] or [0], dtype=np.float64)
        rows.append([n.mean(), n.std(), np.log1p(n.sum())])
    return np.asarray(rows)


def minilm_user_features(data: TextData, max_posts: int = 64) -> np.ndarray:
    """(n_users, 3 * 384) mean, max and last MiniLM vector of each user's posts."""
    v = minilm_vectors(data.posts, max_posts)
    n = np.array([min(len(p), max_posts) for p in data.posts])
    mask = (np.arange(v.shape[1])[None, :] < n[:, None])[..., None]
    mean = (v * mask).sum(1) / np.maximum(n, 1)[:, None]
    mx = np.where(mask, v, -np.inf).max(1)
    mx[n == 0] = 0
    last = v[np.arange(len(n)), np.maximum(n - 1, 0)]
    return np.concatenate([mean, mx, last], 1)


def _select_c(X, y: np.ndarray, train: np.ndarray, valid: np.ndarray, seed: int,
              grid: tuple[float, ...] = C_GRID):
    """Logistic regression fitted on `train` with the C of `grid` best on `valid` ROC-AUC."""
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(X[train], y[train])
        auc = roc_auc(y[valid], clf.predict_proba(X[valid])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, c, clf)
    assert best is not None
    return best[2], best[1]


def fit_text_baseline(name: str, data: TextData, train: np.ndarray, valid: np.ndarray,
                      seed: int = 0) -> tuple[Scorer, dict[str, float]]:
    """(score(users) -> P(malicious), {"C": chosen C}) of text baseline `name`
    (`TEXT_BASELINES`), fitted on the `train` users with C chosen on the `valid` users."""
    if name not in TEXT_BASELINES:
        raise ConfigError(f"unknown text baseline '{name}'. Choose one of: "
                          f"{', '.join(TEXT_BASELINES)}.")
    if not isinstance(data, TextData):
        raise DataError(f"text baseline '{name}' reads post texts; got {type(data).__name__}.")
    if data.labels is None:
        raise DataError(f"{data.source}: text baseline '{name}' needs user labels.")
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ConfigError("text baselines need scikit-learn: pip install scikit-learn") from None
    y = data.labels
    if name == "tfidf-lr":
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = ["\n".join(ps) for ps in data.posts]
        fit_docs = [docs[i] for i in train]
        word = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None,
                               ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(fit_docs)
        char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3,
                               sublinear_tf=True, max_features=100_000).fit(fit_docs)
        X = hstack([word.transform(docs), char.transform(docs)]).tocsr()
    else:
        feats = {"length": length_features, "tokens": token_features,
                 "minilm-lr": minilm_user_features}[name](data)
        X = StandardScaler().fit(feats[train]).transform(feats)
    clf, c = _select_c(X, y, np.asarray(train), np.asarray(valid), seed)

    def score(users: np.ndarray) -> np.ndarray:
        return clf.predict_proba(X[np.asarray(users)])[:, 1]

    return score, {"C": c}
