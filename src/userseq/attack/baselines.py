"""The four text-attack baselines (the fifth, `lm`, is the generator without the attack loss).

* Copycat: reuse an existing post of a *benign training* user, the one closest (TF-IDF cosine) to the
  target context (to the user's history when the context is empty).
* HotFlip (white-box): greedy first-order token flips on the copycat post, each flip kept only if the
  detector's score really drops.
* Universal trigger (white-box): k tokens, learned on training malicious users by HotFlip-style
  candidate search, prepended to the copycat post of every user.
* TextBugger (score queries only): rank the copycat post's words by how much deleting them lowers the
  malicious score, then apply the best character bug (split, delete, swap, look-alike) or
  nearest-neighbour word substitution (attacker LM embedding) word by word until the user is scored
  benign or a share of the words is used.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from userseq.attack.data import AttackUsers
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
            raise DataError("copycat: the benign training users have no post of 3+ tokens to reuse.")
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


def _join(ids: torch.Tensor, vocab: list[str]) -> list[str]:
    return [" ".join(vocab[i] for i in row.tolist() if i > 1) for row in ids]


def hotflip(source: TargetDetector, users: AttackUsers, idx: np.ndarray, start: list[str], flips: int,
            batch: int = 64) -> list[str]:
    source.require_white_box("hotflip")
    vocab = source.vocab
    out: list[str] = []
    for b in range(0, len(idx), batch):
        bi = np.asarray(idx[b:b + batch])
        ids = _ids(start[b:b + batch], vocab, source.max_tokens)
        mask = ids > 0
        active = torch.ones(len(bi), dtype=torch.bool)
        for _ in range(flips):
            cur, g = _logits_of_ids(source, users, bi, ids, grad=True)
            assert g is not None
            gain = g - g.gather(-1, ids[..., None])  # first-order change of the logit
            gain[..., :2] = float("inf")  # never pad / unk
            gain[~mask] = float("inf")
            flat = gain.view(len(bi), -1)
            best = flat.argmin(1)
            pos, tok = best // len(vocab), best % len(vocab)
            new = ids.clone()
            rows = torch.arange(len(bi))
            new[rows, pos] = tok
            after, _ = _logits_of_ids(source, users, bi, new)
            keep = active & (after < cur) & (flat[rows, best] < 0)
            ids = torch.where(keep[:, None], new, ids)
            active &= keep
            if not bool(active.any()):
                break
        out += _join(ids, vocab)
    return out


def learn_trigger(source: TargetDetector, users: AttackUsers, train_malicious: np.ndarray, base: list[str],
                  k: int, iters: int, candidates: int, seed: int = 0, batch: int = 64) -> list[str]:
    """Universal trigger tokens minimising the mean logit of training malicious users (base posts appended)."""
    source.require_white_box("trigger")
    vocab = source.vocab
    T = source.max_tokens
    rng = np.random.default_rng(seed)
    start = vocab.index("the") if "the" in vocab else 2
    trig = torch.full((k,), start, dtype=torch.long)
    base_ids = _ids(base, vocab, T)

    def with_trigger(t: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        b = base_ids[torch.from_numpy(rows)]
        full = torch.cat([t.expand(len(rows), -1), b], 1)[:, :T]
        return full

    for _ in range(iters):
        rows = rng.choice(len(train_malicious), min(batch, len(train_malicious)), replace=False)
        users_b = train_malicious[rows]
        for p in range(k):
            _, g = _logits_of_ids(source, users, users_b, with_trigger(trig, rows), grad=True)
            assert g is not None
            score = g[:, p].mean(0)
            score[:2] = float("inf")
            cands = torch.topk(-score, candidates).indices
            best_tok, best_val = int(trig[p]), float(_logits_of_ids(source, users, users_b, with_trigger(trig, rows))[0].mean())
            for c in cands.tolist():
                t2 = trig.clone()
                t2[p] = c
                val = float(_logits_of_ids(source, users, users_b, with_trigger(t2, rows))[0].mean())
                if val < best_val:
                    best_tok, best_val = c, val
            trig[p] = best_tok
    return [vocab[i] for i in trig.tolist()]


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
           word[:mid - 1] + word[mid] + word[mid - 1] + word[mid + 1:]]  # swap two middle characters
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


def textbugger(source: TargetDetector, users: AttackUsers, idx: np.ndarray, start: list[str], max_share: float,
               neighbours: Neighbours | None) -> list[str]:
    out = []
    for i, post in zip(idx, start, strict=True):
        words = tokenize(post)
        if not words:
            out.append(post)
            continue

        def score(variants: list[list[str]], user: int = int(i)) -> np.ndarray:
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
        out.append(" ".join(words))
    return out
