"""User context for text generation (the retrieval side of Persona-Plug): an input-aware
aggregator over a user's history text vectors that returns the most relevant history items and one
user vector of a configurable size (a soft-prompt slot for an external LLM)."""

from userseq.context.baselines import BM25
from userseq.context.config import ContextConfig
from userseq.context.estimator import UserContext, load_users
from userseq.context.model import ContextAggregator

__all__ = ["BM25", "ContextAggregator", "ContextConfig", "UserContext", "load_users"]
