"""Semantic IDs: short tuples of discrete codes for vectors, learned by a residual-quantised
autoencoder (RQ-VAE; Zeghidour et al. 2021, as used by TIGER, Rajput et al. 2023, and for user
indices by ULMRec).

Vectors (item text vectors, a model's item or user embeddings) are standardised, encoded by an
MLP into a latent `z`, and quantised level by level: level l picks the nearest code of its
codebook for the residual left by the levels before it. The decoder reconstructs the vector from
the sum of the chosen codes. Training minimises reconstruction error plus the codebook and
commitment terms (`beta`) through the one training loop (`core.trainer.Trainer`); codebooks
start from k-means on the first latents, and codes unused during an epoch are reset to random
residuals of the next one (dead-code reset), which keeps codebook usage high.

Vectors that get the same tuple are told apart by one extra *collision code* (0, 1, 2, ... in
the order of the vectors), so every vector has a unique tuple of `levels + 1` codes. `report_`
gives codebook usage per level, the collision rate before disambiguation and the reconstruction
error. A tokenizer is saved as `tokenizer.safetensors` + `tokenizer.json` (no pickle).

The same tokenizer serves items (generative retrieval, `userseq.generative`) and users (compact
user keys, `userseq embed --semantic-ids`); it lives here, beside the other vector quantisers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from userseq.core.artifacts import load_tensors, read_json, save_tensors, write_json
from userseq.core.config import StrictModel, TrainConfig, validate_config
from userseq.core.errors import ArtifactError, ConfigError, DataError, NotFittedError
from userseq.core.trainer import Trainer

TENSORS = "tokenizer.safetensors"
MANIFEST = "tokenizer.json"


class SemanticIdConfig(StrictModel):
    """Settings of the RQ-VAE tokenizer (section `semantic_ids` of a generative config)."""

    levels: int = Field(3, ge=1, description="codes per tuple before the collision code")
    codebook_size: int = Field(256, ge=2, description="codes per level")
    latent_dim: int = Field(32, ge=1, description="width of the quantised latent")
    hidden: list[int] = Field(default_factory=lambda: [256, 128],
                              description="hidden widths of the encoder MLP (decoder: reversed)")
    beta: float = Field(0.25, ge=0, description="weight of the commitment term")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    kmeans_iters: int = Field(25, ge=0, description="k-means iterations of the codebook init "
                              "(0: random latents)")
    dead_code_reset: bool = Field(True, description="reset codes unused in an epoch")
    seed: int = 0


def _kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++-free Lloyd iterations from k distinct random points; empty clusters keep their
    centre."""
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """MLP encoder -> residual quantiser (`levels` codebooks of `codebook_size`) -> MLP decoder."""

    def __init__(self, in_dim: int, cfg: SemanticIdConfig) -> None:
        super().__init__()
        self.levels, self.size, self.beta = cfg.levels, cfg.codebook_size, cfg.beta
        self.encoder = _mlp([in_dim, *cfg.hidden, cfg.latent_dim])
        self.decoder = _mlp([cfg.latent_dim, *reversed(cfg.hidden), in_dim])
        self.codebooks = nn.Parameter(torch.randn(cfg.levels, cfg.codebook_size, cfg.latent_dim)
                                      * 0.1)
        # codes used since the last reset (not saved: training state only)
        self.register_buffer("usage", torch.zeros(cfg.levels, cfg.codebook_size), persistent=False)
        self.pending: list[torch.Tensor] = []  # residuals of the current epoch for resets

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(codes (N, levels), quantised latent (N, latent), residual entering each level)."""
        residual, zq = z, torch.zeros_like(z)
        codes, residuals = [], []
        for lvl in range(self.levels):
            book = self.codebooks[lvl]
            c = torch.cdist(residual.detach(), book.detach()).argmin(1)
            q = book[c]
            codes.append(c)
            residuals.append(residual)
            zq = zq + q
            residual = residual - q
        return torch.stack(codes, 1), zq, residuals

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        codes, _, residuals = self.quantise(z)
        quant, commit = z.new_zeros(()), z.new_zeros(())
        zq = torch.zeros_like(z)
        for lvl, r in enumerate(residuals):
            q = self.codebooks[lvl][codes[:, lvl]]
            quant = quant + ((r.detach() - q) ** 2).sum(1).mean()
            commit = commit + ((r - q.detach()) ** 2).sum(1).mean()
            zq = zq + q
        z_st = z + (zq - z).detach()  # straight-through estimator
        recon = ((self.decoder(z_st) - x) ** 2).sum(1).mean()
        with torch.no_grad():
            for lvl in range(self.levels):
                self.usage[lvl] += torch.bincount(codes[:, lvl], minlength=self.size)
            self.pending.append(torch.stack([r.detach() for r in residuals], 1))
        return recon + quant + self.beta * commit

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, iters: int, gen: torch.Generator) -> None:
        """k-means on the residuals of `x`, level by level."""
        residual = self.encoder(x)
        for lvl in range(self.levels):
            centres = _kmeans(residual, self.size, iters, gen)
            self.codebooks[lvl].copy_(centres)
            residual = residual - centres[torch.cdist(residual, centres).argmin(1)]

    @torch.no_grad()
    def reset_dead_codes(self, gen: torch.Generator) -> int:
        """Replace codes unused since the last call by random residuals seen meanwhile; returns
        how many were reset."""
        if not self.pending:
            return 0
        res = torch.cat(self.pending)  # (N, levels, latent)
        self.pending = []
        n = 0
        for lvl in range(self.levels):
            dead = torch.nonzero(self.usage[lvl] == 0).flatten()
            if len(dead):
                pick = torch.randint(len(res), (len(dead),), generator=gen)
                self.codebooks[lvl][dead] = res[pick, lvl]
                n += len(dead)
        self.usage.zero_()
        return n


class SemanticIdTokenizer:
    """Vectors -> unique tuples of `levels + 1` codes (the last one tells colliding vectors
    apart).

    >>> tok = SemanticIdTokenizer({"levels": 3, "codebook_size": 64}).fit(vectors)
    >>> tok.ids_          # (n, 4) int64, unique rows
    >>> tok.report_       # usage per level, collision rate, reconstruction error
    >>> tok.encode(more)  # (m, 3) codes of new vectors (no collision code)
    """

    def __init__(self, config: SemanticIdConfig | dict[str, Any] | None = None) -> None:
        if isinstance(config, SemanticIdConfig):
            self.config = config
        else:
            self.config = validate_config(SemanticIdConfig, config or {}, "semantic_ids",
                                          "semantic_ids config")
        self.model_: RQVAE | None = None
        self.mean_: torch.Tensor | None = None
        self.scale_: torch.Tensor | None = None
        self.ids_: np.ndarray | None = None
        self.report_: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    def fit(self, vectors: np.ndarray | torch.Tensor, quiet: bool = True,
            what: str = "vectors", setting: str = "semantic_ids.codebook_size"
            ) -> SemanticIdTokenizer:
        """Learn the codebooks on `vectors` (n, E) and give every row its unique tuple (`ids_`).
        `what` names the vectors and `setting` the codebook-size setting in error messages."""
        cfg = self.config
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if x.ndim != 2 or len(x) == 0:
            raise DataError(f"{what}: expected a non-empty (n, dim) matrix, got shape "
                            f"{tuple(x.shape)}.")
        bad = ~torch.isfinite(x).all(1)
        if bad.any():
            raise DataError(f"{what}: {int(bad.sum())} row(s) have NaN/inf values (first: row "
                            f"{int(torch.nonzero(bad)[0])}); give every row a finite vector.")
        if cfg.codebook_size > len(x):
            raise ConfigError(f"{setting} {cfg.codebook_size} is larger than the "
                              f"number of {what} ({len(x)}); choose at most {len(x)} (codes "
                              "beyond that would never be used).")
        self.mean_ = x.mean(0)
        self.scale_ = x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1])
        xs = (x - self.mean_) / self.scale_
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        model = RQVAE(x.shape[1], cfg)
        sample = xs[torch.randperm(len(xs), generator=gen)[:65_536]]
        if cfg.kmeans_iters:
            model.init_codebooks(sample, cfg.kmeans_iters, gen)
        bs = min(cfg.batch_size, len(xs))

        def batches(epoch: int):
            if cfg.dead_code_reset and epoch > 1:
                model.reset_dead_codes(gen)
            order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(cfg.seed
                                                                                  + epoch))
            for i in range(0, len(xs), bs):
                yield xs[order[i : i + bs]]

        train = TrainConfig(epochs=cfg.epochs, batch_size=bs, lr=cfg.lr, seed=cfg.seed,
                            device="cpu", grad_clip=None)
        Trainer(train, quiet=quiet).fit(model, batches, (len(xs) + bs - 1) // bs,
                                        lambda m, b: m.loss(b))
        model.pending = []
        model.eval()
        self.model_ = model
        codes = self.encode(x)
        self.ids_ = disambiguate(codes)
        self.report_ = self._report(xs, codes)
        return self

    def _report(self, xs: torch.Tensor, codes: np.ndarray) -> dict[str, Any]:
        model = self._fitted()
        with torch.no_grad():
            _, zq, _ = model.quantise(model.encoder(xs))
            err = ((model.decoder(zq) - xs) ** 2).sum(1).mean().item()
        n = len(codes)
        unique = len(np.unique(codes, axis=0))
        return {
            "vectors": n, "levels": self.config.levels,
            "codebook_size": self.config.codebook_size,
            "codebook_usage": [len(np.unique(codes[:, lvl])) / self.config.codebook_size
                               for lvl in range(codes.shape[1])],
            "unique_tuples": unique,
            "collision_rate": 1.0 - unique / n,  # share of vectors that needed a collision code
            "max_collision_code": int(self.ids_[:, -1].max()) if self.ids_ is not None else 0,
            # mean squared error of the standardised vectors, and relative to their variance
            "reconstruction_mse": err,
            "relative_reconstruction_error": err / max(float((xs ** 2).sum(1).mean()), 1e-12),
        }

    def _fitted(self) -> RQVAE:
        if self.model_ is None:
            raise NotFittedError("this SemanticIdTokenizer is not fitted yet; call fit(vectors) "
                                 "first, or SemanticIdTokenizer.load(dir).")
        return self.model_

    @torch.no_grad()
    def encode(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n, levels) codes of vectors (without the collision code)."""
        model = self._fitted()
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != len(self.mean_):
            raise DataError(f"vectors: expected shape (n, {len(self.mean_)}), got "
                            f"{tuple(x.shape)}.")
        out = []
        for i in range(0, len(x), 65_536):
            xs = (x[i : i + 65_536] - self.mean_) / self.scale_
            out.append(model.quantise(model.encoder(xs))[0])
        return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, model.levels),
                                                                             np.int64)

    @property
    def sizes(self) -> list[int]:
        """Codes per position of `ids_`: the codebook size per level, then the collision codes."""
        ids = self.ids_
        if ids is None:
            raise NotFittedError("this SemanticIdTokenizer is not fitted yet.")
        return [self.config.codebook_size] * self.config.levels + [int(ids[:, -1].max()) + 1]

    # ------------------------------------------------------------------ persistence
    def save(self, d: str | Path) -> Path:
        model = self._fitted()
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(mean=self.mean_, scale=self.scale_, ids=torch.from_numpy(self.ids_))
        save_tensors(tensors, d / TENSORS)
        write_json({"in_dim": int(len(self.mean_)), "config": self.config.model_dump(),
                    "report": self.report_}, d / MANIFEST)
        return d

    @classmethod
    def load(cls, d: str | Path) -> SemanticIdTokenizer:
        d = Path(d)
        if not (d / MANIFEST).is_file() or not (d / TENSORS).is_file():
            raise ArtifactError(f"{d}: not a semantic-ID tokenizer ({MANIFEST} and {TENSORS} "
                                "expected); create one with `userseq semantic-ids fit`.")
        meta = read_json(d / MANIFEST)
        tok = cls(meta["config"])
        tensors, _ = load_tensors(d / TENSORS)
        model = RQVAE(int(meta["in_dim"]), tok.config)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        model.eval()
        tok.model_, tok.mean_, tok.scale_ = model, tensors["mean"], tensors["scale"]
        tok.ids_, tok.report_ = tensors["ids"].numpy(), meta.get("report", {})
        return tok


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """Append the collision code: the k-th vector (in row order) with a given tuple gets k."""
    codes = np.asarray(codes, dtype=np.int64)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_inv = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    extra = np.empty(len(codes), dtype=np.int64)
    extra[order] = np.arange(len(order)) - group_start
    return np.concatenate([codes, extra[:, None]], 1)


def prefix_neighbour_check(vectors: np.ndarray, ids: np.ndarray, sample: int = 2000,
                           k: int = 10, seed: int = 0) -> list[dict[str, float]]:
    """Whether equal code prefixes mean nearby vectors. For each prefix length p (1..levels) on a
    random sample of rows: the mean cosine similarity of pairs that share the first p codes vs of
    all pairs, and the share of each row's k nearest neighbours (cosine, within the sample) that
    share its prefix vs the share expected by chance."""
    v = np.asarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(v), min(sample, len(v)), replace=False))
    x = v[pick] / np.maximum(np.linalg.norm(v[pick], axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    n = len(pick)
    off = ~np.eye(n, dtype=bool)
    kk = min(k, n - 1)
    masked = np.where(off, sim, -np.inf)
    nn_idx = np.argpartition(-masked, kk - 1, axis=1)[:, :kk] if kk > 0 else np.zeros((n, 0), int)
    out = []
    for p in range(1, ids.shape[1]):
        key = np.unique(ids[pick, :p], axis=0, return_inverse=True)[1].reshape(-1)
        same = (key[:, None] == key[None, :]) & off
        out.append({
            "prefix": p,
            "same_prefix_cosine": float(sim[same].mean()) if same.any() else float("nan"),
            "all_pairs_cosine": float(sim[off].mean()),
            "knn_same_prefix": float((key[nn_idx] == key[:, None]).mean()) if kk else 0.0,
            "chance_same_prefix": float(same.sum() / off.sum()),
        })
    return out
