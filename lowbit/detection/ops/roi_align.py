"""RoIAlign (Mask R-CNN), pure PyTorch, with torchvision / detectron2 numerics.

For RoI ``(b, x1, y1, x2, y2)`` (image coordinates) and bin ``(ph, pw)`` of a ``P x Q`` output:

* ``offset = 0.5`` if ``aligned`` else ``0``; ``start_x = x1 * spatial_scale - offset``,
  ``end_x = x2 * spatial_scale - offset`` (likewise y). With ``aligned=False`` (the legacy
  Detectron behaviour, torchvision's default) the RoI width/height are clamped to ``>= 1``; with
  ``aligned=True`` the half-pixel shift makes a pixel-model box sample pixel centres correctly
  and no clamp is applied.
* ``bin_w = roi_w / Q``; the bin has ``gh x gw`` sample points at
  ``y = start_y + ph * bin_h + (iy + 0.5) * bin_h / gh`` (same for x), where ``gh = gw =
  sampling_ratio`` if ``sampling_ratio > 0`` and ``gh = ceil(roi_h / P)``, ``gw = ceil(roi_w / Q)``
  otherwise (adaptive, per RoI).
* Each point is bilinearly interpolated: a point with ``y < -1`` or ``y > H`` (or ``x < -1``
  or ``x > W``) contributes 0; otherwise ``y`` is clamped to ``[0, H - 1]`` and the four
  neighbours ``floor(y), floor(y) + 1`` (capped at ``H - 1``) are weighted ``(1 - ly), ly``.
* The bin value is the mean over its ``gh * gw`` points (``0`` when there are none).

Dtypes: coordinates in float32 for float16 / bfloat16 features (float64 for float64), the
gathered values and the weighted sum in the features' dtype; integer rois are accepted and
converted. Non-finite rois (a defined result, never an IndexError): a RoI with a NaN or
infinite coordinate, or whose scaled size is not finite, pools to all zeros (every sample
point weight 0, as a point outside the map; torchvision's adaptive grid is empty there too).
A batch index that is not an integer in ``[0, N)`` raises ``ValueError``.

Vectorisation: the interpolation separates into a y part and an x part, so for every RoI we
build the row indices / weights ``[P, 2 * Gh]`` and column indices / weights ``[Q, 2 * Gw]``
(the per-RoI ``1 / gh`` and validity folded into the weights); their outer product gives, for
every output element, its ``2Gh * 2Gw`` taps (pixel, weight). The taps are gathered at once as
C-vectors from a channels-last copy of the input and reduced with one batched matmul. Adaptive
sampling uses ``Gh = max over RoIs of gh`` points with the points ``iy >= gh`` of a RoI masked
out, so the result is exact, not an approximation; a single huge RoI makes every RoI pay for
its ``Gh``. RoIs are processed in chunks to bound memory. The op is differentiable w.r.t.
``input`` through autograd (gather → scatter-add); it is not differentiable w.r.t. ``rois``
(like torchvision's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.detection.ops._roi_utils import (
    batch_indices,
    check_input,
    convert_to_roi_format,
    coord_dtype,
    pair,
)

__all__ = ["RoIAlign", "roi_align"]

# Max gathered elements per chunk of RoIs (~64 MB in float32).
_CHUNK_ELEMS = 1 << 24
# Most adaptive sample points per bin: beyond it the tap index alone needs gigabytes per RoI.
_MAX_GRID = 1 << 20


def _axis(
    start: Tensor, bin_size: Tensor, grid: Tensor, g_max: int, bins: int, size: int
) -> tuple[Tensor, Tensor]:
    """Indices ``[K, bins, 2 * g_max]`` (int64) and weights (same shape) along one axis."""
    dtype = start.dtype
    it = torch.arange(g_max, device=start.device)
    p = torch.arange(bins, device=start.device, dtype=dtype)
    g = grid.clamp(min=1).to(dtype)[:, None, None]
    bs = bin_size[:, None, None]
    coords = start[:, None, None] + p[None, :, None] * bs
    coords = coords + (it.to(dtype)[None, None, :] + 0.5) * bs / g
    valid = (coords >= -1.0) & (coords <= size) & (it[None, None, :] < grid[:, None, None])
    # Invalid (outside, or NaN) points get weight 0; park them at 0 so that neither their
    # index nor their fraction is garbage (NaN * 0 is NaN).
    c = torch.where(valid, coords, torch.zeros_like(coords)).clamp(min=0, max=size - 1)
    low = c.floor()
    frac = c - low
    low = low.long()
    high = (low + 1).clamp(max=size - 1)
    scale = valid.to(dtype) / g
    idx = torch.stack((low, high), dim=-1).flatten(2)
    w = torch.stack(((1 - frac) * scale, frac * scale), dim=-1).flatten(2)
    return idx, w


def roi_align(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign; see the module docstring for the exact numerics.

    Args:
        input: ``Tensor[N, C, H, W]`` float feature map.
        rois: ``Tensor[K, 5]`` ``(batch_idx, x1, y1, x2, y2)`` in image coordinates (0-based,
            continuous), or a list of per-image ``Tensor[K_i, 4]``.
        output_size: ``P`` or ``(P, Q)``.
        spatial_scale: feature-map size / image size (``1 / stride``).
        sampling_ratio: sample points per bin side; ``<= 0`` is adaptive
            (``ceil(roi_size / output_size)`` per RoI).
        aligned: shift by -0.5 pixel (detectron2's ``aligned=True``).

    Returns:
        ``Tensor[K, C, P, Q]`` in the input's dtype and device (``K = 0`` gives an empty tensor
        of that shape).
    """
    check_input(input, "roi_align")
    rois = convert_to_roi_format(rois)
    ph, pw = pair(output_size)
    n, c, h, w = input.shape
    k = rois.shape[0]
    dtype = coord_dtype(input)
    r = rois.detach().to(device=input.device, dtype=dtype)
    batch = batch_indices(r[:, 0], n, "roi_align")
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    roi_w = r[:, 3] * spatial_scale - offset - x1
    roi_h = r[:, 4] * spatial_scale - offset - y1
    # A RoI with a non-finite coordinate or size pools to zeros: zero points per bin.
    finite = torch.isfinite(torch.stack((x1, y1, roi_w, roi_h), dim=1)).all(dim=1)
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    zero = torch.zeros_like(roi_h)
    roi_h = torch.where(finite, roi_h, zero)
    roi_w = torch.where(finite, roi_w, zero)
    x1 = torch.where(finite, x1, zero)
    y1 = torch.where(finite, y1, zero)
    bin_h = roi_h / ph
    bin_w = roi_w / pw
    if sampling_ratio > 0:
        gh = torch.full((k,), sampling_ratio, dtype=torch.int64, device=input.device)
        gh = torch.where(finite, gh, torch.zeros_like(gh))
        gw = gh
    else:
        # clamp before .long(): a float beyond int64 converts to garbage
        gh = torch.ceil(roi_h / ph).clamp(min=0, max=_MAX_GRID).long()
        gw = torch.ceil(roi_w / pw).clamp(min=0, max=_MAX_GRID).long()
    gh_max = max(int(gh.max()), 1) if k > 0 else 1
    gw_max = max(int(gw.max()), 1) if k > 0 else 1
    if gh_max * gw_max > _MAX_GRID:
        i = int(torch.argmax(gh * gw))
        raise ValueError(
            f"roi_align: RoI {i} needs an adaptive grid of {int(gh[i])} x {int(gw[i])} sample "
            f"points per bin (over {_MAX_GRID}); pass sampling_ratio > 0 or smaller rois"
        )
    yi, wy = _axis(y1, bin_h, gh, gh_max, ph, h)
    xi, wx = _axis(x1, bin_w, gw, gw_max, pw, w)
    wy = wy.to(input.dtype)
    wx = wx.to(input.dtype)

    # Channels-last rows so that every gathered element is a contiguous C-vector.
    flat = input.permute(0, 2, 3, 1).reshape(n * h * w, c)
    ly, lx = yi.shape[2], xi.shape[2]
    taps = ly * lx  # pixels read per output element (4 per sample point)
    # [K, P, Q, Ly, Lx]: row of `flat` and weight of every tap of every output element.
    index = (
        (batch * (h * w))[:, None, None, None, None]
        + yi[:, :, None, :, None] * w
        + xi[:, None, :, None, :]
    )
    weight = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    chunk = max(1, _CHUNK_ELEMS // (ph * pw * taps * max(c, 1)))
    outs = []
    for s in range(0, max(k, 1), chunk):
        idx = index[s : s + chunk]
        kc = idx.shape[0]
        vals = flat.index_select(0, idx.reshape(-1)).view(kc * ph * pw, taps, c)
        wts = weight[s : s + chunk].reshape(kc * ph * pw, 1, taps)
        outs.append(torch.bmm(wts, vals).view(kc, ph, pw, c))
    out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    return out.permute(0, 3, 1, 2).contiguous()


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (same arguments)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
