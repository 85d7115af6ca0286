"""lowbit.data: detection data sets (VOC, COCO, the built-in digits devkit) and transforms.

Boxes are float ``(x1, y1, x2, y2)``, 0-based, continuous everywhere in lowbit; VOC's 1-based
inclusive file coordinates are converted in :mod:`lowbit.data.voc` only.
"""

from importlib import import_module
from typing import Any

# Lazy (PEP 562): `import lowbit.data.voc` must not pull in torch through the dataset modules
# (`lowbit voc-eval` runs without torch).
_WHERE = {
    "COCODetection": "coco", "load_coco_json": "coco", "voc_to_coco": "coco",
    "DIGIT_CLASSES": "digits", "generate_digits": "digits",
    "Compose": "transforms", "Normalize": "transforms", "RandomHorizontalFlip": "transforms",
    "Resize": "transforms", "batch_images": "transforms", "collate_detection": "transforms",
    "rescale_boxes": "transforms",
    "VOC_CLASSES": "voc", "VOCDetection": "voc", "internal_to_voc": "voc",
    "parse_voc_xml": "voc", "voc_to_internal": "voc", "write_voc_xml": "voc",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"lowbit.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
