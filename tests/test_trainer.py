"""The one training loop: early stopping in both monitor directions, patience, optimizers and
schedules by name, best weights kept on disk, checkpoints (including the previous version's)."""

import dataclasses
import json
import math

import pytest
import torch

import userseq
from userseq.core.artifacts import load_tensors, save_tensors
from userseq.core.config import TaskConfig, TrainConfig
from userseq.core.errors import ArtifactError, ConfigError
from userseq.core.optim import OPTIMIZERS, SCHEDULERS, build_optimizer
from userseq.core.trainer import CHECKPOINT, Trainer, TrainState


def _fit(values, **cfg):
    """Train a 1-parameter model for len(values) epochs; validation returns the scripted values."""
    model = torch.nn.Linear(1, 1)
    seen = iter(values)
    trainer = Trainer(TrainConfig(epochs=len(values), device="cpu", **cfg), quiet=True)
    x = torch.ones(4, 1)

    def batches(epoch):
        yield x

    state = trainer.fit(model, batches, 1, lambda m, b: m(b).pow(2).mean(),
                        lambda m: {"loss": next(seen)})
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


# ------------------------------------------------------------------ optimizers and schedules
class Crash(Exception):
    pass


def _lr_trace(cfg, run_dir=None, resume=False, crash_at=None):
    """Train w (a 1x1 weight, start 0) on loss = w with plain SGD for cfg.epochs x 3 steps: each
    step moves w by exactly -lr, so the learning rates are the differences of the w's seen."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    seen = []

    def loss_fn(m, batch):
        if crash_at is not None and len(seen) == crash_at:
            raise Crash
        seen.append(m.weight.item())
        return m.weight.sum()

    trainer = Trainer(cfg, run_dir, quiet=True)
    trainer.fit(model, lambda epoch: iter(range(3)), 3, loss_fn, resume=resume)
    ws = [*seen, model.weight.item()]
    return [a - b for a, b in zip(ws, ws[1:], strict=False)], trainer


SGD_CFG = {"epochs": 2, "lr": 0.1, "optimizer": "sgd", "grad_clip": None, "device": "cpu"}


@pytest.mark.parametrize("name, decay", [
    ("cosine", [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]),
    ("linear", [1.0, 0.75, 0.5, 0.25]),
    ("none", [1.0, 1.0, 1.0, 1.0]),
])
def test_schedule_sets_the_learning_rate_of_every_step(name, decay):
    # 6 steps, 2 of warm-up (lr/2, lr), then the decay over the 4 others: p = 0, 1/4, 1/2, 3/4
    lrs, _ = _lr_trace(TrainConfig(**SGD_CFG, scheduler=name, warmup_steps=2))
    assert lrs == pytest.approx([0.05, 0.1, *(0.1 * f for f in decay)], abs=1e-6)


def test_no_schedule_keeps_the_learning_rate():
    lrs, _ = _lr_trace(TrainConfig(**SGD_CFG))
    assert lrs == pytest.approx([0.1] * 6, abs=1e-6)


def test_resume_continues_the_schedule(tmp_path):
    cfg = TrainConfig(**SGD_CFG, scheduler="linear", warmup_steps=2)
    whole, _ = _lr_trace(cfg)
    with pytest.raises(Crash):  # dies in the middle of epoch 2, after the epoch-1 checkpoint
        _lr_trace(cfg, tmp_path, crash_at=4)
    rest, trainer = _lr_trace(cfg, tmp_path, resume=True)
    assert rest == pytest.approx(whole[3:], abs=1e-6) and trainer.state.step == 6


def test_built_in_optimizers_take_their_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = build_optimizer(params, TrainConfig(lr=0.01, weight_decay=0.1))
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.1
    adamw = build_optimizer(params, TrainConfig(optimizer="adamw", weight_decay=0.2))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.2
    sgd = build_optimizer(params, TrainConfig(optimizer="sgd", lr=0.5, momentum=0.9))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"]) == (0.5, 0.9)


def test_a_registered_optimizer_is_used_by_the_trainer():
    made = []

    @userseq.register_optimizer("test-double-sgd")
    def double_sgd(params, cfg):
        opt = torch.optim.SGD(params, lr=2 * cfg.lr)
        made.append(opt)
        return opt

    try:
        lrs, _ = _lr_trace(TrainConfig(**{**SGD_CFG, "optimizer": "test-double-sgd"}))
    finally:
        OPTIMIZERS.unregister("test-double-sgd")
    assert len(made) == 1 and lrs == pytest.approx([0.2] * 6, abs=1e-6)


def test_a_registered_scheduler_is_used_by_the_trainer():
    @userseq.register_scheduler("test-halving")
    def halving(opt, cfg, total_steps):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    try:
        lrs, _ = _lr_trace(TrainConfig(**SGD_CFG, scheduler="test-halving"))
    finally:
        SCHEDULERS.unregister("test-halving")
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 3, abs=1e-6)


class Run(TaskConfig):
    train: TrainConfig = TrainConfig()


@pytest.mark.parametrize("key, value, names", [
    ("optimizer", "adamx", "Did you mean 'adam'? Choose one of: adam, adamw, sgd."),
    ("scheduler", "cosin", "Did you mean 'cosine'? Choose one of: none, cosine, linear."),
])
def test_unknown_optimizer_or_scheduler_is_a_config_error_listing_the_names(key, value, names):
    with pytest.raises(ConfigError) as e:
        Run.parse({"train": {key: value}}, "run.yaml")
    head = f"run.yaml: invalid config: 'train.{key}': unknown {key} '{value}'."
    assert str(e.value).startswith(head)
    assert names in str(e.value) and f"userseq.register_{key}" in str(e.value)
    with pytest.raises(ValueError, match=f"unknown {key}"):
        TrainConfig(**{key: value})


# ------------------------------------------------------------------ best weights on disk
def _tensor_count(obj):
    """Tensors reachable from `obj` through dicts, lists, tuples and dataclasses."""
    if torch.is_tensor(obj):
        return 1
    if isinstance(obj, dict):
        return sum(_tensor_count(v) for v in obj.values())
    if isinstance(obj, list | tuple | set):
        return sum(_tensor_count(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_tensor_count(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def _fit_recording(values, run_dir=None, resume=False, epochs=None, model=None):
    """Fit with scripted validation values (monitor max); per epoch: the weights and what the
    trainer held (tensors in its attributes, whether its best file existed)."""
    model = model or torch.nn.Linear(3, 2)
    seen = iter(values)
    per_epoch = []
    trainer = Trainer(TrainConfig(epochs=epochs or len(values), device="cpu", monitor="m", lr=0.1,
                                  patience=10), run_dir, quiet=True)

    def validate(m):
        per_epoch.append({"weights": {k: v.clone() for k, v in m.state_dict().items()},
                          "tensors_held": _tensor_count(vars(trainer)),
                          "best_path": trainer.best_path,
                          "best_file": bool(trainer.best_path and trainer.best_path.is_file())})
        return {"m": next(seen)}

    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    def loss_fn(m, b):
        return m(b).pow(2).mean()

    trainer.fit(model, lambda epoch: iter([x]), 1, loss_fn, validate, resume)
    return trainer, model, per_epoch


def _same(model, weights):
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("with_run_dir", [False, True])
def test_best_weights_live_in_a_file_not_in_memory(tmp_path, with_run_dir):
    run_dir = tmp_path / "run" if with_run_dir else None
    trainer, model, per_epoch = _fit_recording([0.1, 0.5, 0.2, 0.3], run_dir)
    assert trainer.state.best_epoch == 2 and not hasattr(trainer, "best_weights")
    assert [e["tensors_held"] for e in per_epoch] == [0, 0, 0, 0]
    assert [e["best_file"] for e in per_epoch] == [False, True, True, True]
    assert _same(model, per_epoch[1]["weights"]) and not _same(model, per_epoch[3]["weights"])
    if with_run_dir:
        assert per_epoch[0]["best_path"] == run_dir / "best.safetensors"
        best, meta = load_tensors(run_dir / "best.safetensors")
        assert meta["epoch"] == "2" and all(torch.equal(v, per_epoch[1]["weights"][k])
                                            for k, v in best.items())
        assert not any(k.startswith("best.") for k in load_tensors(run_dir / CHECKPOINT)[0])
    else:  # a private temporary directory, removed at the end
        assert not per_epoch[0]["best_path"].parent.exists() and trainer.best_path is None


def test_resume_restores_the_best_file(tmp_path):
    _, _, first = _fit_recording([0.5, 0.1], tmp_path)
    trainer, model, _ = _fit_recording([0.2], tmp_path, resume=True, epochs=3)
    assert (trainer.state.epoch, trainer.state.best_epoch) == (3, 1)
    assert _same(model, first[0]["weights"])
    (tmp_path / "best.safetensors").unlink()
    with pytest.raises(ArtifactError, match="best.safetensors"):
        _fit_recording([0.2], tmp_path, resume=True, epochs=4)


def test_a_fresh_fit_removes_an_old_best_file(tmp_path):
    _fit_recording([0.5, 0.1], tmp_path)
    model = torch.nn.Linear(3, 2)
    Trainer(TrainConfig(epochs=1, device="cpu"), tmp_path, quiet=True).fit(
        model, lambda epoch: iter([torch.ones(2, 3)]), 1, lambda m, b: m(b).sum())
    assert not (tmp_path / "best.safetensors").exists()


def test_checkpoint_of_the_previous_version_with_best_tensors_resumes(tmp_path):
    """userseq 0.1 kept the best weights inside checkpoint.safetensors as `best.*` tensors."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    best = {"weight": torch.full((2, 3), 7.0), "bias": torch.tensor([3.0, 4.0])}
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"best.{k}": v for k, v in best.items()}}
    for pid, st in opt.state_dict()["state"].items():
        tensors.update({f"opt.{pid}.{k}": v for k, v in st.items()})
    state = TrainState(epoch=1, step=1, best_metric=0.9, best_epoch=1,
                       history=[{"epoch": 1, "loss": 1.0, "valid_m": 0.9}])
    meta = {"param_groups": json.dumps(opt.state_dict()["param_groups"]),
            "trainer": json.dumps(dataclasses.asdict(state)),
            "rng": json.dumps({"torch_seed_offset": 1})}
    save_tensors(tensors, tmp_path / CHECKPOINT, meta)

    trainer, resumed, _ = _fit_recording([0.5, 0.6], tmp_path, resume=True, epochs=3,
                                         model=torch.nn.Linear(3, 2))
    assert (trainer.state.epoch, trainer.state.best_epoch, trainer.state.step) == (3, 1, 3)
    assert _same(resumed, best)  # the later epochs never beat 0.9: the old best weights win
    assert _same(resumed, load_tensors(tmp_path / "best.safetensors")[0])
    assert not any(k.startswith("best.") for k in load_tensors(tmp_path / CHECKPOINT)[0])


class Tied(torch.nn.Module):
    """Input and output share one weight matrix (tied embeddings)."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(3, 3, bias=False)
        self.out = torch.nn.Linear(3, 3, bias=False)
        self.out.weight = self.inp.weight

    def forward(self, x):
        return self.out(self.inp(x))


@pytest.mark.parametrize("with_run_dir", [False, True])
def test_tied_weights_checkpoint_and_best_file(tmp_path, with_run_dir):
    trainer, model, per_epoch = _fit_recording([0.3, 0.1, 0.2], tmp_path if with_run_dir else None,
                                               model=Tied())
    assert trainer.state.best_epoch == 1 and _same(model, per_epoch[0]["weights"])
    assert model.out.weight is model.inp.weight  # still tied after loading the best weights


def test_a_monitor_that_validation_does_not_compute_is_a_clear_error():
    """Checked when the config is made, before any training (was: a KeyError after an epoch)."""
    from conftest import synthetic_events

    from userseq import EventLog, NextItemRecommender

    log = EventLog.from_frame(synthetic_events(n_users=20, n_items=10, length=5))
    rec = NextItemRecommender("gru4rec", overrides={"model.dim": 8, "train.epochs": 1,
                                                    "eval.ks": [5]})  # monitor: ndcg@10
    with pytest.raises(ConfigError, match=r"train.monitor 'ndcg@10' is not a validation metric "
                                          r"with eval.ks \[5\]: choose one of ndcg@5, hr@5, "
                                          r"coverage@5, mrr"):
        rec.fit(log, quiet=True)
    assert rec.train_state_ == {}  # refused before any training
    with pytest.raises(ConfigError, match="train.monitor 'loss' is not a validation metric"):
        NextItemRecommender("gru4rec", overrides={"train.monitor": "loss"}).fit(log, quiet=True)
