"""Attack configuration: generator size, the switchable weighted losses, training budgets, baselines."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from userseq.core.config import StrictModel, TrainConfig, merge_overrides, validate_config

METHODS = ("petgen", "copycat", "hotflip", "trigger", "textbugger", "lm")
GRADIENT_METHODS = ("petgen", "hotflip", "trigger")  # need a differentiable token path (white-box or surrogate)


class GeneratorConfig(StrictModel):
    """The post generator: a GRU language model over the detector's vocabulary, conditioned on the
    user's history (context-aware weighted average of the encoded history posts and target context)."""

    emb_dim: int = Field(64, ge=2)
    hidden: int = Field(128, ge=2)
    max_tokens: int = Field(30, ge=2, description="longest generated post (capped by the detector's max_tokens)")
    min_tokens: int = Field(3, ge=1, description="end-of-post is not allowed before this many tokens")
    dropout: float = Field(0.1, ge=0, lt=1)
    recent_posts: int = Field(3, ge=1, description="the 'recent' posts of the recency loss")


class LossWeights(StrictModel):
    """Each PETGEN term, switchable (weight 0 = off) and weighted."""

    mle: float = Field(1.0, ge=0, description="teacher-forced NLL of the real final posts of training users")
    lm: float = Field(0.1, ge=0, description="realism: NLL of the generated post under the frozen pretrained LM")
    attack: float = Field(1.0, ge=0, description="BCE through the detector toward 'benign' (malicious users)")
    recency: float = Field(0.5, ge=0, description="MMD to the user's last few posts (frozen LM encoder)")
    relevancy: float = Field(0.5, ge=0, description="MMD to the user's posts on the target context (or the context)")


def _pretrain_defaults() -> TrainConfig:
    return TrainConfig(epochs=8, batch_size=16, lr=3e-3, patience=2, monitor="neg_nll", seed=0, max_minutes=3.0)


def _attack_defaults() -> TrainConfig:
    return TrainConfig(epochs=6, batch_size=16, lr=1e-3, patience=3, monitor="neg_loss", seed=0, max_minutes=2.0)


class BaselineConfig(StrictModel):
    hotflip_flips: int = Field(5, ge=1, description="greedy HotFlip token flips per post")
    trigger_tokens: int = Field(5, ge=1, description="length of the universal trigger (prepended to the copycat post)")
    trigger_iters: int = Field(4, ge=1, description="rounds over the trigger positions")
    trigger_candidates: int = Field(10, ge=1, description="candidate tokens tried per trigger position per round")
    textbugger_max_share: float = Field(0.3, gt=0, le=1, description="most words of the post TextBugger may perturb")
    textbugger_neighbours: int = Field(5, ge=0, description="word-substitution candidates (attacker LM embedding)")


class AttackConfig(StrictModel):
    method: Literal["petgen", "copycat", "hotflip", "trigger", "textbugger", "lm"] = "petgen"
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    losses: LossWeights = Field(default_factory=LossWeights)
    pretrain: TrainConfig = Field(default_factory=_pretrain_defaults)
    train: TrainConfig = Field(default_factory=_attack_defaults)
    eval_lm: TrainConfig = Field(default_factory=_pretrain_defaults, description="the separate LM for perplexity")
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    tau: float = Field(1.0, gt=0, description="Gumbel-softmax temperature while training the attack")
    hard: bool = Field(True, description="straight-through Gumbel-softmax (the detector sees the discrete post)")
    sample_temperature: float = Field(0.8, gt=0, description="sampling temperature at generation time")
    quality_embedding: Literal["auto", "minilm", "tfidf"] = Field(
        "auto", description="style/context similarity: MiniLM (text extra) or TF-IDF cosine; auto picks MiniLM if installed")
    examples: int = Field(3, ge=0, description="example generations per class in the report")
    seed: int = 0

    def updated(self, overrides: dict[str, Any]) -> AttackConfig:
        data = merge_overrides(self.model_dump(mode="json"), overrides, "unknown attack config key")
        return parse_attack_config(data)


def parse_attack_config(data: dict[str, Any] | None, source: str = "attack config") -> AttackConfig:
    return validate_config(AttackConfig, data, source, "attack config")
