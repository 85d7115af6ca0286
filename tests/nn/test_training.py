"""QN schedule, calibration, the quantization-drop penalty, clipping-based PTQ."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lowbit.nn import (
    QNActQuant,
    QNSchedule,
    QNWeightQuant,
    UniformActQuant,
    act_quantizers,
    calibrate,
    convert,
    prepare,
    ptq_from_clips,
    quant_layers,
    quant_penalty,
)


def test_qn_temperature_is_linear_in_epochs() -> None:
    s = QNSchedule(t0=4.0, t_max=30.0)
    assert [s.temperature(e) for e in range(9)] == [4, 8, 12, 16, 20, 24, 28, 30, 30]
    assert s.temperature(0.5) == 6.0  # fractional epochs interpolate
    with pytest.raises(ValueError):
        QNSchedule(t0=0.0)
    with pytest.raises(ValueError):
        QNSchedule(phases=(("warmup", 2),))


def test_qn_three_phases(nested) -> None:
    m = prepare(nested, {"method": "qn", "bits": 2, "act": {"method": "qn", "bits": 2}})
    s = QNSchedule(t0=2.0, phases=(("weights", 2), ("activations", 1), ("both", 2)))
    assert [s.phase(e) for e in range(6)] == ["weights", "weights", "activations", "both",
                                              "both", "both"]
    assert s.clocks(1) == (1, 0) and s.clocks(3) == (2, 1) and s.clocks(5) == (4, 3)
    wq = [layer.weight_quant for _, layer in quant_layers(m)]
    aqs = [a for _, a in act_quantizers(m)]
    assert wq and aqs and all(isinstance(a, QNActQuant) for a in aqs)
    info = s.apply(m, 0)
    assert info == {"phase": "weights", "t_weights": 2.0, "t_acts": 2.0}
    assert all(not a.enabled for a in aqs) and all(not q.hard for q in wq)
    info = s.apply(m, 2)
    assert info["phase"] == "activations" and info["t_weights"] == 6.0
    assert all(a.enabled for a in aqs) and all(q.hard for q in wq)
    assert all(not layer.weight.requires_grad for _, layer in quant_layers(m))
    m.train()
    x = torch.randn(2, 3, 6, 6)
    m(x).sum().backward()  # activations train, weights fixed
    assert all(layer.weight.grad is None for _, layer in quant_layers(m))
    assert any(a.beta.grad is not None for a in aqs)
    info = s.apply(m, 4)
    assert info == {"phase": "both", "t_weights": 8.0, "t_acts": 6.0}
    assert all(layer.weight.requires_grad for _, layer in quant_layers(m))
    assert all(q.temperature.item() == 8.0 for q in wq)


def test_qn_activation_soft_to_hard() -> None:
    torch.manual_seed(0)
    a = QNActQuant(bits=2)
    x = torch.rand(4096) * 3.0
    a.init_from(x)
    assert torch.equal(a.levels, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    a.eval()
    hard = a(x)
    assert torch.unique(hard).numel() == 4
    a.train()
    errs = []
    for t in (1.0, 10.0, 100.0, 1e4):
        a.temperature.fill_(t)
        errs.append(float((a(x).detach() - hard).abs().mean()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-3


def _hook_ranges(model: nn.Module, names: list[str], batches: list[torch.Tensor]):
    """Oracle: exact min/max of each named module's input over the batches (forward hooks)."""
    seen = {n: [float("inf"), float("-inf")] for n in names}
    mods = dict(model.named_modules())
    hooks = []
    for n in names:
        def h(mod, inp, out, n=n):
            seen[n][0] = min(seen[n][0], float(inp[0].min()))
            seen[n][1] = max(seen[n][1], float(inp[0].max()))
        hooks.append(mods[n].register_forward_hook(h))
    with torch.no_grad():
        for b in batches:
            model(b)
    for hk in hooks:
        hk.remove()
    return seen


def test_calibrate_minmax_equals_direct_ranges(nested) -> None:
    nested.eval()
    ref = copy.deepcopy(nested)
    batches = [torch.randn(2, 3, 6, 6) for _ in range(3)]
    oracle = _hook_ranges(ref, ["blocks.1.a", "head.fc"], batches)
    m = prepare(nested, {"layers": ["conv", "linear"], "method": "uniform", "bits": 8,
                         "act": {"method": "uniform", "bits": 8}})
    for _, layer in quant_layers(m):
        layer.quant_enabled = False  # float weights: the activations equal the oracle's
    got = calibrate(m, [(b, 0) for b in batches])
    for name in ("blocks.1.a", "head.fc"):
        lo, hi = got[f"{name}.input_quant"]
        assert lo == pytest.approx(min(oracle[name][0], 0.0), abs=1e-6)
        assert hi == pytest.approx(max(oracle[name][1], 0.0), abs=1e-6)
    assert m.training is False  # mode restored (nested was in eval)


def test_calibrate_percentile_and_uncalibrated_first_batch() -> None:
    torch.manual_seed(1)
    m = prepare(nn.Sequential(nn.Linear(4, 4)), {"layers": ["linear"], "method": "uniform",
                                                 "bits": 8, "act": {"method": "uniform",
                                                                    "calibrator": "percentile"}})
    aq = m[0].input_quant
    x = torch.randn(4000, 4)
    x[0, 0] = 100.0  # one outlier: percentile ignores it, minmax would not
    calibrate(m, [x])
    assert aq.hi.item() < 10.0
    m2 = prepare(nn.Sequential(nn.Linear(4, 4)),
                 {"layers": ["linear"], "act": {"method": "uniform"}})
    m2(x[:10])  # never calibrated: the first batch sets the range
    assert m2[0].input_quant.hi.item() == pytest.approx(float(x[:10].max()))


def test_quant_penalty_formula_and_effect() -> None:
    torch.manual_seed(2)
    m = prepare(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 3)),
                {"method": "clip", "bits": 4, "layers": ["conv", "linear"],
                 "params": {"calibrator": "minmax"}})
    m(torch.randn(1, 2, 3, 3))  # initialises the clips
    pen = quant_penalty(m, 2.0)
    expect = 0.0
    for _, layer in quant_layers(m):
        w = layer.weight.detach()
        c = layer.weight_quant.clip.item()
        step = c / 7
        q = torch.clamp(torch.round(torch.clamp(w, -c, c) / step), -7, 7) * step
        expect += float(((w - q) ** 2).sum() / (w**2).sum())
    assert pen.item() == pytest.approx(2.0 * expect, rel=1e-5)
    opt = torch.optim.SGD([layer.weight for _, layer in quant_layers(m)], lr=0.01)
    for _ in range(50):
        opt.zero_grad()
        quant_penalty(m, 1.0).backward()
        opt.step()
    assert quant_penalty(m, 1.0).item() < 0.5 * expect


def test_clip_training_then_8bit_ptq_from_clip_values() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        net[0].bias.fill_(0.1)  # a live ReLU
    m = prepare(net, {"method": "clip", "bits": 8, "act": {"method": "clip", "bits": 8}})
    x = torch.rand(4, 1, 5, 5)
    m.train()
    y_float = m(x)  # float, clipped: no quantization yet
    aq = m[2].input_quant
    assert isinstance(aq, UniformActQuant) and not aq.quantize
    assert bool(aq.initialized)
    m.eval()
    ptq_from_clips(m)
    with torch.no_grad():
        y8 = m(x)
    assert not torch.equal(y8, y_float.detach())
    assert (y8 - y_float).abs().max() < 0.05 * y_float.abs().max()
    w = m[0].quantized_weight().detach()
    step = m[0].weight_quant.clip.item() / 127
    assert torch.allclose(w / step, torch.round(w / step), atol=1e-3)
    convert(m)
    res = m[0].frozen
    assert res.kind == "uniform" and res.bits == 8 and int(res.codes().abs().max()) <= 127
    with torch.no_grad():
        torch.testing.assert_close(m(x), y8)


def test_qn_weight_quantizer_set_bits_reinitialises() -> None:
    q = QNWeightQuant(2)
    q(torch.randn(50))
    q.set_bits(3)
    assert q.levels.numel() == 7 and not bool(q.initialized)


def test_qn_scale_gradients_do_not_grow_with_the_layer_size() -> None:
    """alpha/beta are scalars whose gradient sums over every weight (and grows with T): on a
    147k-weight conv at T = 40 an unscaled SGD step at lr 0.01 moves alpha by ~20% for a
    unit-variance upstream signal (and to NaN on a detector). With LSQ's 1/sqrt(N q_max)
    gradient scale one step stays a small relative move."""
    from lowbit.nn.quantizers import QNWeightQuant

    torch.manual_seed(0)
    q = QNWeightQuant(3).train()
    w = (0.05 * torch.randn(128, 128, 3, 3)).requires_grad_()
    q(w.detach())  # initialise beta, alpha, biases from the weights
    q.temperature.fill_(40.0)
    a0, b0 = q.alpha.item(), q.beta.item()
    opt = torch.optim.SGD([q.alpha, q.beta], lr=0.01)
    loss = (q(w) * torch.randn_like(w)).sum() / w.numel() ** 0.5
    loss.backward()
    opt.step()
    for now, before in ((q.alpha.item(), a0), (q.beta.item(), b0)):
        assert math.isfinite(now) and now > 0
        assert abs(now - before) < 0.05 * abs(before)
    assert w.grad is not None and torch.isfinite(w.grad).all()
