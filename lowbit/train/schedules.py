"""Learning-rate schedules as pure functions of the iteration (so resume is exact).

``lr(i) = base_lr * warmup(i) * decay(i)`` for the 0-based global iteration ``i``:

- ``warmup(i) = f + (1 - f) * i / W`` for ``i < W`` (``f = warmup_factor``, ``W =
  warmup_iters``), else 1 — the linear warm-up of Goyal et al. / detectron2;
- ``decay(i) = gamma ** #{m in milestones : m <= i}`` (step), or
  ``r + (1 - r) * (1 + cos(pi * i / T)) / 2`` with ``r = min_lr / base_lr`` (cosine over the
  run's ``T`` iterations).

Each optimizer parameter group keeps its own base rate (``group["initial_lr"]``), so groups
with different rates keep their ratio.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lowbit.config import OptimConfig

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    """Warm-up + step/cosine schedule over ``total_iters`` iterations; milestones in iterations."""

    base_lr: float
    total_iters: int
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    schedule: str = "step"
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.total_iters < 1:
            raise ValueError(f"LRSchedule: total_iters must be >= 1, got {self.total_iters}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"LRSchedule: schedule must be step or cosine, got {self.schedule!r}")

    @classmethod
    def from_config(cls, cfg: OptimConfig, total_iters: int, iters_per_epoch: int) -> LRSchedule:
        """Build from ``optim:``; epoch milestones become ``round(m * iters_per_epoch)``."""
        scale = iters_per_epoch if cfg.milestone_unit == "epoch" else 1
        milestones = tuple(int(round(m * scale)) for m in cfg.milestones)
        return cls(
            base_lr=cfg.lr,
            total_iters=total_iters,
            warmup_iters=cfg.warmup_iters,
            warmup_factor=cfg.warmup_factor,
            schedule=cfg.schedule,
            milestones=milestones,
            gamma=cfg.gamma,
            min_lr=cfg.min_lr,
        )

    def factor(self, it: int) -> float:
        """Multiplier of the base rate at 0-based iteration ``it``."""
        warm = 1.0
        if it < self.warmup_iters:
            warm = self.warmup_factor + (1.0 - self.warmup_factor) * it / self.warmup_iters
        if self.schedule == "step":
            decay = self.gamma ** bisect.bisect_right(self.milestones, it)
        else:
            r = self.min_lr / self.base_lr
            t = min(it, self.total_iters) / self.total_iters
            decay = r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * t))
        return warm * decay

    def lr(self, it: int) -> float:
        """Learning rate of a group whose base rate is ``base_lr``."""
        return self.base_lr * self.factor(it)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every group's ``lr`` for iteration ``it``; returns the first group's rate."""
        f = self.factor(it)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * f
        return optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe description (the schedule has no other state)."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d
