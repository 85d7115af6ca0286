"""Box utilities and the box coder.

Convention (see DESIGN.md): boxes are float ``(x1, y1, x2, y2)``, 0-based, continuous, so a
box's width is ``x2 - x1`` (no ``+ 1``) and its centre is ``x1 + 0.5 * width``. Everything here
is pure PyTorch and device-agnostic.

Dtype contract (the same as torchvision's ``_upcast``): areas and overlaps are computed in
float32 for float16 / bfloat16 boxes (a 300 x 300 box already overflows float16's 65504) and
in int64 for integer boxes (an int8 ``[0, 0, 100, 100]`` has area 10000, not 16), and
returned in that wider dtype; float32 / float64 boxes are computed and returned as they are.
``box_iou`` of integer boxes is float32 (int64 division). Non-finite coordinates: see each
function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BoxCoder",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "cxcywh_to_xyxy",
    "remove_small_boxes",
]


def _upcast(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32, integer (and bool) -> int64; float32 / float64 as is."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype == torch.int64 else t.long()


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box.

    Args:
        boxes: ``Tensor[N, 4]`` (or ``[..., 4]``) in ``(x1, y1, x2, y2)``, any real dtype.

    Returns:
        ``Tensor[N]``, ``(x2 - x1) * (y2 - y1)`` in float32 for float16 / bfloat16 boxes, int64
        for integer boxes, else the boxes' dtype (see the module docstring). Not clamped: an
        inverted box has a negative or zero area, as in torchvision. IEEE arithmetic: a NaN
        coordinate gives a NaN area, an infinite one an infinite or NaN area.
    """
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _box_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    # Separate x and y terms: [N, M] temporaries instead of torchvision's [N, M, 2].
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    if boxes1.dtype != boxes2.dtype:
        common = torch.promote_types(boxes1.dtype, boxes2.dtype)
        boxes1, boxes2 = boxes1.to(common), boxes2.to(common)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    iw = torch.minimum(boxes1[:, None, 2], boxes2[None, :, 2]) - torch.maximum(
        boxes1[:, None, 0], boxes2[None, :, 0]
    )
    ih = torch.minimum(boxes1[:, None, 3], boxes2[None, :, 3]) - torch.maximum(
        boxes1[:, None, 1], boxes2[None, :, 1]
    )
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = area1[:, None] + area2[None, :] - inter
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: ``Tensor[N, 4]``, ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]``, same convention.

    Returns:
        ``Tensor[N, M]``; ``iou[i, j] = |b1_i ∩ b2_j| / |b1_i ∪ b2_j|``, float32 for float16,
        bfloat16 and integer boxes, else the (promoted) boxes' dtype. Never NaN: where the
        union is zero (two degenerate boxes) the IoU is 0 (torchvision: NaN), and a pair in
        which either box has a non-finite coordinate has IoU 0 (it matches nothing and, in
        :func:`~lowbit.detection.ops.nms`, suppresses nothing).
    """
    inter, union = _box_inter_union(boxes1, boxes2)
    if not inter.is_floating_point():
        inter, union = inter.float(), union.float()
    ok = union > 0
    if boxes1.is_floating_point() or boxes2.is_floating_point():
        fin1 = torch.isfinite(boxes1).all(dim=-1)
        fin2 = torch.isfinite(boxes2).all(dim=-1)
        ok = ok & fin1[:, None] & fin2[None, :]
    safe = torch.where(ok, union, torch.ones_like(union))
    # nan_to_num: belt and braces for overflowing finite boxes (inf / inf), never NaN out.
    return torch.where(ok, inter / safe, torch.zeros_like(inter)).nan_to_num_(nan=0.0)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp boxes to the image.

    Args:
        boxes: ``Tensor[..., 4]`` in ``(x1, y1, x2, y2)``.
        size: ``(height, width)`` of the image in pixels.

    Returns:
        A new tensor of the same shape with x in ``[0, width]`` and y in ``[0, height]``
        (continuous coordinates: the right edge of the last pixel is ``width``).
    """
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` ``(cx, cy, w, h)`` → ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both ``>= min_size``.

    Args:
        boxes: ``Tensor[N, 4]``.
        min_size: minimum side length, same units as the boxes.

    Returns:
        ``Tensor[K]`` int64 indices into ``boxes``, increasing.
    """
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return torch.nonzero(keep).flatten()


def _compute_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """float64 if either is float64, else float32 (half, bfloat16, integer, float32)."""
    return torch.float64 if torch.float64 in (a, b) else torch.float32


class BoxCoder:
    """Encode boxes as regression targets relative to reference boxes, and decode them back.

    The parametrisation is the R-CNN one, with torchvision's conventions::

        w = x2 - x1, cx = x1 + 0.5 * w   (likewise h, cy)
        dx = wx * (gx - cx) / w,  dy = wy * (gy - cy) / h
        dw = ww * log(gw / w),    dh = wh * log(gh / h)

    Decoding clamps ``dw, dh`` (after dividing by the weights) at ``bbox_xform_clip`` before the
    ``exp`` so that a wild prediction cannot overflow.

    Dtypes: the arithmetic runs in float32 for float16 / bfloat16 / integer inputs and in the
    input's dtype for float32 / float64; ``encode`` returns that compute dtype, ``decode``
    returns the codes' dtype (float32 for integer codes), so a decoded float16 box beyond
    float16's range is ``inf``. Both are elementwise IEEE arithmetic with no checks (they run
    every training step; a check would cost a device sync): a row with a non-finite
    coordinate, or a reference of zero or negative size, gives non-finite values in that row
    only, never an error.

    Args:
        weights: ``(wx, wy, ww, wh)``; torchvision's Faster R-CNN box head uses
            ``(10, 10, 5, 5)``, its RPN ``(1, 1, 1, 1)``.
        bbox_xform_clip: upper bound on the decoded ``dw, dh``; default ``log(1000 / 16)``.
    """

    def __init__(
        self,
        weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 entries, got {len(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """Regression targets that take ``reference`` to ``boxes``.

        Args:
            boxes: ``Tensor[N, 4]`` target boxes (e.g. matched ground truth).
            reference: ``Tensor[N, 4]`` anchors or proposals, one per target.

        Returns:
            ``Tensor[N, 4]`` of ``(dx, dy, dw, dh)``.
        """
        dtype = _compute_dtype(boxes.dtype, reference.dtype)
        boxes, reference = boxes.to(dtype), reference.to(dtype)
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_cx = reference[:, 0] + 0.5 * ref_w
        ref_cy = reference[:, 1] + 0.5 * ref_h
        gt_w = boxes[:, 2] - boxes[:, 0]
        gt_h = boxes[:, 3] - boxes[:, 1]
        gt_cx = boxes[:, 0] + 0.5 * gt_w
        gt_cy = boxes[:, 1] + 0.5 * gt_h
        dx = wx * (gt_cx - ref_cx) / ref_w
        dy = wy * (gt_cy - ref_cy) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, codes: Tensor, reference: Tensor) -> Tensor:
        """Apply regression deltas to reference boxes.

        Args:
            codes: ``Tensor[N, 4 * K]``: ``K`` groups of ``(dx, dy, dw, dh)`` (class-specific
                regression has one group per class).
            reference: ``Tensor[N, 4]``.

        Returns:
            ``Tensor[N, 4 * K]`` boxes ``(x1, y1, x2, y2)`` in the same group layout. Not clipped
            to the image; use :func:`clip_boxes_to_image`.
        """
        if codes.shape[-1] % 4 != 0:
            raise ValueError(f"codes must have 4*K columns, got shape {tuple(codes.shape)}")
        out_dtype = codes.dtype if codes.is_floating_point() else torch.float32
        dtype = _compute_dtype(codes.dtype, codes.dtype)
        codes = codes.to(dtype)
        reference = reference.to(dtype)
        wx, wy, ww, wh = self.weights
        widths = (reference[:, 2] - reference[:, 0])[:, None]
        heights = (reference[:, 3] - reference[:, 1])[:, None]
        ctr_x = reference[:, 0, None] + 0.5 * widths
        ctr_y = reference[:, 1, None] + 0.5 * heights
        dx = codes[:, 0::4] / wx
        dy = codes[:, 1::4] / wy
        dw = (codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        out = torch.stack(
            (
                pred_cx - 0.5 * pred_w,
                pred_cy - 0.5 * pred_h,
                pred_cx + 0.5 * pred_w,
                pred_cy + 0.5 * pred_h,
            ),
            dim=2,
        )
        return out.reshape(codes.shape).to(out_dtype)
