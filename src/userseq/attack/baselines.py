"""The four text-attack baselines (the fifth, `lm`, is the generator without the attack loss).

* Copycat: reuse an existing post of a *benign training* user, the one closest (TF-IDF cosine)
  to the target context (to the user's history when the context is empty).
* HotFlip (white-box): greedy first-order token flips on the copycat post, each flip kept only if
  the detector's score really drops.
* Universal trigger (white-box): k tokens, learned on training malicious users by HotFlip-style
  candidate search, prepended to the copycat post of every user.
* TextBugger (score queries only): rank the copycat post's words by how much deleting them lowers
  the malicious score, then apply the best character bug (split, delete, swap, look-alike) or
  nearest-neighbour word substitution (attacker LM embedding) word by word until the user is
  scored benign or a share of the words is used.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from userseq.attack.data import AttackUsers, decode
from userseq.attack.target import TargetDetector
from userseq.core.errors import DataError
from userseq.detect.data import tokenize
from userseq.detect.estimator import encode_posts

LOOKALIKE = {"o": "0", "l": "1", "i": "1", "a": "@", "e": "3", "s": "$", "t": "7"}


def copycat_pool(users: AttackUsers, train: np.ndarray) -> list[str]:
    """The posts copycat may reuse: every post (3+ tokens) of the benign training users, sorted."""
    if users.labels is None:
        raise DataError("copycat needs labels of the training users")
    labels = users.labels
    pool = {p for u in train if labels[u] == 0 for p in [*users.history[u], users.final[u]]
            if len(tokenize(p)) >= 3}
    return sorted(pool)


class Copycat:
    """Nearest pool post (TF-IDF cosine) to each user's context, else to the user's history."""

    def __init__(self, users: AttackUsers, pool: list[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not pool:
            raise DataError("copycat: the benign training users have no post of 3+ tokens to "
                            "reuse.")
        self.pool = list(pool)
        self.users = users
        self.vec = TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False,
                                   sublinear_tf=True)
        self.matrix = self.vec.fit_transform(self.pool)

    def posts(self, idx: np.ndarray) -> list[str]:
        u = self.users
        queries = [u.contexts[i] if tokenize(u.contexts[i] or "") else " ".join(u.history[i])
                   for i in idx]
        sims = (self.vec.transform(queries) @ self.matrix.T).toarray()
        return [self.pool[j] for j in sims.argmax(1)]


def _ids(posts: list[str], vocab: list[str], T: int) -> torch.Tensor:
    return torch.from_numpy(encode_posts([[p] for p in posts], vocab, 1, T)[:, 0].astype(np.int64))


def _logits_of_ids(source: TargetDetector, users: AttackUsers, idx: np.ndarray, ids: torch.Tensor,
                   grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not grad:  # token ids: an embedding lookup instead of a one-hot product
        with torch.no_grad():
            return source.user_logits(users, idx, source.id_post_vectors(ids)), None
    x = F.one_hot(ids, len(source.vocab)).float().requires_grad_(True)
    logit = source.user_logits(users, idx, source.onehot_post_vectors(x, ids > 0))
    (g,) = torch.autograd.grad(logit.sum(), x)
    return logit.detach(), g


def _flip_once(source: TargetDetector, users: AttackUsers, bi: np.ndarray, ids: torch.Tensor,
               active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy HotFlip step per post: the token flip with the best first-order gain, kept only
    if the detector's logit really drops. Returns (ids, rows still improving)."""
    vocab = source.vocab
    cur, g = _logits_of_ids(source, users, bi, ids, grad=True)
    assert g is not None
    gain = g - g.gather(-1, ids[..., None])  # first-order change of the logit
    gain[..., :2] = float("inf")  # never pad / unk
    gain[~(ids > 0)] = float("inf")
    flat = gain.view(len(bi), -1)
    best = flat.argmin(1)
    pos, tok = best // len(vocab), best % len(vocab)
    new = ids.clone()
    rows = torch.arange(len(bi))
    new[rows, pos] = tok
    after, _ = _logits_of_ids(source, users, bi, new)
    keep = active & (after < cur) & (flat[rows, best] < 0)
    return torch.where(keep[:, None], new, ids), active & keep


def hotflip(source: TargetDetector, users: AttackUsers, idx: np.ndarray, start: list[str],
            flips: int, batch: int = 64) -> list[str]:
    """Up to `flips` greedy token flips on each start post (white-box)."""
    source.require_white_box("hotflip")
    out: list[str] = []
    for b in range(0, len(idx), batch):
        bi = np.asarray(idx[b:b + batch])
        ids = _ids(start[b:b + batch], source.vocab, source.max_tokens)
        active = torch.ones(len(bi), dtype=torch.bool)
        for _ in range(flips):
            ids, active = _flip_once(source, users, bi, ids, active)
            if not bool(active.any()):
                break
        out += decode(ids, source.vocab)
    return out


def learn_trigger(source: TargetDetector, users: AttackUsers, train_malicious: np.ndarray,
                  base: list[str], k: int, iters: int, candidates: int, seed: int = 0,
                  batch: int = 64) -> list[str]:
    """Universal trigger tokens minimising the mean logit of training malicious users (base posts
    appended); `seed` seeds the batches of users."""
    source.require_white_box("trigger")
    vocab = source.vocab
    rng = np.random.default_rng(seed)
    start = vocab.index("the") if "the" in vocab else 2
    trig = torch.full((k,), start, dtype=torch.long)
    base_ids = _ids(base, vocab, source.max_tokens)
    for _ in range(iters):
        rows = rng.choice(len(train_malicious), min(batch, len(train_malicious)), replace=False)
        for p in range(k):
            trig[p] = _best_trigger_token(source, users, train_malicious[rows],
                                          base_ids[torch.from_numpy(rows)],
                                          trig, p, candidates)
    return [vocab[i] for i in trig.tolist()]


def _best_trigger_token(source: TargetDetector, users: AttackUsers, idx: np.ndarray,
                        base_ids: torch.Tensor, trig: torch.Tensor, p: int,
                        candidates: int) -> int:
    """The token at trigger position p (of the gradient's top candidates and the current one)
    with the lowest mean logit of the users `idx`."""

    def prepend(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.expand(len(idx), -1), base_ids], 1)[:, :source.max_tokens]

    def mean_logit(t: torch.Tensor) -> float:
        return float(_logits_of_ids(source, users, idx, prepend(t))[0].mean())

    _, g = _logits_of_ids(source, users, idx, prepend(trig), grad=True)
    assert g is not None
    score = g[:, p].mean(0)
    score[:2] = float("inf")
    best_tok, best_val = int(trig[p]), mean_logit(trig)
    for c in torch.topk(-score, candidates).indices.tolist():
        t2 = trig.clone()
        t2[p] = c
        val = mean_logit(t2)
        if val < best_val:
            best_tok, best_val = c, val
    return best_tok


def with_trigger(trigger: list[str], posts: list[str], max_tokens: int) -> list[str]:
    return [" ".join([*trigger, *tokenize(p)][:max_tokens]) for p in posts]


# ---------------------------------------------------------------------- TextBugger
def char_bugs(word: str) -> list[str]:
    """TextBugger's character bugs of one word (only for words of 3+ characters)."""
    if len(word) < 3 or not word.isalnum():
        return []
    mid = len(word) // 2
    out = [word[:mid] + " " + word[mid:],  # insert a space
           word[:mid] + word[mid + 1:],  # delete a middle character
           word[:mid - 1] + word[mid] + word[mid - 1] + word[mid + 1:]]  # swap two middle chars
    for i, ch in enumerate(word):
        if ch in LOOKALIKE:
            out.append(word[:i] + LOOKALIKE[ch] + word[i + 1:])  # look-alike character
            break
    return [w for w in dict.fromkeys(out) if w != word]


class Neighbours:
    """Nearest words by cosine of an embedding table (the attacker's own LM)."""

    def __init__(self, vocab: list[str], weight: torch.Tensor, k: int) -> None:
        self.vocab, self.k = vocab, k
        self.index = {w: i for i, w in enumerate(vocab)}
        self.w = F.normalize(weight.detach().float(), dim=1)

    def __call__(self, word: str) -> list[str]:
        i = self.index.get(word)
        if i is None or i < 2 or self.k == 0:
            return []
        sims = self.w @ self.w[i]
        sims[:2] = -2
        sims[i] = -2
        return [self.vocab[j] for j in torch.topk(sims, self.k).indices.tolist()]


def textbugger(source: TargetDetector, users: AttackUsers, idx: np.ndarray, start: list[str],
               max_share: float, neighbours: Neighbours | None) -> list[str]:
    """TextBugger on each start post, with score queries only."""
    out = []
    for i, post in zip(idx, start, strict=True):
        words = tokenize(post)
        out.append(" ".join(_bug_post(source, users, int(i), words, max_share, neighbours))
                   if words else post)
    return out


def _bug_post(source: TargetDetector, users: AttackUsers, user: int, words: list[str],
              max_share: float, neighbours: Neighbours | None) -> list[str]:
    """Bug the most important words of one post until the user is scored benign or the budget
    (a share of the words) is used."""

    def score(variants: list[list[str]]) -> np.ndarray:
        return source.score(users, np.full(len(variants), user), [" ".join(v) for v in variants])

    current = float(score([words])[0])
    drops = current - score([words[:j] + words[j + 1:] for j in range(len(words))])
    budget = max(1, int(max_share * len(words)))
    for j in np.argsort(-drops, kind="stable")[:budget]:
        if current < source.threshold:
            break
        cands = char_bugs(words[j]) + (neighbours(words[j]) if neighbours is not None else [])
        if not cands:
            continue
        s = score([words[:j] + [c] + words[j + 1:] for c in cands])
        b = int(s.argmin())
        if s[b] < current:
            words = words[:j] + [cands[b]] + words[j + 1:]
            current = float(s[b])
    return words
