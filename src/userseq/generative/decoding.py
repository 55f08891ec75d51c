"""Decoding the next item's code tuple: beam search and Diverse Beam Search, constrained by the
catalogue's prefix trie so that only existing items come out.

Beam search keeps the B best prefixes per user at every step (log-probability of the prefix).
Diverse Beam Search (Vijayakumar et al., AAAI 2018) splits the B beams into G groups of B/G; at
every step the groups choose in turn, and group g's candidate scores get a Hamming diversity
penalty: λ times the number of times the code was chosen at this step by groups 0..g-1. The
penalty steers the *choice* only; a beam's score stays its log-probability, and the final list is
every beam sorted by it. Groups decode in lock-step from their own beams, so one decoder pass per
step serves them all.

The last position is the collision code (0 for most items, it carries no meaning), so it is not
penalised: a penalty there would favour the second item of a colliding pair over every first
one. At that step a code names an item; an item already taken by an earlier group, and (with
`seen`) an item of the user's history, cannot be chosen, so the B results are distinct items.
Written for userseq (Hugging Face transformers dropped its group beam search, METHODS.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from userseq.core.errors import ConfigError
from userseq.generative.model import GenerativeRetriever
from userseq.generative.semantic_ids import PrefixTrie

NEG = float("-inf")


@dataclass(frozen=True)
class DecodeSettings:
    beams: int = 20
    groups: int = 1
    diversity: float = 0.0

    def check(self, k: int, n_items: int) -> None:
        """Clear errors for settings that cannot give k distinct items."""
        if self.beams < 1 or self.groups < 1:
            raise ConfigError(f"decode.beams ({self.beams}) and decode.groups ({self.groups}) "
                              "must be positive.")
        if self.beams % self.groups:
            fit = self.groups * max(1, self.beams // self.groups)
            raise ConfigError(f"decode.groups ({self.groups}) must divide decode.beams "
                              f"({self.beams}); e.g. --beams {fit} --groups {self.groups}.")
        if self.diversity < 0:
            raise ConfigError(f"decode.diversity must be >= 0 (got {self.diversity}).")
        if k > self.beams:
            raise ConfigError(f"k ({k}) is larger than decode.beams ({self.beams}): every beam "
                              f"yields one item; use --beams {k} or more.")
        if k > n_items:
            raise ConfigError(f"k ({k}) is larger than the catalogue ({n_items} items): the "
                              f"prefix trie cannot yield {k} items.")


def _exhausted(trie: PrefixTrie, seen: list[np.ndarray], stride: int) -> list[torch.Tensor]:
    """Per depth d + 1, the sorted keys `user * stride + node` of the nodes all of whose items
    the user has seen: decoding never enters them, so no beam is spent on a dead end."""
    users = np.repeat(np.arange(len(seen)), [len(x) for x in seen])
    items = np.concatenate([np.asarray(x, dtype=np.int64) for x in seen]) if len(users) else \
        np.zeros(0, np.int64)
    pairs = np.unique(users * stride + items)  # a user's repeated items count once
    users, items = pairs // stride, pairs % stride
    out = []
    for d in range(trie.depth):
        node = trie.item_node[d][items]
        keys, counts = np.unique(users * stride + node, return_counts=True)
        out.append(torch.from_numpy(keys[counts == trie.subtree[d][keys % stride]]))
    return out


def _member(keys: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Elementwise `keys in sorted_keys`."""
    if len(sorted_keys) == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


@torch.no_grad()
def decode(model: GenerativeRetriever, trie: PrefixTrie, history: torch.Tensor,
           settings: DecodeSettings, k: int, seen: list[np.ndarray] | None = None,
           preference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items (U, k) of each history row (U, L left-padded item indices) with their
    log-probabilities (U, k); item 0 with score -inf where fewer than k items could be decoded
    (only when `seen` blocks whole branches). `seen[u]`: item indices user u must not get."""
    settings.check(k, trie.n_items)
    model.eval()
    device = history.device
    U, B, G = len(history), settings.beams, settings.groups
    per = B // G
    memory, key_mask = model.encode(history, preference)
    stride = trie.n_items + 1  # more than the nodes at any depth
    full = _exhausted(trie, seen, stride) if seen is not None else None
    # beam state: trie node, codes so far, log-probability; at step 0 only the first beam of each
    # group is alive (all beams would otherwise start identical)
    nodes = torch.zeros(U, B, dtype=torch.long)
    score = torch.full((U, B), NEG)
    score[:, ::per] = 0.0
    prefix = torch.zeros(U, B, 0, dtype=torch.long)
    users = torch.arange(U)
    for d in range(trie.depth):
        V = trie.sizes[d]
        logp = model.next_logprobs(memory, key_mask, prefix.to(device)).cpu()
        # the child of every (beam, code): a node of depth d + 1, or the item at the last depth
        child = torch.full((U * B, V), -1, dtype=torch.long)
        rows, idx = trie.edges(d, nodes.reshape(-1))
        child[rows, trie.code[d][idx]] = trie.child[d][idx]
        child = child.view(U, B, V)
        ok = child >= 0
        if full is not None and len(full[d]):  # subtrees made only of seen items
            ok &= ~_member(users[:, None, None] * stride + child.clamp(min=0), full[d])
        cand = torch.where(ok, score[..., None] + logp, NEG)  # (U, B, V) prefix log-probs
        last = d == trie.depth - 1
        items = child
        new_nodes = torch.zeros(U, B, dtype=torch.long)
        new_score = torch.full((U, B), NEG)
        new_code = torch.zeros(U, B, dtype=torch.long)
        counts = torch.zeros(U, V)  # codes chosen at this step by the groups so far
        taken = torch.zeros(U, 0, dtype=torch.long)  # items chosen at this step (last step)
        for g in range(G):
            sl = slice(g * per, (g + 1) * per)
            c = cand[:, sl]  # (U, per, V)
            pick = c
            if g and settings.diversity and not last:
                pick = c - settings.diversity * counts[:, None, :]
            if last and g:
                pick = torch.where((items[:, sl, :, None] == taken[:, None, None, :]).any(-1),
                                   NEG, pick)
            flat = pick.reshape(U, per * V)
            top = flat.topk(per, dim=1).indices  # (U, per)
            beam, code = top // V + g * per, top % V
            true = cand.view(U, B * V).gather(1, beam * V + code)
            alive = torch.isfinite(flat.gather(1, top))
            new_score[:, sl] = torch.where(alive, true, NEG)
            new_code[:, sl] = code
            new_nodes[:, sl] = beam  # the parent beam for now
            counts.scatter_add_(1, code, alive.float())
            if last:
                chosen = items.view(U, B * V).gather(1, beam * V + code)
                taken = torch.cat([taken, torch.where(alive, chosen, -1)], 1)
        parent = new_nodes
        prev_nodes = nodes.gather(1, parent)
        prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, prefix.shape[2])),
                            new_code[..., None]], -1)
        nodes = trie.step(d, prev_nodes.reshape(-1), new_code.reshape(-1)).view(U, B)
        nodes = torch.where(torch.isfinite(new_score), nodes.clamp(min=0), 0)
        score = new_score
    # nodes now hold item indices; dead beams are -inf
    items = torch.where(torch.isfinite(score), nodes, 0)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    return items.gather(1, order), score.gather(1, order)
