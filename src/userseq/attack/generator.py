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
* `decoder`: 'gru' or 'transformer' (causal pre-LN blocks; the user state is projected, layer-
  normalised and added to every token's input, as PETGEN's code injects its RMC state; RelGAN's
  relational memory core itself is not implemented).
* `condition` (PETGEN's style/context personalisation, switchable): 'context-attention' (the
  weighted average above), 'mean-history' (uniform average of the history posts, no context) or
  'context-only' (the target context alone: MALCOM's conditioning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from userseq.detect.models import TokenEmbedding, run_rnn
from userseq.encoders.blocks import TransformerBlock, attention_mask

PAD, UNK = 0, 1
DECODERS = ("gru", "transformer")
CONDITIONS = ("context-attention", "mean-history", "context-only")


class PostGenerator(nn.Module):
    def __init__(self, vocab: int, emb_dim: int = 64, hidden: int = 128, max_tokens: int = 30,
                 min_tokens: int = 3, dropout: float = 0.1, conditional: bool = True,
                 decoder: str = "gru", layers: int = 2, heads: int = 2,
                 condition: str = "context-attention") -> None:
        super().__init__()
        if decoder not in DECODERS or condition not in CONDITIONS:
            raise ValueError(f"decoder must be one of {DECODERS} (got {decoder!r}) and condition "
                             f"one of {CONDITIONS} (got {condition!r})")
        self.vocab, self.emb_dim, self.hidden = vocab, emb_dim, hidden
        self.max_tokens, self.min_tokens, self.dropout = max_tokens, min_tokens, dropout
        self.conditional = conditional
        self.decoder_kind, self.layers, self.heads = decoder, layers, heads
        self.condition_kind = condition
        self.words: list[str] | None = None  # the vocabulary, when known
        self.emb = TokenEmbedding(vocab, emb_dim)
        self.bos = nn.Parameter(torch.zeros(emb_dim))
        self.drop = nn.Dropout(dropout)
        cond = hidden if conditional else 0
        if decoder == "gru":
            self.decoder = nn.GRU(emb_dim + cond, hidden, batch_first=True)
        else:
            self.in_proj = nn.Linear(emb_dim, hidden)
            self.positions = nn.Parameter(torch.randn(max_tokens + 1, hidden) * 0.02)
            self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, 2 * hidden, dropout)
                                        for _ in range(layers))
            self.final_norm = nn.LayerNorm(hidden)
            if conditional:
                self.inject = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
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
        if self.condition_kind == "context-only":
            return c
        pos = torch.arange(P, device=h.device)[None, :]
        valid = pos < n_prev[:, None]
        if self.condition_kind == "mean-history":
            m = valid.unsqueeze(-1).float()
            return (h * m).sum(1) / m.sum(1).clamp(min=1)
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

    def _transform(self, e: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Causal transformer states (B, T, hidden) of input embeddings e (B, T, emb_dim)."""
        T = e.shape[1]
        x = self.in_proj(self.drop(e)) + self.positions[:T]
        if u is not None:
            x = x + self.inject(u)[:, None]
        am = attention_mask(torch.ones(e.shape[:2], dtype=torch.bool, device=e.device), True)
        for block in self.blocks:
            x = block(x, am)
        return self.final_norm(x)

    def states(self, targets: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Decoder states (B, T, hidden) predicting targets (B, T) ids or (B, T, V) rows from the
        previous tokens."""
        B = targets.shape[0]
        e = self.emb(targets)[:, :-1]
        e = torch.cat([self.bos.expand(B, 1, -1), e], 1)
        if self.decoder_kind == "transformer":
            return self.drop(self._transform(e, u))
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
        prefix = [e]  # transformer: every input so far
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        rows, ids, masks = [], [], []
        pad_row = F.one_hot(torch.tensor(PAD, device=dev), self.vocab).float()
        for t in range(self.max_tokens):
            if self.decoder_kind == "transformer":
                out = self._transform(torch.cat(prefix, 1), u)[:, -1:]
            else:
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
            prefix.append(e)
            if not bool(alive.any()):
                break
        return torch.stack(rows, 1), torch.stack(ids, 1), torch.stack(masks, 1)
