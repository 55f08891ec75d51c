"""The one training loop, shared by every task.

A task hands the loop a model, a batch iterator factory, a loss function and a validation
function; the loop owns devices, precision, the optimizer and learning-rate schedule (chosen by
name: `core.optim`), early stopping, checkpoints (safetensors, resumable), seeds, the progress bar
and the time budget. Under torchrun it trains data-parallel (`core.distributed`): gradients averaged
over the ranks each step, decisions taken by rank 0, files written by rank 0 only.

Resuming is exact: a checkpoint holds the model, optimizer and schedule, the trainer state, the
torch (CPU and CUDA), NumPy and Python RNG states and the data position (the batches of the current
epoch already trained; `train.checkpoint_every` adds checkpoints within an epoch). `batches(epoch)`
must be a function of the epoch alone (its own seeded generator, not the global RNGs), so that a
resumed run sees the same batches; a run killed at any point and resumed ends with the same weights
as one that was never interrupted.

The best weights are kept on disk, never as a second copy of the model in memory:
RUN_DIR/best.safetensors (or a private temporary directory when there is no run directory),
written atomically at each new best and loaded back into the model when training ends.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from torch.optim.lr_scheduler import LRScheduler

from userseq.core import distributed
from userseq.core.artifacts import COMPLETE_FILE, load_tensors, save_tensors, write_text
from userseq.core.config import TrainConfig
from userseq.core.errors import ArtifactError, ConfigError
from userseq.core.optim import build_optimizer, build_scheduler

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
STATE = "trainer_state.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> tuple[dict[str, torch.Tensor], str]:
    """The torch (CPU and every CUDA device), NumPy and Python RNG states, as checkpoint tensors
    (`rng.*`) and a JSON string for the checkpoint's metadata."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(py_state), py_gauss]}
    return tensors, json.dumps(meta)


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore what `get_rng_state` captured (`{"meta": ..., "rng.torch": ..., ...}`)."""
    meta = rng["meta"]
    torch.set_rng_state(rng["rng.torch"])
    cuda = sorted((k for k in rng if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in cuda][: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, rng["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = meta["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or "
                          "'cpu'.")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None  # measured: bf16 autocast is slower than fp32 for these model sizes on CPU


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = ""
    epoch_step: int = 0  # batches of the unfinished epoch already trained (mid-epoch checkpoint)
    epoch_loss: float = 0.0  # the sum of their losses


@dataclass
class FitRun:
    """What one `Trainer.fit` call works with. Local to the call: the Trainer itself keeps no
    tensors (the best weights are a file, see `Trainer.best_path`)."""

    model: torch.nn.Module
    batches: Callable[[int], Iterable[Any]]
    n_batches: int
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor]
    validate: Callable[[torch.nn.Module], dict[str, float]] | None
    opt: torch.optim.Optimizer
    sched: LRScheduler | None
    scaler: torch.amp.GradScaler | None
    t_start: float = 0.0
    last_val: str = ""  # the last validation summary (progress bar and log lines)
    rng: dict[str, Any] | None = None  # RNG states of a resumed checkpoint, restored on resume
    sync: distributed.GradientSync | None = None  # data-parallel: the per-step gradient all-reduce
    over_budget: bool = False  # data-parallel: some rank's time budget ran out (agreed each step)
    forward: torch.nn.Module | None = None  # what the loss calls: the model, or its compiled form


class Trainer:
    """Fit `model` by minimising `loss_fn(model, batch)`, selecting on
    `validate(model)[monitor]`."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None,
                 console: Console | None = None, quiet: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.device = resolve_device(cfg.device)
        # torchrun: join the process group (a no-op in a single process)
        self.distributed = distributed.init_from_env(cfg.dist_backend, cfg.dist_timeout,
                                                     self.device)
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank())
            torch.cuda.set_device(self.device)
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        self.state = TrainState()
        # the best weights so far: RUN_DIR/best.safetensors, or a temporary file during `fit`
        self.best_path: Path | None = self.run_dir / BEST if self.run_dir else None
        # callbacks(model, epoch) run before each epoch's batches (e.g. a loss refreshing
        # per-epoch state such as ICSRec's intent prototypes)
        self.on_epoch_start: list[Callable[[torch.nn.Module, int], None]] = []
        # callbacks(epoch, validation metrics) run after each validation; one that returns a
        # reason (a non-empty string) stops training there, e.g. a hyperparameter search pruning
        # an unpromising trial on its validation curve (`userseq tune`)
        self.on_validated: list[Callable[[int, dict[str, float]], str | None]] = []

    # -------------------------------------------------------------- the loop
    def fit(
        self,
        model: torch.nn.Module,
        batches: Callable[[int], Iterable[Any]],
        n_batches: int,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        resume: bool = False,
    ) -> TrainState:
        """Train until `train.epochs`, early stopping or the time budget; the model ends with the
        best validated weights (the last ones without `validate`)."""
        run = self._start(model, batches, n_batches, loss_fn, validate)
        if self.run_dir is not None:  # until the estimator saves it, this run is unfinished
            (self.run_dir / COMPLETE_FILE).unlink(missing_ok=True)
        with self._best_file(resume):
            if resume:
                run.rng = self._resume(run)
                # resuming means: continue (e.g. with a larger budget or more epochs)
                self.state.stopped = ""
                if run.rng is None:  # a checkpoint without RNG states (userseq <= 0.1)
                    seed_everything(self.cfg.seed + self.state.epoch)
            run.t_start = time.time() - self.state.seconds
            with self._progress() as progress:
                bar = progress.add_task("train", total=n_batches, epoch=self.state.epoch + 1,
                                        loss=float("nan"), val="")
                while self.state.epoch < self.cfg.epochs and not self.state.stopped:
                    self._epoch(run, progress, bar)
            self._finish(model)
        return self.state

    def _start(self, model: torch.nn.Module, batches: Callable[[int], Iterable[Any]],
               n_batches: int, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
               validate: Callable[[torch.nn.Module], dict[str, float]] | None) -> FitRun:
        """Threads, seed, device; the optimizer and schedule named by train.optimizer/.scheduler."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        model.to(self.device)
        opt = build_optimizer(model.parameters(), cfg)
        sched = build_scheduler(opt, cfg, cfg.epochs * n_batches)
        scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        run = FitRun(model, batches, n_batches, loss_fn, validate, opt, sched, scaler)
        run.forward = torch.compile(model, dynamic=True) if cfg.compile else model
        if self.distributed:  # every rank starts from rank 0's weights; own dropout streams
            distributed.broadcast_module(model)
            run.sync = distributed.GradientSync(list(model.parameters()))
            torch.manual_seed(cfg.seed + distributed.rank())
        return run

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("loss {task.fields[loss]:.4f}  {task.fields[val]}"),
            console=self.console, disable=self.quiet, transient=False,
        )

    def _epoch(self, run: FitRun, progress: Progress, bar: TaskID) -> None:
        """One epoch: train, validate when due, note the time, checkpoint, log one line."""
        epoch = self.state.epoch + 1
        progress.reset(bar, total=run.n_batches, epoch=epoch, loss=float("nan"), val=run.last_val)
        t_epoch = time.time()
        for callback in self.on_epoch_start:
            callback(run.model, epoch)
        loss = self._train_epoch(run, epoch,
                                 lambda mean: progress.update(bar, advance=1, loss=mean))
        if self.distributed:
            loss = distributed.all_reduce_mean(loss)
        record = {"epoch": epoch, "loss": loss, "epoch_seconds": time.time() - t_epoch}
        self.state.epoch = epoch
        if self._validation_due(run, epoch):
            record.update(self._validate(run, epoch))
            progress.update(bar, val=run.last_val)
        self.state.seconds = time.time() - run.t_start
        record["seconds"] = round(self.state.seconds, 3)  # wall clock since the start (curves)
        self.state.history.append(record)
        self._check_budget(self.state.seconds)
        if self.distributed:  # rank 0 decides when to stop (early stopping, budget)
            self.state.stopped = distributed.broadcast(self.state.stopped)
        self.save_checkpoint(run.model, run.opt, run.sched)
        if not self.quiet and not self.console.is_terminal:  # logs and CI: one line per epoch
            self.console.print(f"epoch {epoch}: loss {loss:.4f} ({record['epoch_seconds']:.1f}s) "
                               f"{run.last_val}", highlight=False)

    def _train_epoch(self, run: FitRun, epoch: int, advance: Callable[[float], None]) -> float:
        """Train on the batches of `epoch` until they or the time budget run out; the mean loss.
        A resumed mid-epoch checkpoint skips the batches it already trained on, then restores
        the RNG states it saved."""
        run.model.train()
        s, every = self.state, self.cfg.checkpoint_every
        total, count = s.epoch_loss, s.epoch_step
        it = iter(run.batches(epoch))
        for _ in range(count):
            next(it, None)
        if run.rng is not None:
            set_rng_state(run.rng)
            run.rng = None
        for batch in it:
            total += self._step(run, batch)
            count += 1
            s.epoch_step, s.epoch_loss = count, total
            advance(total / count)
            if self._check_budget(time.time() - run.t_start,
                                  run.over_budget if run.sync is not None else None):
                break
            if every and s.step % every == 0 and count < run.n_batches:
                s.seconds = time.time() - run.t_start
                self.save_checkpoint(run.model, run.opt, run.sched)
        s.epoch_step, s.epoch_loss = 0, 0.0
        return total / max(count, 1)

    def _step(self, run: FitRun, batch: Any) -> float:
        """One optimizer step (autocast, fp16 loss scaling, clipping, the schedule); the loss."""
        with self._autocast():
            loss = run.loss_fn(run.model if run.forward is None else run.forward, batch)
        run.opt.zero_grad(set_to_none=True)
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            if run.sync is None:
                run.scaler.unscale_(run.opt)
        else:
            loss.backward()
        if run.sync is not None:  # data-parallel: average the gradients, agree on the budget
            over = self._over(time.time() - run.t_start)
            run.over_budget = run.sync([float(over)])[0] > 0
            if run.scaler is not None:
                run.scaler.unscale_(run.opt)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.cfg.grad_clip)
        if run.scaler is not None:
            run.scaler.step(run.opt)
            run.scaler.update()
        else:
            run.opt.step()
        if run.sched is not None:
            run.sched.step()
        self.state.step += 1
        return float(loss.detach())

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _over(self, seconds: float) -> bool:
        minutes = self.cfg.max_minutes
        return bool(minutes) and seconds > minutes * 60

    def _check_budget(self, seconds: float, over: bool | None = None) -> bool:
        """Whether `seconds` of training exceed `train.max_minutes` (then the run is stopped);
        `over`: the ranks' joint answer under data-parallel training."""
        minutes = self.cfg.max_minutes
        if not (self._over(seconds) if over is None else over):
            return False
        if not self.state.stopped:
            self.state.stopped = f"time budget of {minutes} min reached"
        return True

    # -------------------------------------------------------------- validation, early stopping
    def _validation_due(self, run: FitRun, epoch: int) -> bool:
        every, last = epoch % self.cfg.eval_every == 0, epoch == self.cfg.epochs
        return run.validate is not None and (every or bool(self.state.stopped) or last)

    def _validate(self, run: FitRun, epoch: int) -> dict[str, float]:
        """Validate; keep the best weights or count a bad epoch; the record's `valid_*` entries."""
        assert run.validate is not None
        run.model.eval()
        with torch.no_grad():  # data-parallel: rank 0 validates, every rank gets its numbers
            metrics = distributed.from_main(lambda: run.validate(run.model))
        monitor, s = self.cfg.monitor, self.state
        if monitor not in metrics:
            raise ConfigError(f"train.monitor '{monitor}' is not among the validation metrics "
                              f"({', '.join(sorted(metrics))}); choose one of them (e.g. with "
                              f"--set train.monitor=...), or add its cut-off to eval.ks.")
        value = metrics[monitor]
        if self._improved(value):
            s.best_metric, s.best_epoch, s.bad_epochs = value, epoch, 0
            self._save_best(run.model.state_dict())
        else:
            s.bad_epochs += self.cfg.eval_every
            if s.bad_epochs >= self.cfg.patience:
                s.stopped = f"no {monitor} improvement for {s.bad_epochs} epochs"
        for callback in self.on_validated:
            reason = callback(epoch, metrics)
            if reason and not s.stopped:
                s.stopped = reason
        run.last_val = f"val {monitor} {value:.4f} (best {s.best_metric:.4f} @ {s.best_epoch})"
        return {f"valid_{k}": v for k, v in metrics.items()}

    def _improved(self, value: float) -> bool:
        """Whether `value` beats the best so far (anything beats no value or NaN)."""
        best = self.state.best_metric
        if self.state.best_epoch == 0 or math.isnan(best):
            return True
        return value > best if self.cfg.monitor_mode == "max" else value < best

    def _finish(self, model: torch.nn.Module) -> None:
        """Name why training stopped and load the best weights back into `model`."""
        s = self.state
        if not s.stopped:
            s.stopped = f"reached {self.cfg.epochs} epochs"
        if s.best_epoch and self.best_path is not None and distributed.is_main():
            model.load_state_dict(load_tensors(self.best_path)[0])
        if self.distributed:  # the other ranks get rank 0's best weights
            distributed.broadcast_module(model)
        if not self.quiet:
            self.console.print(
                f"[bold]training stopped[/]: {s.stopped}; best {self.cfg.monitor} "
                f"{s.best_metric:.4f} at epoch {s.best_epoch}; {s.seconds:.0f}s"
            )

    # -------------------------------------------------------------- best weights, checkpoints
    @contextmanager
    def _best_file(self, resume: bool) -> Iterator[None]:
        """Set `best_path` for one fit: the run directory's best.safetensors (a fresh fit removes an
        old one), or a file in a private temporary directory removed when the fit ends."""
        if self.run_dir is not None:
            if not resume and self.best_path is not None and distributed.is_main():
                self.best_path.unlink(missing_ok=True)
            yield
            return
        with tempfile.TemporaryDirectory(prefix="userseq-best-") as tmp:
            self.best_path = Path(tmp) / BEST
            try:
                yield
            finally:
                self.best_path = None

    def _save_best(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write the best weights, atomically (tmp file + rename); rank 0 only."""
        assert self.best_path is not None
        if not distributed.is_main():
            return
        self.best_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.best_path.with_name(BEST + ".tmp")
        save_tensors(tensors, tmp, {"epoch": str(self.state.best_epoch)})
        os.replace(tmp, self.best_path)

    def save_checkpoint(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
                        sched: LRScheduler | None = None) -> None:
        """Write what resuming needs (model, optimizer, schedule, trainer state) to the run dir
        (rank 0 only)."""
        if self.run_dir is None or not distributed.is_main():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_state = opt.state_dict()
        for pid, st in opt_state["state"].items():
            for key, val in st.items():
                if val is not None:
                    tensors[f"opt.{pid}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
        meta = {"param_groups": json.dumps(opt_state["param_groups"]),
                "trainer": json.dumps(asdict(self.state))}
        if sched is not None:
            meta["scheduler"] = json.dumps(sched.state_dict())
        rng_tensors, meta["rng"] = get_rng_state()
        tensors.update(rng_tensors)
        save_tensors(tensors, self.run_dir / CHECKPOINT, meta)  # atomic: tmp file + rename
        write_text(json.dumps(asdict(self.state), indent=1), self.run_dir / STATE)

    def _resume(self, run: FitRun) -> dict[str, Any] | None:
        """Load the checkpoint; returns its RNG states (restored where training continues).
        Data-parallel: rank 0 reads it and sends it to the other ranks (the run directory need not
        be shared between machines); the ranks then reseed from the seed and epoch (each rank's
        RNG stream differs, so only a single-process resume is bit-exact)."""
        if not self.distributed:
            return self.load_checkpoint(run.model, run.opt, run.sched)

        def read() -> dict[str, Any]:
            self.load_checkpoint(run.model, run.opt, run.sched)
            return {"model": run.model.state_dict(), "opt": run.opt.state_dict(),
                    "sched": run.sched.state_dict() if run.sched is not None else None,
                    "state": asdict(self.state)}

        got = distributed.from_main(read)
        if not distributed.is_main():
            run.model.load_state_dict(got["model"])
            run.opt.load_state_dict(got["opt"])
            if run.sched is not None and got["sched"] is not None:
                run.sched.load_state_dict(got["sched"])
            self.state = TrainState(**got["state"])
        return None

    def load_checkpoint(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
                        sched: LRScheduler | None = None) -> dict[str, Any] | None:
        """Restore what `save_checkpoint` wrote; returns its RNG states (None for checkpoints
        without them), which `fit` restores where training continues. Checkpoints of userseq 0.1
        held the best weights (`best.*` tensors); they are moved to best.safetensors."""
        assert self.run_dir is not None
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            raise ArtifactError(f"{path}: no checkpoint to resume from. Train without --resume "
                                "first.")
        tensors, meta = load_tensors(path)
        try:
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as e:
            raise ArtifactError(f"{path}: checkpoint does not match this model/config: "
                                f"{str(e).splitlines()[0]}") from None
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        if sched is not None and "scheduler" in meta:
            sched.load_state_dict(json.loads(meta["scheduler"]))
        self.state = TrainState(**json.loads(meta["trainer"]))
        rng = None
        if "rng" in meta and "rng.torch" in tensors:  # (0.1 wrote other "rng" metadata)
            rng = {"meta": json.loads(meta["rng"]),
                   **{k: v for k, v in tensors.items() if k.startswith("rng.")}}
        legacy = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        del tensors
        self._restore_best(legacy, path)
        return rng

    def _restore_best(self, legacy: dict[str, torch.Tensor], checkpoint: Path) -> None:
        if legacy:
            self._save_best(legacy)
        elif self.state.best_epoch and not (self.best_path and self.best_path.is_file()):
            raise ArtifactError(
                f"{checkpoint}: the best weights (epoch {self.state.best_epoch}) are missing: no "
                f"{BEST} next to it. Train again without --resume.")
