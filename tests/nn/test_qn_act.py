"""Quantization Networks activations: the windowed soft staircase against a plain loop over
every bias (float64), the window really being narrow, QNActQuant's gradients, and the
three-phase schedule over fractional epochs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from lowbit.nn import QNActQuant, QNSchedule, act_quantizers, prepare, quant_layers
from lowbit.quant.sigmoid import soft_stairs, stairs_window


def _loop_oracle(z: Tensor, biases: Tensor, steps: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """``sum_i s_i sigmoid(t (z - b_i))`` and its z-derivative, every bias, in float64."""
    z = z.detach().double()
    val = torch.zeros_like(z)
    der = torch.zeros_like(z)
    for b, s in zip(biases.double().tolist(), steps.double().tolist()):
        sg = torch.sigmoid(t * (z - b))
        val += s * sg
        der += s * t * sg * (1 - sg)
    return val, der


def _biases(bits: int, kind: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sorted biases (unit-spaced midpoints or random, k-means-like uneven gaps) and steps."""
    n = (1 << bits) - 1
    if kind == "uniform":
        return torch.arange(n, dtype=torch.float32) + 0.5, torch.ones(n)
    gaps = torch.rand(n, generator=gen) * 1.9 + 0.1  # spacing 0.1 .. 2
    b = torch.cumsum(gaps, 0) - 0.5 * float(gaps.sum())
    steps = torch.ones(n) if kind == "kmeans" else torch.rand(n, generator=gen) + 0.5
    return b, steps


def _inputs(biases: Tensor, gen: torch.Generator) -> Tensor:
    lo, hi = float(biases[0]), float(biases[-1])
    inside = torch.rand(3000, generator=gen) * (hi - lo + 4) + lo - 2
    on_biases = biases.repeat(2) + torch.randn(2 * biases.numel(), generator=gen) * 1e-3
    far = torch.tensor([lo - 1e6, lo - 40.0, lo - 3.0, hi + 3.0, hi + 40.0, hi + 1e6])
    return torch.cat([inside, on_biases, far])


@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("kind", ["uniform", "kmeans", "uneven-steps"])
@pytest.mark.parametrize("t,tb", [(1.0, 1.0), (20.0, 20.0), (500.0, 500.0), (500.0, 1.0),
                                  (20.0, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_windowed_stairs_match_loop_oracle(bits: int, kind: str, t: float, tb: float,
                                           dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(bits * 1000 + int(t) + int(tb))
    biases, steps = _biases(bits, kind, gen)
    z = _inputs(biases, gen).to(dtype).requires_grad_(True)
    y = soft_stairs(z, biases, steps, t, tb)
    g = torch.rand(z.shape, generator=gen, dtype=dtype) + 0.5
    y.backward(g)
    assert y.dtype == dtype and z.grad is not None and z.grad.dtype == dtype
    val, _ = _loop_oracle(z, biases, steps, t)
    _, der = _loop_oracle(z, biases, steps, tb)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    out_range = float(steps.double().sum())
    assert float((y.detach().double() - val).abs().max()) <= tol * out_range
    grad_ref = g.double() * der
    assert float((z.grad.double() - grad_ref).abs().max()) <= tol * float(grad_ref.abs().max())


def test_infinite_inputs_saturate() -> None:
    biases, steps = torch.arange(255.0) + 0.5, torch.ones(255)
    z = torch.tensor([-math.inf, math.inf, -1e30, 1e30], requires_grad=True)
    y = soft_stairs(z, biases, steps, 20.0, 1.0)
    y.sum().backward()
    assert y.tolist() == [0.0, 255.0, 0.0, 255.0]
    assert z.grad is not None and z.grad.tolist() == [0.0] * 4


def _half_width(biases: Tensor, t: float, c: float) -> int:
    """The smallest K with min_i (b_{i+K} - b_i) >= c / t (n if none), by brute force."""
    b = biases.double()
    for k in range(1, b.numel()):
        if float((b[k:] - b[:-k]).min()) >= c / t:
            return k
    return b.numel()


@pytest.mark.parametrize("kind", ["uniform", "kmeans"])
def test_window_is_narrow_at_8_bits(kind: str) -> None:
    biases, _ = _biases(8, kind, torch.Generator().manual_seed(5))
    n = biases.numel()
    for t in (1.0, 20.0, 500.0):
        k = _half_width(biases, t, 17.0)
        w = stairs_window(biases, t)
        assert w < n and w <= 2 * k + 4, (t, k, w)
    if kind == "uniform":
        assert stairs_window(biases, 20.0) <= 3 and stairs_window(biases, 1.0) <= 40
    # float64 saturates later (c = 37): a wider window
    assert stairs_window(biases, 1.0, torch.float64) > stairs_window(biases, 1.0)


def test_window_falls_back_to_every_bias() -> None:
    two_bit = torch.tensor([0.5, 1.5, 2.5])
    assert stairs_window(two_bit, 1.0) == 3  # within 17 of each other: no window
    assert stairs_window(torch.tensor([2.5, 0.5, 1.5]), 500.0) == 3  # unsorted
    assert stairs_window(two_bit, 0.0) == 3
    assert stairs_window(two_bit, 500.0) < 3


def test_windowed_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts the per-bias sigmoid passes: the window's width, not 255."""
    calls = []
    real = torch.Tensor.sigmoid_

    def counting(self: Tensor) -> Tensor:
        calls.append(self.numel())
        return real(self)

    monkeypatch.setattr(torch.Tensor, "sigmoid_", counting)
    biases, steps = torch.arange(255.0) + 0.5, torch.ones(255)
    z = (torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 260 - 2)
    z.requires_grad_(True)
    y = soft_stairs(z, biases, steps, 20.0, 1.0)
    n_fwd = len(calls)
    y.sum().backward()
    assert n_fwd == stairs_window(biases, 20.0) <= 3
    assert len(calls) - n_fwd == stairs_window(biases, 1.0) < 255


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    biases, steps = _biases(8, "kmeans", gen)
    biases, steps = biases.double(), steps.double()
    assert stairs_window(biases, 3.0, torch.float64) < biases.numel()  # windowed
    z = (torch.rand(12, generator=gen, dtype=torch.float64) * 8 - 4 + float(biases[100]))
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: soft_stairs(v, biases, steps, 3.0), (z,))
    small = torch.tensor([-0.3, 0.4, 1.1], dtype=torch.float64)  # every bias (no window)
    assert stairs_window(small, 2.0, torch.float64) == 3
    assert torch.autograd.gradcheck(lambda v: soft_stairs(v, small, torch.ones(3).double(), 2.0),
                                    (z.detach().sub(float(biases[100])).div(4).requires_grad_(),))


@pytest.mark.parametrize("tb", [None, 1.0])
def test_qn_act_8bit_values_and_gradients(tb: float | None) -> None:
    torch.manual_seed(0)
    q = QNActQuant(bits=8, backward_temperature=tb)
    x0 = torch.relu(torch.randn(4, 8, 16, 16)) * 2.0
    q.init_from(x0)
    assert q.levels[0] == 0 and q.biases.numel() == 255
    q.train()
    q.temperature.fill_(20.0)
    assert stairs_window(q.biases, 20.0) < 255
    x = torch.cat([x0.reshape(-1)[:4000], torch.tensor([-5.0, 100.0])]).requires_grad_(True)
    y = q(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    g = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    y.backward(g)
    # the oracle on the module's own float32 z = beta * x; its gradient exact when tb is
    # None, the temperature-tb surrogate otherwise
    alpha, beta = q.alpha.detach().double(), q.beta.detach().double()
    z = (q.beta.detach() * x.detach()).double()
    lv = q.levels.double()
    steps = lv[1:] - lv[:-1]
    val, _ = _loop_oracle(z, q.biases, steps, 20.0)
    _, der = _loop_oracle(z, q.biases, steps, 20.0 if tb is None else tb)
    ref = alpha * (val + lv[0])
    assert float((y.detach().double() - ref).abs().max()) <= 1e-5 * float(alpha) * 255
    # chain rule by hand: dy/dx = alpha beta der, dy/dbeta = sum g alpha x der,
    # dy/dalpha = sum g (val - o)
    gd = g.double()
    gx = gd * alpha * beta * der
    assert x.grad is not None
    assert float((x.grad.double() - gx).abs().max()) <= 1e-5 * float(gx.abs().max())
    assert q.beta.grad is not None and q.alpha.grad is not None
    gb = float((gd * alpha * x.detach().double() * der).sum())
    ga = float((gd * (val + lv[0])).sum())
    assert abs(float(q.beta.grad) - gb) <= 1e-4 * abs(gb)
    assert abs(float(q.alpha.grad) - ga) <= 1e-4 * abs(ga)


def test_qn_act_exact_gradient_matches_autograd_of_the_loop() -> None:
    """backward_temperature None: x, alpha and beta get the exact gradient (float64)."""
    torch.manual_seed(1)
    q = QNActQuant(bits=8, backward_temperature=None).double()
    q.init_from(torch.rand(5000) * 4)
    q.train()
    q.temperature.fill_(7.0)
    x = (torch.rand(300, dtype=torch.float64) * 4.5 - 0.2).requires_grad_(True)
    y = q(x)
    y.sum().backward()
    xo = x.detach().clone().requires_grad_(True)
    alpha = q.alpha.detach().clone().requires_grad_(True)
    beta = q.beta.detach().clone().requires_grad_(True)
    z = beta * xo
    ref = torch.zeros_like(z)
    for b in q.biases.double().tolist():  # unsigned levels: unit steps, o = 0
        ref = ref + torch.sigmoid(7.0 * (z - b))
    ref = alpha * ref
    ref.sum().backward()
    torch.testing.assert_close(y.detach(), ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(x.grad, xo.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.beta.grad, beta.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.alpha.grad, alpha.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_qn_act_keeps_dtype_and_hard_in_eval(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    q = QNActQuant(bits=8)
    x = torch.rand(2, 3, 8, 8) * 3
    q.init_from(x)
    q.train()
    q.temperature.fill_(500.0)
    xd = x.to(dtype).requires_grad_(True)
    y = q(xd)
    y.sum().backward()
    assert y.dtype == dtype and xd.grad is not None and xd.grad.dtype == dtype
    q.eval()
    hard = q(xd.detach())
    assert hard.dtype == dtype
    codes = torch.bucketize(q.beta.detach() * x, q.biases, right=True).float()
    torch.testing.assert_close(q(x), q.alpha.detach() * codes)
    # far from the biases the soft staircase at T = 500 is the hard one
    q.train()
    away = ((q.beta.detach() * x).unsqueeze(-1) - q.biases).abs().min(-1).values > 0.05
    torch.testing.assert_close(q(x).detach()[away], q.alpha.detach() * codes[away])


def test_fractional_three_phase_schedule(nested) -> None:
    m = prepare(nested, {"method": "qn", "bits": 2, "act": {"method": "qn", "bits": 8}})
    s = QNSchedule(t0=20.0, phases=(("weights", 0.1), ("activations", 0.1), ("both", 0.12)))
    assert s.phases == (("weights", 0.1), ("activations", 0.1), ("both", 0.12))
    ipe = 100  # iterations per epoch: a 32-iteration budget holds all three phases
    phases = [s.phase(it / ipe) for it in range(40)]
    assert phases == ["weights"] * 10 + ["activations"] * 10 + ["both"] * 20
    assert s.clocks(0.05) == pytest.approx((0.05, 0.0))
    assert s.clocks(0.15) == pytest.approx((0.1, 0.05))
    assert s.clocks(0.3) == pytest.approx((0.2, 0.2))
    assert s.clocks(0.5) == pytest.approx((0.4, 0.4))  # the last phase continues
    wq = [layer.weight_quant for _, layer in quant_layers(m)]
    aqs = [a for _, a in act_quantizers(m)]
    assert wq and aqs and all(isinstance(a, QNActQuant) and a.bits == 8 for a in aqs)
    m.train()
    x = torch.randn(2, 3, 6, 6)

    info = s.apply(m, 5 / ipe)
    assert info["phase"] == "weights"
    assert info["t_weights"] == pytest.approx(21.0) and info["t_acts"] == pytest.approx(20.0)
    assert all(not a.enabled for a in aqs) and all(not q.hard for q in wq)
    m.zero_grad(set_to_none=True)
    m(x).sum().backward()
    assert all(layer.weight.grad is not None for _, layer in quant_layers(m))
    assert all(a.beta.grad is None for a in aqs)  # off: not on the graph

    info = s.apply(m, 15 / ipe)
    assert info["phase"] == "activations"
    assert info["t_weights"] == pytest.approx(22.0) and info["t_acts"] == pytest.approx(21.0)
    assert all(a.enabled for a in aqs) and all(q.hard for q in wq)
    assert all(float(a.temperature) == pytest.approx(21.0) for a in aqs)
    m.zero_grad(set_to_none=True)
    m(x).sum().backward()  # weights held on their hard staircase, activations train
    assert all(layer.weight.grad is None for _, layer in quant_layers(m))
    assert all(q.alpha.grad is None and q.beta.grad is None for q in wq)
    assert all(a.beta.grad is not None and torch.isfinite(a.beta.grad) for a in aqs)
    assert all(stairs_window(a.biases, float(a.temperature)) < 255 for a in aqs)

    info = s.apply(m, 30 / ipe)
    assert info["phase"] == "both"
    assert info["t_weights"] == pytest.approx(24.0) and info["t_acts"] == pytest.approx(24.0)
    assert all(not q.hard for q in wq) and all(a.enabled for a in aqs)
    assert all(layer.weight.requires_grad for _, layer in quant_layers(m))
    m.zero_grad(set_to_none=True)
    m(x).sum().backward()
    assert all(layer.weight.grad is not None for _, layer in quant_layers(m))
    assert all(a.beta.grad is not None for a in aqs)


def test_schedule_phase_validation() -> None:
    with pytest.raises(ValueError):
        QNSchedule(phases=(("weights", -0.1),))
    with pytest.raises(ValueError):
        QNSchedule(phases=(("weights", float("nan")),))
    with pytest.raises(ValueError):
        QNSchedule(phases=(("weights", float("inf")),))
    with pytest.raises(ValueError):
        QNSchedule(phases=(("weights",),))
    with pytest.raises(ValueError):
        QNSchedule(phases=())
    s = QNSchedule(phases=[("weights", 1), ("both", 2)])
    assert s.phases == (("weights", 1.0), ("both", 2.0)) and s.phase(0.999) == "weights"


def test_signed_qn_activations_load_into_a_fresh_quantizer() -> None:
    """A signed input switches QN's activation levels to 2**b - 1 signed ones; a checkpoint of
    it must load into a fresh (unsigned, 2**b levels) quantizer and give the same outputs."""
    torch.manual_seed(0)
    q = QNActQuant(bits=8)
    x = torch.randn(4, 3, 8, 8)  # negative values: signed levels
    q.train()
    q(x)
    assert q.levels.numel() == 255 and float(q.levels[0]) < 0
    fresh = QNActQuant(bits=8)
    assert fresh.levels.numel() == 256
    fresh.load_state_dict(q.state_dict())
    q.eval()
    fresh.eval()
    assert torch.equal(fresh.levels, q.levels) and torch.equal(fresh.biases, q.biases)
    assert torch.equal(fresh(x), q(x))


def test_uniform_bias_init_is_plain_uniform_quantization_once_hard() -> None:
    """``bias_init="uniform"``: steps at the midpoints of the integer levels, so the hard
    staircase equals ``alpha * clamp(round(beta x), 0, 2**b - 1)`` (an ordinary uint8
    activation); the default k-means steps are not uniform on the same data."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 4, 16, 16)) ** 2  # skewed: k-means spacing is uneven
    uni, km = QNActQuant(bits=8, bias_init="uniform"), QNActQuant(bits=8)
    for q in (uni, km):
        q.train()
        q(x)
        q.eval()
    gaps = uni.biases[1:] - uni.biases[:-1]
    assert torch.allclose(gaps, torch.ones_like(gaps))
    beta, alpha = float(uni.beta.detach()), float(uni.alpha.detach())
    want = alpha * torch.clamp(torch.round(beta * x), 0, 255)  # no exact ties in random data
    assert torch.allclose(uni(x), want, atol=1e-6 * alpha)
    km_gaps = km.biases[1:] - km.biases[:-1]
    assert float(km_gaps.max() / km_gaps.min()) > 2.0
    with pytest.raises(ValueError, match="bias_init"):
        QNActQuant(bits=8, bias_init="log")


def test_recipe_outlier_sets_the_qn_activation_range() -> None:
    """``act.outlier`` reaches the QN activation quantizer: 0 keeps the data's max as the top
    level, the default 1e-3 clips the top 0.1% (a smaller max)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(3, 4, 1))
    x = torch.relu(torch.randn(4, 3, 32, 32))
    tops = {}
    for outlier in (0.0, 1e-3):
        m = prepare(copy.deepcopy(net), {"method": "qn", "bits": 3,
                                         "act": {"method": "qn", "bits": 8, "outlier": outlier}})
        (aq,) = [q for _, q in act_quantizers(m)]
        assert aq.outlier == outlier
        aq.init_from(x)
        tops[outlier] = float(aq.levels[-1]) / float(aq.beta.detach())  # top level's input
    assert tops[0.0] == pytest.approx(float(x.max()), rel=1e-6)
    assert tops[1e-3] < 0.95 * float(x.max())
    with pytest.raises(ValueError, match="outlier"):
        prepare(copy.deepcopy(net),
                {"method": "qn", "bits": 3, "act": {"method": "qn", "outlier": 0.5}})
