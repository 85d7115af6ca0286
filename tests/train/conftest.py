"""Shared helpers for the engine tests: a small digits experiment and a 1-thread guard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lowbit.config import ExperimentConfig, config_from_dict

REPO = Path(__file__).resolve().parents[2]


def small_config(**sections: Any) -> dict[str, Any]:
    """A fast classify-digits experiment as plain data; ``sections`` update each section."""
    raw: dict[str, Any] = {
        "model": {"name": "digits-cnn", "task": "classify-digits", "num_classes": 10,
                  "kwargs": {"width": 8, "norm": "bn", "dropout": 0.0}},
        "data": {"kind": "sklearn-digits"},
        "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                  "warmup_iters": 5, "warmup_factor": 0.1, "schedule": "cosine"},
        "train": {"epochs": 1, "batch_size": 64, "eval_interval": 1, "seed": 0,
                  "device": "cpu", "log_every": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(raw[key].get(k), dict):
                    raw[key][k].update(v)
                else:
                    raw[key][k] = v
        else:
            raw[key] = value
    return raw


def make_config(**sections: Any) -> ExperimentConfig:
    """``small_config`` validated into an :class:`ExperimentConfig`."""
    return config_from_dict(small_config(**sections))


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write a plain config as YAML."""
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test body with ``torch.set_num_threads(1)`` (bit-exact comparisons)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
