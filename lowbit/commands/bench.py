"""`lowbit bench <what>`: speed/accuracy measurements that print ratios measured in one run."""

from __future__ import annotations

import argparse
import json


def _quantizers(args: argparse.Namespace) -> int:
    from lowbit.analysis.bench_quantizers import format_quantizer_bench, run_quantizer_bench

    res = run_quantizer_bench(repeats=args.repeats, progress=not args.json)
    print(json.dumps(res, indent=2) if args.json else format_quantizer_bench(res))
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
        "sort-based ternary formula, in the same run.",
    )
    q.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median kept)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=_quantizers)
    from lowbit.commands.bench_nn import add_bench_subcommands

    add_bench_subcommands(bsub)
    from lowbit.commands.export import add_deploy_bench

    add_deploy_bench(bsub)
