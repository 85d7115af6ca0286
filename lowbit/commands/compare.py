"""`lowbit compare`: every quantization method side by side on one FP32 detector run."""

from __future__ import annotations

import argparse

from lowbit.commands._common import add_budget_args, budget_from_args, print_result


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--bits must be comma-separated integers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from lowbit.studies.compare import compare
    from lowbit.studies.methods import methods_markdown

    if args.list:
        print(methods_markdown())
        return 0
    if not args.source:
        raise ValueError("give a CONFIG or an FP32 run folder (or --list)")
    budget = budget_from_args(args)
    res = compare(args.source, args.out, methods=args.methods, bits=_ints(args.bits),
                  budget=budget, calib_images=args.calib_images, latency=not args.no_latency,
                  latency_iters=args.latency_iters, progress=not args.json, seeds=args.seeds)
    return print_result(res, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="every quantization method side by side on one FP32 run (table + plot)",
        description="From one FP32 run (an existing run folder, or trained first from CONFIG "
        "into OUT/runs/fp32) apply each method: QAT methods fine-tuned with one fixed budget "
        "from the FP32 weights, PTQ methods calibrated on training images, data-free methods "
        "from the weights alone. Evaluate each with the VOC07 metric and write OUT/results.json"
        ", OUT/results.md (method, bits, mAP, drop vs FP32, conv weight memory, x smaller, zero "
        "share, onnxruntime latency of the int8 trunk) and OUT/map_vs_memory.png. A rerun "
        "skips finished rows, and rows of earlier runs into the same OUT (other --methods) stay "
        "in the table; a failing method is recorded and the others go on. Opt-in methods "
        "(clip-qat, clip-ptq-svd, qn-a8, qn-a8-uniform, uniform-ptq-tensor, lbw-exact-ch) run "
        "only when "
        "named. `lowbit compare --list` prints the methods. Every mAP comes with its 95% "
        "bootstrap interval over test images and every drop with its paired interval (the same "
        "resamples for FP32 and the row; '*' marks a drop whose interval excludes 0); each row's "
        "detections are written as comp4_det_test_<class>.txt in its run folder.",
    )
    p.add_argument("source", nargs="?", metavar="CONFIG|FP32_RUN")
    p.add_argument("--methods", help="comma-separated method names (default: all; see --list)")
    p.add_argument("--bits", help="comma-separated bit-widths for the methods that accept them "
                   "(default: each method's own)")
    add_budget_args(p)
    p.add_argument("--calib-images", type=int, default=32,
                   help="training images for PTQ calibration, the int8 export and (the first 8) "
                   "mixed's layer sensitivity (default 32)")
    p.add_argument("--seeds", type=int, default=1,
                   help="fine-tune each QAT row with this many seeds and report mean ± sd "
                   "across them beside the bootstrap interval (default 1)")
    p.add_argument("--no-latency", action="store_true", help="skip the onnxruntime latency")
    p.add_argument("--latency-iters", type=int, default=20, help="timed runs per row")
    p.add_argument("--out", default="compare_out", help="output folder (default compare_out)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--list", action="store_true", help="print the method table and exit")
    p.set_defaults(func=_run)
