"""lowbit.data: detection data sets (VOC, COCO, the built-in digits devkit) and transforms.

Boxes are float ``(x1, y1, x2, y2)``, 0-based, continuous everywhere in lowbit; VOC's 1-based
inclusive file coordinates are converted in :mod:`lowbit.data.voc` only.
"""

from lowbit.data.coco import COCODetection, load_coco_json, voc_to_coco
from lowbit.data.digits import DIGIT_CLASSES, generate_digits
from lowbit.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    batch_images,
    collate_detection,
    rescale_boxes,
)
from lowbit.data.voc import (
    VOC_CLASSES,
    VOCDetection,
    internal_to_voc,
    parse_voc_xml,
    voc_to_internal,
    write_voc_xml,
)

__all__ = [
    "COCODetection",
    "Compose",
    "DIGIT_CLASSES",
    "Normalize",
    "RandomHorizontalFlip",
    "Resize",
    "VOCDetection",
    "VOC_CLASSES",
    "batch_images",
    "collate_detection",
    "generate_digits",
    "internal_to_voc",
    "load_coco_json",
    "parse_voc_xml",
    "rescale_boxes",
    "voc_to_coco",
    "voc_to_internal",
    "write_voc_xml",
]
