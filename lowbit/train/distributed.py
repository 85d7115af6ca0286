"""Process-group plumbing for ``torchrun``: init from env vars, device choice, small collectives.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them (``env://``) and opens a process group when
``WORLD_SIZE > 1``: NCCL when the device is CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
gloo on CPU. Without those variables everything degrades to a single process with no group.

Collectives exchange plain numbers and JSON (encoded to uint8 tensors), never pickled objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "resolve_device",
    "init_distributed",
    "shutdown_distributed",
    "barrier",
    "all_reduce_mean",
    "all_gather_json",
    "broadcast_json",
    "any_true",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, its ``device`` and ``backend``
    (``None`` when no process group is open)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is open (``world_size > 1``)."""
        return self.backend is not None


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:LOCAL_RANK`` when CUDA is present, else ``cpu``; ``cuda`` →
    ``cuda:LOCAL_RANK``; ``cpu`` / ``cuda:N`` as given. ValueError if CUDA is asked for but
    missing."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    if not pref.startswith("cuda"):
        raise ValueError(f"device {pref!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {pref!r}: CUDA is not available on this machine")
    if pref == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(pref)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto") -> DistContext:
    """Open the process group described by torchrun's env vars (if ``WORLD_SIZE > 1``).

    Reuses a group that is already initialised. Returns the :class:`DistContext`.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"WORLD_SIZE={world} but {var} is not set (launch with torchrun)")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    else:
        backend = dist.get_backend()
    return DistContext(rank, world, local_rank, dev, backend)


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group opened by :func:`init_distributed` (no-op without one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Mean over processes of each value (same keys, same order on every rank)."""
    if not ctx.distributed or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= ctx.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_gather_json(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order, on every rank (no pickle)."""
    if not ctx.distributed:
        return [obj]
    dev = _comm_device(ctx)
    data = torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8, device=dev)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: data.numel()] = data
    chunks = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(chunks, padded)
    return [
        json.loads(bytes(c[: int(s.item())].cpu().tolist()).decode("utf-8"))
        for c, s in zip(chunks, sizes)
    ]


def broadcast_json(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s JSON-serialisable ``obj`` on every rank (no pickle)."""
    if not ctx.distributed:
        return obj
    return all_gather_json(obj if ctx.rank == src else None, ctx)[src]


def any_true(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` is true on any process (one tiny all-reduce; no-op in one process)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
