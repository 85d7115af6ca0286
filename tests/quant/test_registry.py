"""The quantizer registry: names, parameter validation, codes that decode exactly."""

from __future__ import annotations

import pytest
import torch

import lowbit.quant as Q
from lowbit.quant.registry import PotParams, QuantizerEntry, register

BITS = {"twn": 2, "binary": 1, "lbw-ternary": 2, "qn": 2}


def test_list_and_get() -> None:
    names = Q.list()
    for expected in ("lbw-exact", "lbw-approx", "lbw-ternary", "inq", "twn", "binary", "dorefa",
                     "uniform", "kmeans", "log", "qn"):
        assert expected in names
    with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
        Q.get("nope")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(QuantizerEntry("lbw-exact", PotParams, lambda w, p: None, ""))


def test_params_validated() -> None:
    with pytest.raises(ValueError, match="bits"):
        Q.get("lbw-exact").params(bits=9)
    with pytest.raises(ValueError, match="no parameter"):
        Q.get("lbw-exact").params(bitz=4)
    with pytest.raises(ValueError, match="method"):
        Q.get("uniform").params(method="magic")


@pytest.mark.parametrize("name", sorted(Q.list()))
def test_codes_decode_exactly_and_fit_bits(name: str) -> None:
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    bits = BITS.get(name, 4)
    r = Q.get(name)(w, bits=bits)
    assert r.values.shape == w.shape and r.values.dtype == w.dtype
    codes = r.codes()
    assert torch.equal(r.decode(codes), r.values)
    assert torch.unique(codes).numel() <= 2**bits


@pytest.mark.parametrize("name", ["uniform", "kmeans", "log"])
def test_per_channel_codes(name: str) -> None:
    w = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(1))
    r = Q.get(name)(w, bits=3, per_channel=True)
    assert torch.equal(r.decode(r.codes()), r.values)


PER_CHANNEL = {"lbw-exact": 3, "lbw-approx": 4, "inq": 5, "twn": 2, "log": 3, "uniform": 3,
               "kmeans": 3}


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("name", sorted(PER_CHANNEL))
def test_per_channel_codes_round_trip_any_axis(name: str, axis: int) -> None:
    w = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(1))
    w[2] = 0.0  # an all-zero output channel
    r = Q.get(name)(w, bits=PER_CHANNEL[name], per_channel=True, axis=axis)
    assert r.axis == axis and r.values.shape == w.shape
    codes = r.codes()
    assert torch.equal(r.decode(codes), r.values)
    if r.kind != "table":
        assert r.scale.shape == (w.shape[axis],)
    if name in ("lbw-exact", "lbw-approx", "inq"):
        assert r.exponent.dtype == torch.int64 and r.exponent.shape == (w.shape[axis],)
        for c in range(w.shape[axis]):  # scale is exactly 2**s_c
            assert float(r.scale[c]) == 2.0 ** int(r.exponent[c])


def _slice_oracle(name: str, w: torch.Tensor, bits: int) -> tuple[torch.Tensor, list]:
    """Each channel quantized alone by the per-tensor quantizer (the per-channel semantics)."""
    vals, scales = [], []
    for c in range(w.shape[0]):
        kw = {"bits": bits} if name != "twn" else {}
        if name == "lbw-approx":  # per-channel mu = 0.75 max|W_c|: the per-tensor default
            kw["mu_ratio"] = 0.75
        r = Q.get(name)(w[c], **kw)
        vals.append(r.values)
        scales.append(r.exponent if r.exponent is not None else float(r.scale))
    return torch.stack(vals), scales


@pytest.mark.parametrize("name", ["lbw-exact", "lbw-approx", "inq", "twn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_per_channel_equals_per_tensor_on_each_channel(name: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    # channels at very different scales: one shared exponent cannot serve them all
    w = (torch.randn(8, 4, 3, 3, generator=g) * torch.logspace(-3, 0, 8)[:, None, None, None])
    w[5] = 0.0
    w = w.to(dtype)
    bits = 2 if name == "twn" else 4
    r = Q.get(name)(w, bits=bits, per_channel=True)
    vals, scales = _slice_oracle(name, w, bits)
    assert torch.equal(r.values, vals)
    if name == "twn":
        assert r.scale.tolist() == [s if s > 0 else 1.0 for s in scales]
    else:
        assert r.exponent.tolist() == scales
    if name == "lbw-exact":  # never worse than one exponent for the whole layer
        per_layer = Q.get(name)(w, bits=bits)
        e_ch = float(((r.values.double() - w.double()) ** 2).sum())
        e_l = float(((per_layer.values.double() - w.double()) ** 2).sum())
        assert e_ch <= e_l


def test_per_channel_params_validated() -> None:
    for name in ("lbw-exact", "lbw-approx", "inq", "twn"):
        with pytest.raises(ValueError, match="axis"):
            Q.get(name).params(per_channel=True, axis="0")
        with pytest.raises(ValueError, match="axis 3 out of range"):
            Q.get(name)(torch.ones(2, 3), per_channel=True, axis=3)


LIMIT = torch.tensor([3e38, -3e38, 1.0])


@pytest.mark.parametrize("name", ["lbw-ternary", "lbw-exact", "lbw-approx", "inq", "twn",
                                  "binary"])
def test_float32_limit_gives_finite_correct_results(name: str) -> None:
    """Issue 18 item 9: weights near float32's maximum must not overflow to inf or zeros."""
    bits = {"binary": 1, "twn": 2, "lbw-ternary": 2}.get(name, 4)
    r = Q.get(name)(LIMIT, bits=bits)
    assert torch.isfinite(r.values).all() and torch.isfinite(r.scale).all()
    assert torch.equal(r.decode(r.codes()), r.values)
    v = r.values.double()
    assert v[0] > 1e38 and v[1] < -1e38  # the two large weights survive with their signs
    if name == "twn":  # mean|W| = 2e38, delta = 1.4e38: both kept, alpha their mean 3e38
        assert r.values.tolist() == [LIMIT[0].item(), LIMIT[1].item(), 0.0]
    if name == "binary":
        assert float(r.scale) == pytest.approx((6e38 + 1) / 3, rel=1e-6)
    if name in ("lbw-ternary", "lbw-exact", "inq"):  # 2**127: the largest finite power
        assert v[0] == 2.0**127


def test_lbw_ternary_limit_equals_exact_b2() -> None:
    a = Q.get("lbw-ternary")(LIMIT).values.double()
    b = Q.get("lbw-exact")(LIMIT, bits=2).values.double()
    x = LIMIT.double()
    assert float(((a - x) ** 2).sum()) == float(((b - x) ** 2).sum())
