"""Detection ops in pure PyTorch (CPU and CUDA): boxes, NMS, anchors, matching, RoI pooling.

Boxes are float ``(x1, y1, x2, y2)``, 0-based, continuous (see DESIGN.md).
"""

from lowbit.detection.ops._roi_utils import convert_to_roi_format
from lowbit.detection.ops.anchors import AnchorGenerator, make_base_anchors
from lowbit.detection.ops.boxes import (
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from lowbit.detection.ops.matcher import BalancedPositiveNegativeSampler, Matcher
from lowbit.detection.ops.nms import batched_nms, nms
from lowbit.detection.ops.ps_roi_pool import PSRoIPool, ps_roi_pool
from lowbit.detection.ops.roi_align import RoIAlign, roi_align

__all__ = [
    "AnchorGenerator",
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "Matcher",
    "PSRoIPool",
    "RoIAlign",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "convert_to_roi_format",
    "make_base_anchors",
    "nms",
    "ps_roi_pool",
    "remove_small_boxes",
    "roi_align",
]
