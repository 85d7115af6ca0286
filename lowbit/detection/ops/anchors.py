"""Anchor generator for one feature map.

Conventions (torchvision's ``AnchorGenerator``):

* Base anchors are centred at ``(0, 0)``. For every aspect ratio ``r = h / w`` and size ``s``
  (aspect-ratio-major, then size)::

      h_ratio = sqrt(r); w_ratio = 1 / h_ratio
      w = w_ratio * s; h = h_ratio * s
      base = round([-w / 2, -h / 2, w / 2, h / 2])

  ``round`` is ``torch.round``: half to even, exactly as torchvision (so an anchor of size 45,
  ratio 1 is ``[-22, -22, 22, 22]``: ``22.5`` rounds to ``22``). The area is ``s**2`` up to
  that rounding.
* The anchors of the cell at row ``y``, column ``x`` are the base anchors translated by
  ``(x * stride_w, y * stride_h)``: the grid offset is ``index * stride`` (the cell's top-left
  corner in image pixels, not its centre).
* Ordering of the output ``Tensor[H * W * A, 4]``: location-major (row ``y``, then column
  ``x``), then anchor (the base-anchor order above); i.e. anchor ``a`` of cell ``(y, x)`` is
  row ``(y * W + x) * A + a``. This matches a head output ``[N, A * 4, H, W]`` permuted to
  ``[N, H, W, A, 4]`` and flattened.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "make_base_anchors"]


def make_base_anchors(
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Base anchors centred at 0, ``Tensor[len(aspect_ratios) * len(sizes), 4]``.

    Row ``i * len(sizes) + j`` has aspect ratio ``aspect_ratios[i]`` (height / width) and size
    ``sizes[j]``; coordinates are rounded half-to-even (torchvision's convention).
    """
    scales = torch.as_tensor(list(sizes), dtype=dtype, device=device)
    ratios = torch.as_tensor(list(aspect_ratios), dtype=dtype, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for every location of one feature map (see the module docstring).

    Args:
        sizes: anchor sizes in image pixels (square root of the area), e.g.
            ``(128, 256, 512)``.
        aspect_ratios: height / width ratios, e.g. ``(0.5, 1.0, 2.0)``.
        stride: feature-map stride in image pixels, one int or ``(stride_h, stride_w)``.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (128.0, 256.0, 512.0),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride: int | tuple[int, int] = 16,
    ) -> None:
        super().__init__()
        if not sizes or not aspect_ratios:
            raise ValueError("AnchorGenerator needs at least one size and one aspect ratio")
        if any(s <= 0 for s in sizes) or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"sizes and aspect ratios must be > 0, got {sizes}, {aspect_ratios}")
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if sh <= 0 or sw <= 0:
            raise ValueError(f"stride must be > 0, got {stride}")
        self.stride = (int(sh), int(sw))

    @property
    def num_anchors_per_location(self) -> int:
        """``A = len(sizes) * len(aspect_ratios)``."""
        return len(self.sizes) * len(self.aspect_ratios)

    def grid_anchors(
        self,
        grid_size: tuple[int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Anchors for a ``(H, W)`` grid: ``Tensor[H * W * A, 4]`` in image pixels."""
        h, w = grid_size
        base = make_base_anchors(self.sizes, self.aspect_ratios, dtype, device)
        sh, sw = self.stride
        shifts_x = torch.arange(w, dtype=dtype, device=device) * sw
        shifts_y = torch.arange(h, dtype=dtype, device=device) * sh
        sy, sx = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        sx = sx.reshape(-1)
        sy = sy.reshape(-1)
        shifts = torch.stack((sx, sy, sx, sy), dim=1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def forward(self, feature: Tensor) -> Tensor:
        """Anchors for ``feature`` (``Tensor[N, C, H, W]``): ``Tensor[H * W * A, 4]``.

        The same anchors serve every image of the batch; dtype and device follow ``feature``
        (float32 for non-float features).
        """
        dtype = feature.dtype if feature.is_floating_point() else torch.float32
        return self.grid_anchors(tuple(feature.shape[-2:]), dtype, feature.device)
