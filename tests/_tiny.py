"""A tiny FP32 R-FCN run shared by the compare / datafree / sweep-mu tests (trained once per
session: a tiny digits devkit of 8 train / 4 test images at 64 px, width 0.125, 2 iterations)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = """\
model: {{name: rfcn_resnet18, task: detect, num_classes: 10, kwargs: {{width: 0.125, k: 3}}}}
data: {{kind: digits, root: {root}, train_split: trainval, test_split: test,
       kwargs: {{hflip: false, train: 8, test: 4, size: 64, seed: 0}}}}
optim: {{lr: 0.02, momentum: 0.9, nesterov: true, weight_decay: 1.0e-4, warmup_iters: 2,
        schedule: cosine}}
train: {{epochs: 1, batch_size: 4, eval_interval: 0, seed: 0, device: cpu, num_workers: 0,
        log_every: 1, checkpoint_every: 0, keep_checkpoints: 1}}
"""

_CACHE: dict[str, Path] = {}


def write_tiny_config(folder: Path) -> Path:
    """A tiny FP32 R-FCN config whose digits devkit is generated into ``folder/digits``."""
    cfg = folder / "tiny.yaml"
    cfg.write_text(TINY.format(root=folder / "digits"))
    return cfg


def tiny_fp32_run(factory: pytest.TempPathFactory) -> Path:
    """The session's tiny FP32 run folder (trained on first use)."""
    if "run" not in _CACHE:
        from lowbit.config import load_config
        from lowbit.train import fit

        folder = factory.mktemp("tiny_fp32")
        fit(load_config(write_tiny_config(folder)), folder / "fp32", progress=False)
        _CACHE["run"] = folder / "fp32"
    return _CACHE["run"]


def remember_fp32_run(run: Path) -> None:
    """Share an FP32 run trained by another fixture (same tiny config) with later tests."""
    _CACHE.setdefault("run", run)
