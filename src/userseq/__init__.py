"""userseq: user and item embeddings learned by sequence models from behaviour logs."""

from userseq.core.errors import UserseqError
from userseq.data.eventlog import EventLog

__all__ = ["EventLog", "UserseqError", "NextItemRecommender", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy import keeps `import userseq` light (torch is loaded only when a model is needed).
    if name == "NextItemRecommender":
        from userseq.nextitem.estimator import NextItemRecommender

        return NextItemRecommender
    raise AttributeError(name)
