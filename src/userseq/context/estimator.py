"""`UserContext`: the Persona-Plug context aggregator as a userseq estimator (task `context`).

>>> ctx = UserContext(overrides={"model.context_dim": 64}).fit()         # petgen-wiki
>>> ctx.context("the olympic games are ...", user=3)   # retrieved posts + a 64-d user vector

Training data: one example per user with 2+ posts and a non-empty target context: input = the
context text of the user's last post, history = the earlier posts, target = the last post's
text vector. Users are held out (validation for early stopping, test for the report).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from userseq.context.baselines import BM25, top_k
from userseq.context.config import ContextConfig
from userseq.context.model import ContextAggregator, context_loss
from userseq.core.artifacts import load_tensors, read_json, save_tensors, write_json, write_parquet
from userseq.core.errors import ArtifactError, DataError, UserseqError
from userseq.core.estimator import Estimator
from userseq.core.trainer import Trainer
from userseq.items.text import check_utf8, check_vector_dim, encode_texts

MODEL_FILE = "model.safetensors"
USERS_FILE = "users.parquet"
RUN_FILE = "run.json"
METHODS = ("aggregator", "mean of history", "most recent k", "BM25 top-k",
           "MiniLM similarity top-k", "input text alone")


def load_users(source: str | Path | None = None) -> pl.DataFrame:
    """Users' post sequences: petgen-wiki (default) or a JSONL file with `user_id` (or `seq_id`),
    `posts` (texts, oldest first) and `context` (the target context of the last post)."""
    if source is None or str(source) == "petgen-wiki":
        from userseq.data.datasets.wiki import read_petgen_wiki

        return read_petgen_wiki().select("user_id", "posts", "context", "relevancy")
    p = Path(source)
    if not p.is_file():
        raise DataError(f"{source}: not a file and not 'petgen-wiki'; pass a JSONL file with "
                        "user_id, posts and context per line.")
    check_utf8(p)  # a non-UTF-8 line is named, with how to re-encode
    try:
        df = pl.read_ndjson(p, infer_schema_length=None)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not UTF-8 JSON lines: {str(e).splitlines()[0][:200]}") from None
    if "user_id" not in df.columns and "seq_id" in df.columns:
        df = df.rename({"seq_id": "user_id"})
    missing = [c for c in ("user_id", "posts", "context") if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing fields {missing}; every line needs user_id, posts (list of "
                        "texts, oldest first) and context (the text of the last post's target).")
    rel = pl.col("relevancy") if "relevancy" in df.columns else pl.lit(None, pl.List(pl.Int64))
    return df.select(pl.col("user_id"), pl.col("posts").cast(pl.List(pl.String)),
                     pl.col("context").cast(pl.String).fill_null(""),
                     rel.cast(pl.List(pl.Int64)).alias("relevancy"))


class UserContext(Estimator[ContextConfig]):
    """Input-aware user context (Persona-Plug's retrieval side); see userseq.context.model."""

    task = "context"
    config_class = ContextConfig
    fitted_attribute = "model_"

    def __init__(self, config: ContextConfig | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        super().__init__(config, overrides)
        self.model_: ContextAggregator | None = None
        self.user_ids_: pl.Series | None = None
        self.posts_: list[list[str]] = []
        self.split_: dict[str, list[int]] = {}
        self.train_state_: dict[str, Any] = {}
        self.data_info_: dict[str, Any] = {}
        self.metrics_: dict[str, Any] = {}  # test metrics of the last fit (metrics.json)
        self._vecs: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ data
    def _encode(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._vecs]
        if len(self._vecs) + len(todo) > 200_000:  # a long-running service: keep memory bounded
            self._vecs = {}
        if todo:
            vecs, _ = encode_texts(todo, self.config.model.text_encoder)
            if self.model_ is not None:
                check_vector_dim(self.model_.in_dim, vecs.shape[1],
                                 self.config.model.text_encoder, "this context run")
            self._vecs.update(zip(todo, vecs, strict=True))
        if not texts:
            return np.zeros((0, self.model_.in_dim if self.model_ else 0), np.float32)
        return np.stack([self._vecs[t] for t in texts])

    def _examples(self, frame: pl.DataFrame) -> dict[str, Any]:
        """The training examples (one per usable user) and the counts of skipped users."""
        rows, skipped = [], {"fewer_than_2_posts": 0, "no_context": 0}
        for i, (posts, ctx, rel) in enumerate(zip(frame["posts"].to_list(),
                                                  frame["context"].to_list(),
                                                  frame["relevancy"].to_list(), strict=True)):
            posts = [p for p in (posts or []) if p is not None]
            if len(posts) < 2:
                skipped["fewer_than_2_posts"] += 1
            elif not (ctx or "").strip():
                skipped["no_context"] += 1
            else:
                rows.append((i, posts[:-1][-self.config.data.max_history:], ctx, posts[-1],
                             (rel or [])[-self.config.data.max_history:]))
        if len(rows) < 10:
            raise DataError(f"only {len(rows)} users have 2+ posts and a target context "
                            f"(skipped: {skipped}); the aggregator needs at least 10.")
        return {"rows": rows, "skipped": skipped}

    def _tensors(self, rows: list[tuple]) -> tuple[torch.Tensor, ...]:
        """(input (N, E), history (N, L, E) left-padded, mask (N, L), target (N, E))."""
        self._encode([t for r in rows for t in (r[2], r[3], *r[1])])  # one encoder call
        x = torch.from_numpy(self._encode([r[2] for r in rows]))
        t = torch.from_numpy(self._encode([r[3] for r in rows]))
        L = max(len(r[1]) for r in rows)
        h = torch.zeros(len(rows), L, x.shape[1])
        m = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            n = len(r[1])
            h[i, L - n:] = torch.from_numpy(self._encode(r[1]))
            m[i, L - n:] = True
        return x, h, m, t

    # ------------------------------------------------------------------ training
    def fit(self, frame: pl.DataFrame | None = None, run_dir: str | Path | None = None,
            quiet: bool = False, before_write: Callable[[], None] | None = None) -> UserContext:
        """Train on `frame` (user_id, posts, context[, relevancy]; default: `config.dataset`,
        petgen-wiki) with held-out validation and test users; with `run_dir`, save the run and
        its metrics.json (test metrics of the aggregator and the baselines). `before_write` is
        called once the data is read, validated and encoded, before anything is written (the
        CLI's --overwrite deletes the old run there, so bad data leaves it intact)."""
        cfg = self.config
        frame = load_users(cfg.dataset) if frame is None else frame
        if "relevancy" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.List(pl.Int64)).alias("relevancy"))
        ex = self._examples(frame)
        rows = ex["rows"]
        n = len(rows)
        perm = np.random.default_rng(cfg.data.split_seed).permutation(n)
        n_test = max(1, round(cfg.data.test_fraction * n))
        n_valid = max(1, round(cfg.data.valid_fraction * n))
        parts = {"test": perm[:n_test], "valid": perm[n_test:n_test + n_valid],
                 "train": perm[n_test + n_valid:]}
        torch.manual_seed(cfg.train.seed)
        x, h, m, t = self._tensors(rows)
        model = ContextAggregator(x.shape[1], cfg.model.hidden, cfg.model.context_dim,
                                  cfg.data.max_history, cfg.model.recency)
        train_idx = torch.from_numpy(parts["train"])
        bs = cfg.train.batch_size

        def batches(epoch: int):
            g = torch.Generator().manual_seed(cfg.train.seed + epoch)
            order = train_idx[torch.randperm(len(train_idx), generator=g)]
            for i in range(0, len(order), bs):
                j = order[i:i + bs]
                yield x[j], h[j], m[j], t[j]

        def loss_fn(model: ContextAggregator, b: tuple) -> torch.Tensor:
            return context_loss(model(b[0], b[1], b[2])[2], b[3], cfg.model.temperature)

        valid = parts["valid"]

        def validate(model: ContextAggregator) -> dict[str, float]:
            return self._scores("aggregator", model, [rows[i] for i in valid],
                                (x[valid], h[valid], m[valid], t[valid]))

        if before_write is not None:
            before_write()
        trainer = Trainer(cfg.train, run_dir, quiet=quiet)
        state = trainer.fit(model, batches, -(-len(train_idx) // bs), loss_fn, validate)
        model.eval()
        self.model_ = model
        self.user_ids_ = frame["user_id"]
        self.posts_ = [list(p or []) for p in frame["posts"].to_list()]
        self.split_ = {k: [rows[i][0] for i in v] for k, v in parts.items()}
        self.train_state_ = {"epochs": state.epoch, "best_epoch": state.best_epoch,
                             "best_valid": state.best_metric, "seconds": round(state.seconds, 2),
                             "stopped": state.stopped}
        self.data_info_ = {"source": str(cfg.dataset or "petgen-wiki"), "users": len(frame),
                           "examples": n, "skipped": ex["skipped"],
                           **{f"{k}_users": len(v) for k, v in parts.items()}}
        test = parts["test"]
        self.metrics_ = self.report([rows[i] for i in test], (x[test], h[test], m[test], t[test]),
                                    [rows[i] for i in parts["train"]])
        if run_dir is not None:
            self.write_metrics(run_dir, self.metrics_)
            self.save(run_dir)
        return self

    # ------------------------------------------------------------------ evaluation
    def _predict(self, method: str, model: ContextAggregator | None, rows: list[tuple],
                 tens: tuple[torch.Tensor, ...], bm25: BM25 | None = None
                 ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Predicted next-item vectors (N, E) and the retrieved history positions per user (None:
        the method retrieves nothing)."""
        x, h, m, _ = tens
        k = self.config.model.top_k
        L = h.shape[1]
        lengths = m.sum(1).numpy()
        if method == "aggregator":
            with torch.no_grad():
                a, _, pred = model(x, h, m)
            ret = [L - n + top_k(a[i, L - n:].numpy(), k) for i, n in enumerate(lengths)]
            return pred.numpy(), ret
        if method == "input text alone":
            return x.numpy(), None
        hn, xn = h.numpy(), x.numpy()
        if method == "mean of history":
            return hn.sum(1) / lengths[:, None], None
        ret = []
        for i, (n, r) in enumerate(zip(lengths, rows, strict=True)):
            if method == "most recent k":
                s = np.arange(n, dtype=float)
            elif method == "BM25 top-k":
                s = bm25.scores(r[2], r[1])
            else:  # MiniLM similarity
                hv = hn[i, L - n:]
                s = hv @ xn[i] / (np.linalg.norm(hv, axis=1) * np.linalg.norm(xn[i]) + 1e-9)
            ret.append(L - n + top_k(s, k))
        pred = np.stack([hn[i, p].mean(0) for i, p in enumerate(ret)])
        return pred, ret

    def _scores(self, method: str, model: ContextAggregator | None, rows: list[tuple],
                tens: tuple[torch.Tensor, ...], bm25: BM25 | None = None) -> dict[str, float]:
        """cosine with the real next post; next-post hit@10 among the set's next posts;
        relevant@k: share of users (with both relevant and other history posts) whose top-k
        retrieved posts include one on the target context."""
        pred, ret = self._predict(method, model, rows, tens, bm25)
        t = tens[3].numpy()
        pn = pred / (np.linalg.norm(pred, axis=1, keepdims=True) + 1e-9)
        tn = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-9)
        sim = pn @ tn.T
        own = np.diag(sim)
        rank = (sim > own[:, None]).sum(1)  # pessimistic ties: none here in practice
        out = {"cosine": float(own.mean()), "hit@10": float((rank < 10).mean()),
               "candidates": float(len(rows))}
        if ret is not None:
            L = tens[1].shape[1]
            hits = []
            for r, p in zip(rows, ret, strict=True):
                rel = np.asarray(r[4][-len(r[1]):]) if r[4] else np.zeros(0)
                if len(rel) == len(r[1]) and 0 < rel.sum() < len(rel):
                    hits.append(rel[p - (L - len(r[1]))].any())
            out[f"relevant@{self.config.model.top_k}"] = float(np.mean(hits)) if hits else \
                float("nan")
            out["relevance_users"] = float(len(hits))
        return out

    def report(self, rows: list[tuple], tens: tuple[torch.Tensor, ...],
               train_rows: list[tuple]) -> dict[str, Any]:
        """metrics.json: test metrics of the aggregator and every baseline."""
        bm25 = BM25([p for r in train_rows for p in r[1]])
        methods = {name: self._scores(name, self.model_, rows, tens, bm25) for name in METHODS}
        return {"test": methods["aggregator"], "methods": methods, "train": self.train_state_,
                "data": self.data_info_, "top_k": self.config.model.top_k,
                "context_dim": self.config.model.context_dim}

    # ------------------------------------------------------------------ querying
    def history_of(self, user: Any) -> list[str]:
        """A known user's posts (the whole stored sequence, oldest first)."""
        self.check_is_fitted()
        ids = self.user_ids_.to_list()
        key = user
        if key not in ids and isinstance(user, str):
            try:
                key = type(ids[0])(user)
            except (TypeError, ValueError, IndexError):
                pass
        if key not in ids:
            raise UserseqError(f"unknown user {user!r}: not in this context run's data "
                               f"({len(ids)} users, e.g. {ids[:3]}); pass the history instead.")
        return self.posts_[ids.index(key)]

    def context(self, input_text: str, user: Any = None, history: list[str] | None = None,
                k: int | None = None) -> dict[str, Any]:
        """The retrieved context and the user vector for one input: `user` (a known user: their
        stored posts) or `history` (texts, oldest first). Returns {"user_id", "input",
        "context": [{"position", "text", "weight"}] (top-k by weight), "weights" (every history
        item, oldest first), "vector" (context_dim floats)}."""
        model = self.check_is_fitted()
        if (user is None) == (history is None):
            raise UserseqError("give either a known user or a history (texts, oldest first).")
        if not isinstance(input_text, str) or not input_text.strip():
            raise UserseqError("the input text is empty; pass the text the user is responding "
                               "to (e.g. the article or item).")
        posts = list(history) if history is not None else self.history_of(user)
        posts = [p for p in posts if isinstance(p, str) and p.strip()]
        if not posts:
            raise UserseqError("the history has no non-empty text; context needs at least one "
                               "earlier post or item text.")
        posts = posts[-self.config.data.max_history:]
        vecs = torch.from_numpy(self._encode([input_text, *posts]))
        x, h = vecs[:1], vecs[1:][None]
        m = torch.ones(1, len(posts), dtype=torch.bool)
        with torch.no_grad():
            a, z, _ = model(x, h, m)
        w = a[0].numpy()
        top = top_k(w, min(k or self.config.model.top_k, len(posts)))
        return {"user_id": user, "input": input_text,
                "context": [{"position": int(i), "text": posts[i], "weight": float(w[i])}
                            for i in top],
                "weights": [float(v) for v in w], "vector": z[0].tolist(),
                "context_dim": int(z.shape[1])}

    # ------------------------------------------------------------------ persistence
    def _save_state(self, d: Path) -> None:
        model = self.check_is_fitted()
        save_tensors(model.state_dict(), d / MODEL_FILE, {"in_dim": str(model.in_dim)})
        write_parquet(pl.DataFrame({"user_id": self.user_ids_,
                                    "posts": pl.Series(self.posts_, dtype=pl.List(pl.String))}),
                      d / USERS_FILE)
        write_json({"split": self.split_, "train": self.train_state_, "data": self.data_info_},
                   d / RUN_FILE)

    def _load_state(self, d: Path) -> None:
        if not (d / MODEL_FILE).is_file():
            raise ArtifactError(f"{d}: no {MODEL_FILE}; train with `userseq context train`.")
        tensors, meta = load_tensors(d / MODEL_FILE)
        c = self.config
        in_dim = int(meta.get("in_dim") or tensors["query.weight"].shape[1])
        model = ContextAggregator(in_dim, c.model.hidden, c.model.context_dim,
                                  c.data.max_history, c.model.recency)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise ArtifactError(f"{d / MODEL_FILE}: weights do not match config.yaml: "
                                f"{str(e).splitlines()[0]}") from None
        self.model_ = model.eval()
        users = pl.read_parquet(d / USERS_FILE)
        self.user_ids_, self.posts_ = users["user_id"], users["posts"].to_list()
        run = read_json(d / RUN_FILE) if (d / RUN_FILE).is_file() else {}
        self.split_ = run.get("split", {})
        self.train_state_, self.data_info_ = run.get("train", {}), run.get("data", {})
