"""Data-parallel training across processes and machines: `torch.distributed`, launched by torchrun.

`torchrun --nproc-per-node N -m userseq train ...` starts N copies of the command with the
environment variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. The Trainer
calls `init_from_env` (a no-op without them), so every estimator trains data-parallel through the
one loop:

- every rank builds the same global batches and trains on its share of each (`shard_rows`, the
  DistributedSampler's rule `rows[rank::world]`, applied by `data.batches`);
- after each backward pass the gradients are averaged over the ranks (`GradientSync`: one
  all-reduce of a flat buffer per step, the reduction DistributedDataParallel performs), so every
  rank's model stays identical; rank 0's initial weights are broadcast first;
- validation, the early-stopping decision and the time budget come from rank 0 (`broadcast`),
  so every rank stops at the same step;
- only rank 0 writes checkpoints, metrics and the run (`is_main`).

The backend is gloo on CPU and nccl on CUDA (`train.dist_backend`). A rank that dies or stops
answering makes the others fail within `train.dist_timeout` seconds with a `DistributedError`
naming the rank, instead of hanging.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from userseq.core.errors import UserseqError

T = TypeVar("T")


class DistributedError(UserseqError):
    """A collective operation failed: another rank died, or did not answer in time."""


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of training processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(backend: str = "auto", timeout_s: float = 300.0,
                  device: torch.device | None = None) -> bool:
    """Join the process group described by torchrun's environment variables; whether training is
    distributed. Idempotent; without WORLD_SIZE > 1 nothing happens."""
    if is_initialized():
        return world_size() > 1
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed.")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} "
                               "is not set; launch with torchrun (see docs/distributed.md).")
    if backend == "auto":
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - any rendezvous failure is a user-facing error
        raise DistributedError(f"could not join the process group ({backend}, "
                               f"MASTER_ADDR={os.environ.get('MASTER_ADDR')}:"
                               f"{os.environ.get('MASTER_PORT')}): "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                               ) from None
    atexit.register(shutdown)
    return world_size() > 1


def shutdown() -> None:
    """Leave the process group (registered at exit by `init_from_env`)."""
    if is_initialized():
        dist.destroy_process_group()


def collective(what: str, fn: Callable[[], T]) -> T:
    """Run a collective operation; a failure (a rank died, a timeout) becomes a DistributedError
    that says so."""
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DistributedError(
            f"distributed training failed during {what} on rank {rank()} of {world_size()}: "
            f"another rank died or did not answer within train.dist_timeout ({first}). Check "
            "the other ranks' logs; resume with --resume once all ranks can run.") from None


def broadcast(value: T, src: int = 0) -> T:
    """Rank `src`'s value (any picklable object) on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    collective("a broadcast", lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def from_main(fn: Callable[[], T]) -> T:
    """`fn()` computed on rank 0 and broadcast to every rank; an exception raised by it is raised
    on every rank (so no rank is left waiting for the others)."""
    if world_size() == 1:
        return fn()
    result: Any = None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            result = e
    result = broadcast(result)
    if isinstance(result, BaseException):
        raise result
    return result


def all_reduce_mean(value: float) -> float:
    """The mean of a number over the ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    collective("an all-reduce", lambda: dist.all_reduce(t))
    return float(t.item()) / world_size()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (in place)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            collective("the weight broadcast", lambda t=t: dist.broadcast(t.data, src=src))


class GradientSync:
    """Averages the gradients of `params` over the ranks after each backward pass: one all-reduce
    of one flat buffer (which also carries one flag per parameter, so a parameter that got no
    gradient on any rank keeps `grad = None`, as without distribution).

    Extra numbers can ride along in the same all-reduce (`extras`, summed over the ranks): the
    Trainer uses this for the time-budget flag, so stopping costs no extra round trip.
    """

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)

    def __call__(self, extras: list[float] | None = None) -> list[float]:
        extras = extras or []
        n, k = self.numel, len(self.params)
        dev = self.params[0].device if self.params else torch.device("cpu")
        flat = torch.zeros(n + k + len(extras), dtype=torch.float32, device=dev)
        off = 0
        for i, p in enumerate(self.params):
            if p.grad is not None:
                flat[off:off + p.numel()] = p.grad.detach().reshape(-1)
                flat[n + i] = 1.0
            off += p.numel()
        if extras:
            flat[n + k:] = torch.tensor(extras, dtype=torch.float32, device=dev)
        collective("the gradient all-reduce", lambda: dist.all_reduce(flat))
        flat[:n] /= world_size()
        got = flat[n:n + k].cpu().tolist()  # one device sync, not one per parameter
        off = 0
        for i, p in enumerate(self.params):
            if got[i] > 0:
                g = flat[off:off + p.numel()].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            off += p.numel()
        return flat[n + k:].tolist()


def communication_bytes(module: torch.nn.Module, world: int) -> dict[str, Any]:
    """Bytes each rank sends per optimizer step for the gradient all-reduce (a ring all-reduce
    sends 2 (N - 1) / N of the buffer), from the model size."""
    numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
    buffer = 4 * numel
    return {"parameters": numel, "gradient_bytes": buffer,
            "sent_per_rank_per_step": int(2 * (world - 1) / max(world, 1) * buffer)}
