"""Shift/integer reference is bit-exact against the simulated float64 conv."""

from __future__ import annotations

import pytest
import torch

from lowbit.export.integer import shift_conv2d, simulated_conv2d
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
