"""Quantization Networks (Yang et al., CVPR 2019): quantization as a sum of sigmoids.

``y = alpha * (sum_i s_i * sigmoid(T * (beta * x - b_i)) - o)`` with ``n`` steps between
``n + 1`` sorted integer levels ``q_0 < ... < q_n`` (``s_i = q_{i+1} - q_i``), biases ``b_i``
(the step positions on the ``beta``-scaled axis), offset ``o`` (``(q_n - q_0)/2 - ...``:
see :func:`default_offset`; 0 for unsigned activations) and temperature ``T``. As ``T`` grows
the soft staircase converges to the hard one, ``alpha * (sum_i s_i [beta x >= b_i] - o)``, which
is what inference uses (a point exactly on a bias goes up).

Windowed evaluation (:func:`soft_stairs`, used by QN activations and weights): with sorted
biases, ``sigmoid(T (z - b_i))`` is within ``sigmoid(-c)`` of 1 for every bias more than
``c / T`` below ``z`` and of 0 for every bias more than ``c / T`` above (``c = 17`` in float32,
37 in float64: :func:`saturation_margin`, below half an ulp of 1). So each element evaluates
only a window of ``W`` consecutive biases ``b_lo .. b_{lo+W-1}`` around it; the biases below
count exactly ``s_i`` (a prefix sum), those above 0. ``lo`` comes from a lookup table on a
uniform grid of the ``z`` axis (cells of ``c / (32 T)``, one multiply-add and one gather per
element instead of a binary search), and ``W`` (:func:`stairs_window`) is the most biases any
cell's ``[z - c/T, z + c/T]`` can hold: about ``2K`` for the half-width ``K`` (smallest ``K``
with ``min_i (b_{i+K} - b_i) >= c / T``), from the biases' actual spacing (k-means too). Cost
``W`` instead of ``n`` passes, memory ``O(numel)``; at 8 bits (``n = 255``, unit spacing)
``W = 37`` at ``T = 1``, 2 at ``T = 20``, 1 at ``T = 500``. ``W >= n`` falls back to the plain
loop over all biases.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit.quant._common import check_bits, check_float, compute_dtype
from lowbit.quant.cluster import kmeans_1d

__all__ = [
    "levels_for_bits",
    "default_offset",
    "soft_staircase",
    "soft_stairs",
    "stairs_window",
    "saturation_margin",
    "hard_staircase",
    "init_biases",
]


def levels_for_bits(bits: int, signed: bool = True) -> Tensor:
    """Integer levels used by the paper's code: signed ``{-(2**(b-1)-1), ..., 2**(b-1)-1}``
    (b = 2: ternary ``{-1, 0, 1}``); unsigned ``{0, ..., 2**b - 1}``."""
    check_bits(bits, 1, 8)
    if signed:
        if bits == 1:
            return torch.tensor([-1.0, 1.0])
        q = (1 << (bits - 1)) - 1
        return torch.arange(-q, q + 1, dtype=torch.float32)
    return torch.arange(0, 1 << bits, dtype=torch.float32)


def default_offset(levels: Tensor) -> float:
    """Offset ``o`` so that the hard staircase starts at the lowest level: ``o = -q_0``."""
    return float(-levels[0])


def saturation_margin(dtype: torch.dtype) -> float:
    """``c`` with ``sigmoid(-c)`` below half an ulp of 1 in the working dtype: 17 for float32
    (and half types, computed in float32; ``sigmoid(-17) = 4.1e-8 < 2**-24``), 37 for float64
    (``8.5e-17 < 2**-53``). Beyond ``|T (z - b)| >= c`` a sigmoid is taken as exactly 0 or 1."""
    return 37.0 if dtype == torch.float64 else 17.0


#: Elements per chunk and thread on CPU: the window's few temporaries of a chunk stay in L2
#: (2**16 measured best of 2**14..2**17 at 1 thread on 8x64x64x64).
_CHUNK = 1 << 16
#: At most this many grid cells (one int32 each) in a window plan.
_MAX_CELLS = 1 << 16
#: Grid cells per ``c / T``: the window is ``2 c / T`` plus ``3 c / (T _CELLS_PER_WIDTH)``.
_CELLS_PER_WIDTH = 32


@dataclass(frozen=True)
class _WindowPlan:
    """Per-cell windows on a uniform grid of the ``z`` axis: an element in cell
    ``clamp(floor((z - g0) / h), 0, m - 1)`` evaluates biases ``lo[cell] .. lo[cell]+width-1``;
    every bias below is within ``sigmoid(-c)`` of 1 for it and every bias above of 0."""

    width: int
    g0: float
    inv_h: float
    m: int
    lo: Tensor  # Tensor[m] int32 (CPU)


@functools.lru_cache(maxsize=32)
def _window_plan(b: tuple[float, ...], t: float, c: float, eps: float) -> _WindowPlan | None:
    n = len(b)
    if n < 2 or not (math.isfinite(t) and t > 0) or not all(map(math.isfinite, b)):
        return None
    if any(b1 < b0 for b0, b1 in zip(b, b[1:])):
        return None
    w = c / t
    g0, g1 = b[0] - w, b[-1] + w
    h = max(w / _CELLS_PER_WIDTH, (g1 - g0) / _MAX_CELLS)
    m = max(1, math.ceil((g1 - g0) / h))
    # the computed cell may be off by the float rounding of (z - g0) / h: widen by whole cells
    margin = 1 + math.ceil(4 * eps * (abs(g0) + abs(g1) + w) / h)
    bt = torch.tensor(b, dtype=torch.float64)
    starts = g0 + h * torch.arange(m, dtype=torch.float64)
    lo = torch.searchsorted(bt, starts - margin * h - w)  # #{b_i < cell start - margin - w}
    hi = torch.searchsorted(bt, starts + (margin + 1) * h + w)
    width = int((hi - lo).max())
    if width >= n:
        return None
    lo = lo.clamp(max=n - width).to(torch.int32)  # hi <= n: [lo, lo + width) still covers
    return _WindowPlan(width, g0, 1.0 / h, m, lo)


def _plan_for(biases: Tensor, temperature: float, dtype: torch.dtype) -> _WindowPlan | None:
    b = tuple(biases.detach().reshape(-1).to("cpu", torch.float64).tolist())
    eps = float(torch.finfo(dtype if dtype == torch.float64 else torch.float32).eps)
    return _window_plan(b, float(temperature), saturation_margin(dtype), eps)


def stairs_window(biases: Tensor, temperature: float, dtype: torch.dtype = torch.float32) -> int:
    """Number of biases :func:`soft_stairs` evaluates per element at ``temperature``.

    The window of an element ``z`` holds every bias within ``c / T`` of it
    (``c = saturation_margin(dtype)``), found on a grid of the ``z`` axis in cells of about
    ``c / (32 T)``; so for the half-width ``K`` (smallest ``K`` with
    ``min_i (b_{i+K} - b_i) >= c / T``) the window is about ``2K`` wide, from the local spacing
    (k-means biases too). Returns ``n`` (the plain loop over all ``n`` biases) when the window
    would not be narrower, when ``T`` is not finite and positive, or when the biases are not
    sorted / not finite. Args: biases ``Tensor[n]``; temperature ``T``; dtype the working
    dtype (float64, else float32).
    """
    wd = torch.float64 if dtype == torch.float64 else torch.float32
    plan = _plan_for(biases, temperature, wd)
    return biases.numel() if plan is None else plan.width


def _stairs_eval(z: Tensor, biases: Tensor, steps: Tensor, t: float, derivative: bool) -> Tensor:
    """``sum_i s_i sigmoid(t (z - b_i))`` or, with ``derivative``, its ``z``-derivative
    ``sum_i s_i t sigmoid'(t (z - b_i))``; windowed when :func:`stairs_window` allows.

    ``z`` any shape; ``biases``/``steps`` ``Tensor[n]`` (biases sorted for the window). Returns
    a tensor shaped like ``z`` in the working dtype (float64 for float64 ``z``, else float32);
    no autograd. On CPU the work runs in chunks of ``_CHUNK`` elements (cache-resident
    temporaries); memory ``O(z.numel())``.
    """
    wd = compute_dtype(z)
    zw = z.detach().to(wd).contiguous().reshape(-1)
    dev = zw.device
    b = biases.detach().reshape(-1).to(device=dev, dtype=wd).contiguous()
    s = steps.detach().reshape(-1).to(device=dev, dtype=wd).contiguous()
    n, numel = b.numel(), zw.numel()
    out = torch.zeros_like(zw)
    if n == 0 or numel == 0:
        return out.reshape(z.shape)
    sl = s.double().cpu().tolist()
    s0 = sl[0] if all(v == sl[0] for v in sl) else None  # uniform steps: no gather of s
    # one chunk per intra-op thread: each core keeps its share in its own cache
    chunk = _CHUNK * max(1, torch.get_num_threads()) if dev.type == "cpu" else numel
    # sigmoid' is even and sigmoid(t (z - b)) = 1 - sigmoid(t (b - z)): both are evaluated at
    # t (b - z), the argument computed as (b - z) * t as the plain formula does
    mul_t = t != 1.0
    plan = _plan_for(biases, t, wd)
    if plan is None:  # every bias, in chunks
        bl = b.cpu().tolist()
        for i in range(0, numel, chunk):
            zc, oc = zw[i:i + chunk], out[i:i + chunk]
            for bi, si in zip(bl, sl):
                u = torch.sub(zc, bi)
                if mul_t:
                    u.mul_(t)
                u.sigmoid_()
                if derivative:
                    u.addcmul_(u, u, value=-1.0)  # sigmoid * (1 - sigmoid)
                oc.add_(u, alpha=si * t if derivative else si)
        return out.reshape(z.shape)
    width = plan.width
    lo_tab = plan.lo.to(dev)
    if not derivative:  # cum[lo + width]: steps below the window's top, all "on" first
        cum = torch.cat([s.new_zeros(1), torch.cumsum(s, 0)])
        top_tab = cum.index_select(0, lo_tab.long() + width)
    c0 = torch.tensor(-plan.g0 * plan.inv_h, dtype=wd, device=dev)
    for i in range(0, numel, chunk):
        zc, oc = zw[i:i + chunk], out[i:i + chunk]
        cell = torch.add(c0, zc, alpha=plan.inv_h)  # (z - g0) / h
        cell = cell.nan_to_num_(0.0, plan.m - 1.0, 0.0).clamp_(0, plan.m - 1).to(torch.int32)
        lo = lo_tab.index_select(0, cell)
        if not derivative:
            torch.index_select(top_tab, 0, cell, out=oc)
        for o in range(width):
            u = b[o:].index_select(0, lo)  # b_{lo + o}
            u.sub_(zc)
            if mul_t:
                u.mul_(t)
            u.sigmoid_()  # sigmoid(t (b - z))
            if derivative:
                u.addcmul_(u, u, value=-1.0)
            if s0 is None:
                oc.addcmul_(u, s[o:].index_select(0, lo), value=t if derivative else -1.0)
            else:
                oc.add_(u, alpha=s0 * t if derivative else -s0)
    return out.reshape(z.shape)


class _SoftStairs(torch.autograd.Function):
    """``sum_i s_i sigmoid(T (z - b_i))`` with the backward of temperature ``Tb`` (the paper's
    public code uses ``Tb = 1`` for activations: a smooth surrogate gradient). Gradient to
    ``z`` only; forward and backward are windowed independently (:func:`stairs_window`)."""

    @staticmethod
    def forward(ctx, z: Tensor, biases: Tensor, steps: Tensor, t: float, tb: float) -> Tensor:
        ctx.save_for_backward(z, biases, steps)
        ctx.tb = tb
        return _stairs_eval(z, biases, steps, t, derivative=False).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        z, biases, steps = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        d = _stairs_eval(z, biases, steps, ctx.tb, derivative=True)
        return d.mul_(g).to(z.dtype), None, None, None, None


def soft_stairs(z: Tensor, biases: Tensor, steps: Tensor, temperature: float,
                backward_temperature: float | None = None) -> Tensor:
    """``sum_i s_i sigmoid(T (z - b_i))`` evaluated in a window (see the module docstring).

    Args:
        z: any shape, floating (half types are computed in float32). biases: ``Tensor[n]``,
            sorted ascending (unsorted ones fall back to the plain loop over all biases).
        steps: ``Tensor[n]`` step heights ``s_i``. temperature: ``T > 0`` of the forward.
        backward_temperature: ``Tb`` of the gradient (the surrogate
            ``sum_i s_i Tb sigmoid'(Tb (z - b_i))``); None: ``T``, the exact gradient.
    Returns ``Tensor`` shaped like ``z``, in its dtype; differentiable in ``z`` only (biases and
    steps get no gradient). Each term is within ``s_i * sigmoid(-c)`` of the exact one
    (:func:`saturation_margin`). Memory ``O(z.numel())``.
    """
    tb = temperature if backward_temperature is None else backward_temperature
    return _SoftStairs.apply(z, biases, steps, float(temperature), float(tb))


def soft_staircase(
    x: Tensor,
    levels: Tensor,
    biases: Tensor,
    temperature: float | Tensor,
    alpha: float | Tensor = 1.0,
    beta: float | Tensor = 1.0,
    offset: float | None = None,
) -> Tensor:
    """Differentiable staircase (in ``x``, ``alpha``, ``beta`` and ``biases``).

    Args:
        x: any shape. levels: ``Tensor[n+1]`` sorted. biases: ``Tensor[n]`` sorted.
        temperature: ``T > 0``. alpha, beta: output / input scales (floats or 0-dim tensors).
        offset: ``o``; default :func:`default_offset` (``-q_0``).
    Returns ``Tensor`` shaped like ``x``. The hot path (QN weights: biases are buffers) runs
    the windowed :func:`soft_stairs` on ``beta * x`` with the exact gradient (to ``x``,
    ``alpha``, ``beta``; memory ``O(x.numel())``); when ``biases`` (or a tensor ``temperature``)
    require a gradient, the reference broadcast over all biases with plain autograd (memory
    ``O(n * x.numel())``).
    """
    check_float(x, "x")
    steps = (levels[1:] - levels[:-1]).to(x.dtype)
    o = default_offset(levels) if offset is None else offset
    t_grad = isinstance(temperature, Tensor) and temperature.requires_grad
    if not (biases.requires_grad or t_grad):
        return alpha * (soft_stairs(beta * x, biases, steps, float(temperature)) - o)
    z = temperature * (beta * x.unsqueeze(-1) - biases.to(x.dtype))
    return alpha * ((torch.sigmoid(z) * steps).sum(-1) - o)


def hard_staircase(
    x: Tensor,
    levels: Tensor,
    biases: Tensor,
    alpha: float | Tensor = 1.0,
    beta: float | Tensor = 1.0,
    offset: float | None = None,
) -> Tensor:
    """The ``T -> inf`` limit: ``alpha * (sum_i s_i [beta x >= b_i] - o)``; no gradient."""
    check_float(x, "x")
    steps = (levels[1:] - levels[:-1]).to(x.dtype)
    o = default_offset(levels) if offset is None else offset
    idx = torch.bucketize((beta * x).detach().contiguous(), biases.to(x.dtype), right=True)
    cum = torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])
    return alpha * (cum[idx] - o)


def init_biases(x: Tensor, levels: Tensor, beta: float = 1.0) -> Tensor:
    """Biases from the data, as the paper's public code: 1-D k-means of ``beta * x`` with
    ``n + 1`` clusters; the biases are the midpoints between neighbouring sorted centroids.

    If the data has fewer distinct values than levels, the missing biases are placed midway
    between neighbouring levels. Returns ``Tensor[n]`` float32, sorted.
    """
    check_float(x, "x")
    k = levels.numel()
    cen = kmeans_1d((beta * x.detach()).reshape(-1), k)
    if cen.numel() < k:
        return ((levels[1:] + levels[:-1]) / 2).float()
    return ((cen[1:] + cen[:-1]) / 2).float()
