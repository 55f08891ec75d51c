"""The one training loop, shared by every task.

A task hands the loop a model, a batch iterator factory, a loss function and a validation
function; the loop owns devices, precision, the optimizer, early stopping, checkpoints
(safetensors, resumable), seeds, the progress bar and the time budget.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from userseq.core.artifacts import load_tensors, save_tensors
from userseq.core.config import TrainConfig
from userseq.core.errors import ArtifactError

CHECKPOINT = "checkpoint.safetensors"
STATE = "trainer_state.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from userseq.core.errors import ConfigError

        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
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


class Trainer:
    """Fit `model` by minimising `loss_fn(model, batch)`, selecting on `validate(model)[monitor]`."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, console: Console | None = None,
                 quiet: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.device = resolve_device(cfg.device)
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        self.state = TrainState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if self.best_weights is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_weights.items()})
        opt_state = opt.state_dict()
        for pid, st in opt_state["state"].items():
            for key, val in st.items():
                tensors[f"opt.{pid}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
        meta = {"param_groups": json.dumps(opt_state["param_groups"]), "trainer": json.dumps(asdict(self.state)),
                "rng": json.dumps({"torch_seed_offset": self.state.step})}
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        save_tensors(tensors, tmp, meta)
        os.replace(tmp, self.run_dir / CHECKPOINT)
        (self.run_dir / STATE).write_text(json.dumps(asdict(self.state), indent=1))

    def load_checkpoint(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        assert self.run_dir is not None
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            raise ArtifactError(f"{path}: no checkpoint to resume from. Train without --resume first.")
        tensors, meta = load_tensors(path)
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(model_sd)
        except RuntimeError as e:
            raise ArtifactError(f"{path}: checkpoint does not match this model/config: {str(e).splitlines()[0]}") from None
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_weights = best or None
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        self.state = TrainState(**json.loads(meta["trainer"]))

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
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        model.to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if resume:
            self.load_checkpoint(model, opt)
            self.state.stopped = ""  # resuming means: continue (e.g. with a larger budget or more epochs)
            seed_everything(cfg.seed + self.state.epoch)
        scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        autocast = (
            (lambda: torch.autocast(self.device.type, dtype=self.autocast_dtype))
            if self.autocast_dtype is not None else nullcontext
        )
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        t_start = time.time() - self.state.seconds
        progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[val]}"),
            console=self.console, disable=self.quiet, transient=False,
        )
        monitor = cfg.monitor
        last_val = ""
        with progress:
            task = progress.add_task("train", total=n_batches, epoch=self.state.epoch + 1, loss=float("nan"), val="")
            while self.state.epoch < cfg.epochs and not self.state.stopped:
                epoch = self.state.epoch + 1
                progress.reset(task, total=n_batches, epoch=epoch, loss=float("nan"), val=last_val)
                model.train()
                t_epoch, total_loss, count = time.time(), 0.0, 0
                for batch in batches(epoch):
                    with autocast():
                        loss = loss_fn(model, batch)
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(opt)
                    else:
                        loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    self.state.step += 1
                    total_loss += float(loss.detach())
                    count += 1
                    progress.update(task, advance=1, loss=total_loss / count)
                    if budget and time.time() - t_start > budget:
                        self.state.stopped = f"time budget of {cfg.max_minutes} min reached"
                        break
                record = {"epoch": epoch, "loss": total_loss / max(count, 1), "epoch_seconds": time.time() - t_epoch}
                self.state.epoch = epoch
                if validate is not None and (epoch % cfg.eval_every == 0 or self.state.stopped or epoch == cfg.epochs):
                    model.eval()
                    with torch.no_grad():
                        metrics = validate(model)
                    record.update({f"valid_{k}": v for k, v in metrics.items()})
                    value = metrics[monitor]
                    first = self.state.best_epoch == 0 or math.isnan(self.state.best_metric)
                    if first or (value > self.state.best_metric if cfg.monitor_mode == "max" else value < self.state.best_metric):
                        self.state.best_metric, self.state.best_epoch, self.state.bad_epochs = value, epoch, 0
                        self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        self.state.bad_epochs += cfg.eval_every
                        if self.state.bad_epochs >= cfg.patience:
                            self.state.stopped = f"no {monitor} improvement for {self.state.bad_epochs} epochs"
                    last_val = f"val {monitor} {value:.4f} (best {self.state.best_metric:.4f} @ {self.state.best_epoch})"
                    progress.update(task, val=last_val)
                self.state.seconds = time.time() - t_start
                self.state.history.append(record)
                if budget and self.state.seconds > budget and not self.state.stopped:
                    self.state.stopped = f"time budget of {cfg.max_minutes} min reached"
                self.save_checkpoint(model, opt)
                if not self.quiet and not self.console.is_terminal:  # logs and CI: one line per epoch
                    self.console.print(f"epoch {epoch}: loss {record['loss']:.4f} "
                                       f"({record['epoch_seconds']:.1f}s) {last_val}", highlight=False)
        if not self.state.stopped:
            self.state.stopped = f"reached {cfg.epochs} epochs"
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
        if not self.quiet:
            self.console.print(
                f"[bold]training stopped[/]: {self.state.stopped}; best {monitor} {self.state.best_metric:.4f} "
                f"at epoch {self.state.best_epoch}; {self.state.seconds:.0f}s"
            )
        return self.state
