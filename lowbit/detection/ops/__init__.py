"""Detection ops in pure PyTorch (CPU and CUDA): boxes, NMS (and the single-stage detectors'
multi-class NMS), anchors (and SSD's default boxes), matching, RoI pooling.

Boxes are float ``(x1, y1, x2, y2)``, 0-based, continuous (see DESIGN.md).
"""

from lowbit.detection.ops._roi_utils import convert_to_roi_format
from lowbit.detection.ops.anchors import (
    AnchorGenerator,
    DefaultBoxGenerator,
    make_base_anchors,
    ssd_box_sizes,
)
from lowbit.detection.ops.boxes import (
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes_to_image,
    cxcywh_to_xyxy,
    remove_small_boxes,
)
from lowbit.detection.ops.matcher import BalancedPositiveNegativeSampler, Matcher
from lowbit.detection.ops.nms import batched_nms, check_postprocess_caps, multiclass_nms, nms
from lowbit.detection.ops.ps_roi_pool import PSRoIPool, ps_roi_pool
from lowbit.detection.ops.roi_align import RoIAlign, roi_align

__all__ = [
    "AnchorGenerator",
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "DefaultBoxGenerator",
    "Matcher",
    "PSRoIPool",
    "RoIAlign",
    "batched_nms",
    "box_area",
    "box_iou",
    "check_postprocess_caps",
    "clip_boxes_to_image",
    "convert_to_roi_format",
    "cxcywh_to_xyxy",
    "make_base_anchors",
    "multiclass_nms",
    "nms",
    "ps_roi_pool",
    "remove_small_boxes",
    "roi_align",
    "ssd_box_sizes",
]
