"""`lowbit voc-eval`: PASCAL VOC mAP of results files, identical to py-faster-rcnn's voc_eval."""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.eval.voc import default_metric, voc_eval_files


def _run(args: argparse.Namespace) -> int:
    if args.root is None:
        if args.devkit is None or args.year is None:
            raise ValueError("voc-eval: give --root DIR, or --devkit DIR and --year Y")
        root = Path(args.devkit) / f"VOC{args.year}"
    else:
        root = Path(args.root)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    metric = args.metric or default_metric(root)
    if not 0.0 <= args.iou < 1.0:
        raise ValueError(f"voc-eval: --iou must be in [0, 1), got {args.iou}")
    result = voc_eval_files(
        root, args.split, args.dets, classes=classes, metric=metric, iou_thresh=args.iou,
        prefix=args.prefix,
    )
    print(result.to_json() if args.json else result.format_table())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit voc-eval`."""
    p = subparsers.add_parser(
        "voc-eval",
        help="VOC mAP of comp4 results files",
        description=(
            "PASCAL VOC detection metric of results files DETS/comp4_det_SPLIT_<class>.txt "
            "(lines 'image_id score x1 y1 x2 y2', VOC 1-based pixels) against "
            "ROOT/Annotations and ROOT/ImageSets/Main/SPLIT.txt. Same numbers as "
            "py-faster-rcnn's voc_eval.py; a class without positives is reported as n/a and "
            "left out of the mAP."
        ),
    )
    p.add_argument("--root", help="devkit folder (holds Annotations/, ImageSets/Main/)")
    p.add_argument("--devkit", help="devkit root holding VOC<year>/ (with --year)")
    p.add_argument("--year", help="year with --devkit, e.g. 2007")
    p.add_argument("--split", required=True, help="image set, e.g. test")
    p.add_argument("--dets", required=True, help="folder of results files")
    p.add_argument("--classes", help="comma-separated classes (default classes.txt or VOC's 20)")
    p.add_argument("--metric", choices=("07", "area"), default=None,
                   help="07 = 11-point, area = area under PR (default: 07 for VOC2007, else area)")
    p.add_argument("--iou", type=float, default=0.5, help="overlap threshold, strict > (0.5)")
    p.add_argument("--prefix", default="comp4_det", help="results file prefix (comp4_det)")
    p.add_argument("--json", action="store_true",
                   help='print {"mAP": ..., "AP": {class: ...}, "metric": ...}')
    p.set_defaults(func=_run)
