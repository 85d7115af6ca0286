"""Anchor generators: :class:`AnchorGenerator` (one feature map, torchvision's convention, the
two-stage detectors' RPN) and :class:`DefaultBoxGenerator` (SSD's default boxes over several
maps).

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

Default boxes (SSD, "SSD: Single Shot MultiBox Detector"; ssd.pytorch / Caffe convention):
map ``k`` of ``m`` has scale ``s_k = min_sizes[k] / S`` and an extra box ``s'_k = sqrt(s_k *
max_sizes[k] / S)`` for an ``S x S`` input; :func:`ssd_box_sizes` gives Caffe's sizes. Each
location of map ``k`` (grid ``f_k = S / steps[k]``) has the boxes, in this order::

    (cx, cy, s_k, s_k), (cx, cy, s'_k, s'_k),
    then for each a in aspect_ratios[k]: (cx, cy, s_k sqrt(a), s_k / sqrt(a)),
                                         (cx, cy, s_k / sqrt(a), s_k sqrt(a))

with ``cx = (j + 0.5) / f_k``, ``cy = (i + 0.5) / f_k`` (``(w, h)`` in units of ``S``), clipped
to ``[0, 1]`` (``clip=True``), location-major (row ``i``, column ``j``, then box).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lowbit.detection.ops.boxes import cxcywh_to_xyxy

__all__ = ["AnchorGenerator", "DefaultBoxGenerator", "make_base_anchors", "ssd_box_sizes"]


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


def ssd_box_sizes(
    image_size: float, num_maps: int, min_ratio: float = 0.2, max_ratio: float = 0.9
) -> tuple[list[float], list[float]]:
    """Caffe SSD's default-box sizes in pixels: ``(min_sizes, max_sizes)``, one per map.

    Ratios in whole percent: ``r_min = floor(100 min_ratio)``, ``step = floor((100 max_ratio -
    r_min) / (m - 2))``; map 1 gets ``r_min / 2`` (conv4_3's smaller scale), maps ``2 ... m``
    get ``r_min + (k - 2) step`` and ``max_sizes[k] = min_sizes[k + 1]``, the last one
    ``r_min + (m - 1) step``. ``ssd_box_sizes(300, 6)`` is ``([30, 60, 111, 162, 213, 264],
    [60, 111, 162, 213, 264, 315])``.
    """
    if num_maps < 2:
        raise ValueError(f"ssd_box_sizes needs at least 2 maps, got {num_maps}")
    if not 0 < min_ratio < max_ratio:
        raise ValueError(f"need 0 < min_ratio < max_ratio, got {min_ratio}, {max_ratio}")
    r_min = math.floor(min_ratio * 100 + 1e-9)
    r_max = math.floor(max_ratio * 100 + 1e-9)
    step = (r_max - r_min) // (num_maps - 2) if num_maps > 2 else r_max - r_min
    ratios = [r_min / 2] + [r_min + k * step for k in range(num_maps)]
    sizes = [image_size * r / 100 for r in ratios]
    return sizes[:num_maps], sizes[1 : num_maps + 1]


class DefaultBoxGenerator(nn.Module):
    """SSD default boxes (the formula and order are in the module docstring).

    Args:
        min_sizes, max_sizes: per map, pixels of an ``image_size`` input (``s_k``, ``s_{k+1}``).
        aspect_ratios: per map, the extra ratios ``a`` (each gives ``a`` and ``1 / a``).
        steps: per map, the stride in pixels of an ``image_size`` input; the grid of map ``k``
            is ``f_k = image_size / steps[k]`` (ssd.pytorch). ``None``: the feature map's own
            size.
        image_size: the side ``S`` the sizes and steps refer to.
        clip: clip the ``(cx, cy, w, h)`` boxes to ``[0, 1]`` (reference behaviour).
    """

    def __init__(
        self,
        min_sizes: Sequence[float],
        max_sizes: Sequence[float],
        aspect_ratios: Sequence[Sequence[float]],
        steps: Sequence[float] | None,
        image_size: float,
        clip: bool = True,
    ) -> None:
        super().__init__()
        m = len(min_sizes)
        bad_steps = steps is not None and len(steps) != m
        if not (len(max_sizes) == len(aspect_ratios) == m) or bad_steps:
            raise ValueError(
                f"min_sizes, max_sizes, aspect_ratios (and steps) need one entry per map, got "
                f"{len(min_sizes)}, {len(max_sizes)}, {len(aspect_ratios)}"
                f"{'' if steps is None else ', ' + str(len(steps))}"
            )
        if any(s <= 0 for s in min_sizes) or any(s <= 0 for s in max_sizes) or image_size <= 0:
            raise ValueError("default box sizes and image_size must be > 0")
        if any(a <= 0 for ars in aspect_ratios for a in ars):
            raise ValueError(f"aspect ratios must be > 0, got {aspect_ratios}")
        self.min_sizes = tuple(float(s) for s in min_sizes)
        self.max_sizes = tuple(float(s) for s in max_sizes)
        self.aspect_ratios = tuple(tuple(float(a) for a in ars) for ars in aspect_ratios)
        self.steps = None if steps is None else tuple(float(s) for s in steps)
        self.image_size = float(image_size)
        self.clip = bool(clip)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_boxes_per_location(self) -> list[int]:
        """``2 + 2 len(aspect_ratios[k])`` per map."""
        return [2 + 2 * len(a) for a in self.aspect_ratios]

    def cxcywh(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Normalised default boxes ``Tensor[P, 4]`` ``(cx, cy, w, h)`` in units of the input
        side, for maps of ``(H_k, W_k)``; ``P = sum H_k W_k A_k``."""
        if len(feature_sizes) != len(self.min_sizes):
            raise ValueError(
                f"{len(feature_sizes)} feature maps for {len(self.min_sizes)} default-box specs"
            )
        out = []
        for k, (fh, fw) in enumerate(feature_sizes):
            if self.steps is None:
                gy, gx = float(fh), float(fw)
            else:
                gy = gx = self.image_size / self.steps[k]
            cy = (torch.arange(fh, dtype=torch.float64) + 0.5) / gy
            cx = (torch.arange(fw, dtype=torch.float64) + 0.5) / gx
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            s = self.min_sizes[k] / self.image_size
            s2 = math.sqrt(s * self.max_sizes[k] / self.image_size)
            wh = [(s, s), (s2, s2)]
            for a in self.aspect_ratios[k]:
                r = math.sqrt(a)
                wh += [(s * r, s / r), (s / r, s * r)]
            wh_t = torch.tensor(wh, dtype=torch.float64)  # [A, 2]
            centers = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # [HW, 1, 2]
            boxes = torch.cat(
                (centers.expand(-1, len(wh), 2), wh_t[None].expand(centers.shape[0], -1, 2)), -1
            )
            out.append(boxes.reshape(-1, 4))
        boxes = torch.cat(out) if out else torch.zeros((0, 4), dtype=torch.float64)
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        return boxes.to(dtype=dtype, device=device)

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        image_size: tuple[int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Default boxes ``Tensor[P, 4]`` xyxy in pixels of an ``(H, W)`` input (the
        normalised boxes times ``W`` and ``H``); cached per sizes, dtype and device."""
        key = (tuple(map(tuple, feature_sizes)), tuple(image_size), dtype, str(device))
        if key not in self._cache:
            h, w = image_size
            scale = torch.tensor([w, h, w, h], dtype=torch.float64)
            boxes = cxcywh_to_xyxy(self.cxcywh(feature_sizes, torch.float64)) * scale
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = boxes.to(dtype=dtype, device=device)
        return self._cache[key]

    def extra_repr(self) -> str:
        return (
            f"min_sizes={self.min_sizes}, max_sizes={self.max_sizes}, "
            f"aspect_ratios={self.aspect_ratios}, steps={self.steps}, clip={self.clip}"
        )
