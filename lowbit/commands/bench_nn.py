"""`lowbit bench digits` and `lowbit bench qat` (lowbit.nn measurements).

``lowbit.commands.bench`` calls :func:`add_bench_subcommands` with its ``bench`` sub-parsers.
"""

from __future__ import annotations

import argparse


def _digits(args: argparse.Namespace) -> int:
    from lowbit.nn.bench_digits import run_digits_bench

    run_digits_bench(json_out=args.json, quick=args.quick, progress=not args.json)
    return 0


def _qat(args: argparse.Namespace) -> int:
    from lowbit.nn.bench_qat import run_qat_bench

    run_qat_bench(json_out=args.json, quick=args.quick, steps=args.steps,
                  input_size=args.input_size, batch=args.batch, method=args.method,
                  bits=args.bits, progress=not args.json, threads=args.threads)
    return 0


def add_bench_subcommands(bench_sub: argparse._SubParsersAction) -> None:
    """Add the ``digits`` and ``qat`` sub-verbs to ``lowbit bench``'s sub-parsers."""
    d = bench_sub.add_parser(
        "digits",
        help="QAT on scikit-learn's real 8x8 digits: FP32 vs LBW/TWN/QN/PTQ/clipping/mixed",
        description="Train a small CNN on scikit-learn's 1,797 bundled handwritten digits "
        "(fixed split and seeds) in FP32, then from that warm start: lbw-exact QAT at 2/4/6 "
        "bits, lbw-approx at 4/6, TWN, Quantization Networks ternary, uniform 8-bit PTQ, "
        "clipping-based 8-bit (and 4-bit) with/without the quantization-drop penalty, and a "
        "mixed-precision recipe at the 4-bit model's weight size. Prints test accuracy and "
        "weight memory per row.",
    )
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("--quick", action="store_true", help="fewer epochs (smoke run)")
    d.set_defaults(func=_digits)
    q = bench_sub.add_parser(
        "qat",
        help="training-step time of lbw-exact 6-bit QAT vs FP32 on a ResNet-18-shaped model",
        description="Mean step time (forward, backward, SGD) of a ResNet-18-shaped classifier "
        "at batch 16 with every conv under lbw-exact 6-bit vs FP32, steps alternating in one "
        "run; prints both and their ratio (target <= 1.10).",
    )
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--quick", action="store_true", help="4 steps at input 64 (smoke run)")
    q.add_argument("--steps", type=int, default=12, help="timed steps per model")
    q.add_argument("--input-size", type=int, default=144, help="input height = width")
    q.add_argument("--batch", type=int, default=16, help="batch size")
    q.add_argument("--method", default="lbw-exact", help="weight quantizer (registry name)")
    q.add_argument("--bits", type=int, default=6, help="bit-width")
    q.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    q.set_defaults(func=_qat)
