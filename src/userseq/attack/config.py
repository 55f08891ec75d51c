"""Attack configuration: generator size, the switchable weighted losses, training budgets,
baselines and the seeds (each named for what it seeds)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from userseq.core.config import StrictModel, TaskConfig, TrainConfig

METHODS = ("petgen", "copycat", "hotflip", "trigger", "textbugger", "lm", "malcom")
# methods that need a differentiable token path (white-box or a surrogate)
GRADIENT_METHODS = ("petgen", "hotflip", "trigger", "malcom")

# Old setting names, still accepted in config files and overrides: the old top-level `seed`
# seeded both the generation-time sampling and the trigger search.
LEGACY_KEYS: dict[str, tuple[str, ...]] = {"seed": ("sample_seed", "baselines.trigger_seed")}


class GeneratorConfig(StrictModel):
    """The post generator: a GRU language model over the detector's vocabulary, conditioned on
    the user's history (context-aware weighted average of the encoded history posts and target
    context)."""

    emb_dim: int = Field(64, ge=2)
    hidden: int = Field(128, ge=2)
    max_tokens: int = Field(
        30, ge=2, description="longest generated post (capped by the detector's max_tokens)")
    min_tokens: int = Field(
        3, ge=1, description="end-of-post is not allowed before this many tokens")
    dropout: float = Field(0.1, ge=0, lt=1)
    recent_posts: int = Field(3, ge=1, description="the 'recent' posts of the recency loss")
    decoder: Literal["gru", "transformer"] = Field(
        "gru", description="gru, or transformer (causal blocks; PETGEN/RelGAN use a relational "
        "memory core, not implemented)")
    layers: int = Field(2, ge=1, description="transformer decoder blocks")
    heads: int = Field(2, ge=1, description="transformer decoder heads")
    condition: Literal["context-attention", "mean-history", "context-only"] = Field(
        "context-attention", description="PETGEN's style/context personalisation: context-aware "
        "history average; mean-history = plain average (term off); context-only = MALCOM's")


class LossWeights(StrictModel):
    """Each PETGEN term, switchable (weight 0 = off) and weighted."""

    mle: float = Field(
        1.0, ge=0, description="teacher-forced NLL of the real final posts of training users")
    lm: float = Field(
        0.1, ge=0, description="realism: NLL of the generated post under the frozen pretrained LM")
    attack: float = Field(
        1.0, ge=0, description="BCE through the detector toward 'benign' (malicious users)")
    recency: float = Field(
        0.5, ge=0, description="MMD to the user's last few posts (frozen LM encoder)")
    relevancy: float = Field(
        0.5, ge=0, description="MMD to the user's posts on the target context (or the context)")
    gan: float = Field(
        0.0, ge=0, description="relativistic GAN loss against a CNN discriminator trained on "
        "the real final posts (RelGAN's rsgan); 0 = no discriminator")


def _pretrain_defaults() -> TrainConfig:
    return TrainConfig(epochs=8, batch_size=16, lr=3e-3, patience=2, monitor="neg_nll", seed=0,
                       max_minutes=3.0)


def _attack_defaults() -> TrainConfig:
    return TrainConfig(epochs=6, batch_size=16, lr=1e-3, patience=3, monitor="neg_loss", seed=0,
                       max_minutes=2.0)


class BaselineConfig(StrictModel):
    hotflip_flips: int = Field(5, ge=1, description="greedy HotFlip token flips per post")
    trigger_tokens: int = Field(
        5, ge=1, description="length of the universal trigger (prepended to the copycat post)")
    trigger_iters: int = Field(4, ge=1, description="rounds over the trigger positions")
    trigger_candidates: int = Field(
        10, ge=1, description="candidate tokens tried per trigger position per round")
    trigger_seed: int = Field(
        0, description="seeds the trigger search (its batches of training malicious users)")
    textbugger_max_share: float = Field(
        0.3, gt=0, le=1, description="most words of the post TextBugger may perturb")
    textbugger_neighbours: int = Field(
        5, ge=0, description="word-substitution candidates (attacker LM embedding)")


class AttackConfig(TaskConfig):
    """The whole attack: method, generator, losses, the three training phases (`pretrain.seed`,
    `train.seed` and `eval_lm.seed` seed them), baselines and generation (`sample_seed`)."""

    method: Literal["petgen", "copycat", "hotflip", "trigger", "textbugger", "lm",
                    "malcom"] = "petgen"
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    losses: LossWeights = Field(default_factory=LossWeights)
    pretrain: TrainConfig = Field(default_factory=_pretrain_defaults)
    train: TrainConfig = Field(default_factory=_attack_defaults)
    eval_lm: TrainConfig = Field(
        default_factory=_pretrain_defaults, description="the separate LM for perplexity")
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    tau: float = Field(
        1.0, gt=0, description="Gumbel-softmax temperature while training the attack")
    hard: bool = Field(
        True, description="straight-through Gumbel-softmax (the detector sees the discrete post)")
    tau_schedule: Literal["constant", "exp"] = Field(
        "constant", description="exp: RelGAN's annealing, inverse temperature 1 -> tau_max over "
        "the attack epochs (tau = 1 / tau_max ** (epoch / epochs))")
    tau_max: float = Field(100.0, ge=1, description="largest inverse temperature (exp schedule)")
    discriminator_lr: float = Field(1e-4, gt=0, description="Adam lr of the GAN discriminator")
    sample_temperature: float = Field(0.8, gt=0, description="sampling temperature at generation")
    sample_seed: int = Field(
        0, description="seeds the sampling of generated posts (generate() is deterministic)")
    quality_embedding: Literal["auto", "minilm", "tfidf"] = Field(
        "auto", description="style/context similarity: MiniLM (text extra) or TF-IDF cosine; "
        "auto picks MiniLM if installed")
    examples: int = Field(3, ge=0, description="example generations per class in the report")

    @model_validator(mode="before")
    @classmethod
    def _legacy_names(cls, data: Any) -> Any:
        """Old names in a config mapping become the new ones (a new name given too wins)."""
        if not isinstance(data, dict) or not any(k in data for k in LEGACY_KEYS):
            return data
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
        for old, news in LEGACY_KEYS.items():
            if old not in data:
                continue
            value = data.pop(old)
            for new in news:
                *path, last = new.split(".")
                node = data
                for part in path:
                    node = node.setdefault(part, {})
                node.setdefault(last, value)
        return data

    def updated(self, overrides: dict[str, Any], source: str = "overrides") -> AttackConfig:
        """`TaskConfig.updated`, also accepting the old setting names (`seed`)."""
        return super().updated(legacy_overrides(overrides), source)


def legacy_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides with old names replaced by the new ones ({"seed": 1} sets both seeds it
    used to set); a new name given too wins."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        for new in LEGACY_KEYS.get(key, (key,)):
            out.setdefault(new, value)
    return {**out, **{k: v for k, v in overrides.items() if k not in LEGACY_KEYS}}


def parse_attack_config(data: dict[str, Any] | None, source: str = "attack config") -> AttackConfig:
    """An `AttackConfig` from a mapping (every problem in one ConfigError)."""
    return AttackConfig.parse(data, source)
