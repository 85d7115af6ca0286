"""A run SIGKILLed mid-training and resumed ends with the same weights as an uninterrupted run.

The killed run is a subprocess (1 thread) whose checkpoint writer hangs when it reaches the JSON
of a chosen checkpoint: its tensors file is on disk, its JSON is not — the worst moment for a
kill. The parent polls for that tensors file (with a timeout), SIGKILLs the child, resumes in
this process and compares with an uninterrupted in-process run: exact equality.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lowbit.config import config_from_dict
from lowbit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from lowbit.train.engine import fit
from lowbit.train.metrics import read_metrics
from tests.train.conftest import REPO, small_config, write_config

CHILD = r"""
import sys, threading
import torch
torch.set_num_threads(1)
import lowbit.train.checkpoint as ck
from lowbit.config import load_config
from lowbit.train.engine import fit

cfg_path, out, hang_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
real = ck._write_json_atomic

def hanging(path, obj):
    if obj.get("state", {}).get("iteration") == hang_at:
        threading.Event().wait()  # blocks until the parent kills us
    return real(path, obj)

ck._write_json_atomic = hanging
fit(load_config(cfg_path), out, progress=False)
raise SystemExit("the run finished: it should have been killed")
"""

# 22 iterations per epoch; checkpoints at 8, 16, 22 (epoch end), 24, 32, 40 (hangs), ...
RAW = small_config(
    model={"kwargs": {"dropout": 0.3}},  # exercises the restored RNG state
    train={"epochs": 3, "checkpoint_every": 8, "keep_checkpoints": 2, "eval_interval": 1},
)
HANG_AT = 40


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)  # polling interval, not a timing assumption


def test_sigkill_then_resume_is_bit_exact(tmp_path: Path, one_thread: None) -> None:
    cfg = config_from_dict(RAW)
    ref = fit(cfg, tmp_path / "ref", progress=False)

    cfg_path = write_config(tmp_path / "c.yaml", RAW)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cfg_path), str(run), str(HANG_AT)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for(run / "checkpoints" / f"ckpt-{HANG_AT:08d}.safetensors", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    latest = find_latest_checkpoint(run)
    assert latest is not None and latest.name == "ckpt-00000032.json"  # mid-epoch 2
    assert not (run / "result.json").exists()

    res = fit(cfg, run, resume=True, progress=False)
    assert res.resumed_from == 32 and res.iteration == ref.iteration == 66
    assert res.metrics == ref.metrics

    a, b = load_checkpoint(ref.checkpoint), load_checkpoint(res.checkpoint)
    assert a.model_state.keys() == b.model_state.keys()
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    assert a.optimizer_state is not None and b.optimizer_state is not None
    for idx, values in a.optimizer_state["state"].items():
        assert torch.equal(values["momentum_buffer"],
                           b.optimizer_state["state"][idx]["momentum_buffer"])
    assert a.state["rng"] == b.state["rng"]

    # the metrics file reads like one run: the killed run's lines after 32 were dropped
    strip = ("time", "img_per_s", "path", "checkpoint")
    events = [{k: v for k, v in e.items() if k not in strip} for e in read_metrics(run)
              if e["event"] != "resume"]
    ref_events = [{k: v for k, v in e.items() if k not in strip} for e in read_metrics(ref.run_dir)]
    assert events == ref_events


def test_building_the_datasets_does_not_move_the_rng_streams(tmp_path: Path, one_thread: None,
                                                              monkeypatch) -> None:
    """A task's build_datasets that draws from the global RNGs (its own draws, or an import
    side effect such as scikit-learn importing rich, whose import calls random.getrandbits)
    leaves the run's model, optimizer and RNG states as if it had drawn nothing."""
    import random

    import numpy as np

    import lowbit.tasks.digits as digits_task

    cfg = config_from_dict(small_config(train={"epochs": 1, "checkpoint_every": 0}))
    plain = fit(cfg, tmp_path / "plain", progress=False)

    real = digits_task.load_sklearn_digits

    def drawing(*args, **kwargs):
        random.getrandbits(24)
        np.random.rand()  # noqa: NPY002 - the global stream is the point
        torch.rand(3)
        return real(*args, **kwargs)

    monkeypatch.setattr(digits_task, "load_sklearn_digits", drawing)
    drawn = fit(cfg, tmp_path / "drawn", progress=False)
    a, b = load_checkpoint(plain.checkpoint), load_checkpoint(drawn.checkpoint)
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    assert a.state["rng"] == b.state["rng"]
    assert plain.metrics == drawn.metrics
