"""PETGEN's generator, cleanly: a GRU language model over the detector's vocabulary, conditioned
on a context-aware encoding of the user's history, emitting (straight-through) Gumbel-softmax
one-hot rows so losses flow through the detector.

* History encoding: every history post and the target context are encoded by the generator's own
  post GRU; their final states are averaged with weights softmax(a * r_i + b * recency_i) over the
  posts and a * 1 for the context (r_i = 1 for posts on the target context; a, b learned, a starts
  at 1 as in PETGEN's softmax([r_1..r_n, 1])). A missing context is left out of the average.
* Decoding: the user state initialises the GRU and is fed with every token embedding. Token 0
  (`<pad>`) ends the post; `<unk>` is never generated; the end is forbidden before `min_tokens`
  tokens.
* `conditional=False` gives a plain LM over the same vocabulary (the separately trained LM that
  scores perplexity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from userseq.detect.models import TokenEmbedding, run_rnn

PAD, UNK = 0, 1


class PostGenerator(nn.Module):
    def __init__(self, vocab: int, emb_dim: int = 64, hidden: int = 128, max_tokens: int = 30,
                 min_tokens: int = 3, dropout: float = 0.1, conditional: bool = True) -> None:
        super().__init__()
        self.vocab, self.emb_dim, self.hidden = vocab, emb_dim, hidden
        self.max_tokens, self.min_tokens, self.dropout = max_tokens, min_tokens, dropout
        self.conditional = conditional
        self.words: list[str] | None = None  # the vocabulary, when known
        self.emb = TokenEmbedding(vocab, emb_dim)
        self.bos = nn.Parameter(torch.zeros(emb_dim))
        self.drop = nn.Dropout(dropout)
        cond = hidden if conditional else 0
        self.decoder = nn.GRU(emb_dim + cond, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        if conditional:
            self.encoder = nn.GRU(emb_dim, hidden, batch_first=True)
            self.init = nn.Linear(hidden, hidden)
            self.rel_scale = nn.Parameter(torch.tensor(1.0))
            self.recency_scale = nn.Parameter(torch.tensor(0.0))
            self.no_context = nn.Parameter(torch.zeros(hidden))

    # ------------------------------------------------------------------ encoding
    def encode_posts(self, tokens: torch.Tensor,
                     token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T) ids or (N, T, V) one-hot rows -> (N, hidden) final encoder state (zeros for empty
        posts)."""
        if token_mask is not None:
            mask = token_mask
        else:
            mask = tokens[..., 1:].sum(-1) > 0 if tokens.is_floating_point() else tokens > 0
        return run_rnn(self.encoder, self.emb(tokens), mask.sum(1))

    def history_states(self, history: torch.Tensor) -> torch.Tensor:
        """(B, P, T) history ids -> (B, P, hidden) per-post encoder states."""
        B, P, T = history.shape
        return self.encode_posts(history.reshape(B * P, T)).view(B, P, -1)

    def mix(self, h: torch.Tensor, n_prev: torch.Tensor, relevancy: torch.Tensor, c: torch.Tensor,
            has_context: torch.Tensor) -> torch.Tensor:
        """Weighted average of post states h (B, P, hidden) (the first n_prev are used) and the
        context state c (B, hidden): weights softmax(a * r_i - b * log(1 + posts since i), a for
        the context)."""
        B, P, _ = h.shape
        c = torch.where(has_context[:, None], c, self.no_context.expand_as(c))
        pos = torch.arange(P, device=h.device)[None, :]
        valid = pos < n_prev[:, None]
        back = (n_prev[:, None] - 1 - pos).clamp(min=0).float()  # 0 = most recent post
        logits = self.rel_scale * relevancy - self.recency_scale * torch.log1p(back)
        logits = torch.cat([logits.masked_fill(~valid, -1e9), self.rel_scale.expand(B, 1)], 1)
        w = torch.softmax(logits, 1)
        return (w[:, :P, None] * h).sum(1) + w[:, P:] * c

    def condition(self, history: torch.Tensor, n_hist: torch.Tensor, relevancy: torch.Tensor,
                  context: torch.Tensor, has_context: torch.Tensor) -> torch.Tensor:
        """Context-aware user state (B, hidden) from history ids (B, P, T) and context ids
        (B, T)."""
        return self.mix(self.history_states(history), n_hist, relevancy,
                        self.encode_posts(context), has_context)

    # ------------------------------------------------------------------ decoding
    def _step_input(self, e: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return e if u is None else torch.cat([e, u[:, None].expand(-1, e.shape[1], -1)], -1)

    def _h0(self, u: torch.Tensor | None) -> torch.Tensor | None:
        return None if u is None else torch.tanh(self.init(u))[None]

    def _mask_logits(self, logits: torch.Tensor, start: int) -> torch.Tensor:
        """Never `<unk>`; no end-of-post before `min_tokens` (positions start..)."""
        logits = logits.clone()
        logits[..., UNK] = -1e9
        T = logits.shape[1]
        early = torch.arange(start, start + T, device=logits.device) < self.min_tokens
        logits[:, early, PAD] = -1e9
        return logits

    def states(self, targets: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Decoder states (B, T, hidden) predicting targets (B, T) ids or (B, T, V) rows from the
        previous tokens."""
        B = targets.shape[0]
        e = self.emb(targets)[:, :-1]
        e = torch.cat([self.bos.expand(B, 1, -1), e], 1)
        out, _ = self.decoder(self._step_input(self.drop(e), u), self._h0(u))
        return self.drop(out)

    def nll(self, targets: torch.Tensor,
            u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, token count) of right-padded id targets (B, T); the first `<pad>` (end of
        post) is a target, later pads are not. Logits are computed only where counted (the
        vocabulary layer dominates)."""
        T = targets.shape[1]
        length = (targets > 0).sum(1, keepdim=True)
        counted = torch.arange(T, device=targets.device)[None, :] <= length
        logits = self.out(self.states(targets, u)[counted])
        return F.cross_entropy(logits, targets[counted], reduction="sum"), counted.sum()

    def _gumbel(self, logits: torch.Tensor, tau: float, hard: bool,
                generator: torch.Generator | None) -> torch.Tensor:
        """A (straight-through) Gumbel-softmax sample (B, V) of the logits (B, V)."""
        r = torch.rand(logits.shape, device=logits.device, generator=generator)
        g = -torch.log(-torch.log(r.clamp(1e-10, 1).clamp(max=1 - 1e-7)))
        soft = torch.softmax((logits + g) / tau, -1)
        if not hard:
            return soft
        return F.one_hot(soft.argmax(-1), self.vocab).float() - soft.detach() + soft

    def sample(self, u: torch.Tensor, tau: float = 1.0, hard: bool = True,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample posts for user states u (B, hidden): (one-hot rows (B, T, V) differentiable,
        ids (B, T), token mask (B, T)).

        Rows after the end-of-post are `<pad>` one-hots; the token mask is True on real tokens.
        With `hard`, rows are straight-through one-hots (forward discrete, gradient of the soft
        sample). `generator` seeds the sampling.
        """
        B = u.shape[0]
        dev = self.out.weight.device
        h = self._h0(u)
        e = self.bos.expand(B, 1, -1)
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        rows, ids, masks = [], [], []
        pad_row = F.one_hot(torch.tensor(PAD, device=dev), self.vocab).float()
        for t in range(self.max_tokens):
            out, h = self.decoder(self._step_input(self.drop(e), u), h)
            logits = self._mask_logits(self.out(self.drop(out)), t)[:, 0] / temperature
            y = self._gumbel(logits, tau, hard, generator)
            tok = y.argmax(-1)
            is_tok = alive & (tok != PAD)
            y = torch.where(alive[:, None], y, pad_row)
            rows.append(y)
            ids.append(torch.where(is_tok, tok, torch.zeros_like(tok)))
            masks.append(is_tok)
            alive = is_tok
            e = self.emb(y)[:, None]
            if not bool(alive.any()):
                break
        return torch.stack(rows, 1), torch.stack(ids, 1), torch.stack(masks, 1)
