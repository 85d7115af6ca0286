"""Integer / shift reference for power-of-two convolutions.

A power-of-two weight is ``w = sign(c) * 2**s * 2**(|c| - n)`` (``c in [-n, n]``,
``n = 2**(bits-2)``, see :mod:`lowbit.quant.registry`). With integer activations ``x`` and
``kmin = 1 - n`` (the smallest exponent offset) a convolution output is

    y = 2**(s + kmin) * x_scale * sum_j sign(c_j) * (x_j << (|c_j| - 1))

so the inner loop needs only shifts and additions (int32 accumulator) and one final float
scale per output.

Per-channel exponents (``s_c`` along the result's ``axis``, :mod:`lowbit.quant.pot`'s
``per_channel``) stay shift-only: every weight's exponent is ``s_w = s_{c(w)}``; for output
channel ``o`` let ``m_o`` be the smallest ``s_w`` among its non-zero weights; then

    y_o = 2**(m_o + kmin) * x_scale * sum_j sign(c_j) * (x_j << (|c_j| - 1 + s_j - m_o))

With channels along the output axis (0) ``s_j - m_o = 0`` and the accumulator is the
per-tensor one with one scale per output channel; along another axis the relative exponents
become extra shifts. :func:`shift_conv2d` computes that; :func:`simulated_conv2d` is the float64
``F.conv2d`` of the same integer inputs with the dequantized weights. Both are bit-exact equal
as long as the accumulator fits int32 (checked) because every float64 product and partial sum
is then an exactly representable integer times ``2**(s + kmin)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lowbit.quant import pot
from lowbit.quant._common import broadcast_channel
from lowbit.quant.registry import QuantResult

__all__ = ["shift_conv2d", "simulated_conv2d", "pot_codes_and_exponent"]

_INT32_MAX = (1 << 31) - 1


def pot_codes_and_exponent(res: QuantResult) -> tuple[Tensor, int | Tensor]:
    """``(codes int32, s)`` of a power-of-two result with ``scale == 2**s``: ``s`` a Python
    int per tensor, or ``Tensor[C]`` int64 per channel (along ``res.axis``). ValueError when
    the result is not power-of-two or a scale is not an exact power of two."""
    if res.kind != "pot":
        raise ValueError(f"shift reference needs power-of-two weights, got kind {res.kind!r}")
    sc = res.scale.double().reshape(-1)
    if sc.numel() == 0:
        raise ValueError("shift reference: empty scale")
    mant, e = torch.frexp(sc)
    if not bool((mant == 0.5).all()):
        bad = float(sc[mant != 0.5][0])
        raise ValueError(f"scale {bad} is not a power of two")
    if res.scale.dim() == 0 or res.axis is None:
        if sc.numel() != 1:
            raise ValueError(f"shift reference: {sc.numel()} scales but no channel axis")
        return res.codes(), int(e[0]) - 1
    return res.codes(), e.to(torch.int64) - 1


def shift_conv2d(
    x: Tensor, res: QuantResult, *, x_scale: float = 1.0, bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1, groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Convolution of integer activations with power-of-two weights by shifts and adds.

    ``x``: integer-valued ``Tensor[N, C_in, H, W]`` (any dtype; real value ``x * x_scale``,
    zero padding means code 0). ``res``: the weight's :class:`QuantResult` (``kind == "pot"``,
    ``scale == 2**s`` per tensor or ``2**s_c`` per channel along ``res.axis``), weight
    ``Tensor[C_out, C_in/groups, kh, kw]``.
    Returns ``(acc, y)``: the int32 accumulator ``Tensor[N, C_out, H', W']`` and the float64
    output ``acc * 2**(m_o + kmin) * x_scale (+ bias)`` (``m_o = s`` per tensor; see the module
    doc for per-channel exponents). ValueError when ``x`` is not
    integer-valued or the accumulator could overflow int32.
    """
    codes, s = pot_codes_and_exponent(res)
    n = pot.pot_levels_count(res.bits)
    if isinstance(s, int):
        s_w = torch.full(codes.shape, s, dtype=torch.int64)
    else:
        s_w = broadcast_channel(s.cpu(), codes, res.axis).expand(codes.shape)
    nz = codes != 0
    big = torch.iinfo(torch.int64).max
    m_o = torch.where(nz, s_w, big).amin(dim=(1, 2, 3))  # smallest exponent per output
    m_o = torch.where(m_o == big, 0, m_o)
    rel = torch.where(nz, s_w - m_o[:, None, None, None], 0)
    if int(rel.max()) > 30 - (n - 1):
        raise ValueError(f"per-channel exponents span {int(rel.max())} octaves in one output "
                         "channel: shifts would overflow int32")
    if x.is_floating_point() and not bool((x == torch.round(x)).all()):
        raise ValueError("shift_conv2d needs integer-valued activations")
    xi = x.to(torch.int64)
    cout, cin_g, kh, kw = codes.shape
    taps = cin_g * kh * kw
    xmax = int(xi.abs().max()) if xi.numel() else 0
    max_shift = n - 1 + int(rel.max())
    if xmax * (1 << max_shift) * taps > _INT32_MAX:
        raise ValueError(f"int32 accumulator could overflow (|x| <= {xmax}, {taps} taps, "
                         f"shifts up to {max_shift})")
    cols = F.unfold(xi.double(), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.to(torch.int32)  # [N, C_in*kh*kw, L]: integer values, exact in float64
    nb, _, length = cols.shape
    c = codes.reshape(groups, cout // groups, taps)
    shift = ((c.abs() - 1).clamp(min=0) + rel.reshape(c.shape)).to(torch.int32)  # k - kmin
    sign = torch.sign(c)
    acc = torch.zeros(nb, groups, cout // groups, length, dtype=torch.int32)
    cols = cols.reshape(nb, groups, taps, length)
    for j in range(taps):  # one shift-and-add per tap; no multiply
        xj = cols[:, :, j, :].unsqueeze(2)  # [N, G, 1, L]
        sh = xj << shift[:, :, j].reshape(1, groups, -1, 1)
        sg = sign[:, :, j].reshape(1, groups, -1, 1)
        acc += torch.where(sg > 0, sh, torch.where(sg < 0, -sh, torch.zeros_like(sh)))
    h_out = (x.shape[2] + 2 * _pair(padding)[0] - _pair(dilation)[0] * (kh - 1) - 1) \
        // _pair(stride)[0] + 1
    acc = acc.reshape(nb, cout, h_out, -1)
    y = acc.double() * pot.exact_pow2(m_o + 1 - n).reshape(1, -1, 1, 1) * x_scale
    if bias is not None:
        y = y + bias.double().reshape(1, -1, 1, 1)
    return acc, y


def simulated_conv2d(
    x: Tensor, res: QuantResult, *, x_scale: float = 1.0, bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1, groups: int = 1,
) -> Tensor:
    """The simulated quantized conv: float64 ``F.conv2d(x, decoded weight) * x_scale
    (+ bias)`` on the same integer-valued ``x`` (what :class:`lowbit.nn.QuantConv2d` computes
    in float). Output ``Tensor[N, C_out, H', W']`` float64."""
    w = res.decode(res.codes()).double()
    y = F.conv2d(x.double(), w, None, stride, padding, dilation, groups) * x_scale
    if bias is not None:
        y = y + bias.double().reshape(1, -1, 1, 1)
    return y


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
