"""Training never leaves a run worse off: divergence, files that lie, resume that changes the run.

Each test starts from a reproducer of issue 18 (the `lowbit train` / `lowbit eval` command lines
of the issue, shortened to one or two epochs of the width-8 digits CNN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lowbit.cli import main
from lowbit.train.checkpoint import (
    CheckpointWriteError,
    NonFiniteError,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lowbit.train.engine import Trainer, TrainingDiverged, fit
from lowbit.train.metrics import read_metrics
from tests.train.conftest import REPO, make_config

CONFIG = str(REPO / "configs" / "digits_cnn.yaml")
SMALL = ["--set", "train.epochs=1", "--set", "model.kwargs.width=8", "--set", "train.device=cpu"]
# the divergence reproducer
DIVERGE = ["--set", "optim.lr=1e9", "--set", "optim.warmup_iters=60",
           "--set", "optim.warmup_factor=1e-10", "--set", "train.log_every=50",
           "--set", "train.checkpoint_every=5", "--set", "train.keep_checkpoints=1",
           "--set", "train.eval_interval=0"]


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def _all_finite(path: Path) -> bool:
    ck = load_checkpoint(path)  # refuses non-finite tensors itself; checked again here
    tensors = {**ck.model_state}
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# ---------------------------------------------------------------------------------- divergence


def test_divergence_reproducer_writes_no_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "R"
    assert main(["train", CONFIG, "--out", str(run), *SMALL, *DIVERGE]) == 2
    err = _err(capsys)
    assert err.startswith("error: ") and "iteration" in err and "diverged" in err
    for ck in list_checkpoints(run):
        assert _all_finite(ck)
    # eval must not print "loss nan" with exit 0
    rc = main(["eval", str(run)])
    out = capsys.readouterr()
    assert rc == 2 and "nan" not in out.out


def test_divergence_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "R"
    assert main(["train", CONFIG, "--out", str(run), *SMALL, "--set", "train.keep_checkpoints=1",
                 "--json"]) == 0
    good = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert good["iteration"] == 22
    # continue the same run with a learning rate that blows it up
    # (a trained BatchNorm net shrugs off the reproducer's 1e9: BN undoes the weights' scale)
    rc = main(["train", CONFIG, "--out", str(run), "--resume", "--override",
               "--set", "train.epochs=2", *DIVERGE, "--set", "optim.lr=1e30"])
    assert rc == 2
    err = _err(capsys)
    assert "diverged" in err or "non-finite" in err
    assert "ckpt-00000022.json" in err  # names the last good checkpoint
    latest = find_latest_checkpoint(run)
    assert latest is not None and latest.name == "ckpt-00000022.json"
    assert _all_finite(latest)
    assert main(["eval", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["iteration"] == 22 and again["metrics"] == good["metrics"]


def test_non_finite_loss_stops_before_the_step(tmp_path: Path, one_thread: None) -> None:
    # no checkpoint before the divergence and no BatchNorm to absorb the blow-up: the loss
    # check is what stops it
    cfg = make_config(model={"kwargs": {"norm": "none"}},
                      optim={"lr": 1e4, "warmup_iters": 60, "warmup_factor": 1e-3},
                      train={"epochs": 2, "checkpoint_every": 0, "log_every": 50,
                             "eval_interval": 0})
    losses: list[float] = []

    def record(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "iteration":
            losses.append(float(info["loss"]))

    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* at iteration (\d+)") as info:
        fit(cfg, tmp_path / "r", progress=False, callbacks=[record])
    named = int(str(info.value).split(" at iteration ")[1].split(":")[0])
    assert named == len(losses) + 1  # the step after the last one that was taken
    assert all(math.isfinite(v) for v in losses)  # every taken step had a finite loss
    assert list_checkpoints(tmp_path / "r") == [] or all(
        _all_finite(c) for c in list_checkpoints(tmp_path / "r"))


def _poison(json_path: Path, value: float) -> None:
    """Rewrite a checkpoint the way a diverged run of an older lowbit left it: a NaN/inf in
    the weights, with a matching size and hash (so only the finiteness check can catch it)."""
    import hashlib

    tensors_path = json_path.with_suffix(".safetensors")
    flat = st_load(tensors_path.read_bytes())
    name = next(k for k, v in flat.items() if v.is_floating_point() and v.numel() > 1)
    flat[name] = flat[name].clone()
    flat[name].view(-1)[0] = value
    blob = st_save(flat, metadata={"format": "pt", "lowbit": "lowbit.checkpoint"})
    tensors_path.write_bytes(blob)
    meta = json.loads(json_path.read_text())
    meta["tensors_bytes"] = len(blob)
    meta["tensors_sha256"] = hashlib.sha256(blob).hexdigest()
    meta.pop("meta_sha256", None)
    json_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_checkpoint_is_refused_by_load_and_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float, one_thread: None
) -> None:
    res = fit(make_config(train={"iterations": 3}), tmp_path / "r", progress=False)
    assert res.checkpoint is not None
    _poison(res.checkpoint, value)
    with pytest.raises(ValueError, match=r"ckpt-00000003\.safetensors.*NaN or infinity"):
        load_checkpoint(res.checkpoint)
    assert main(["eval", str(tmp_path / "r")]) == 2
    out = capsys.readouterr()
    assert "ckpt-00000003.safetensors" in out.err.strip().splitlines()[-1]
    assert "loss" not in out.out


def test_save_refuses_non_finite_and_keeps_the_earlier_files(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    first = save_checkpoint(tmp_path, model, state={"iteration": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"ckpt-00000002\.json.*bias"):
        save_checkpoint(tmp_path, model, state={"iteration": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert find_latest_checkpoint(tmp_path) == first


# --------------------------------------------------------------------------------- checksums


def test_flipped_bits_are_caught_naming_the_file(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    path = save_checkpoint(tmp_path, model, state={"iteration": 7, "note": "x"})
    tensors = path.with_suffix(".safetensors")
    good_t, good_j = tensors.read_bytes(), path.read_bytes()
    n_flips = 0
    for pos in range(0, len(good_t), max(1, len(good_t) // 16)):  # header and data
        for bit in (0, 7):
            bad = bytearray(good_t)
            bad[pos] ^= 1 << bit
            tensors.write_bytes(bytes(bad))
            with pytest.raises(ValueError, match=r"ckpt-00000007\.safetensors"):
                load_checkpoint(path)
            n_flips += 1
    tensors.write_bytes(good_t)
    # a changed value in the JSON that still parses: the iteration 7 -> 9
    text = good_j.decode()
    assert '"iteration": 7' in text
    path.write_text(text.replace('"iteration": 7', '"iteration": 9'))
    with pytest.raises(ValueError, match=r"ckpt-00000007\.json: corrupt"):
        load_checkpoint(path)
    path.write_bytes(good_j)
    assert load_checkpoint(path).state["iteration"] == 7
    assert n_flips >= 16


# ---------------------------------------------------------------------------- stored config


def test_resume_takes_the_stored_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """Reproducer: a finished lr 0.05 run, resumed without its --set flags, became a run with
    the config file's defaults; now it continues its own config and says so."""
    run = tmp_path / "R"
    assert main(["train", CONFIG, "--out", str(run), *SMALL, "--set", "optim.lr=0.05",
                 "--set", "train.log_every=10", "--json"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = (run / "config.yaml").read_text()

    # plain --resume: the run's config (1 epoch, lr 0.05), nothing left to train
    assert main(["train", CONFIG, "--out", str(run), "--resume", "--json"]) == 0
    cap = capsys.readouterr()
    assert "resuming from iteration 22" in cap.err
    again = json.loads(cap.out.strip().splitlines()[-1])
    assert again["iteration"] == 22 and again["metrics"] == done["metrics"]
    assert (run / "config.yaml").read_text() == stored

    # a --set that changes it is refused naming the keys
    assert main(["train", CONFIG, "--out", str(run), "--resume", "--set", "train.epochs=2",
                 "--set", "optim.lr=0.1"]) == 2
    err = _err(capsys)
    assert "optim.lr" in err and "train.epochs" in err and "--override" in err
    assert (run / "config.yaml").read_text() == stored
    # one that does not change it is fine
    assert main(["train", CONFIG, "--out", str(run), "--resume", "--set", "optim.lr=0.05"]) == 0
    capsys.readouterr()


def test_override_extends_a_finished_run_without_stale_log_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "R"
    cfg = make_config(train={"epochs": 1, "log_every": 5, "eval_interval": 1})
    fit(cfg, run, progress=False)
    losses: dict[int, float] = {}
    accs: dict[int, float] = {}

    def record(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "iteration":
            losses[info["iteration"]] = float(info["loss"])

    longer = make_config(train={"epochs": 2, "log_every": 5, "eval_interval": 1})
    with pytest.raises(ValueError, match="train.epochs.*--override"):
        fit(longer, run, resume=True, progress=False)
    res = fit(longer, run, resume=True, override=True, progress=False, callbacks=[record])
    assert res.resumed_from == 22 and res.iteration == 44
    assert "resuming from iteration 22" in capsys.readouterr().err
    train = [e for e in read_metrics(run) if e["event"] == "train"]
    its = [e["iteration"] for e in train]
    assert its == sorted(set(its))  # no iteration logged twice
    after = [e for e in train if e["iteration"] > 22]
    assert after[0]["iteration"] == 25
    # the first line after the resume averages exactly iterations 23..25 (no stale window)
    assert after[0]["loss"] == pytest.approx(sum(losses[i] for i in (23, 24, 25)) / 3,
                                             rel=1e-12)
    for e in train:
        accs[e["iteration"]] = e["acc"]
    assert all(0.0 <= a <= 1.0 for a in accs.values())
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2


def test_restart_after_a_kill_before_the_first_checkpoint_logs_each_iteration_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    cfg = make_config(train={"epochs": 1, "log_every": 2, "checkpoint_every": 0})
    run = tmp_path / "R"

    def stop(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event == "iteration" and info["iteration"] == 9:
            raise KeyboardInterrupt  # the process dies before its first checkpoint (22)

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, run, progress=False, callbacks=[stop])
    assert find_latest_checkpoint(run) is None
    assert [e["iteration"] for e in read_metrics(run) if e["event"] == "train"] == [2, 4, 6, 8]
    fit(cfg, run, resume=True, progress=False)
    assert "dropped 4 lines" in capsys.readouterr().err
    its = [e["iteration"] for e in read_metrics(run) if e["event"] == "train"]
    assert its == list(range(2, 23, 2))


# ---------------------------------------------------------------------------- full disk


def test_unwritable_out_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", CONFIG, "--out", str(blocker / "run"), *SMALL]) == 2
    err = _err(capsys)
    assert err.startswith("error: ") and str(blocker / "run") in err


def test_write_error_is_named_and_leaves_no_partial_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    model = torch.nn.Linear(3, 2)
    first = save_checkpoint(tmp_path, model, state={"iteration": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the kernel's answer when the data hits the disk
    with pytest.raises(CheckpointWriteError, match=r"ckpt-00000002\.safetensors.*No space"):
        save_checkpoint(tmp_path, model, state={"iteration": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert find_latest_checkpoint(tmp_path) == first


def test_resuming_a_complete_run_redoes_nothing(tmp_path: Path, one_thread: None) -> None:
    cfg = make_config(train={"iterations": 6, "log_every": 2})
    first = fit(cfg, tmp_path / "r", progress=False)
    before = read_metrics(tmp_path / "r")
    evals: list[int] = []

    def record(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        if event in ("eval", "iteration"):
            evals.append(info["iteration"])

    again = fit(cfg, tmp_path / "r", resume=True, progress=False, callbacks=[record])
    assert evals == [] and again.metrics == first.metrics and again.resumed_from == 6
    after = read_metrics(tmp_path / "r")
    assert after[: len(before)] == before and [e["event"] for e in after[len(before):]] == [
        "resume"]


def test_train_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from lowbit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    for action in train._actions:
        assert action.help and len(action.help) > 10, action.dest
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--set", "--out", "--resume", "--override", "--skip-bad", "--device", "--amp",
                 "--json"):
        assert flag in text


def test_resume_needs_no_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     one_thread: None) -> None:
    run = tmp_path / "R"
    assert main(["train", "--resume", "--out", str(run)]) == 2  # nothing there to resume
    assert str(run) in _err(capsys)
    assert main(["train"]) == 2
    assert "CONFIG" in _err(capsys)
    assert main(["train", CONFIG, "--out", str(run), *SMALL, "--set", "train.iterations=4",
                 "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["train", "--resume", "--out", str(run), "--override", "--set",
                 "train.iterations=6", "--json"]) == 0
    cap = capsys.readouterr()
    assert "resuming from iteration 4" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["iteration"] == 6 != first["iteration"]
