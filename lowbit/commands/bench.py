"""`lowbit bench <what>`: speed/accuracy measurements that print ratios measured in one run."""

from __future__ import annotations

import argparse
import json


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return vals


def _quantizers(args: argparse.Namespace) -> int:
    from lowbit.analysis.bench_quantizers import (
        format_model_pass_bench,
        format_quantizer_bench,
        run_model_pass_bench,
        run_quantizer_bench,
    )

    for b in args.model_bits:
        if not 2 <= b <= 8:
            raise ValueError(f"--model-bits must be in [2, 8], got {b}")
    out: dict = {}
    if not args.model_only:
        out["quantizers"] = run_quantizer_bench(repeats=args.repeats, progress=not args.json)
    out["model_pass"] = run_model_pass_bench(threads=args.model_threads, bits=args.model_bits,
                                             repeats=args.repeats, progress=not args.json)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        if "quantizers" in out:
            print(format_quantizer_bench(out["quantizers"]) + "\n")
        print(format_model_pass_bench(out["model_pass"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (quantizers, qat, digits, deploy)",
        description="Benchmarks. Each prints ratios measured within one run.",
    )
    bsub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    q = bsub.add_parser(
        "quantizers",
        help="time every quantizer on ResNet-50-shaped weights vs one abs().max() pass",
        description="Full-model pass of each weight quantizer over ResNet-50's 25.5 M weights "
        "(real per-layer shapes, random values), against one abs().max() pass and the paper's "
        "sort-based ternary formula, in the same run; then the whole-model LBW pass "
        "(lbw_exact once per layer vs lbw_exact_many once for all layers, per tensor and per "
        "channel) at each of --model-threads, ratios to abs().max() measured in the same run.",
    )
    q.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median kept)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--model-only", action="store_true",
                   help="only the whole-model comparison (lbw_exact per layer vs lbw_exact_many "
                   "per tensor / per channel vs abs().max(), clone, sort, torch fake-quant)")
    q.add_argument("--model-threads", type=_int_list, default=(1, 2), metavar="T[,T...]",
                   help="thread counts of the whole-model comparison, all measured in this one "
                   "run (default 1,2)")
    q.add_argument("--model-bits", type=_int_list, default=(2, 4, 6), metavar="B[,B...]",
                   help="bit-widths of the whole-model comparison (default 2,4,6)")
    q.set_defaults(func=_quantizers)
    from lowbit.commands.bench_nn import add_bench_subcommands

    add_bench_subcommands(bsub)
    from lowbit.commands.export import add_deploy_bench

    add_deploy_bench(bsub)
