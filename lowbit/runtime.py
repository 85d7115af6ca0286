"""Process-wide compute settings: the thread count every computing verb runs with.

``lowbit <verb> --threads N`` (added centrally by :mod:`lowbit.cli`) calls
:func:`set_threads` before the verb runs. It applies to

* PyTorch: ``torch.set_num_threads(N)`` and, where still allowed (before any inter-op work),
  ``torch.set_num_interop_threads(N)``;
* onnxruntime: sessions take ``SessionOptions.intra_op_num_threads = get_threads()``;
* child processes: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are exported, so workers started
  later inherit the setting.

Without ``--threads`` nothing is changed (PyTorch's default: one thread per physical core) and
:func:`get_threads` reports PyTorch's current count. Why it matters: on a loaded machine
OpenMP threads spin against each other; see ``docs/threads.md`` for measured figures.

:func:`run_info` is the record to put next to any measurement or results file: thread count,
where it came from, the load average when the verb started, CPU count, torch version (no host
name). This module imports torch only when a thread count is applied or read.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["set_threads", "get_threads", "at_most_threads", "run_info", "start_line",
           "parse_threads"]

_STATE: dict[str, Any] = {"threads": None, "load_average": None}

_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_threads(text: str) -> int:
    """``--threads`` value: an integer >= 1 (raises ``ValueError`` naming the value)."""
    try:
        n = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--threads must be an integer >= 1, got {text!r}") from None
    if n < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {n}")
    return n


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # not available on this platform
        return None


def set_threads(threads: int | None) -> int:
    """Apply a thread count to torch, onnxruntime sessions made later, and child processes.

    ``threads=None`` keeps PyTorch's default (nothing is changed). Records the load average at
    this moment as the run's start. Returns the thread count now in effect (torch's).
    Raises ``ValueError`` for a count below 1.
    """
    if threads is not None:
        threads = parse_threads(str(threads))
        for var in _ENV_VARS:  # before torch's first import this also sizes its OpenMP pool
            os.environ[var] = str(threads)
    _STATE["load_average"] = _load_average()
    _STATE["threads"] = threads
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only allowed once, before any inter-op parallel work
            pass
    return torch.get_num_threads()


@contextlib.contextmanager
def at_most_threads(limit: int | None, device: Any = None) -> Iterator[None]:
    """Run the block with at most ``limit`` torch intra-op threads on the CPU (``None``, a CUDA
    ``device`` or a count already at or below the limit: nothing changes); the thread count
    is restored afterwards, also on errors. For short sequences of small ops, where OpenMP's
    fork/join and spin-waits cost more than the split gains (the quantizers)."""
    import torch

    nt = torch.get_num_threads()
    on_cpu = device is None or torch.device(device).type == "cpu"
    if limit is None or not on_cpu or nt <= limit:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(nt)


def get_threads() -> int:
    """Thread count for compute in this process: the ``--threads`` value if one was given,
    else PyTorch's current intra-op thread count. onnxruntime sessions use it as
    ``intra_op_num_threads``."""
    if _STATE["threads"] is not None:
        return int(_STATE["threads"])
    import torch

    return torch.get_num_threads()


def run_info() -> dict[str, Any]:
    """What a results file should record about the machine state of this run.

    ``{"threads": int, "threads_source": "--threads" | "torch default", "torch_threads": int,
    "torch_interop_threads": int, "load_average_start": [1 min, 5 min, 15 min] | None,
    "cpu_count": int, "torch": version, "python": version, "machine": arch, "system": OS}``.
    No host name. ``load_average_start`` is taken when :func:`set_threads` ran (the start of
    the verb), or now if it never ran.
    """
    import torch

    if _STATE["load_average"] is None:
        _STATE["load_average"] = _load_average()
    return {
        "threads": get_threads(),
        "threads_source": "--threads" if _STATE["threads"] is not None else "torch default",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_start": _STATE["load_average"],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": sys.platform,
    }


def start_line(info: dict[str, Any] | None = None) -> str:
    """One line for the start of a computing verb, e.g. ``lowbit: 1 thread (--threads; torch
    intra-op 1, inter-op 1), load average at start 0.92 0.70 0.32, 2 CPUs``; plus a second
    line suggesting ``--threads 1`` when no count was given, torch uses several threads and
    the 1-minute load average is at least the CPU count."""
    info = run_info() if info is None else info
    la = info["load_average_start"]
    load = " ".join(f"{v:.2f}" for v in la) if la else "n/a"
    n = info["threads"]
    line = (
        f"lowbit: {n} thread{'s' if n != 1 else ''} ({info['threads_source']}; torch intra-op "
        f"{info['torch_threads']}, inter-op {info['torch_interop_threads']}), "
        f"load average at start {load}, {info['cpu_count']} CPUs"
    )
    cpus = info["cpu_count"] or 1
    if info["threads_source"] != "--threads" and n > 1 and la and la[0] >= cpus:
        line += (f"\nlowbit: note: the machine is busy (load {la[0]:.2f} on {cpus} CPUs); "
                 "--threads 1 avoids OpenMP spin-wait slowdowns (docs/threads.md)")
    return line
