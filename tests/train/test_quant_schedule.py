"""The engine drives QN temperatures / phases and INQ portions from the iteration count."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from lowbit.nn import INQWeightQuant, QNActQuant, QNWeightQuant, act_quantizers, quant_layers
from lowbit.train import fit
from lowbit.train.sampler import ResumableShardedSampler
from tests.train.conftest import make_config


def _events(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_qn_phases_and_temperature_follow_the_iterations(tmp_path: Path, one_thread: None
                                                         ) -> None:
    iters = 12
    cfg = make_config(
        quant={"method": "qn", "bits": 2, "act": {"method": "qn", "bits": 2}},
        train={"iterations": iters, "eval_interval": 0, "log_every": 4, "qn_t0": 10.0})
    # phases in epochs: 3 iterations each of weights and activations, then both
    ipe = None
    seen: list[dict[str, Any]] = []

    def record(trainer: Any, event: str, info: dict[str, Any]) -> None:
        if event != "iteration":
            return
        m = trainer.model
        seen.append({
            "it": info["iteration"],
            "w": {n: layer.weight.detach().clone() for n, layer in quant_layers(m)},
            "t_w": [float(layer.weight_quant.temperature) for _, layer in quant_layers(m)
                    if isinstance(layer.weight_quant, QNWeightQuant)],
            "acts_on": [aq.enabled for _, aq in act_quantizers(m)
                        if isinstance(aq, QNActQuant)],
        })

    from lowbit.train.tasks import task_for_model

    train_ds, _ = task_for_model(cfg.model).build_datasets(cfg)
    ipe = ResumableShardedSampler(len(train_ds), cfg.train.batch_size).batches_per_epoch
    cfg.train.qn_phases = [["weights", 3 / ipe], ["activations", 3 / ipe], ["both", 1.0]]
    fit(cfg, tmp_path / "qn", callbacks=[record])

    assert [s["it"] for s in seen] == list(range(1, iters + 1))
    # the step that starts at iteration i ran in phase: i < 3 weights, 3..5 activations, both
    for prev, cur in zip(seen, seen[1:]):
        i = prev["it"]  # cur is the state after the step that started at iteration i
        moved = any(not torch.equal(prev["w"][n], cur["w"][n]) for n in cur["w"])
        if 3 <= i < 6:
            assert not moved, f"weights changed in the activations phase (step {i})"
        else:
            assert moved, f"weights frozen outside the activations phase (step {i})"
    # activation quantizers are off while only weights train (steps 0..2)
    assert not any(seen[1]["acts_on"]) and all(seen[4]["acts_on"]) and all(seen[8]["acts_on"])
    # weight temperature: T0 * (epochs the weights have trained + 1), the weights' clock
    # stops during the activations phase
    for s in seen:
        i = s["it"] - 1  # the step that ran started at iteration i
        trained = min(i, 3) + max(0, i - 6)
        assert s["t_w"] and all(math.isclose(t, 10.0 * (trained / ipe + 1), rel_tol=1e-6)
                                for t in s["t_w"]), (i, s["t_w"])
    phases = [e["qn_phase"] for e in _events(tmp_path / "qn", "quant_schedule")]
    assert phases == ["weights", "activations", "both"]


def test_inq_portions_step_over_the_run_and_end_fully_quantized(tmp_path: Path,
                                                                one_thread: None) -> None:
    iters = 8
    cfg = make_config(quant={"method": "inq-incremental", "bits": 4},
                      train={"iterations": iters, "eval_interval": 0, "log_every": 4})
    shares: list[tuple[int, list[float]]] = []

    def record(trainer: Any, event: str, info: dict[str, Any]) -> None:
        if event == "iteration":
            qs = [layer.weight_quant for _, layer in quant_layers(trainer.model)]
            shares.append((info["iteration"], [q.quantized_share for q in qs]))

    fit(cfg, tmp_path / "inq", callbacks=[record])
    # portion of the step that started at iteration i: 0.5 for i < 2, 0.75, 0.875, 1.0 from 6
    want = {0: 0.5, 1: 0.5, 2: 0.75, 3: 0.75, 4: 0.875, 5: 0.875, 6: 1.0, 7: 1.0}
    for it, got in shares:
        for s in got:  # share = ceil(p * numel) / numel: at least p, less than p + 1/numel
            assert want[it - 1] - 1e-9 <= s < want[it - 1] + 0.05, (it, s)
    events = _events(tmp_path / "inq", "quant_schedule")
    assert [(e["iteration"], e["inq_portion"]) for e in events] == [
        (0, 0.5), (2, 0.75), (4, 0.875), (6, 1.0)]
    # the saved run has every weight frozen on the grid
    from lowbit.runs import load_run

    _, _, model = load_run(tmp_path / "inq")
    qs = [layer.weight_quant for _, layer in quant_layers(model)]
    assert qs and all(isinstance(q, INQWeightQuant) and bool(q.mask.all()) for q in qs)


def test_model_without_scheduled_quantizers_logs_nothing(tmp_path: Path, one_thread: None
                                                         ) -> None:
    cfg = make_config(quant={"method": "lbw-exact", "bits": 4},
                      train={"iterations": 3, "eval_interval": 0, "log_every": 3})
    fit(cfg, tmp_path / "lbw")
    assert _events(tmp_path / "lbw", "quant_schedule") == []
