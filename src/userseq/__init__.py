"""userseq: user and item embeddings learned by sequence models from behaviour logs.

The public API. Heavy modules (torch) are imported on first use of a name, so `import userseq`
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from userseq.core.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    NotFittedError,
    UserseqError,
)
from userseq.core.version import __version__
from userseq.data.eventlog import EventLog

# public name -> module that defines it (imported lazily)
_LAZY = {
    "Estimator": "userseq.core.estimator",
    "load": "userseq.core.estimator",
    "Registry": "userseq.core.registry",
    "register_dataset": "userseq.data.datasets",
    "TrainConfig": "userseq.core.config",
    "Trainer": "userseq.core.trainer",
    "register_optimizer": "userseq.core.optim",
    "register_scheduler": "userseq.core.optim",
    "register_item_table": "userseq.items",
    "NextItemRecommender": "userseq.nextitem.estimator",
    "UserDetector": "userseq.detect.estimator",
    "CTREstimator": "userseq.ctr.estimator",
    "Attacker": "userseq.attack.estimator",
    "register_encoder": "userseq.encoders",
    "register_loss": "userseq.losses",
}

__all__ = ["ArtifactError", "ConfigError", "DataError", "EventLog", "NotFittedError",
           "UserseqError",
           "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'userseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
