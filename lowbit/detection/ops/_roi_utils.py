"""Shared argument handling for the RoI ops."""

from __future__ import annotations

import torch
from torch import Tensor


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``7 -> (7, 7)``; ``(7, 5) -> (7, 5)``; validated positive."""
    if isinstance(size, int):
        out = (size, size)
    else:
        out = (int(size[0]), int(size[1]))
        if len(size) != 2:
            raise ValueError(f"output_size must be an int or (h, w), got {size}")
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"output_size must be positive, got {size}")
    return out


def convert_to_roi_format(rois: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Accept ``Tensor[K, 5]`` ``(batch_idx, x1, y1, x2, y2)`` or a list of per-image
    ``Tensor[K_i, 4]`` boxes, and return ``Tensor[K, 5]``."""
    if isinstance(rois, (list, tuple)):
        if len(rois) == 0:
            raise ValueError("rois list is empty; pass Tensor[0, 5] for no rois")
        parts = []
        for i, boxes in enumerate(rois):
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"rois[{i}] must be Tensor[K, 4], got {tuple(boxes.shape)}")
            idx = torch.full((boxes.shape[0], 1), i, dtype=boxes.dtype, device=boxes.device)
            parts.append(torch.cat((idx, boxes), dim=1))
        return torch.cat(parts, dim=0)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must be Tensor[K, 5] (batch_idx, x1, y1, x2, y2), got {tuple(rois.shape)}"
        )
    return rois


def check_input(input: Tensor, name: str) -> None:
    if input.dim() != 4:
        raise ValueError(f"{name}: input must be Tensor[N, C, H, W], got {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{name}: input must be floating point, got {input.dtype}")


def coord_dtype(input: Tensor) -> torch.dtype:
    """Coordinates are computed in the input's dtype (as the reference kernels do with their
    template type), except that half precision inputs use float32 coordinates."""
    return input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32


def batch_indices(col: Tensor, n: int, name: str) -> Tensor:
    """``rois[:, 0]`` as int64 batch indices, checked to be integers in ``[0, n)``.

    Raises:
        ValueError: naming the op and the first bad RoI (a NaN, fractional or out-of-range
            batch index would otherwise be an IndexError or a silent read of another image).
    """
    bad = ~torch.isfinite(col) | (col < 0) | (col >= n) | (col != torch.floor(col))
    if col.numel() and bool(bad.any()):
        i = int(torch.nonzero(bad).flatten()[0])
        raise ValueError(f"{name}: rois[{i}, 0] = {col[i].item()} is not a batch index in [0, {n})")
    return col.long()
