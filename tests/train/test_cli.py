"""`lowbit train` / `lowbit eval` through lowbit.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.config import load_config
from lowbit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from lowbit.train.metrics import read_metrics
from tests.train.conftest import REPO


def test_train_then_eval_reproduces_the_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                one_thread: None) -> None:
    out = tmp_path / "run"
    rc = main(["train", str(REPO / "configs" / "digits_cnn.yaml"), "--out", str(out),
               "--set", "train.epochs=1", "--set", "model.kwargs.width=8", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iteration"] == 22  # 1438 // 64

    cfg = load_config(out / "config.yaml")  # the resolved config, overrides included
    assert cfg.train.epochs == 1 and cfg.model.kwargs["width"] == 8
    events = read_metrics(out)
    assert {e["event"] for e in events} >= {"train", "eval", "checkpoint"}
    final_eval = [e for e in events if e["event"] == "eval"][-1]
    assert final_eval["iteration"] == 22 and final_eval["main"] == summary["metrics"]["main"]
    ckpt = find_latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "ckpt-00000022.json"
    # written before its evaluation (which a resume re-runs if it did not finish)
    assert load_checkpoint(ckpt).state["eval_due"] is True
    assert json.loads((out / "result.json").read_text())["metrics"] == summary["metrics"]

    for target in (out, ckpt, ckpt.with_suffix(".safetensors")):
        assert main(["eval", str(target), "--json"]) == 0
        again = json.loads(capsys.readouterr().out)
        assert again["metrics"] == summary["metrics"] and again["iteration"] == 22

    assert main(["eval", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out

    # a second train into the same folder needs --resume; with it, nothing is left to do
    assert main(["train", str(REPO / "configs" / "digits_cnn.yaml"), "--out", str(out),
                 "--set", "train.epochs=1", "--set", "model.kwargs.width=8"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(REPO / "configs" / "digits_cnn.yaml"), "--out", str(out),
                 "--set", "train.epochs=1", "--set", "model.kwargs.width=16", "--resume"]) == 2
    assert "model" in capsys.readouterr().err  # trajectory-changing keys must match
    before = ckpt.read_bytes()
    assert main(["train", str(REPO / "configs" / "digits_cnn.yaml"), "--out", str(out),
                 "--set", "train.epochs=1", "--set", "model.kwargs.width=8", "--resume",
                 "--json"]) == 0
    cap = capsys.readouterr()
    assert "the run is complete at 22 iterations" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["metrics"] == summary["metrics"]
    assert find_latest_checkpoint(out) == ckpt and ckpt.read_bytes() == before


def test_cli_errors_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["train", str(REPO / "configs" / "digits_cnn.yaml"), "--set",
                 "optim.lr=-3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "optim.lr" in err and "digits_cnn.yaml" in err
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err
    for verb in ("train", "eval"):
        with pytest.raises(SystemExit) as info:
            main([verb, "--help"])
        assert info.value.code == 0
        assert "usage: lowbit" in capsys.readouterr().out
