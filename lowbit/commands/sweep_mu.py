"""`lowbit sweep-mu`: LBW-Net's choice of mu by retraining (paper 001, section 2.2)."""

from __future__ import annotations

import argparse


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--mu must be comma-separated numbers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from lowbit.commands._common import budget_from_args, print_result
    from lowbit.studies.sweep_mu import sweep_mu

    budget = budget_from_args(args)
    res = sweep_mu(args.source, args.out, bits=args.bits, mu=_floats(args.mu),
                   partial_terms=args.partial_terms or None, budget=budget,
                   progress=not args.json)
    return print_result(res, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    from lowbit.commands._common import add_budget_args

    p = sub.add_parser(
        "sweep-mu",
        help="retrain lbw-approx for several mu = ratio x max|W| and plot mAP against it",
        description="For each ratio in --mu, fine-tune the FP32 run (or a run trained first "
        "from CONFIG) with LBW-Net's semi-analytical quantizer (lbw-approx, mu = ratio * "
        "max|W| per layer) at --bits bits with the same budget, evaluate with the VOC07 "
        "metric and write OUT/sweep_mu.json, OUT/sweep_mu.md and OUT/map_vs_mu.png. "
        "Resumable; a failing ratio is recorded and the others go on.",
    )
    p.add_argument("source", metavar="CONFIG|FP32_RUN")
    p.add_argument("--bits", type=int, default=6, help="weight bits (default 6)")
    p.add_argument("--mu", default="0.5,0.625,0.75,0.875,1.0",
                   help="comma-separated mu / max|W| ratios (default 0.5,...,1.0)")
    p.add_argument("--partial-terms", type=int, default=4,
                   help="truncate eq. 2.9's sums to this many terms (the paper: 4; 0 = exact)")
    add_budget_args(p)
    p.add_argument("--out", default="sweep_mu_out", help="output folder")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_run)
