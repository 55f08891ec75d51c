"""Attack inputs: each user's history (all posts but the last), real final post, target context and
same-context flags, checked and encoded over a token vocabulary.

The last post of every sequence is the one the attacker replaces (PETGEN's layout). A user needs at
least one history post; a non-empty target context needs at least one in-vocabulary token (an empty
context is allowed and means "condition on the history only").
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from userseq.core.errors import ArtifactError, DataError
from userseq.detect.data import TextData, tokenize
from userseq.detect.estimator import encode_posts


@dataclass
class AttackUsers:
    """Per-user attack inputs (users in the order of the source `TextData`)."""

    user_ids: list[str]
    history: list[list[str]]
    final: list[str]
    contexts: list[str]
    relevancy: list[np.ndarray]  # (len(history),) 0/1
    labels: np.ndarray | None
    truncated: int = 0  # users whose history was cut to the most recent posts

    @property
    def n_users(self) -> int:
        return len(self.history)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash of the histories (detectors cache their history post vectors under it)."""
        return hashlib.sha256(json.dumps(self.history).encode()).hexdigest()


def attack_users(data: TextData, max_posts: int) -> AttackUsers:
    """Split every sequence into history + final post; clear errors for unusable users."""
    if max_posts < 2:
        raise DataError(f"the detector reads at most {max_posts} post(s); an attack needs room "
                        "for history + one post.")
    short = [str(data.user_ids[u]) for u in range(data.n_users) if len(data.posts[u]) < 2]
    if short:
        raise DataError(f"{data.source}: {len(short)} users have fewer than 2 posts (e.g. "
                        f"{short[:3]}): an attack needs at least one history post before the "
                        "generated one. Drop those users first.")
    contexts = data.contexts if data.contexts is not None else [""] * data.n_users
    history, final, rel = [], [], []
    truncated = 0
    for u, posts in enumerate(data.posts):
        h = list(posts[:-1])
        r = (np.asarray(data.relevancy[u], dtype=np.float32) if data.relevancy is not None
             else np.zeros(len(h), dtype=np.float32))
        if len(r) != len(h):
            raise DataError(f"{data.source}: user {data.user_ids[u]!r} has {len(h)} history posts "
                            f"but {len(r)} same-context (relevancy) flags; there must be one flag "
                            "per post before the last.")
        # keep the most recent ones: the generated post must fit in the detector's window
        if len(h) > max_posts - 1:
            h, r, truncated = h[-(max_posts - 1):], r[-(max_posts - 1):], truncated + 1
        history.append(h)
        final.append(posts[-1])
        rel.append(r)
    return AttackUsers(user_ids=[str(x) for x in data.user_ids.to_list()], history=history,
                       final=final, contexts=list(contexts), relevancy=rel, labels=data.labels,
                       truncated=truncated)


def check_histories(history: list[list[str]]) -> None:
    empty = [i for i, h in enumerate(history) if not h or not any(p.strip() for p in h)]
    if empty:
        raise DataError(f"{len(empty)} users have an empty history (first at position "
                        f"{empty[0]}): the generator conditions on the user's earlier posts; give "
                        "at least one non-empty post per user.")


def context_known(contexts: list[str], vocab: list[str]) -> np.ndarray:
    """Per user: True if the context has an in-vocabulary token, False if empty. A non-empty context
    with no known token is an error (the generator cannot condition on it)."""
    index = set(vocab[2:])
    out = np.zeros(len(contexts), dtype=bool)
    unknown = []
    for i, c in enumerate(contexts):
        toks = tokenize(c or "")
        if not toks:
            continue
        out[i] = any(t in index for t in toks)
        if not out[i]:
            unknown.append(i)
    if unknown:
        raise DataError(f"unknown context for {len(unknown)} users (first at position "
                        f"{unknown[0]}: {contexts[unknown[0]][:60]!r}): none of its words are in "
                        "the attacker's vocabulary. Give a context text with known words, or an "
                        "empty context to condition on the history only.")
    return out


@dataclass
class EncodedUsers:
    """Token tensors of `AttackUsers` over one vocabulary (right-padded)."""

    history: torch.Tensor  # (N, P, T) long
    n_hist: torch.Tensor  # (N,) long
    relevancy: torch.Tensor  # (N, P) float
    context: torch.Tensor  # (N, T) long
    has_context: torch.Tensor  # (N,) bool
    final: torch.Tensor  # (N, T) long


def decode(ids: torch.Tensor, vocab: list[str]) -> list[str]:
    """Token ids (B, T) -> post texts (`<pad>` and `<unk>` left out)."""
    return [" ".join(vocab[i] for i in row.tolist() if i > 1) for row in ids]


def encode_users(users: AttackUsers, vocab: list[str], max_tokens: int) -> EncodedUsers:
    check_histories(users.history)
    known = context_known(users.contexts, vocab)
    P = max(len(h) for h in users.history)
    hist = encode_posts(users.history, vocab, P, max_tokens)
    rel = np.zeros((users.n_users, P), dtype=np.float32)
    for u, r in enumerate(users.relevancy):
        rel[u, : len(r)] = r
    ctx = encode_posts([[c] for c in users.contexts], vocab, 1, max_tokens)[:, 0]
    fin = encode_posts([[f] for f in users.final], vocab, 1, max_tokens)[:, 0]
    return EncodedUsers(history=torch.from_numpy(hist.astype(np.int64)),
                        n_hist=torch.tensor([len(h) for h in users.history], dtype=torch.long),
                        relevancy=torch.from_numpy(rel),
                        context=torch.from_numpy(ctx.astype(np.int64)),
                        has_context=torch.from_numpy(known),
                        final=torch.from_numpy(fin.astype(np.int64)))


# ---------------------------------------------------------------------- saved attackers
def write_users(users: AttackUsers, path: Path) -> None:
    """The attack inputs of every user as Parquet (one row per user)."""
    pl.DataFrame({
        "user_id": users.user_ids,
        "history": pl.Series(users.history, dtype=pl.List(pl.String)),
        "final": users.final, "context": users.contexts,
        "relevancy": pl.Series([r.tolist() for r in users.relevancy], dtype=pl.List(pl.Float32)),
        "label": pl.Series(users.labels.tolist() if users.labels is not None
                           else [None] * users.n_users, dtype=pl.Int64),
    }).write_parquet(path)


def read_users(path: Path, truncated: int = 0) -> AttackUsers:
    """`AttackUsers` written by `write_users`."""
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; the attack run directory is incomplete.")
    try:
        t = pl.read_parquet(path)
        labels = t["label"]
        return AttackUsers(
            user_ids=[str(u) for u in t["user_id"].to_list()],
            history=[list(h) for h in t["history"].to_list()], final=t["final"].to_list(),
            contexts=t["context"].to_list(),
            relevancy=[np.asarray(r, dtype=np.float32) for r in t["relevancy"].to_list()],
            labels=None if labels.null_count() else labels.to_numpy().astype(np.int64),
            truncated=truncated)
    except (pl.exceptions.PolarsError, OSError, KeyError) as e:
        raise ArtifactError(f"{path}: corrupt attack users table "
                            f"({str(e).splitlines()[0]}).") from None
