"""Engine pieces: warm start, quantization wiring, resume edge cases, metrics events."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lowbit.nn
from lowbit.tasks.digits import DigitsCNN
from lowbit.train.checkpoint import load_checkpoint
from lowbit.train.engine import Trainer, apply_quantization, build_model, fit, warm_start
from lowbit.train.metrics import MetricsLogger, read_metrics
from tests.train.conftest import make_config


def test_warm_start_from_run_and_init_config(tmp_path: Path, one_thread: None) -> None:
    first = fit(make_config(train={"iterations": 6}), tmp_path / "a", progress=False)
    trained = load_checkpoint(first.checkpoint).model_state

    model = DigitsCNN(width=8)
    report = warm_start(model, tmp_path / "a")
    assert set(report["loaded"]) == set(trained) and not report["missing"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])

    events: list[str] = []

    def record(trainer: Trainer, event: str, info: dict[str, Any]) -> None:
        events.append(event)

    # a negligible learning rate: after one step the weights are still the warm-start ones
    cfg = make_config(optim={"lr": 1e-12, "warmup_iters": 0}, train={"iterations": 1},
                      init=str(first.checkpoint))
    second = fit(cfg, tmp_path / "b", progress=False, callbacks=[record])
    assert events == ["iteration", "checkpoint", "eval", "end"]  # checkpoint before eval
    after = load_checkpoint(second.checkpoint).model_state
    for name, _ in DigitsCNN(width=8).named_parameters():
        torch.testing.assert_close(after[name], trained[name], atol=1e-9, rtol=0)
    init_events = [e for e in read_metrics(tmp_path / "b") if e["event"] == "init"]
    assert init_events and init_events[0]["loaded"] == len(trained)

    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="no tensor matches"):
        warm_start(other, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        warm_start(other, tmp_path / "nothing.safetensors")


def test_warm_start_reports_shape_mismatch(tmp_path: Path) -> None:
    src = {k: v.clone() for k, v in DigitsCNN(num_classes=5, width=8).state_dict().items()}
    report = warm_start(DigitsCNN(num_classes=10, width=8), src)
    assert sorted(report["mismatched"]) == ["fc.bias", "fc.weight"]


def test_quant_recipe_goes_through_lowbit_nn(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    class FakeRecipe:
        def __init__(self, d: dict[str, Any]) -> None:
            self.d = d

        @classmethod
        def from_dict(cls, d: dict[str, Any]) -> FakeRecipe:
            if "bits" not in d:
                raise ValueError("quant.bits: required")
            return cls(d)

    def fake_prepare(model: nn.Module, recipe: FakeRecipe) -> nn.Module:
        calls.append(recipe.d)
        return nn.Sequential(model)

    monkeypatch.setattr(lowbit.nn, "Recipe", FakeRecipe, raising=False)
    monkeypatch.setattr(lowbit.nn, "prepare", fake_prepare, raising=False)
    _, model = build_model(make_config(quant={"method": "lbw", "bits": 4}))
    assert calls == [{"method": "lbw", "bits": 4}] and isinstance(model, nn.Sequential)
    with pytest.raises(ValueError, match="quant.bits"):
        apply_quantization(nn.Linear(2, 2), {"method": "lbw"})
    base = nn.Linear(2, 2)
    assert apply_quantization(base, None) is base


def test_quant_without_lowbit_nn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lowbit.nn", types.ModuleType("lowbit.nn"))
    with pytest.raises(ValueError, match="lowbit.nn.Recipe/prepare are not available"):
        apply_quantization(nn.Linear(2, 2), {"bits": 4})


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_a_noop(
    tmp_path: Path, one_thread: None
) -> None:
    cfg = make_config(train={"iterations": 4, "log_every": 2})
    first = fit(cfg, tmp_path / "r", resume=True, progress=False)
    assert first.resumed_from is None and first.iteration == 4
    again = fit(cfg, tmp_path / "r", resume=True, progress=False)
    assert again.resumed_from == 4 and again.metrics == first.metrics


def test_final_eval_false_skips_only_the_last_evaluation(tmp_path: Path, one_thread: None
                                                         ) -> None:
    import json

    # 22 iterations per epoch: epoch ends evaluate (eval_interval 1), the end does not
    cfg = make_config(train={"iterations": 30, "eval_interval": 1, "final_eval": False})
    res = fit(cfg, tmp_path / "r", progress=False)
    evals = [e["iteration"] for e in read_metrics(tmp_path / "r" / "metrics.jsonl")
             if e["event"] == "eval"]
    assert evals == [22] and res.iteration == 30
    assert res.metrics and json.loads((tmp_path / "r" / "result.json").read_text())[
        "metrics"] == res.metrics  # the last evaluation made
    # a rerun of the finished run evaluates nothing either
    again = fit(cfg, tmp_path / "r", resume=True, progress=False)
    assert again.resumed_from == 30 and again.metrics == res.metrics
    assert [e["iteration"] for e in read_metrics(tmp_path / "r" / "metrics.jsonl")
            if e["event"] == "eval"] == [22]
    none = fit(make_config(train={"iterations": 4, "eval_interval": 0, "final_eval": False}),
               tmp_path / "n", progress=False)
    assert none.metrics == {}


def test_step_schedule_and_amp_on_cpu(tmp_path: Path, one_thread: None) -> None:
    cfg = make_config(optim={"schedule": "step", "milestones": [0.5], "gamma": 0.5,
                             "warmup_iters": 0},
                      train={"iterations": 22, "log_every": 1, "amp": True,
                             "clip_grad_norm": 5.0})
    res = fit(cfg, tmp_path / "s", progress=True)
    lrs = [e["lr"] for e in read_metrics(tmp_path / "s") if e["event"] == "train"]
    assert lrs[:11] == [0.1] * 11 and lrs[11:] == [0.05] * 11
    assert 0.0 <= res.metrics["main"] <= 1.0


def test_tensorboard_is_optional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.log("train", 1, 0.5, loss=1.0)
    logger.close()
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in capsys.readouterr().err
    else:
        assert (tmp_path / "tensorboard").is_dir()
    assert read_metrics(tmp_path)[0]["loss"] == 1.0
    MetricsLogger(tmp_path / "off", enabled=False).log("train", 1, 0.5, loss=1.0)
    assert not (tmp_path / "off").exists()
