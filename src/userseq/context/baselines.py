"""Baselines of the context aggregator: mean of the history, the most recent k, BM25 retrieval
of history posts by the input text, MiniLM-similarity retrieval, and the input alone."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

TOKEN = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class BM25:
    """Okapi BM25 (k1, b) with idf log(1 + (N - df + 0.5) / (df + 0.5)) from a corpus."""

    def __init__(self, corpus: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        docs = [tokens(t) for t in corpus]
        self.n = len(docs)
        self.avgdl = sum(map(len, docs)) / max(self.n, 1)
        df = Counter(w for d in docs for w in set(d))
        self.idf = {w: math.log(1 + (self.n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str, docs: list[str]) -> np.ndarray:
        q = tokens(query)
        default = math.log(1 + (self.n + 0.5) / 0.5)  # a word never seen in the corpus
        out = np.zeros(len(docs))
        for i, d in enumerate(docs):
            tf = Counter(tokens(d))
            dl = sum(tf.values())
            norm = self.k1 * (1 - self.b + self.b * dl / max(self.avgdl, 1e-9))
            out[i] = sum(self.idf.get(w, default) * tf[w] * (self.k1 + 1) / (tf[w] + norm)
                         for w in q if w in tf)
        return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first (ties: the more recent item first)."""
    order = np.lexsort((-np.arange(len(scores)), -scores))
    return order[:k]
