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
    UserseqWarning,
)
from userseq.core.version import __version__
from userseq.data.eventlog import EventLog

# public name -> module that defines it (imported lazily)
_LAZY = {
    # the estimator contract and the four task estimators
    "Estimator": "userseq.core.estimator",
    "load": "userseq.core.estimator",
    "NextItemRecommender": "userseq.nextitem.estimator",
    "CTREstimator": "userseq.ctr.estimator",
    "UserDetector": "userseq.detect.estimator",
    "Attacker": "userseq.attack.estimator",
    "GenerativeRecommender": "userseq.generative.estimator",
    "SemanticIdTokenizer": "userseq.index.semantic_ids",
    # training
    "Trainer": "userseq.core.trainer",
    "TrainConfig": "userseq.core.config",
    "TaskConfig": "userseq.core.config",
    # registries and their decorators
    "Registry": "userseq.core.registry",
    "ESTIMATORS": "userseq.core.estimator",
    "ENCODERS": "userseq.encoders",
    "register_encoder": "userseq.encoders",
    "LOSSES": "userseq.losses",
    "register_loss": "userseq.losses",
    "OPTIMIZERS": "userseq.core.optim",
    "register_optimizer": "userseq.core.optim",
    "SCHEDULERS": "userseq.core.optim",
    "register_scheduler": "userseq.core.optim",
    "ITEM_TABLES": "userseq.items",
    "register_item_table": "userseq.items",
    "DATASETS": "userseq.data.datasets",
    "register_dataset": "userseq.data.datasets",
}

__all__ = ["ArtifactError", "ConfigError", "DataError", "EventLog", "NotFittedError",
           "UserseqError", "UserseqWarning", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'userseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
