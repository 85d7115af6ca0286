"""`lowbit data digits`: write the built-in digit-scene devkit (VOC format, optional COCO JSON)."""

from __future__ import annotations

import argparse
import json
import time

from lowbit.data.digits import generate_digits


def _digits(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    summary = generate_digits(
        args.out,
        train=args.train,
        test=args.test,
        size=args.size,
        seed=args.seed,
        coco=args.coco,
        workers=args.workers,
        progress=not args.json,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        attempts=args.attempts,
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(summary))
    else:
        imgs = summary["images"]
        print(
            f"wrote {imgs['trainval']} trainval + {imgs['test']} test images "
            f"({summary['objects']} objects, {summary['difficult']} difficult) to {summary['out']} "
            f"in {summary['seconds']:.1f} s"
        )
        for path in summary.get("coco", []):
            print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit data` and its `digits` sub-verb."""
    p = subparsers.add_parser(
        "data", help="write built-in data sets", description="Write built-in data sets."
    )
    sub = p.add_subparsers(dest="data_command", metavar="SET")
    d = sub.add_parser(
        "digits",
        help="handwritten digits composited onto photographs, as a VOC devkit",
        description=(
            "Write the built-in detection devkit: scikit-learn's handwritten digits composited "
            "onto crops of its sample photographs (10 classes, 1-6 digits per scene by default), "
            "in VOC "
            "format: JPEGImages/, Annotations/, ImageSets/Main/{trainval,test}.txt, classes.txt. "
            "Train and test use disjoint pools of source digits. Deterministic for a seed."
        ),
    )
    d.add_argument("--out", required=True, help="output folder (created)")
    d.add_argument("--train", type=int, default=2000, help="trainval images (default 2000)")
    d.add_argument("--test", type=int, default=500, help="test images (default 500)")
    d.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--min-objects", type=int, default=1, metavar="N",
                   help="fewest digits drawn per scene (default 1)")
    d.add_argument("--max-objects", type=int, default=6, metavar="N",
                   help="most digits drawn per scene (default 6)")
    d.add_argument("--attempts", type=int, default=8, metavar="N",
                   help="positions tried for each digit before it is dropped (default 8); "
                   "--min-objects 6 --max-objects 16 --attempts 30 gives dense scenes (about "
                   "6.6 objects per image instead of 2.8)")
    d.add_argument("--coco", action="store_true",
                   help="also write annotations/instances_{trainval,test}.json (COCO)")
    d.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: CPUs, at most 4; output does not depend on it)")
    d.add_argument("--json", action="store_true", help="print a JSON summary")
    d.set_defaults(func=_digits)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)
