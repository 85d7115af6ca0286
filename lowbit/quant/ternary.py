"""Scaled-sign baselines: TWN (ternary) and binary (BinaryConnect / XNOR weights).

Means and sums are accumulated in float64 (whatever the input dtype), so weights near the
float32 limit (``[3e38, -3e38, 1]``) give finite scales instead of overflowing to inf.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.quant._common import as_rows, check_float, compute_dtype

__all__ = ["twn", "binary"]


def twn(
    w: Tensor, delta_factor: float = 0.7, per_channel: bool = False, axis: int = 0
) -> tuple[Tensor, Tensor]:
    """Ternary Weight Networks (Li & Liu 2016): threshold ``delta = 0.7 * mean|W|``.

    Weights with ``|w| > delta`` (strict) keep their sign, the rest become 0; the scale
    ``alpha`` is the mean magnitude of the kept weights. Returns ``(wq, alpha)`` with
    ``wq = alpha * {-1, 0, 1}`` in ``w``'s dtype and ``alpha`` a 0-dim tensor in the compute
    dtype (float64 for float64 input, float32 otherwise). With ``per_channel`` each slice along
    ``axis`` gets its own ``delta`` and ``alpha`` (``alpha: Tensor[C]``). Idempotent:
    quantizing ``wq`` again returns ``wq``. All-zero input (or channel) gives zeros, alpha 0.
    """
    check_float(w)
    if not delta_factor > 0:
        raise ValueError(f"delta_factor must be > 0, got {delta_factor}")
    cdt = compute_dtype(w)
    x = w.detach()
    rows, restore = as_rows(x, per_channel, axis)
    r = rows.shape[0]
    if rows.numel() == 0:
        alpha = torch.zeros(r, dtype=cdt, device=w.device)
        return w.detach().clone(), alpha if per_channel else alpha.new_zeros(())
    a = rows.abs().double()
    delta = delta_factor * a.mean(1, keepdim=True)
    keep = a > delta
    k = keep.sum(1)
    alpha = torch.where(k > 0, torch.where(keep, a, 0.0).sum(1) / k.clamp(min=1), 0.0).to(cdt)
    wq = torch.sign(rows).to(cdt) * keep * alpha[:, None]
    wq = restore(wq).to(w.dtype)
    return wq, alpha if per_channel else alpha[0]


def binary(w: Tensor) -> tuple[Tensor, Tensor]:
    """Binary weights with the XNOR-Net scale: ``wq = mean|W| * sign(W)``, ``sign(0) = +1``.

    Returns ``(wq, alpha)``; ``alpha`` a 0-dim tensor in the compute dtype (the mean is taken in
    float64, so it is finite whenever ``w`` is). Idempotent.
    """
    check_float(w)
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        return w.detach().clone(), x.new_zeros(())
    alpha = x.abs().double().mean().to(x.dtype)
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return (sign * alpha).to(w.dtype), alpha
