"""Quantization Networks (Yang et al., CVPR 2019): quantization as a sum of sigmoids.

``y = alpha * (sum_i s_i * sigmoid(T * (beta * x - b_i)) - o)`` with ``n`` steps between
``n + 1`` sorted integer levels ``q_0 < ... < q_n`` (``s_i = q_{i+1} - q_i``), biases ``b_i``
(the step positions on the ``beta``-scaled axis), offset ``o`` (``(q_n - q_0)/2 - ...``:
see :func:`default_offset`; 0 for unsigned activations) and temperature ``T``. As ``T`` grows
the soft staircase converges to the hard one, ``alpha * (sum_i s_i [beta x >= b_i] - o)``, which
is what inference uses (a point exactly on a bias goes up).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.quant._common import check_float
from lowbit.quant.cluster import kmeans_1d

__all__ = [
    "levels_for_bits",
    "default_offset",
    "soft_staircase",
    "hard_staircase",
    "init_biases",
]


def levels_for_bits(bits: int, signed: bool = True) -> Tensor:
    """Integer levels used by the paper's code: signed ``{-(2**(b-1)-1), ..., 2**(b-1)-1}``
    (b = 2: ternary ``{-1, 0, 1}``); unsigned ``{0, ..., 2**b - 1}``."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")
    if signed:
        if bits == 1:
            return torch.tensor([-1.0, 1.0])
        q = (1 << (bits - 1)) - 1
        return torch.arange(-q, q + 1, dtype=torch.float32)
    return torch.arange(0, 1 << bits, dtype=torch.float32)


def default_offset(levels: Tensor) -> float:
    """Offset ``o`` so that the hard staircase starts at the lowest level: ``o = -q_0``."""
    return float(-levels[0])


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
    Returns ``Tensor`` shaped like ``x``; memory ``O(n * x.numel())``.
    """
    check_float(x, "x")
    steps = (levels[1:] - levels[:-1]).to(x.dtype)
    o = default_offset(levels) if offset is None else offset
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
