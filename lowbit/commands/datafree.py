"""`lowbit datafree`: data-free post-training weight quantization (paper 004) of a run."""

from __future__ import annotations

import argparse


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _run(args: argparse.Namespace) -> int:
    from lowbit.commands._common import print_result
    from lowbit.studies.datafree import datafree

    try:
        bits = [int(b) for b in _list(args.bits)]
    except ValueError:
        raise ValueError(f"--bits must be comma-separated integers, got {args.bits!r}") from None
    res = datafree(args.run, args.out, schemes=_list(args.schemes),
                   granularities=_list(args.granularity), bits=bits,
                   class_groups=args.class_groups, cluster_scheme=args.cluster_scheme,
                   tolerance=args.tolerance / 100.0, test_images=args.test_images,
                   progress=not args.json)
    return print_result(res, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datafree",
        help="data-free PTQ of a run: schemes x granularity x bits, weight statistics, "
             "object-class clustering (paper 004)",
        description="Quantize every conv/linear weight of an FP32 run without any data "
        "(uniform, log, power-of-two = lbw-exact, k-means), per tensor and per output channel, "
        "at each bit-width; evaluate with the VOC07 metric; report the range and local-"
        "sparsity statistics of the quantized weights, and whether clustering object classes "
        "(one scale per class group in the class-specific output layer) lowers the bits "
        "needed at equal mAP. Writes OUT/datafree.json, OUT/datafree.md, OUT/datafree.png.",
    )
    p.add_argument("run", metavar="FP32_RUN", help="a finished FP32 run folder")
    p.add_argument("--schemes", default="uniform,log,pot,kmeans",
                   help="comma-separated: uniform, log, pot (= lbw-exact), kmeans "
                   "(default: all four)")
    p.add_argument("--granularity", default="tensor,channel",
                   help="tensor (one scale per layer) and/or channel (one per output channel)")
    p.add_argument("--bits", default="3,4,5,6,7,8", help="comma-separated bit-widths")
    p.add_argument("--class-groups", type=int, default=3,
                   help="object-class groups for the clustering study (0: skip)")
    p.add_argument("--cluster-scheme", default="uniform",
                   help="scheme of the clustering study (default uniform)")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="mAP points below FP32 still counted as equal (default 1.0)")
    p.add_argument("--test-images", type=int,
                   help="evaluate on the first N test images only (default: all)")
    p.add_argument("--out", default="datafree_out", help="output folder")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_run)
