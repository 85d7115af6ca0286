"""lowbit.eval: detection metrics -- VOC (07 11-point / area, identical to py-faster-rcnn) and
COCO (through faster-coco-eval or pycocotools, when installed), and bootstrap intervals.

Names are resolved lazily (PEP 562): ``import lowbit.eval.voc`` (all of ``lowbit voc-eval``)
loads neither torch nor scipy (``lowbit.eval.intervals`` imports scipy: 1 s).
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "coco_results": "coco", "evaluate_coco": "coco", "evaluate_coco_files": "coco",
    "Interval": "intervals", "bootstrap_map": "intervals", "match_voc": "intervals",
    "paired_bootstrap": "intervals",
    "VOCEvalResult": "voc", "evaluate_voc": "voc", "voc_ap": "voc", "voc_eval_class": "voc",
    "voc_eval_files": "voc", "write_voc_results": "voc",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"lowbit.eval.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
