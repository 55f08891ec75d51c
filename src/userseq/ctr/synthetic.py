"""A seeded synthetic CTR log with planted long-range interests (histories up to 10,000+ events).

The generator, per user:

* items 1..n_items; item i has category `i % n_cats` and a quality `q_i ~ N(0, quality_std)`;
* the user likes `n_interests` categories and dislikes `n_interests` others (drawn at random);
* the history has `history_len` events, one per minute. `evidence` events per liked category
  (rating 5) and per disliked category (rating 1) are placed at random positions **older than the
  last `recent_clean` events**; every other history event is noise: a random item of a neutral
  category (neither liked nor disliked) with a uniform 1..5 rating. So the recent window holds no
  signal at all: a model reading only the last `recent_clean` behaviours cannot do better than
  item quality, and a model that finds the few old same-category events (and reads their ratings)
  can;
* then `n_targets` impressions (one per minute, `is_target = True`): a random item of a liked, a
  disliked or a neutral category (one third each); click probability
  `sigmoid(logit[kind] + q_i)` with logits +2 (liked), -2 (disliked), -0.5 (neutral); the
  impression's rating is 5 for a click and 2 otherwise, so `rating >= 4` is the label. Impressions
  also enter the history of later impressions (feedback the system would have).

The column `click_prob` holds the true probability (for the oracle AUC). Split by time, the last
impressions of every user test, the ones before validate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

LOGIT = {"liked": 2.0, "disliked": -2.0, "neutral": -0.5}
T0 = 1_600_000_000


def synthetic_ctr_events(n_users: int = 300, n_items: int = 2000, n_cats: int = 50,
                         history_len: int = 1000, n_targets: int = 10, n_interests: int = 2,
                         evidence: int = 8, recent_clean: int | None = None,
                         quality_std: float = 0.5, seed: int = 0) -> pl.DataFrame:
    """Events (user_id, item_id, timestamp, rating, category, is_target, click_prob); see the
    module doc."""
    if n_cats < 2 * n_interests + 1:
        raise ValueError("n_cats must exceed 2 * n_interests (liked, disliked and neutral "
                         "categories).")
    rng = np.random.default_rng(seed)
    H = int(history_len)
    recent = min(200, H // 2) if recent_clean is None else int(recent_clean)
    n_ev = 2 * n_interests * evidence
    if n_ev > H - recent:
        raise ValueError(f"history_len {H} too short for {n_ev} evidence events older than the "
                         f"last {recent}.")
    cat_of = np.arange(n_items + 1) % n_cats
    quality = rng.normal(0, quality_std, n_items + 1)
    draw = _item_sampler(cat_of, n_cats, rng)
    per_user = H + n_targets
    items = np.empty((n_users, per_user), dtype=np.int64)
    ratings = np.empty((n_users, per_user), dtype=np.int64)
    probs = np.full((n_users, per_user), np.nan)
    for u in range(n_users):
        cats = rng.permutation(n_cats)
        liked, disliked = cats[:n_interests], cats[n_interests : 2 * n_interests]
        neutral = cats[2 * n_interests :]
        _history(items[u], ratings[u], H, H - recent, evidence, liked, disliked, neutral, draw,
                 rng)
        t_items, p = _impressions(n_targets, liked, disliked, neutral, quality, draw, rng)
        click = rng.random(n_targets) < p
        items[u, H:] = t_items
        ratings[u, H:] = np.where(click, 5, 2)
        probs[u, H:] = p
    ts = T0 + 60 * np.arange(per_user)
    return pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users), per_user),
        "item_id": items.reshape(-1),
        "timestamp": np.tile(ts, n_users),
        "rating": ratings.reshape(-1),
        "category": cat_of[items.reshape(-1)],
        "is_target": np.tile(np.arange(per_user) >= H, n_users),
        "click_prob": probs.reshape(-1),
    })


Draw = Callable[[np.ndarray], np.ndarray]


def _item_sampler(cat_of: np.ndarray, n_cats: int, rng: np.random.Generator) -> Draw:
    """draw(cats): a uniform random item of each category."""
    by_cat = [np.flatnonzero(cat_of[1:] == c) + 1 for c in range(n_cats)]
    counts = np.array([len(b) for b in by_cat])
    table = np.zeros((n_cats, counts.max()), dtype=np.int64)
    for c, b in enumerate(by_cat):
        table[c, : len(b)] = b

    def draw(cats: np.ndarray) -> np.ndarray:
        return table[cats, (rng.random(len(cats)) * counts[cats]).astype(np.int64)]

    return draw


def _history(items: np.ndarray, ratings: np.ndarray, H: int, n_old: int, evidence: int,
             liked: np.ndarray, disliked: np.ndarray, neutral: np.ndarray, draw: Draw,
             rng: np.random.Generator) -> None:
    """Fill one user's first H events: neutral noise with uniform ratings, and `evidence` rated
    events per liked (5) and disliked (1) category at old positions only."""
    noise_cat = neutral[rng.integers(len(neutral), size=H)]
    items[:H] = draw(noise_cat)
    ratings[:H] = rng.integers(1, 6, size=H)
    ev_cats = np.concatenate([np.repeat(liked, evidence), np.repeat(disliked, evidence)])
    pos = rng.choice(n_old, size=len(ev_cats), replace=False)
    items[pos] = draw(ev_cats)
    ratings[pos] = np.where(np.isin(ev_cats, liked), 5, 1)


def _impressions(n: int, liked: np.ndarray, disliked: np.ndarray, neutral: np.ndarray,
                 quality: np.ndarray, draw: Draw,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n impressions of a liked, disliked or neutral category (a third each) and their true
    click probabilities."""
    kind = rng.integers(3, size=n)
    t_cats = np.where(kind == 0, rng.choice(liked, n),
                      np.where(kind == 1, rng.choice(disliked, n), rng.choice(neutral, n)))
    t_items = draw(t_cats)
    logit = np.array([LOGIT["liked"], LOGIT["disliked"], LOGIT["neutral"]])[kind]
    return t_items, 1 / (1 + np.exp(-(logit + quality[t_items])))
