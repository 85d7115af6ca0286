"""Uniform b-bit quantization (symmetric / affine, per tensor / per channel), its calibrators
(min/max, percentile, MSE-optimal, KL/entropy) and DoReFa weights.

Conventions:

* symmetric: signed codes in ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (restricted range, so the grid
  is symmetric), ``zero_point = 0``, ``scale = clip / (2**(b-1) - 1)``;
* affine: codes in ``[0, 2**b - 1]``, ``scale = (hi - lo) / (2**b - 1)``,
  ``zero_point = clamp(round(-lo / scale), 0, 2**b - 1)``; the range always contains 0;
* value = ``(code - zero_point) * scale``; rounding is ``torch.round`` (half to even);
* per channel: ``axis`` is the channel dimension (0 for Conv2d/Linear weights); ``scale`` and
  ``zero_point`` are ``Tensor[C]``; per tensor they are 0-dim;
* a zero range gives ``scale = 1`` (all codes 0) instead of a division by zero;
* near the float32 limit the affine range ``hi - lo`` (up to ``2 * 3.4e38``) is formed in
  float64, so ``[3e38, -3e38, 1.]`` gets a finite scale; a grid whose dequantized values do
  not fit the compute dtype (``(code - zero_point) * scale`` beyond 3.4e38) raises
  ``ValueError`` instead of returning ``inf`` / NaN;
* ``axis`` must index a dimension of the weight (``-dim <= axis < dim``), else ``ValueError``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lowbit.quant._common import (
    broadcast_channel,
    channel_view,
    check_bits,
    check_float,
    compute_dtype,
)

__all__ = [
    "CALIBRATORS",
    "qrange",
    "calibrate",
    "range_to_qparams",
    "fake_quant",
    "quantize_codes",
    "uniform",
    "dorefa",
    "kl_clip_from_histogram",
]

CALIBRATORS = ("minmax", "percentile", "mse", "kl")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)`` for ``bits`` (see module conventions)."""
    check_bits(bits, 2, 16)
    if symmetric:
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1


def range_to_qparams(lo: Tensor, hi: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale and zero point (both float tensors shaped like ``hi``) for a clip range."""
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        clip = torch.maximum(hi.abs(), lo.abs())
        scale = clip / qmax
        zp = torch.zeros_like(scale)
    else:
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        # in float64: hi - lo overflows float32 for a range near its limit (3e38 - -3e38)
        scale = ((hi.double() - lo.double()) / (qmax - qmin)).to(hi.dtype)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = torch.clamp(torch.round(-lo / safe), qmin, qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zp


def check_axis(w: Tensor, axis: int, who: str) -> int:
    """Validate a channel ``axis`` of ``w`` (``-dim <= axis < dim``; 0 / -1 for a 0-dim
    tensor) and return it; ``ValueError`` naming ``who``, the axis and the shape otherwise."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"{who}: axis must be an int, got {axis!r}")
    d = max(w.dim(), 1)
    if not -d <= axis < d:
        raise ValueError(
            f"{who}: axis {axis} is out of range for a {w.dim()}-d weight of shape "
            f"{tuple(w.shape)} (valid: {-d} .. {d - 1})"
        )
    return axis


def _shape(v: Tensor, x: Tensor, axis: int | None) -> Tensor:
    return v if axis is None or v.dim() == 0 else broadcast_channel(v, x, axis)


def quantize_codes(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)`` as int32."""
    s = _shape(scale, x, axis)
    z = _shape(zero_point, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def fake_quant(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Quantize-dequantize: ``(clamp(round(x/scale) + zp, qmin, qmax) - zp) * scale``."""
    s = _shape(scale.to(x.dtype), x, axis)
    z = _shape(zero_point.to(x.dtype), x, axis)
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


def _minmax(rows: Tensor, symmetric: bool) -> tuple[Tensor, Tensor]:
    if symmetric:
        hi = rows.abs().amax(dim=1)
        return -hi, hi
    return rows.amin(dim=1).clamp(max=0), rows.amax(dim=1).clamp(min=0)


def _kth(rows: Tensor, q: float) -> Tensor:
    """Per-row ``q``-quantile by order statistic (``k = ceil(q N)``), no interpolation."""
    n = rows.shape[1]
    k = min(max(int(math.ceil(q * n)), 1), n)
    return torch.kthvalue(rows, k, dim=1).values


def _percentile(rows: Tensor, symmetric: bool, percentile: float) -> tuple[Tensor, Tensor]:
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    p = percentile / 100.0
    if symmetric:
        hi = _kth(rows.abs(), p)
        return -hi, hi
    return _kth(rows, 1.0 - p).clamp(max=0), _kth(rows, p).clamp(min=0)


def _mse(rows: Tensor, bits: int, symmetric: bool, grid: int) -> tuple[Tensor, Tensor]:
    """Shrink the min/max range by factors in (0, 1]; keep the factor with least MSE per row."""
    lo0, hi0 = _minmax(rows, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    best = torch.full_like(hi0, torch.inf)
    best_lo, best_hi = lo0.clone(), hi0.clone()
    for i in range(grid, 0, -1):
        f = i / grid
        lo, hi = lo0 * f, hi0 * f
        scale, zp = range_to_qparams(lo, hi, bits, symmetric)
        err = ((fake_quant(rows, scale[:, None], zp[:, None], qmin, qmax) - rows) ** 2).sum(1)
        better = err < best
        best = torch.where(better, err, best)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    return best_lo, best_hi


def kl_clip_from_histogram(hist: Tensor, edges: Tensor, bits: int) -> float:
    """TensorRT-style entropy calibration of a magnitude histogram.

    ``hist: Tensor[B]`` counts of ``|x|`` over ``edges: Tensor[B+1]`` (from 0). For each
    candidate clip bin ``i`` (from ``2**(b-1)`` to ``B``) the reference distribution P is
    ``hist[:i]`` with the outliers folded into its last bin, Q is P merged into ``2**(b-1)``
    levels and spread back over P's non-empty bins; the clip is the upper edge of the ``i``
    minimising KL(P || Q). Returns that clip value.
    """
    h = hist.double().cpu()
    nb = h.numel()
    levels = 1 << (bits - 1)
    if float(h.sum()) == 0.0:
        return 0.0
    best_i, best_kl = nb, math.inf
    total_tail = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0])  # tail[i] = sum h[i:]
    for i in range(levels, nb + 1):
        p = h[:i].clone()
        if i < nb:
            p[-1] += total_tail[i]
        nz = p > 0
        # merge i bins into `levels` groups
        idx = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        grp_sum = torch.zeros(levels, dtype=torch.float64).index_add_(0, idx, h[:i])
        grp_cnt = torch.zeros(levels, dtype=torch.float64).index_add_(0, idx, nz.double())
        q = torch.where(nz, grp_sum[idx] / grp_cnt[idx].clamp(min=1), torch.zeros_like(p))
        ps, qs = p / p.sum(), q / max(float(q.sum()), 1e-300)
        m = nz & (qs > 0)
        if bool((nz & ~(qs > 0)).any()):
            continue
        kl = float((ps[m] * torch.log(ps[m] / qs[m])).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def _kl(rows: Tensor, bits: int, num_bins: int) -> tuple[Tensor, Tensor]:
    his = []
    for r in rows:
        a = r.abs().double()
        amax = float(a.max())
        if amax == 0.0:
            his.append(0.0)
            continue
        hist = torch.histc(a, bins=num_bins, min=0.0, max=amax)
        edges = torch.linspace(0.0, amax, num_bins + 1, dtype=torch.float64)
        his.append(kl_clip_from_histogram(hist, edges, bits))
    hi = torch.tensor(his, dtype=rows.dtype, device=rows.device)
    return -hi, hi


def calibrate(
    x: Tensor,
    bits: int,
    symmetric: bool = True,
    method: str = "minmax",
    axis: int | None = None,
    percentile: float = 99.99,
    grid: int = 100,
    num_bins: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Clip range ``(lo, hi)`` of ``x`` for b-bit uniform quantization.

    ``method``: ``minmax``; ``percentile`` (order statistic of |x|, or both tails for affine);
    ``mse`` (range shrink factor in ``{1/grid, ..., 1}`` minimising ||Q(x) - x||**2); ``kl``
    (entropy calibration on a ``num_bins`` histogram of |x|; symmetric result). ``axis`` set:
    per channel, ``Tensor[C]`` results; otherwise 0-dim tensors.
    """
    check_float(x)
    check_bits(bits, 2, 16)
    if axis is not None:
        check_axis(x, axis, "calibrate")
    rows = (channel_view(x, axis) if axis is not None else x.reshape(1, -1)).to(compute_dtype(x))
    if rows.shape[1] == 0:
        raise ValueError("cannot calibrate an empty tensor")
    if method == "minmax":
        lo, hi = _minmax(rows, symmetric)
    elif method == "percentile":
        lo, hi = _percentile(rows, symmetric, percentile)
    elif method == "mse":
        lo, hi = _mse(rows, bits, symmetric, grid)
    elif method == "kl":
        lo, hi = _kl(rows, bits, num_bins)
    else:
        raise ValueError(f"unknown calibrator {method!r}; choose from {', '.join(CALIBRATORS)}")
    if axis is None:
        return lo[0], hi[0]
    return lo, hi


def uniform(
    w: Tensor,
    bits: int,
    symmetric: bool = True,
    per_channel: bool = False,
    axis: int = 0,
    method: str = "minmax",
    **calib_kw,
) -> tuple[Tensor, Tensor, Tensor]:
    """Uniform b-bit fake quantization of ``w`` with a calibrated clip.

    Returns ``(wq, scale, zero_point)``; ``wq`` has ``w``'s shape/dtype/device; ``scale`` and
    ``zero_point`` are 0-dim (per tensor) or ``Tensor[C]`` along ``axis`` (per channel).
    """
    check_bits(bits, 2, 8)
    check_float(w)
    check_axis(w, axis, "uniform")
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        z = x.new_zeros(())
        return w.detach().clone(), z + 1, z
    ax = axis if per_channel else None
    lo, hi = calibrate(x, bits, symmetric, method, ax, **calib_kw)
    scale, zp = range_to_qparams(lo, hi, bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    wq = fake_quant(x, scale, zp, qmin, qmax, ax)
    if not bool(torch.isfinite(wq).all()):
        raise ValueError(
            f"uniform: the {bits}-bit {'symmetric' if symmetric else 'affine'} grid of range "
            f"[{float(lo.min()):.6g}, {float(hi.max()):.6g}] does not fit {x.dtype} (values "
            f"near its limit of {torch.finfo(x.dtype).max:.4g}); rescale the weights"
        )
    out = wq.to(w.dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"uniform: quantized values up to {float(wq.abs().max()):.6g} overflow {w.dtype}; "
            "quantize a float32 copy instead"
        )
    return out, scale, zp


def dorefa(w: Tensor, bits: int) -> Tensor:
    """DoReFa-Net weights: ``2 * round_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1``, in [-1, 1].

    ``round_k(t) = round(t (2**k - 1)) / (2**k - 1)``; ``bits`` in [1, 8]. Returns ``wq``.
    """
    check_bits(bits, 1, 8)
    check_float(w)
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        return w.detach().clone()
    t = torch.tanh(x)
    m = t.abs().max()
    if float(m) == 0.0:
        t = torch.full_like(t, 0.5)
    else:
        t = t / (2 * m) + 0.5
    levels = (1 << bits) - 1
    q = torch.round(t * levels)  # integer i in [0, L]; value 2 i / L - 1 = (2 i - L) * (1 / L)
    return ((2 * q.double() - levels) * (1.0 / levels)).to(w.dtype)
