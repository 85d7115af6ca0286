"""lowbit.eval: detection metrics -- VOC (07 11-point / area, identical to py-faster-rcnn) and
COCO (through faster-coco-eval or pycocotools, when installed)."""

from lowbit.eval.coco import coco_results, evaluate_coco, evaluate_coco_files
from lowbit.eval.intervals import Interval, bootstrap_map, match_voc, paired_bootstrap
from lowbit.eval.voc import (
    VOCEvalResult,
    evaluate_voc,
    voc_ap,
    voc_eval_class,
    voc_eval_files,
    write_voc_results,
)

__all__ = [
    "Interval",
    "bootstrap_map",
    "match_voc",
    "paired_bootstrap",
    "VOCEvalResult",
    "coco_results",
    "evaluate_coco",
    "evaluate_coco_files",
    "evaluate_voc",
    "voc_ap",
    "voc_eval_class",
    "voc_eval_files",
    "write_voc_results",
]
