"""Item semantic IDs: the item vectors they are learned from, the catalogue's code table and the
prefix trie that constrains decoding to existing items.

The tokenizer itself (RQ-VAE, collision code) is `userseq.index.semantic_ids.SemanticIdTokenizer`,
shared with user semantic IDs. Here:

* `item_vectors(source, catalogue, ...)`: one vector per catalogue item from `text` (MiniLM over
  the item text), `run:RUN_DIR` (a trained run's item embeddings) or `file:PATH` (a table of
  item_id + embedding); an item without a vector is an error that names the items;
* `fit_item_ids(...)` / `ItemSemanticIds`: the fitted tokenizer plus the (n_items + 1, levels + 1)
  code table (row 0: padding), saved as a directory (`userseq semantic-ids fit --out DIR`);
* `PrefixTrie`: the code tuples of the catalogue as a trie in CSR form, for batched masking of the
  decoder's next-code distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.core.artifacts import load_ids, read_json, save_ids, write_json
from userseq.core.errors import ArtifactError, DataError
from userseq.index.semantic_ids import SemanticIdConfig, SemanticIdTokenizer

CODES_FILE = "item_semantic_ids.parquet"
IDS_FILE = "item_ids.parquet"
INFO_FILE = "semantic_ids.json"


# ---------------------------------------------------------------------- item vectors
def item_vectors(source: str, catalogue: pl.Series, dataset: str | None = None,
                 item_text: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(len(catalogue), E) float32 vectors in catalogue order, and a description of the source."""
    if source == "text":
        return _text_vectors(catalogue, dataset, item_text)
    if source.startswith("run:"):
        return _run_vectors(Path(source[4:]), catalogue)
    if source.startswith("file:"):
        return _file_vectors(Path(source[5:]), catalogue)
    raise DataError(f"items.source '{source}': expected text, run:RUN_DIR or file:PATH.")


def _text_vectors(catalogue: pl.Series, dataset: str | None, item_text: str | None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    from userseq.data.datasets import is_dataset_name, load_item_metadata
    from userseq.items.text import item_text_for, read_item_table, text_matrix

    if item_text:
        meta, where = read_item_table(item_text), item_text
    elif dataset and is_dataset_name(dataset):
        meta, where = load_item_metadata(dataset), f"{dataset} item metadata"
    else:
        meta, where = None, ""
    if meta is None:
        raise DataError(f"items.source text: {dataset or 'this data'} has no item text; pass an "
                        "item table (--item-text FILE with item_id + text columns), or learn "
                        "the IDs from embeddings (--vectors run:RUN_DIR or file:PATH).")
    it = item_text_for(catalogue, meta, where)
    vectors, has, stats = text_matrix(it)
    _check_missing(catalogue, ~has[1:].numpy(), f"items.source text ({where})")
    return vectors[1:].numpy(), {"source": "text", "from": where, **it.report(), **stats}


def _run_vectors(run: Path, catalogue: pl.Series) -> tuple[np.ndarray, dict[str, Any]]:
    from userseq.core.estimator import load

    est = load(run)
    if not hasattr(est, "item_embeddings"):
        raise DataError(f"items.source run:{run}: a '{est.task}' run has no item embeddings; "
                        "use a next-item run (userseq train).")
    table = pl.DataFrame({"item_id": est.item_ids, "embedding": est.item_embeddings()})
    vec, info = _aligned(table, catalogue, f"items.source run:{run}")
    return vec, {"source": f"run:{run}", **info}


def _file_vectors(path: Path, catalogue: pl.Series) -> tuple[np.ndarray, dict[str, Any]]:
    if not path.is_file() or path.suffix != ".parquet":
        raise DataError(f"items.source file:{path}: no such Parquet file; give a Parquet table "
                        "with item_id and embedding (list of floats) columns, e.g. the one "
                        "`userseq embed --items-out` writes.")
    table = pl.read_parquet(path)
    vec, info = _aligned(table, catalogue, f"items.source file:{path}")
    return vec, {"source": f"file:{path}", **info}


def _aligned(table: pl.DataFrame, catalogue: pl.Series, what: str
             ) -> tuple[np.ndarray, dict[str, Any]]:
    col = next((c for c in ("embedding", "vector") if c in table.columns), None)
    if "item_id" not in table.columns or col is None:
        raise DataError(f"{what}: needs columns item_id and embedding (got "
                        f"{', '.join(table.columns)}).")
    ids = table["item_id"]
    if ids.dtype != catalogue.dtype:
        try:
            ids = ids.cast(catalogue.dtype)
        except Exception:  # noqa: BLE001 - reported below as missing items
            ids = ids.cast(pl.String)
    pos = dict(zip(ids.to_list(), range(len(ids)), strict=True))
    rows = np.array([pos.get(i, -1) for i in catalogue.to_list()], dtype=np.int64)
    _check_missing(catalogue, rows < 0, what)
    mat = np.asarray(table[col].to_list(), dtype=np.float32)
    return mat[rows], {"dim": int(mat.shape[1])}


def _check_missing(catalogue: pl.Series, missing: np.ndarray, what: str) -> None:
    if missing.any():
        bad = catalogue.filter(pl.Series(missing)).head(5).to_list()
        raise DataError(f"{what}: {int(missing.sum())} of {len(catalogue)} items have no vector "
                        f"(e.g. {bad}); every item needs one to get a semantic ID.")


# ---------------------------------------------------------------------- the code table
@dataclass
class ItemSemanticIds:
    """A fitted tokenizer and the code tuple of every catalogue item (`codes[i]` for item index
    i; row 0 is the padding item)."""

    tokenizer: SemanticIdTokenizer
    item_ids: pl.Series
    info: dict[str, Any]

    @property
    def codes(self) -> np.ndarray:
        ids = self.tokenizer.ids_
        return np.concatenate([np.zeros((1, ids.shape[1]), np.int64), ids])

    @property
    def sizes(self) -> list[int]:
        return self.tokenizer.sizes

    @property
    def report(self) -> dict[str, Any]:
        return {**self.tokenizer.report_, "vectors_from": self.info}

    def frame(self) -> pl.DataFrame:
        """item_id, semantic_id (list of levels + 1 codes)."""
        return pl.DataFrame({"item_id": self.item_ids,
                             "semantic_id": self.tokenizer.ids_.tolist()})

    def save(self, d: str | Path) -> Path:
        d = Path(d)
        self.tokenizer.save(d)
        save_ids(self.item_ids, d / IDS_FILE)
        self.frame().write_parquet(d / CODES_FILE)
        write_json(self.info, d / INFO_FILE)
        return d

    @classmethod
    def load(cls, d: str | Path) -> ItemSemanticIds:
        d = Path(d)
        if not (d / IDS_FILE).is_file():
            raise ArtifactError(f"{d}: not an item semantic-ID directory (no {IDS_FILE}); create "
                                "one with `userseq semantic-ids fit`.")
        info = read_json(d / INFO_FILE) if (d / INFO_FILE).is_file() else {}
        return cls(SemanticIdTokenizer.load(d), load_ids(d / IDS_FILE), info)


def fit_item_ids(vectors: np.ndarray, item_ids: pl.Series, config: SemanticIdConfig,
                 info: dict[str, Any] | None = None) -> ItemSemanticIds:
    """Fit the RQ-VAE tokenizer on the catalogue's item vectors."""
    tok = SemanticIdTokenizer(config).fit(vectors, what="items")
    return ItemSemanticIds(tok, item_ids, info or {})


# ---------------------------------------------------------------------- prefix trie
class PrefixTrie:
    """The catalogue's code tuples as a trie. Depth d holds the distinct prefixes of length d
    (depth 0: the root); the edges from depth d to d + 1 are stored in CSR form (`offsets[d]`,
    sorted by parent then code) with their `code` and `child` (at the last depth the child is
    the item index). Built once, vectorised; decoding asks for the allowed codes of many nodes at
    once (`allowed`) and follows edges (`child`)."""

    def __init__(self, codes: np.ndarray, sizes: list[int]) -> None:
        codes = np.asarray(codes, dtype=np.int64)  # (n_items, depth): row i = item index i + 1
        if len(np.unique(codes, axis=0)) != len(codes):
            raise DataError("semantic IDs: two items share a code tuple; the collision code must "
                            "make every tuple unique.")
        self.depth, self.sizes, self.n_items = codes.shape[1], list(sizes), len(codes)
        self.width = max(self.sizes)
        order = np.lexsort(codes.T[::-1])
        s = codes[order]
        prev = np.zeros(len(s), dtype=np.int64)  # prefix id at depth d (root: 0)
        self.offsets, self.code, self.child, self.keys = [], [], [], []
        # item_node[d][i]: the depth d + 1 node above item index i (the item itself at the last
        # depth); subtree[d][node]: how many items are below that node
        self.item_node: list[np.ndarray] = []
        self.subtree: list[np.ndarray] = []
        for d in range(self.depth):
            new = np.ones(len(s), dtype=bool)
            if len(s) > 1:
                new[1:] = (s[1:, : d + 1] != s[:-1, : d + 1]).any(1)
            nxt = np.cumsum(new) - 1
            starts = np.flatnonzero(new)
            parent, code = prev[starts], s[starts, d]
            child = nxt[starts] if d < self.depth - 1 else order[starts] + 1  # items: index + 1
            n_parents = int(prev.max()) + 1
            self.offsets.append(torch.from_numpy(np.searchsorted(parent,
                                                                 np.arange(n_parents + 1))))
            self.code.append(torch.from_numpy(code))
            self.child.append(torch.from_numpy(child))
            self.keys.append(torch.from_numpy(parent * self.width + code))
            node = np.zeros(len(s) + 1, dtype=np.int64)
            if d < self.depth - 1:
                node[order + 1] = nxt
                self.subtree.append(np.bincount(nxt))
            else:
                node = np.arange(len(s) + 1, dtype=np.int64)
                self.subtree.append(np.ones(len(s) + 1, dtype=np.int64))
            self.item_node.append(node)
            prev = nxt

    def edges(self, d: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row of `nodes`, edge index) of every edge leaving `nodes` (depth d)."""
        off = self.offsets[d]
        lo, hi = off[nodes], off[nodes + 1]
        counts = hi - lo
        rows = torch.repeat_interleave(torch.arange(len(nodes)), counts)
        first = torch.cumsum(counts, 0) - counts
        idx = torch.repeat_interleave(lo - first, counts) + torch.arange(int(counts.sum()))
        return rows, idx

    def allowed(self, d: int, nodes: torch.Tensor) -> torch.Tensor:
        """(len(nodes), sizes[d]) bool: the codes that continue an existing item."""
        rows, idx = self.edges(d, nodes)
        mask = torch.zeros(len(nodes), self.sizes[d], dtype=torch.bool)
        mask[rows, self.code[d][idx]] = True
        return mask

    def step(self, d: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The child of each node along `codes` (depth d + 1 node, or the item index at the last
        depth); -1 where the edge does not exist."""
        keys = nodes * self.width + codes
        pos = torch.searchsorted(self.keys[d], keys).clamp(max=len(self.keys[d]) - 1)
        found = self.keys[d][pos] == keys
        return torch.where(found, self.child[d][pos], torch.full_like(keys, -1))

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """The item index of each full code tuple (-1 when no item has it)."""
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64))
        nodes = torch.zeros(len(c), dtype=torch.long)
        for d in range(self.depth):
            ok = nodes >= 0
            nxt = torch.full_like(nodes, -1)
            nxt[ok] = self.step(d, nodes[ok], c[ok, d])
            nodes = nxt
        return nodes.numpy()
