"""TWN, binary, DoReFa, uniform and calibrators: hand-checked cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant import binary, calibrate, dorefa, twn
from lowbit.quant import uniform_quantize as uniform
from lowbit.quant.uniform import kl_clip_from_histogram, qrange
from tests.quant._oracles import weights_st


def test_twn_hand_checked() -> None:
    w = torch.tensor([1.0, -2.0, 0.1, 0.0, 3.0])
    # mean|W| = 1.22, delta = 0.854 -> keep 1, -2, 3; alpha = 2
    wq, alpha = twn(w)
    assert alpha.item() == pytest.approx(2.0)
    assert wq.tolist() == [2.0, -2.0, 0.0, 0.0, 2.0]


def test_binary_hand_checked() -> None:
    wq, alpha = binary(torch.tensor([1.0, -3.0, 0.0, 2.0]))
    assert alpha.item() == pytest.approx(1.5)
    assert wq.tolist() == [1.5, -1.5, 1.5, 1.5]  # sign(0) = +1


def test_dorefa_hand_checked() -> None:
    w = torch.tensor([-10.0, 0.0, 10.0, 0.2])
    q = dorefa(w, 2)  # levels {-1, -1/3, 1/3, 1}
    t = math.tanh(0.2) / (2 * math.tanh(10.0)) + 0.5
    expect_last = 2 * round(t * 3) / 3 - 1
    assert q[:3].tolist() == pytest.approx([-1.0, 1 / 3, 1.0])
    assert q[3].item() == pytest.approx(expect_last)
    assert set(torch.round(dorefa(torch.randn(100), 3) * 7).tolist()) <= set(range(-7, 8, 2))


def test_uniform_symmetric_hand_checked() -> None:
    w = torch.tensor([-1.0, -0.26, 0.0, 0.5, 0.74])
    wq, scale, zp = uniform(w, 2)  # qmax = 1: levels {-1, 0, 1}, scale 1
    assert scale.item() == pytest.approx(1.0) and zp.item() == 0
    assert wq.tolist() == [-1.0, 0.0, 0.0, 0.0, 1.0]  # 0.5 rounds half to even -> 0


def test_uniform_affine_hand_checked() -> None:
    w = torch.tensor([0.0, 0.5, 1.0, 3.0])
    wq, scale, zp = uniform(w, 2, symmetric=False)  # range [0, 3], scale 1, codes 0..3
    assert scale.item() == pytest.approx(1.0) and zp.item() == 0
    assert wq.tolist() == [0.0, 0.0, 1.0, 3.0]


def test_per_channel_scales() -> None:
    w = torch.tensor([[1.0, -0.5], [10.0, 4.0]])
    _, scale, _ = uniform(w, 8, per_channel=True, axis=0)
    assert scale.tolist() == pytest.approx([1 / 127, 10 / 127])
    _, scale1, _ = uniform(w, 8, per_channel=True, axis=1)
    assert scale1.tolist() == pytest.approx([10 / 127, 4 / 127])


@settings(max_examples=40, deadline=None)
@given(w=weights_st, bits=st.integers(2, 8), sym=st.booleans(), pc=st.booleans())
def test_uniform_idempotent_and_bounded(w: torch.Tensor, bits: int, sym: bool, pc: bool) -> None:
    w = w.reshape(1, -1).repeat(2, 1) * torch.tensor([[1.0], [0.5]], dtype=w.dtype)
    wq, scale, zp = uniform(w, bits, symmetric=sym, per_channel=pc)
    wq2, _, _ = uniform(wq, bits, symmetric=sym, per_channel=pc)
    assert torch.allclose(wq2, wq, rtol=1e-12, atol=1e-12 * float(w.abs().max()))
    assert float(((wq - w) ** 2).sum()) <= float((w**2).sum()) * (1 + 1e-12)
    # at most 2**bits distinct values per channel
    rows = wq if pc else wq.reshape(1, -1)
    assert all(torch.unique(r).numel() <= 2**bits for r in rows)


@settings(max_examples=30, deadline=None)
@given(w=weights_st)
def test_twn_binary_idempotent_and_bounded(w: torch.Tensor) -> None:
    for fn in (twn, binary):
        wq, _ = fn(w)
        wq2, _ = fn(wq)
        assert torch.allclose(wq2, wq, rtol=1e-12, atol=0)
    wq, _ = twn(w)
    assert float(((wq - w) ** 2).sum()) <= float((w**2).sum()) * (1 + 1e-12)


def test_calibrators() -> None:
    x = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([100.0])]).double()
    lo, hi = calibrate(x, 8, method="minmax")
    assert hi.item() == 100.0 and lo.item() == -100.0
    # percentile: the 99.9% order statistic of |x| ignores the single outlier
    _, hp = calibrate(x, 8, method="percentile", percentile=99.9)
    srt = torch.sort(x.abs()).values
    assert hp.item() == srt[math.ceil(0.999 * x.numel()) - 1].item()
    # MSE: the best clip is found by a brute-force scan over the same grid
    x = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([5.0])]).double()
    _, hm = calibrate(x, 4, method="mse", grid=50)
    qmin, qmax = qrange(4, True)

    def mse(c: float) -> float:
        s = c / qmax
        return float(((torch.clamp(torch.round(x / s), qmin, qmax) * s - x) ** 2).sum())

    brute = min((5.0 * i / 50 for i in range(1, 51)), key=mse)
    assert hm.item() == pytest.approx(brute)
    assert hm.item() < 5.0
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g), torch.tensor([30.0])]).double()
    # KL keeps the Gaussian bulk, clips the outlier
    _, hk = calibrate(x, 8, method="kl")
    assert 2.0 < hk.item() < 30.0
    with pytest.raises(ValueError, match="calibrator"):
        calibrate(x, 8, method="nope")


def test_kl_histogram_uniform_data_keeps_full_range() -> None:
    hist = torch.ones(256)
    edges = torch.linspace(0, 1, 257)
    assert kl_clip_from_histogram(hist, edges, 8) == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="NaN/Inf"):
        uniform(torch.tensor([1.0, float("nan")]), 8)
    with pytest.raises(ValueError, match="bits"):
        uniform(torch.ones(3), 9)
    with pytest.raises(ValueError, match="bits"):
        dorefa(torch.ones(3), 0)
    assert twn(torch.zeros(4))[0].abs().sum() == 0
    assert uniform(torch.zeros(4), 4)[0].abs().sum() == 0


# -- near the float32 limit and bad axes (issue 18) --------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "kl"])
@pytest.mark.parametrize("sym", [True, False])
def test_uniform_at_float32_limit_is_finite(method: str, sym: bool) -> None:
    w = torch.tensor([3e38, -3e38, 1.0])
    wq, scale, zp = uniform(w, 4, symmetric=sym, method=method, percentile=100.0)
    assert torch.isfinite(wq).all() and torch.isfinite(scale).all()
    # the grid is still the module's grid, checked in float64 from scale and zero point
    s, z = scale.double().item(), zp.double().item()
    qmin, qmax = qrange(4, sym)
    for x, y in zip(w.double().tolist(), wq.double().tolist()):
        code = min(max(round(x / s) + z, qmin), qmax)
        assert y == pytest.approx((code - z) * s, rel=1e-6)
    # the two huge values stay huge and of the right sign; nothing collapses to 0 or NaN
    assert wq[0] > 1e38 and wq[1] < -1e38


def test_uniform_grid_beyond_float32_is_value_error() -> None:
    # affine 2-bit over [-3.4e38, 3.4e38]: (code - zp) * scale reaches beyond float32's max
    w = torch.tensor([3.4e38, -3.4e38, 1.0])
    with pytest.raises(ValueError, match="does not fit torch.float32"):
        uniform(w, 2, symmetric=False)


@pytest.mark.parametrize("axis", [5, -3, 2])
@pytest.mark.parametrize("pc", [True, False])
def test_uniform_bad_axis_is_value_error(axis: int, pc: bool) -> None:
    with pytest.raises(ValueError, match=f"uniform: axis {axis} is out of range.*\\(4, 4\\)"):
        uniform(torch.randn(4, 4), 4, per_channel=pc, axis=axis)
    with pytest.raises(ValueError, match=f"calibrate: axis {axis}"):
        calibrate(torch.randn(4, 4), 4, axis=axis)
    # the valid negative axis is the last dimension, as in torch
    w = torch.randn(3, 5)
    _, s_neg, _ = uniform(w, 4, per_channel=True, axis=-1)
    _, s_pos, _ = uniform(w, 4, per_channel=True, axis=1)
    assert s_neg.shape == (5,) and torch.equal(s_neg, s_pos)
