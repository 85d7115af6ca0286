"""SIGKILL `lowbit train` at several points, resume each time: the end equals an uninterrupted run.

One run of the small digits config (3 epochs of 22 iterations, checkpoints every 8 iterations
and at epoch ends, 2 kept, dropout on so the restored RNG matters) is killed four times, each
time by a real ``SIGKILL`` that the ``lowbit train`` process sends itself at a chosen moment
(1 thread), and resumed:

1. right after optimizer step 13 (between checkpoints 8 and 16);
2. half way through writing the tensors file of checkpoint 32 (a torn ``*.tmp``);
3. half way through writing the ``eval`` line of iteration 44 to ``metrics.jsonl`` (a torn
   last line, after checkpoint 44 was committed but before its evaluation finished);
4. half way through writing the JSON of checkpoint 56 (its tensors file committed, its commit
   marker not).

After every kill each checkpoint the folder lists loads (no half-written file is ever taken
for one). The last resume runs in this process; final weights, optimizer state, RNG states,
``result.json`` and every line of ``metrics.jsonl`` (less wall-clock fields and the ``resume``
lines) equal those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from lowbit.cli import main
from lowbit.train.checkpoint import list_checkpoints, load_checkpoint
from lowbit.train.metrics import read_metrics
from tests.train.conftest import REPO, small_config, write_config

CHILD = r"""
import json, os, signal, sys, tempfile
import torch
torch.set_num_threads(1)
import lowbit.train.checkpoint as ck
import lowbit.train.engine as eng
import lowbit.train.metrics as mt

mode, arg = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":
    real_emit = eng.Trainer._emit
    def emit(self, event, **info):
        real_emit(self, event, **info)
        if event == "iteration" and info["iteration"] == int(arg):
            die()
    eng.Trainer._emit = emit
elif mode == "write":
    real_write = ck._write_atomic
    def write(path, data):
        if path.name == arg:
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            die()
        return real_write(path, data)
    ck._write_atomic = write
elif mode == "log":
    event_name, at = arg.split(":")
    real_log = mt.MetricsLogger.log
    def log(self, event, iteration, epoch, **values):
        if event == event_name and iteration == int(at):
            line = json.dumps({"event": event, "iteration": iteration, **values})
            self._fh.write(line[: len(line) // 2])
            self._fh.flush()
            die()
        return real_log(self, event, iteration, epoch, **values)
    mt.MetricsLogger.log = log

from lowbit.cli import main
main(sys.argv[3:])
raise SystemExit("the run finished: it should have been killed")
"""

RAW = small_config(
    model={"kwargs": {"dropout": 0.3}},
    train={"epochs": 3, "checkpoint_every": 8, "keep_checkpoints": 2, "eval_interval": 1,
           "log_every": 5},
)
STRIP = ("time", "img_per_s")


def _kill_at(mode: str, arg: str, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    got = subprocess.run([sys.executable, "-c", CHILD, mode, arg, *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == -signal.SIGKILL, got.stderr[-3000:]


def _committed(run: Path) -> list[int]:
    found = list_checkpoints(run)
    for ck in found:  # every listed checkpoint is whole
        load_checkpoint(ck)
    return [int(ck.stem.split("-")[1]) for ck in found]


def _events(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in STRIP} for e in read_metrics(run)
            if e["event"] != "resume"]


def test_four_kills_and_resumes_equal_one_uninterrupted_run(tmp_path: Path,
                                                            one_thread: None) -> None:
    cfg = write_config(tmp_path / "c.yaml", RAW)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(ref), "--json"]) == 0
    train = ["train", str(cfg), "--out", str(run), "--json"]
    resume = [*train, "--resume"]
    ckdir = run / "checkpoints"

    _kill_at("step", "13", train)
    assert _committed(run) == [8]

    _kill_at("write", "ckpt-00000032.safetensors", resume)
    assert _committed(run) == [22, 24]
    assert any(p.name.startswith("ckpt-00000032.safetensors.") for p in ckdir.iterdir())

    _kill_at("log", "eval:44", resume)
    assert _committed(run) == [40, 44]
    assert not (run / "metrics.jsonl").read_text().endswith("\n")  # a torn last line

    _kill_at("write", "ckpt-00000056.json", resume)
    assert _committed(run) == [44, 48]
    assert (ckdir / "ckpt-00000056.safetensors").exists()  # uncommitted: no JSON
    assert not (run / "result.json").exists()

    assert main(resume) == 0
    assert _committed(run) == [64, 66]
    assert not [p for p in ckdir.iterdir() if p.suffix == ".tmp" or "00000056" in p.name]

    a = load_checkpoint(ref / "checkpoints" / "ckpt-00000066.json")
    b = load_checkpoint(ckdir / "ckpt-00000066.json")
    assert a.model_state.keys() == b.model_state.keys()
    for key, value in a.model_state.items():
        assert torch.equal(value, b.model_state[key]), key
    assert a.optimizer_state is not None and b.optimizer_state is not None
    for idx, values in a.optimizer_state["state"].items():
        assert torch.equal(values["momentum_buffer"],
                           b.optimizer_state["state"][idx]["momentum_buffer"]), idx
    assert a.state["rng"] == b.state["rng"]
    assert a.state["log_window"] == b.state["log_window"]
    result_a = json.loads((ref / "result.json").read_text())
    result_b = json.loads((run / "result.json").read_text())
    assert result_a["metrics"] == result_b["metrics"] and result_b["iteration"] == 66
    assert _events(run) == _events(ref)
