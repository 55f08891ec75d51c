"""The one training loop: early stopping in both monitor directions, patience, time budget."""

import pytest
import torch

from userseq.core.config import TrainConfig
from userseq.core.trainer import Trainer


def _fit(values, **cfg):
    """Train a 1-parameter model for len(values) epochs; validation returns the scripted values."""
    model = torch.nn.Linear(1, 1)
    seen = iter(values)
    trainer = Trainer(TrainConfig(epochs=len(values), device="cpu", **cfg), quiet=True)
    x = torch.ones(4, 1)

    def batches(epoch):
        yield x

    state = trainer.fit(model, batches, 1, lambda m, b: m(b).pow(2).mean(), lambda m: {"loss": next(seen)})
    return state


def test_monitor_max_keeps_the_highest_value():
    s = _fit([0.1, 0.3, 0.2, 0.25], monitor="loss", patience=10)
    assert (s.best_epoch, s.best_metric) == (2, 0.3)


def test_monitor_min_keeps_the_lowest_value_and_stops_on_patience():
    s = _fit([0.5, 0.4, 0.45, 0.41, 0.42, 0.3], monitor="loss", monitor_mode="min", patience=3)
    assert (s.best_epoch, s.best_metric) == (2, 0.4)
    assert s.epoch == 5 and "no loss improvement for 3 epochs" in s.stopped


def test_nan_first_validation_does_not_block_improvement():
    s = _fit([float("nan"), 0.2, 0.1], monitor="loss", monitor_mode="min", patience=10)
    assert (s.best_epoch, s.best_metric) == (3, 0.1)


def test_bad_monitor_mode_is_a_config_error():
    with pytest.raises(ValueError, match="monitor_mode"):
        TrainConfig(monitor_mode="largest")
