"""Shift/integer reference is bit-exact against the simulated float64 conv."""

from __future__ import annotations

import pytest
import torch

from lowbit.export.integer import pot_codes_and_exponent, shift_conv2d, simulated_conv2d
from lowbit.quant import get


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("stride,padding,groups,dilation", [(1, 0, 1, 1), (2, 1, 2, 1),
                                                             (1, 2, 4, 2), (3, 1, 8, 1)])
def test_shift_conv_bit_exact(bits: int, stride: int, padding: int, groups: int,
                              dilation: int) -> None:
    g = torch.Generator().manual_seed(bits * 100 + stride * 10 + groups)
    for _ in range(3):
        w = torch.randn(8, 8 // groups, 3, 3, generator=g)
        res = get("lbw-exact")(w, bits=bits)
        x = torch.randint(-128, 128, (2, 8, 11, 10), generator=g)
        bias = torch.randn(8, generator=g)
        kw = dict(x_scale=0.0371, bias=bias, stride=stride, padding=padding, groups=groups,
                  dilation=dilation)
        acc, y = shift_conv2d(x, res, **kw)
        assert acc.dtype == torch.int32
        ref = simulated_conv2d(x.float(), res, **kw)
        assert y.shape == ref.shape
        assert torch.equal(y, ref)


def test_rejects_non_pot_and_overflow() -> None:
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="power-of-two"):
        shift_conv2d(torch.zeros(1, 4, 5, 5), get("uniform")(w, bits=8))
    with pytest.raises(ValueError, match="overflow"):
        shift_conv2d(torch.full((1, 4, 5, 5), 2.0**20), get("lbw-exact")(w, bits=8))


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("bits", [2, 3, 4, 5])
@pytest.mark.parametrize("groups", [1, 2])
def test_shift_conv_per_channel_bit_exact(bits: int, axis: int, groups: int) -> None:
    """Per-channel exponents (one per output channel, or per input channel as extra shifts)
    stay bit-exact against the float64 conv of the decoded weights."""
    g = torch.Generator().manual_seed(bits * 10 + axis + 100 * groups)
    cin_g = 8 // groups
    # channels an octave or two apart along the chosen axis, one all-zero output channel
    spread = torch.logspace(-1, 1, 8 if axis == 0 else cin_g, base=2.0)
    shape = [8, cin_g, 3, 3]
    view = [1, 1, 1, 1]
    view[axis] = -1
    w = torch.randn(shape, generator=g) * spread.reshape(view)
    w[3] = 0.0
    res = get("lbw-exact")(w, bits=bits, per_channel=True, axis=axis)
    codes, s = pot_codes_and_exponent(res)
    assert s.shape == (shape[axis],) and s.dtype == torch.int64
    if axis == 0:
        assert len(set(s.tolist())) > 1  # really different exponents
    x = torch.randint(-64, 64, (2, 8, 9, 9), generator=g)
    bias = torch.randn(8, generator=g)
    kw = dict(x_scale=0.0213, bias=bias, padding=1, groups=groups)
    acc, y = shift_conv2d(x, res, **kw)
    ref = simulated_conv2d(x.float(), res, **kw)
    assert acc.dtype == torch.int32
    assert torch.equal(y, ref)
    # the independent float64 oracle: conv with 2**s_c * Q written out here
    n = 2 ** (bits - 2)
    q = torch.sign(codes.double()) * torch.where(codes != 0, 2.0 ** (codes.abs() - n), 0.0)
    wd = q * (2.0 ** s.double()).reshape(view)
    oracle = torch.nn.functional.conv2d(x.double(), wd, None, 1, 1, 1, groups) * 0.0213 \
        + bias.double().reshape(1, -1, 1, 1)
    assert torch.equal(y, oracle)


def test_per_channel_scale_not_power_of_two_rejected() -> None:
    w = torch.randn(4, 4, 3, 3)
    res = get("lbw-exact")(w, bits=4, per_channel=True)
    res.scale = res.scale.clone()
    res.scale[1] *= 1.5
    with pytest.raises(ValueError, match="not a power of two"):
        shift_conv2d(torch.zeros(1, 4, 5, 5), res)
