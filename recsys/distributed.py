"""``torch.distributed`` helpers for training under ``torchrun`` (DDP).

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``): ``gloo`` on CPU, ``nccl`` when the configured device is CUDA. Every collective runs
under ``train.dist_timeout_s``, so a dead or stuck rank fails the job with :class:`DistributedError`
instead of hanging it. Outside torchrun every helper is a no-op for a world of one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from recsys.config import PersonaConfig

T = TypeVar("T")
# Test-only fault injection: "RANK:STEP" makes that rank exit abruptly (os._exit(1)) at that training step.
TEST_DIE_ENV = "PERSONA_TEST_DIE_AT_STEP"


class DistributedError(RuntimeError):
    """A collective failed: another rank died, timed out, or the rendezvous broke."""


def launched_by_torchrun() -> bool:
    """Whether this process is one of torchrun's workers (its env names a rank and a world)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def env_rank() -> int:
    """This process's global rank from the environment (0 outside torchrun); valid before/after the group."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_rank0() -> bool:
    return rank() == 0


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def rank_device(cfg: PersonaConfig) -> str:
    """The torch device of this rank: ``cuda:<LOCAL_RANK>`` for multi-process CUDA, else ``cfg.torch_device()``."""
    device = cfg.torch_device()
    if world_size() > 1 and device.startswith("cuda"):
        return f"cuda:{local_rank()}"
    return device


def init_process_group(cfg: PersonaConfig) -> bool:
    """Join the process group torchrun describes; False (nothing done) outside torchrun or if already joined."""
    if is_initialized() or not launched_by_torchrun():
        return False
    backend = backend_for(cfg.torch_device())
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    timeout = timedelta(seconds=cfg.train.dist_timeout_s)
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"rank {env_rank()}: could not join the {backend} process group: {exc}") from exc
    return True


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(cfg: PersonaConfig) -> Iterator[None]:
    """Hold torchrun's process group for the block (a no-op outside torchrun or when already held)."""
    owned = init_process_group(cfg)
    try:
        yield
    finally:
        if owned:
            destroy_process_group()


@contextmanager
def collective_errors(timeout_s: float) -> Iterator[None]:
    """Turn a failed collective (peer died, timeout) into one clear :class:`DistributedError`."""
    try:
        yield
    except RuntimeError as exc:
        if not is_initialized() or isinstance(exc, DistributedError):
            raise
        raise DistributedError(
            f"rank {rank()} of {world_size()}: a collective failed ({type(exc).__name__}: {exc}); "
            f"another rank died or stalled (timeout train.dist_timeout_s={timeout_s:g} s)"
        ) from exc


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(value: float) -> float:
    """Sum of a Python scalar over all ranks (the scalar itself in a world of one)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_mean(value: float) -> float:
    return all_reduce_sum(value) / world_size()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def rank0_first(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run ``fn`` (e.g. preparing data files) on rank 0, then on each node's local rank 0, then on the rest.

    Safe whether the files live on shared storage (later ranks find them complete) or on each node.
    """
    phase = 0 if rank() == 0 else 1 if local_rank() == 0 else 2
    out = None
    for p in range(3):
        if p == phase:
            out = fn(*args, **kwargs)
        barrier()
    return out


def _collective_device() -> str:
    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"


def fault_step_for_tests() -> int | None:
    """Test-only: the training step at which this rank must die, from ``$PERSONA_TEST_DIE_AT_STEP``."""
    spec = os.environ.get(TEST_DIE_ENV)
    if not spec:
        return None
    die_rank, step = (int(x) for x in spec.split(":"))
    return step if die_rank == rank() else None


__all__ = [
    "DistributedError",
    "TEST_DIE_ENV",
    "all_reduce_mean",
    "all_reduce_sum",
    "backend_for",
    "barrier",
    "broadcast_object",
    "collective_errors",
    "destroy_process_group",
    "env_rank",
    "init_process_group",
    "is_initialized",
    "is_rank0",
    "launched_by_torchrun",
    "local_rank",
    "process_group",
    "rank",
    "rank0_first",
    "rank_device",
    "fault_step_for_tests",
    "world_size",
]
