"""`lowbit voc-eval`: PASCAL VOC mAP of results files, identical to py-faster-rcnn's voc_eval.

Imports neither torch nor any other verb: the whole command is numpy + the standard library
(the `lowbit` entry point imports only the verb it runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
from pathlib import Path


def _rounded(result_dict: dict, digits: int = 6) -> dict:
    def r(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else round(v, digits)

    out = dict(result_dict)
    out["mAP"] = r(out["mAP"])
    out["AP"] = {c: r(v) for c, v in out["AP"].items()}
    return out


def _run(args: argparse.Namespace) -> int:
    from lowbit.eval.voc import voc_eval_files

    if args.root is None:
        if args.devkit is None or args.year is None:
            raise ValueError("voc-eval: give --root DIR, or --devkit DIR and --year Y")
        root = Path(args.devkit) / f"VOC{args.year}"
    else:
        root = Path(args.root)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    if not (0.0 <= args.iou < 1.0):  # also refuses nan
        raise ValueError(f"voc-eval: --iou must be in [0, 1), got {args.iou}")
    # One short pass that allocates ~10^5 lists, tuples and dicts and frees no cycles: the
    # cyclic garbage collector would only re-walk them (about a tenth of a cold run's time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = voc_eval_files(
            root, args.split, args.dets, classes=classes, metric=args.metric,
            iou_thresh=args.iou, prefix=args.prefix, cache=not args.no_cache,
            cache_dir=args.cache_dir,
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    if args.json:
        d = result.to_dict()
        print(json.dumps(d if args.exact else _rounded(d)))
    else:
        print(result.format_table())
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
            "py-faster-rcnn's voc_eval.py (ties in score keep file order); a class without "
            "positives is reported as n/a and left out of the mAP. Parsed annotations are "
            "cached as JSON (keyed by each file's size and mtime) under $LOWBIT_CACHE_DIR, "
            "else $XDG_CACHE_HOME/lowbit or ~/.cache/lowbit."
        ),
    )
    p.add_argument("--root", metavar="DIR",
                   help="devkit folder (holds Annotations/ and ImageSets/Main/)")
    p.add_argument("--devkit", metavar="DIR",
                   help="devkit root holding VOC<year>/ (use with --year instead of --root)")
    p.add_argument("--year", help="year with --devkit, e.g. 2007 for DIR/VOC2007")
    p.add_argument("--split", required=True, help="image set, e.g. test (ImageSets/Main/test.txt)")
    p.add_argument("--dets", required=True, metavar="DIR", help="folder of results files")
    p.add_argument("--classes", help="comma-separated classes to evaluate "
                   "(default: the devkit's classes.txt, else VOC's 20)")
    p.add_argument("--metric", choices=("07", "area"), default="07",
                   help="07 = VOC2007 11-point AP (default, as lowbit train/eval), "
                   "area = area under the PR curve (VOC2010+)")
    p.add_argument("--iou", type=float, default=0.5,
                   help="overlap threshold, a hit needs IoU strictly above it (default 0.5)")
    p.add_argument("--prefix", default="comp4_det",
                   help="results file prefix: PREFIX_SPLIT_<class>.txt (default comp4_det)")
    p.add_argument("--json", action="store_true",
                   help='print {"mAP": ..., "AP": {class: ...}, "metric": ..., ...} with APs '
                   "rounded to 6 decimals")
    p.add_argument("--exact", action="store_true",
                   help="with --json: full float precision (bit-for-bit comparisons)")
    p.add_argument("--no-cache", action="store_true",
                   help="parse every annotation file, neither reading nor writing the cache")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="annotation cache folder (default $LOWBIT_CACHE_DIR, else "
                   "$XDG_CACHE_HOME/lowbit or ~/.cache/lowbit); an unwritable one means no cache")
    p.set_defaults(func=_run)
