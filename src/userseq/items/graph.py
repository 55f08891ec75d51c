"""Graph-context item vectors (the GSM++ idea, METHODS.md §9): the id table smoothed over the item
co-occurrence graph with LightGCN-style propagation, fed to the sequence encoder as its item
representation (`model.items: id+graph`, CLI `--items id+graph`).

Graph: items are nodes; an undirected edge joins two different items that occur within
`graph_window` positions of each other in some user's **training** sequence (`Split.train_*`:
validation and test targets never add edges). Edges are binary; the adjacency is normalised
symmetrically, Â = D^-1/2 A D^-1/2 (isolated items keep their own row only).

Propagation (LightGCN): E⁰ = the id table, Eˡ⁺¹ = Â Eˡ, item vectors = mean(E⁰ … Eᴸ) with
L = `graph_layers`. It is recomputed from the table at every forward (the table is what is
learned; gradients flow through the sparse products), and the same propagated matrix is both the
encoder's input embedding and the output (scoring) matrix. Rows above the catalogue (BERT4Rec's
[mask]) come from the id table unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from userseq.items.base import ItemRepr


def cooccurrence_graph(offsets: np.ndarray, items: np.ndarray, n_items: int,
                       window: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (2, nnz) int64, values (nnz,) float32) of Â over rows 0..n_items (row 0, the
    padding item, has no edges) from CSR sequences of item indices (1..n_items)."""
    if window < 1:
        raise ValueError(f"graph window must be >= 1 (got {window}).")
    items = np.asarray(items, dtype=np.int64)
    user = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    keys = []
    for w in range(1, window + 1):
        if len(items) <= w:
            break
        a, b = items[:-w], items[w:]
        ok = (user[:-w] == user[w:]) & (a != b) & (a > 0) & (b > 0)
        a, b = a[ok], b[ok]
        keys.append(a * (n_items + 1) + b)
        keys.append(b * (n_items + 1) + a)
    if keys:
        key = np.unique(np.concatenate(keys))
    else:
        key = np.zeros(0, dtype=np.int64)
    rows, cols = key // (n_items + 1), key % (n_items + 1)
    deg = np.bincount(rows, minlength=n_items + 1).astype(np.float64)
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    values = (inv[rows] * inv[cols]).astype(np.float32)
    return torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(values)


class GraphItems(ItemRepr):
    """An id representation propagated over the item graph (see the module doc)."""

    def __init__(self, ids: ItemRepr, index: torch.Tensor, value: torch.Tensor,
                 layers: int = 2) -> None:
        super().__init__()
        self.ids = ids
        self.n_items, self.dim, self.layers = ids.n_items, ids.dim, layers
        self.register_buffer("graph_index", index.to(torch.int64))
        self.register_buffer("graph_value", value.to(torch.float32))

    @property
    def edges(self) -> int:
        return int(self.graph_index.shape[1])

    def _adjacency(self) -> torch.Tensor:
        n = self.n_items + 1
        # indices are in range by construction (the training co-occurrence graph)
        return torch.sparse_coo_tensor(self.graph_index, self.graph_value, (n, n),
                                       device=self.graph_value.device,
                                       check_invariants=False).coalesce()

    def output_matrix(self) -> torch.Tensor:
        e = self.ids.output_matrix()
        if self.edges == 0 or self.layers == 0:
            return e
        adj = self._adjacency()
        total, cur = e, e
        for _ in range(self.layers):
            cur = torch.sparse.mm(adj, cur.float()).to(e.dtype)
            total = total + cur
        return total / (self.layers + 1)

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        m = self.output_matrix()
        out = m[ids.clamp(max=self.n_items)]
        special = ids > self.n_items
        if bool(special.any()):  # [mask] and other tokens above the catalogue: the id table's
            out = torch.where(special.unsqueeze(-1), self.ids(ids), out)
        return out
