"""Data-free non-uniform schemes (bit-efficient quantization, paper 004): optimal 1-D k-means
and a logarithmic quantizer.

1-D k-means: clusters of a sorted 1-D sample are contiguous intervals, so the optimal
``k``-partition is a dynamic programme over sorted distinct values with prefix sums (exact,
``O(k U**2)`` for ``U`` distinct values). Above ``exact_max`` distinct values a fast path runs
Lloyd's algorithm on the sorted values, where each assignment step is a ``searchsorted`` of the
centroid midpoints and each update a difference of prefix sums (``O(k log U)`` per iteration),
initialised at quantiles. The result is deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.quant._common import (
    broadcast_channel,
    channel_view,
    check_bits,
    check_float,
    compute_dtype,
)
from lowbit.quant.pot import pot_levels_count, pot_round
from lowbit.quant.uniform import check_axis

__all__ = ["kmeans_1d", "kmeans_quantize", "log_quantize", "nearest_level"]


def _sse(ps1: Tensor, ps2: Tensor, pc: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Within-cluster squared error of sorted values ``[i, j)`` from weighted prefix sums."""
    c = pc[j] - pc[i]
    s1 = ps1[j] - ps1[i]
    s2 = ps2[j] - ps2[i]
    return torch.where(c > 0, s2 - s1 * s1 / c.clamp(min=1e-300), torch.zeros_like(s2))


def kmeans_1d(x: Tensor, k: int, exact_max: int = 1024, iters: int = 100) -> Tensor:
    """Centroids (sorted ascending, float64, ``Tensor[m]`` with ``m = min(k, #distinct)``)
    minimising the within-cluster squared error of the values of ``x``.

    Exact (dynamic programme) when ``x`` has at most ``exact_max`` distinct values, Lloyd's
    algorithm otherwise.
    """
    check_float(x, "x")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if x.numel() == 0:
        raise ValueError("cannot cluster an empty tensor")
    vals, counts = torch.unique(x.detach().reshape(-1).double().cpu(), return_counts=True)
    u = vals.numel()
    if u <= k:
        return vals
    w = counts.double()
    z = torch.zeros(1, dtype=torch.float64)
    pc = torch.cat([z, torch.cumsum(w, 0)])
    ps1 = torch.cat([z, torch.cumsum(w * vals, 0)])
    ps2 = torch.cat([z, torch.cumsum(w * vals * vals, 0)])
    if u <= exact_max:
        return _dp(vals, pc, ps1, ps2, k)
    return _lloyd(vals, pc, ps1, k, iters)


def _dp(vals: Tensor, pc: Tensor, ps1: Tensor, ps2: Tensor, k: int) -> Tensor:
    u = vals.numel()
    idx = torch.arange(u + 1)
    ii, jj = torch.meshgrid(idx, idx, indexing="ij")
    cost = torch.where(ii < jj, _sse(ps1, ps2, pc, ii, jj), torch.full((u + 1, u + 1), torch.inf))
    d = cost[0].clone()  # d[j]: best error of values[:j] with 1 cluster
    arg = []
    for _ in range(1, k):
        tot = d[:, None] + cost  # split at i: first part [0, i), last cluster [i, j)
        best, a = tot.min(dim=0)
        arg.append(a)
        d = best
    # backtrack cluster boundaries
    bounds = [u]
    j = u
    for a in reversed(arg):
        j = int(a[j])
        bounds.append(j)
    bounds.append(0)
    bounds = sorted(set(bounds))
    b = torch.tensor(bounds)
    c = pc[b[1:]] - pc[b[:-1]]
    return (ps1[b[1:]] - ps1[b[:-1]]) / c


def _lloyd(vals: Tensor, pc: Tensor, ps1: Tensor, k: int, iters: int) -> Tensor:
    total = float(pc[-1])
    qs = (torch.arange(k, dtype=torch.float64) + 0.5) / k * total
    cen = vals[torch.searchsorted(pc[1:], qs).clamp(max=vals.numel() - 1)]
    cen = torch.unique(cen)
    for _ in range(iters):
        mids = (cen[1:] + cen[:-1]) / 2
        cut = torch.searchsorted(vals, mids, right=True)  # cluster j = vals[cut[j-1]:cut[j]]
        b = torch.cat([torch.zeros(1, dtype=torch.long), cut, torch.tensor([vals.numel()])])
        c = pc[b[1:]] - pc[b[:-1]]
        new = torch.where(c > 0, (ps1[b[1:]] - ps1[b[:-1]]) / c.clamp(min=1e-300), cen)
        if torch.equal(new, cen):
            break
        cen = torch.unique(new)
    return cen


def nearest_level(x: Tensor, levels: Tensor) -> tuple[Tensor, Tensor]:
    """Map ``x`` to the nearest of sorted ``levels`` (ties to the upper level).

    Returns ``(values, codes)``: ``codes`` int64 indices into ``levels``.
    """
    lv = levels.to(device=x.device, dtype=torch.float64)
    mids = (lv[1:] + lv[:-1]) / 2
    codes = torch.bucketize(x.double(), mids, right=True)
    return lv[codes].to(x.dtype), codes


def kmeans_quantize(
    w: Tensor, bits: int, per_channel: bool = False, axis: int = 0, exact_max: int = 1024
) -> tuple[Tensor, Tensor]:
    """Non-uniform b-bit quantization to ``2**bits`` k-means centroids (data-free).

    Returns ``(wq, levels)``: ``levels`` is ``Tensor[2**b]`` (per tensor) or ``Tensor[C, 2**b]``
    (per channel, rows padded by repeating their last centroid), float64, sorted. An ``axis``
    outside ``-dim .. dim - 1`` raises ``ValueError`` (per channel or not).
    """
    check_bits(bits, 1, 8)
    check_float(w)
    check_axis(w, axis, "kmeans")
    k = 1 << bits
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        return w.detach().clone(), torch.zeros(k, dtype=torch.float64)

    def pad(c: Tensor) -> Tensor:
        return torch.cat([c, c[-1:].expand(k - c.numel())]) if c.numel() < k else c

    if not per_channel:
        levels = pad(kmeans_1d(x, k, exact_max))
        wq, _ = nearest_level(x, levels)
        return wq.to(w.dtype), levels
    rows = channel_view(x, axis)
    outs, levs = [], []
    for r in rows:
        lv = pad(kmeans_1d(r, k, exact_max))
        outs.append(nearest_level(r, lv)[0])
        levs.append(lv)
    wq = torch.stack(outs).reshape(x.movedim(axis, 0).shape).movedim(0, axis)
    return wq.to(w.dtype), torch.stack(levs)


def log_quantize(
    w: Tensor, bits: int, per_channel: bool = False, axis: int = 0
) -> tuple[Tensor, Tensor]:
    """Logarithmic quantizer: power-of-two levels with a real-valued scale.

    Levels ``alpha * {0, +-2**(1-n), ..., +-1}`` with ``n = 2**(b-2)`` (the LBW level set, so
    codes fit the same bits) and ``alpha = max|W|`` (per tensor or per channel); nearest-level
    rounding with LBW's thresholds. Returns ``(wq, alpha)``.
    """
    check_float(w)
    pot_levels_count(bits)
    check_axis(w, axis, "log")
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        return w.detach().clone(), x.new_zeros(())
    if per_channel:
        alpha = channel_view(x, axis).abs().amax(dim=1)
        a = broadcast_channel(alpha, x, axis)
    else:
        alpha = x.abs().max()
        a = alpha
    safe = torch.where(a > 0, a, torch.ones_like(a))
    wq = pot_round(x / safe, 0, bits) * safe
    return wq.to(w.dtype), alpha
