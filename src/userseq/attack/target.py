"""A trained text detector seen by an attacker: scores for "history + one new post", by query (any
text detector) or differentiably from one-hot token rows (white-box: hlstm, cnn).

History post vectors are computed once per user and cached; only the new post is encoded per query.
Scores equal `UserDetector.predict_proba` on the sequence with the new post appended (tested).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from userseq.attack.data import AttackUsers
from userseq.core.errors import ConfigError, DataError
from userseq.detect.estimator import UserDetector, encode_posts

WHITE_BOX_MODELS = ("hlstm", "cnn", "bow-attn")  # the token models (`UserDetector.inputs`)


def detector_state(det: UserDetector) -> tuple[torch.nn.Module, list[str] | None, dict[str, float]]:
    """(network, token vocabulary, thresholds) of a fitted detector."""
    return det.check_is_fitted(), det.vocab_, det.thresholds_ or {}


def detector_split_config(det: UserDetector) -> tuple[float, float, int]:
    """(validation share, test share, split seed) of the detector run's user split."""
    c = det.config
    return float(c.valid), float(c.test), int(c.split_seed)


class TargetDetector:
    """A fitted text detector as the attacker sees it (`run_dir`: where it was loaded from)."""

    def __init__(self, detector: UserDetector, name: str = "detector",
                 run_dir: str | Path | None = None) -> None:
        if detector.kind != "text":
            raise ConfigError(
                f"{name}: model '{detector.config.model.name}' reads edit events, not post texts; "
                "the attack needs a text detector (hlstm, cnn or minilm).")
        self.det = detector
        self.name = name
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.net, self._vocab, thresholds = detector_state(detector)
        detector.device_ = torch.device("cpu")  # the attack runs on CPU (the run may be on a GPU)
        self.net.cpu().eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.model = detector.config.model.name
        self.max_posts = detector.config.model.max_posts
        self.max_tokens = detector.config.model.max_tokens
        self.threshold = float(thresholds.get("all", 0.5))
        self._hist: tuple[str, torch.Tensor, torch.Tensor, np.ndarray] | None = None
        self._st = None

    @classmethod
    def load(cls, run_dir: str | Path) -> TargetDetector:
        return cls(UserDetector.load(run_dir), name=str(run_dir), run_dir=run_dir)

    @property
    def white_box(self) -> bool:
        """Token models (hlstm, cnn, bow-attn): a differentiable path from one-hot rows."""
        return self.det.inputs == "tokens"

    @property
    def vocab(self) -> list[str]:
        if self._vocab is None:
            raise ConfigError(f"{self.name}: model '{self.model}' has no token vocabulary.")
        return self._vocab

    def require_white_box(self, method: str) -> None:
        if not self.white_box:
            raise ConfigError(
                f"{self.name}: detector '{self.model}' has no differentiable token path (it reads "
                f"precomputed sentence vectors), so the white-box attack '{method}' cannot use its "
                "gradients. Attack it black-box: --black-box-surrogate RUN2 (an hlstm or cnn run), "
                "or use copycat / textbugger.")

    def check_vocab(self, vocab: list[str], who: str = "attacker") -> None:
        mine = self.vocab
        if len(mine) != len(vocab) or mine != list(vocab):
            first = _first_diff(mine, vocab)
            raise DataError(
                f"vocabulary mismatch: the {who} uses {len(vocab):,} tokens but detector "
                f"{self.name} uses {len(mine):,} (first differing index {first}). "
                "A white-box generator must be built over the detector's own vocabulary: refit the "
                "attacker against this detector, or evaluate its text black-box.")

    # ------------------------------------------------------------------ post vectors
    def _sentence_model(self):
        if self._st is None:
            from userseq.attack.quality import minilm_model

            self._st = minilm_model()
        return self._st

    def post_vectors(self, posts: list[str]) -> torch.Tensor:
        """(N, d) the detector's vector of each post text."""
        if self.det.inputs == "vectors":  # MiniLM sentence vectors
            v = self._sentence_model().encode(posts, batch_size=64, convert_to_numpy=True,
                                              show_progress_bar=False)
            return torch.from_numpy(np.asarray(v, dtype=np.float32))
        ids = encode_posts([[p] for p in posts], self.vocab, 1, self.max_tokens)[:, 0]
        ids = torch.from_numpy(ids.astype(np.int64))
        out = []
        with torch.no_grad():
            for b in range(0, len(posts), 1024):
                out.append(self.id_post_vectors(ids[b:b + 1024]))
        return torch.cat(out) if out else torch.zeros(0, 1)

    def id_post_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, d) vectors of posts given as token ids (B, T) over the detector's vocabulary."""
        self.require_white_box("token-id")
        return self.net.user_encoder.post_vectors(ids[:, None]).squeeze(1)

    def onehot_post_vectors(self, rows: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Differentiable (B, d) vectors of posts given as one-hot rows (B, T, V) over the
        detector's vocabulary."""
        self.require_white_box("gradient")
        if rows.shape[-1] != len(self.vocab):
            raise DataError(f"vocabulary mismatch: one-hot rows have {rows.shape[-1]:,} columns "
                            f"but detector {self.name} has {len(self.vocab):,} tokens.")
        return self.net.user_encoder.post_vectors(rows[:, None], token_mask[:, None]).squeeze(1)

    def history(self, users: AttackUsers,
                idx: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P, d) history post vectors and (N,) history lengths; rows are computed on first use
        of a user (`idx`, default all) and cached under the users' content fingerprint."""
        if self._hist is None or self._hist[0] != users.fingerprint:
            n = torch.tensor([len(h) for h in users.history], dtype=torch.long)
            self._hist = (users.fingerprint, torch.zeros(0), n, np.zeros(users.n_users, dtype=bool))
        key, vecs, n, done = self._hist
        want = (np.arange(users.n_users) if idx is None
                else np.unique(np.asarray(idx, dtype=np.int64)))
        todo = want[~done[want]]
        if len(todo):
            v = self.post_vectors([p for u in todo for p in users.history[u]])
            if vecs.numel() == 0:
                vecs = torch.zeros(users.n_users, int(n.max()), v.shape[1])
            rows = torch.from_numpy(todo)
            P = vecs.shape[1]
            block = torch.zeros(len(todo), P, v.shape[1])
            block[torch.arange(P)[None, :] < n[rows][:, None]] = v
            vecs[rows] = block
            done[todo] = True
            self._hist = (key, vecs, n, done)
        return vecs, n

    # ------------------------------------------------------------------ scores
    def logits(self, hist: torch.Tensor, n_hist: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Detector logits (B,) for history vectors (B, P, d) + one new post vector (B, d) at
        position n_hist."""
        B, P, d = hist.shape
        full = torch.cat([hist, hist.new_zeros(B, 1, d)], 1)
        full = full.index_put((torch.arange(B), n_hist), new)
        mask = torch.arange(P + 1)[None, :] <= n_hist[:, None]
        ue = self.net.user_encoder
        user = ue.pool(full, mask) if self.white_box else ue(full, mask)
        return self.net.head(user)

    def user_logits(self, users: AttackUsers, idx: np.ndarray, new: torch.Tensor) -> torch.Tensor:
        hist, n = self.history(users, idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        hb, nb = hist[t], n[t]
        P = int(nb.max())
        return self.logits(hb[:, :P], nb, new)

    @torch.no_grad()
    def score(self, users: AttackUsers, idx: np.ndarray, posts: list[str],
              batch: int = 512) -> np.ndarray:
        """P(malicious) of users `idx` with `posts` (aligned) appended: black-box query access."""
        idx = np.asarray(idx, dtype=np.int64)
        out = []
        for b in range(0, len(idx), batch):
            v = self.post_vectors(posts[b:b + batch])
            out.append(torch.sigmoid(self.user_logits(users, idx[b:b + batch], v)).numpy())
        return np.concatenate(out) if out else np.zeros(0)


class TargetEnsemble:
    """A defence: several fitted text detectors scored as one (mean P(malicious)), with its own
    decision threshold chosen on validation users (`calibrate`). Query access only: an attack
    on it is black-box (fit against a member or a surrogate, score here)."""

    white_box = False

    def __init__(self, members: list[TargetDetector], name: str = "ensemble") -> None:
        if len(members) < 2:
            raise ConfigError(f"{name}: an ensemble needs at least 2 detectors "
                              f"(got {len(members)}).")
        self.members, self.name = list(members), name
        self.model = "ensemble(" + "+".join(m.model for m in members) + ")"
        self.max_posts = min(m.max_posts for m in members)
        self.max_tokens = min(m.max_tokens for m in members)
        self.threshold = 0.5

    def require_white_box(self, method: str) -> None:
        raise ConfigError(f"{self.name}: an ensemble has no single differentiable path, so the "
                          f"white-box attack '{method}' cannot run against it; fit the attack "
                          "against one member or a surrogate and score the posts here.")

    def score(self, users: AttackUsers, idx: np.ndarray, posts: list[str]) -> np.ndarray:
        """Mean P(malicious) of the members (see `TargetDetector.score`)."""
        return np.mean([m.score(users, idx, posts) for m in self.members], axis=0)

    def calibrate(self, users: AttackUsers, valid: np.ndarray) -> float:
        """Set (and return) the threshold best on the validation users' real sequences."""
        from userseq.metrics.classification import best_threshold

        if users.labels is None:
            raise DataError(f"{self.name}: calibrating the threshold needs labels.")
        valid = np.asarray(valid, dtype=np.int64)
        s = self.score(users, valid, [users.final[i] for i in valid])
        self.threshold = float(best_threshold(users.labels[valid], s))
        return self.threshold


def _first_diff(a: list[str], b: list[str]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
