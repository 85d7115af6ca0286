"""Scaled-sign baselines: TWN (ternary) and binary (BinaryConnect / XNOR weights)."""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.quant._common import check_float, compute_dtype

__all__ = ["twn", "binary"]


def twn(w: Tensor, delta_factor: float = 0.7) -> tuple[Tensor, Tensor]:
    """Ternary Weight Networks (Li & Liu 2016): threshold ``delta = 0.7 * mean|W|``.

    Weights with ``|w| > delta`` (strict) keep their sign, the rest become 0; the scale
    ``alpha`` is the mean magnitude of the kept weights. Returns ``(wq, alpha)`` with
    ``wq = alpha * {-1, 0, 1}`` in ``w``'s dtype and ``alpha`` a 0-dim float tensor.
    Idempotent: quantizing ``wq`` again returns ``wq``. All-zero input gives zeros, alpha 0.
    """
    check_float(w)
    if delta_factor <= 0:
        raise ValueError(f"delta_factor must be > 0, got {delta_factor}")
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        return w.detach().clone(), x.new_zeros(())
    a = x.abs()
    delta = delta_factor * a.mean()
    keep = a > delta
    k = keep.sum()
    alpha = torch.where(k > 0, (a * keep).sum() / k.clamp(min=1), a.new_zeros(()))
    wq = torch.sign(x) * keep * alpha
    return wq.to(w.dtype), alpha


def binary(w: Tensor) -> tuple[Tensor, Tensor]:
    """Binary weights with the XNOR-Net scale: ``wq = mean|W| * sign(W)``, ``sign(0) = +1``.

    Returns ``(wq, alpha)``; ``alpha`` a 0-dim float tensor. Idempotent.
    """
    check_float(w)
    x = w.detach().to(compute_dtype(w))
    if x.numel() == 0:
        return w.detach().clone(), x.new_zeros(())
    alpha = x.abs().mean()
    sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return (sign * alpha).to(w.dtype), alpha
