"""Position-sensitive RoI pooling (R-FCN), pure PyTorch, with the original Caffe semantics.

For input ``Tensor[N, C_out * k * k, H, W]`` and RoI ``(b, x1, y1, x2, y2)`` in image pixels
(R-FCN's ``PSROIPoolingLayer``, ``pooled_size = group_size = k``):

* ``start_x = round(x1) * spatial_scale``, ``end_x = (round(x2) + 1) * spatial_scale`` (likewise
  y). ``round`` is C's ``round``: half away from zero. The ``+ 1`` is the reference's inclusive
  pixel convention (a box ``[x1, x2]`` covers pixels ``x1..x2``); it is kept as is so that
  reference-trained behaviour carries over, even though lowbit boxes are continuous.
* ``roi_w = max(end_x - start_x, 0.1)``, ``bin_w = roi_w / k`` (likewise h).
* Bin ``(i, j)`` (row ``i``, column ``j``) covers rows ``floor(i * bin_h + start_y)`` to
  ``ceil((i + 1) * bin_h + start_y)`` (end exclusive) and the corresponding columns, both
  clipped to ``[0, H]`` / ``[0, W]``.
* Output channel ``c_out`` of bin ``(i, j)`` reads input channel ``(c_out * k + i) * k + j``
  and is the **average** of that channel over the bin's pixels; an empty bin gives 0.

Coordinates are computed in the input's dtype, as the reference does in its ``Dtype``
(float32 for float16 / bfloat16 input); integer rois are accepted and converted. ``round`` is
exact: ``0.49999997`` rounds to 0 like C's ``round``, where ``sign(x) * floor(|x| + 0.5)``
gives 1 (``|x| + 0.5`` rounds up to 1.0 in float32).

Non-finite rois (a defined result, never an IndexError): a RoI with a NaN or infinite
coordinate pools to all zeros (every bin empty). A batch index that is not an integer in
``[0, N)`` raises ``ValueError``.

Vectorisation: bin sums come from an integral image (a double ``cumsum`` over H and W with a
zero first row and column), four gathers per output element. The integral image is
accumulated in float64 so large maps do not lose precision to cancellation; the result is cast
back to the input's dtype. Differentiable w.r.t. ``input`` (autograd: scatter into the
integral image, then a reversed cumsum); not w.r.t. ``rois``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.detection.ops._roi_utils import (
    batch_indices,
    check_input,
    convert_to_roi_format,
    coord_dtype,
)

__all__ = ["PSRoIPool", "ps_roi_pool"]


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: nearest integer, halves away from zero, exact for every float (``x -
    trunc(x)`` is exact, so no ``+ 0.5`` can round up a value just below a half)."""
    t = torch.trunc(x)
    frac = x - t
    return t + torch.where(frac.abs() >= 0.5, torch.sign(frac), torch.zeros_like(frac))


def _bin_bounds(start: Tensor, bin_size: Tensor, k: int, size: int) -> tuple[Tensor, Tensor]:
    """``[K, k]`` int64 bin starts / ends (end exclusive), clipped to ``[0, size]``."""
    i = torch.arange(k, device=start.device, dtype=start.dtype)
    lo = torch.floor(i[None, :] * bin_size[:, None] + start[:, None])
    hi = torch.ceil((i[None, :] + 1) * bin_size[:, None] + start[:, None])
    return lo.clamp(0, size).long(), hi.clamp(0, size).long()


def ps_roi_pool(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int,
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI average pooling; see the module docstring for the semantics.

    Args:
        input: ``Tensor[N, C_out * k * k, H, W]`` position-sensitive score maps.
        rois: ``Tensor[K, 5]`` ``(batch_idx, x1, y1, x2, y2)`` in image pixels, or a list of
            per-image ``Tensor[K_i, 4]``.
        output_size: ``k``, the number of bins per side (R-FCN's ``group_size``).
        spatial_scale: feature-map size / image size (``1 / stride``).

    Returns:
        ``Tensor[K, C_out, k, k]``, dtype and device of ``input``.
    """
    check_input(input, "ps_roi_pool")
    k = int(output_size)
    if k <= 0:
        raise ValueError(f"ps_roi_pool: output_size must be positive, got {output_size}")
    n, c, h, w = input.shape
    if c % (k * k) != 0:
        raise ValueError(f"ps_roi_pool: input channels ({c}) must be a multiple of k*k = {k * k}")
    c_out = c // (k * k)
    rois = convert_to_roi_format(rois)
    dtype = coord_dtype(input)
    r = rois.detach().to(device=input.device, dtype=dtype)
    batch = batch_indices(r[:, 0], n, "ps_roi_pool")
    finite = torch.isfinite(r[:, 1:]).all(dim=1)
    r = torch.where(finite[:, None], r, torch.zeros_like(r))
    start_x = _round_half_away(r[:, 1]) * spatial_scale
    start_y = _round_half_away(r[:, 2]) * spatial_scale
    end_x = (_round_half_away(r[:, 3]) + 1.0) * spatial_scale
    end_y = (_round_half_away(r[:, 4]) + 1.0) * spatial_scale
    roi_w = (end_x - start_x).clamp(min=0.1)
    roi_h = (end_y - start_y).clamp(min=0.1)
    hs, he = _bin_bounds(start_y, roi_h / k, k, h)  # [K, k] rows
    ws, we = _bin_bounds(start_x, roi_w / k, k, w)  # [K, k] columns
    he = torch.where(finite[:, None], he, hs)  # non-finite RoI: every bin empty

    integral = input.to(torch.float64).cumsum(dim=2).cumsum(dim=3)
    integral = F.pad(integral, (1, 0, 1, 0)).view(n, c_out, k, k, h + 1, w + 1)

    dev = input.device
    bi = batch[:, None, None, None]
    ci = torch.arange(c_out, device=dev)[None, :, None, None]
    ii = torch.arange(k, device=dev)[None, None, :, None]
    jj = torch.arange(k, device=dev)[None, None, None, :]
    h0, h1 = hs[:, None, :, None], he[:, None, :, None]
    w0, w1 = ws[:, None, None, :], we[:, None, None, :]
    total = (
        integral[bi, ci, ii, jj, h1, w1]
        - integral[bi, ci, ii, jj, h0, w1]
        - integral[bi, ci, ii, jj, h1, w0]
        + integral[bi, ci, ii, jj, h0, w0]
    )  # [K, C_out, k, k]
    area = ((h1 - h0) * (w1 - w0)).to(torch.float64)  # [K, 1, k, k]
    out = torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))
    return out.to(input.dtype)


class PSRoIPool(nn.Module):
    """Module form of :func:`ps_roi_pool`.

    Args:
        output_size: ``k`` bins per side.
        spatial_scale: ``1 / stride`` of the score maps.
    """

    def __init__(self, output_size: int, spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
