"""Two gloo processes under torchrun train to the same weights as one process with the same
global batch (the model has no BatchNorm: on CPU each process would normalise its own half)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from lowbit.config import config_from_dict
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.engine import fit
from lowbit.train.metrics import read_metrics
from tests.train.conftest import REPO, small_config, write_config

RAW = small_config(
    model={"kwargs": {"norm": "none", "width": 8}},
    optim={"lr": 0.05, "warmup_iters": 2},
    train={"iterations": 30, "batch_size": 32, "log_every": 10, "checkpoint_every": 20,
           "eval_interval": 0},
)


def test_two_process_gloo_matches_single_process(tmp_path: Path, one_thread: None) -> None:
    cfg_path = write_config(tmp_path / "c.yaml", RAW)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "lowbit.cli", "train", str(cfg_path), "--out", str(tmp_path / "ddp"),
           "--json"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 prints

    single = fit(config_from_dict(RAW), tmp_path / "one", progress=False)
    ddp_ckpt = load_checkpoint(tmp_path / "ddp")
    one_ckpt = load_checkpoint(single.checkpoint)
    assert ddp_ckpt.state["iteration"] == one_ckpt.state["iteration"] == 30
    assert ddp_ckpt.state["world_size"] == 2 and len(ddp_ckpt.state["rng"]) == 2
    init = load_checkpoint(tmp_path / "one" / "checkpoints" / "ckpt-00000020.json")
    moved = 0.0
    for key, value in one_ckpt.model_state.items():
        torch.testing.assert_close(ddp_ckpt.model_state[key], value, atol=1e-5, rtol=1e-4)
        moved = max(moved, float((value - init.model_state[key]).abs().max()))
    assert moved > 1e-3  # the comparison is not between untrained weights
    assert abs(summaries[0]["metrics"]["loss"] - single.metrics["loss"]) < 1e-4

    # rank 0 alone wrote the metrics; losses are averaged over ranks
    ddp_train = [e for e in read_metrics(tmp_path / "ddp") if e["event"] == "train"]
    one_train = [e for e in read_metrics(tmp_path / "one") if e["event"] == "train"]
    assert [e["iteration"] for e in ddp_train] == [10, 20, 30]
    assert [e["iteration"] for e in one_train] == [10, 20, 30]
    for a, b in zip(ddp_train, one_train):
        assert abs(a["loss"] - b["loss"]) < 1e-4


#: ``lowbit train CONFIG --out OUT --json`` for each (CONFIG, OUT) pair of argv, one after the
#: other in the same two torchrun workers and process group (``fit`` reuses an open group):
#: one launch, one start-up and one rendezvous for both runs
DRIVER = """
import sys
from lowbit.cli import main
from lowbit.train.distributed import init_distributed, shutdown_distributed
ctx = init_distributed("cpu")
assert ctx.world_size == 2, ctx
args = sys.argv[1:]
try:
    for cfg, out in zip(args[::2], args[1::2]):
        rc = main(["train", cfg, "--out", out, "--json"])
        if rc:
            sys.exit(rc)
finally:
    shutdown_distributed(ctx)
"""


def test_two_process_gloo_drives_qn_phases_and_inq_like_one_process(tmp_path: Path,
                                                                    one_thread: None) -> None:
    """QN's activations phase turns the weights' requires_grad off between steps and INQ
    freezes weights: under DDP both must run and give the single-process weights (both runs
    through ``lowbit.cli.main`` in one torchrun launch)."""
    runs = []
    for name, quant, extra in (
        ("qn", {"method": "qn", "bits": 2},
         {"qn_phases": [["weights", 0.08], ["activations", 0.08], ["both", 1.0]]}),
        ("inq", {"method": "inq-incremental", "bits": 4}, {}),
    ):
        raw = small_config(model={"kwargs": {"norm": "none", "width": 8}},
                           optim={"lr": 0.05, "warmup_iters": 2},
                           train={"iterations": 12, "batch_size": 32, "log_every": 4,
                                  "eval_interval": 0, **extra},
                           quant=quant)
        runs.append((name, raw, write_config(tmp_path / f"{name}.yaml", raw)))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", str(driver)]
    for name, _, cfg_path in runs:
        cmd += [str(cfg_path), str(tmp_path / f"{name}_ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, raw, _ in runs:
        assert load_checkpoint(tmp_path / f"{name}_ddp").state["world_size"] == 2
        single = fit(config_from_dict(raw), tmp_path / f"{name}_one", progress=False)
        ddp_state = load_checkpoint(tmp_path / f"{name}_ddp").model_state
        one_state = load_checkpoint(single.checkpoint).model_state
        assert ddp_state.keys() == one_state.keys()
        for key, value in one_state.items():
            if value.is_floating_point():
                torch.testing.assert_close(ddp_state[key], value, atol=1e-5, rtol=1e-4)
            else:
                assert torch.equal(ddp_state[key], value), key
        events = [e for e in read_metrics(tmp_path / f"{name}_ddp")
                  if e["event"] == "quant_schedule"]
        assert len(events) == (3 if name == "qn" else 4), events
