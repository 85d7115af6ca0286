"""LR schedule values at hand-computed iterations."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.config import OptimConfig
from lowbit.train.schedules import LRSchedule


def test_step_with_warmup() -> None:
    s = LRSchedule(base_lr=0.1, total_iters=40, warmup_iters=10, warmup_factor=0.1,
                   schedule="step", milestones=(20, 30), gamma=0.1)
    expected = {0: 0.01, 5: 0.1 * (0.1 + 0.9 * 0.5), 9: 0.1 * (0.1 + 0.9 * 0.9), 10: 0.1,
                19: 0.1, 20: 0.01, 29: 0.01, 30: 0.001, 39: 0.001}
    for it, lr in expected.items():
        assert s.lr(it) == pytest.approx(lr, rel=1e-12), it


def test_cosine_with_and_without_floor() -> None:
    s = LRSchedule(base_lr=0.1, total_iters=100, schedule="cosine")
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(50) == pytest.approx(0.05)
    assert s.lr(25) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.lr(100) == pytest.approx(0.0, abs=1e-15)
    f = LRSchedule(base_lr=0.1, total_iters=100, schedule="cosine", min_lr=0.01)
    assert f.lr(50) == pytest.approx(0.01 + 0.09 * 0.5)
    assert f.lr(100) == pytest.approx(0.01)
    w = LRSchedule(base_lr=0.1, total_iters=100, schedule="cosine", warmup_iters=10,
                   warmup_factor=0.1)
    assert w.lr(5) == pytest.approx(0.1 * 0.55 * 0.5 * (1 + math.cos(math.pi * 0.05)))


def test_from_config_converts_epoch_milestones() -> None:
    cfg = OptimConfig(lr=0.2, schedule="step", milestones=[1.5, 3], gamma=0.5)
    s = LRSchedule.from_config(cfg, total_iters=50, iters_per_epoch=10)
    assert s.milestones == (15, 30)
    assert [s.lr(i) for i in (14, 15, 29, 30)] == pytest.approx([0.2, 0.1, 0.1, 0.05])
    it_cfg = OptimConfig(lr=0.2, schedule="step", milestones=[7], milestone_unit="iter")
    assert LRSchedule.from_config(it_cfg, 50, 10).milestones == (7,)


def test_apply_keeps_group_ratios_and_is_pure() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.1)
    s = LRSchedule(base_lr=0.1, total_iters=10, schedule="step", milestones=(5,), gamma=0.1)
    for it in (7, 2, 7):  # any order: a pure function of the iteration
        s.apply(opt, it)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.001)
    assert LRSchedule(**{**s.state_dict(), "milestones": (5,)}) == s
