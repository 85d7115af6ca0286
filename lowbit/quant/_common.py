"""Input checks and small helpers shared by the quantizers (no state, no modules)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(w: Tensor, name: str = "w", finite: bool = True) -> None:
    """Raise ValueError unless ``w`` is a floating tensor (and, if ``finite``, has no NaN/Inf)."""
    if not isinstance(w, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor, got dtype {w.dtype}")
    if finite and w.numel() and not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); refusing to quantize")


def check_bits(bits: int, lo: int = 2, hi: int = 8, what: str = "bits") -> int:
    """Validate an integer bit-width in ``[lo, hi]`` and return it.

    The one bit-width check of lowbit: the quantizers' parameter dataclasses call it through
    :func:`check_params_bits` with their ``BITS`` range, and so does everything that builds one
    (recipes, :mod:`lowbit.nn.methods`). ValueError naming ``what``, the value and the range
    (``"{what} must be {lo}"`` when ``lo == hi``).
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{what} must be an int in [{lo}, {hi}], got {bits!r}")
    if not lo <= bits <= hi:
        if lo == hi:
            raise ValueError(f"{what} must be {lo}, got {bits}")
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {bits}")
    return bits


def bit_range(params_cls: type) -> tuple[int, int]:
    """The ``(lo, hi)`` bit-widths a quantizer's parameter dataclass accepts: its class
    attribute ``BITS`` (``(2, 8)`` when it has none)."""
    lo, hi = getattr(params_cls, "BITS", (2, 8))
    return int(lo), int(hi)


def default_bits(params_cls: type) -> int:
    """The default bit-width of a quantizer: the default of its parameter dataclass's ``bits``
    field (the one place each method's default is written)."""
    for f in dataclasses.fields(params_cls):
        if f.name == "bits":
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{params_cls.__name__}.bits has no default")
            return int(f.default)
    raise ValueError(f"{params_cls.__name__} has no `bits` field")


def check_params_bits(p: object) -> None:
    """``__post_init__`` helper of the parameter dataclasses: :func:`check_bits` of ``p.bits``
    in :func:`bit_range` of its class; the message starts with the class attribute
    ``BITS_WHAT`` (default ``"bits"``)."""
    cls = type(p)
    check_bits(p.bits, *bit_range(cls), what=getattr(cls, "BITS_WHAT", "bits"))  # type: ignore[attr-defined]


def compute_dtype(w: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (half types are upcast for the math)."""
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def channel_view(w: Tensor, axis: int) -> Tensor:
    """Return ``w`` reshaped to ``[C, -1]`` with channel ``axis`` first (a copy if needed)."""
    if w.dim() == 0:
        return w.reshape(1, 1)
    axis = axis % w.dim()
    return w.movedim(axis, 0).reshape(w.shape[axis], -1)


def broadcast_channel(v: Tensor, w: Tensor, axis: int) -> Tensor:
    """Shape a per-channel vector ``v: Tensor[C]`` so it broadcasts against ``w`` along ``axis``."""
    shape = [1] * w.dim()
    shape[axis % w.dim()] = -1
    return v.reshape(shape)


def as_rows(
    w: Tensor, per_channel: bool, axis: int = 0, name: str = "w"
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``w`` as ``Tensor[R, L]`` rows (R = channels along ``axis``, or 1) and the inverse.

    The rows hold each channel's elements in ``w.select(axis, c).reshape(-1)`` order (a copy
    only when ``axis != 0`` or ``w`` is not contiguous). ``restore(t)`` maps a ``Tensor[R, L]``
    back to ``w``'s shape. ValueError for a 0-dim ``w`` or an ``axis`` out of range when
    ``per_channel``.
    """
    if not per_channel:
        return w.reshape(1, w.numel()), lambda t: t.reshape(w.shape)
    if w.dim() == 0:
        raise ValueError(f"{name}: per-channel quantization needs at least 1 dim, "
                         "got a 0-dim tensor")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -w.dim() <= axis < w.dim():
        raise ValueError(f"{name}: axis {axis} out of range for shape {tuple(w.shape)}")
    ax = axis % w.dim()
    moved = w.movedim(ax, 0)
    shape = moved.shape
    rows = moved.reshape(shape[0], math.prod(shape[1:]))
    return rows, lambda t: t.reshape(shape).movedim(0, ax)


class ParamsBits:
    """Mixin for catalogue entries that carry a parameter dataclass ``params_cls``: their
    default bit-width and accepted range are read from it (the one place they are decided)."""

    params_cls: type

    @property
    def default_bits(self) -> int:
        """The bit-width used when none is given (``params_cls``'s ``bits`` default)."""
        return default_bits(self.params_cls)

    @property
    def bit_range(self) -> tuple[int, int]:
        """``(lo, hi)``: the accepted bit-widths (``params_cls.BITS``)."""
        return bit_range(self.params_cls)
