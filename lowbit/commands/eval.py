"""`lowbit eval RUN_DIR|CHECKPOINT [--json]`: evaluate a trained checkpoint on its test set."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from lowbit.train.engine import evaluate_checkpoint

    res = evaluate_checkpoint(args.path, device=args.device, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"checkpoint": str(res.checkpoint), "iteration": res.iteration,
                          "metrics": res.metrics}))
    else:
        print(f"{res.checkpoint} (iteration {res.iteration})")
        for key, value in res.metrics.items():
            print(f"  {key:<12} {value:.6f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit eval`."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a run folder or checkpoint on its test set",
        description=(
            "Rebuild the model from the run's resolved config.yaml (or the config stored in the "
            "checkpoint), load the newest checkpoint of RUN_DIR (or the given "
            "ckpt-N.json/.safetensors) and print the task's test metrics ('main' first)."
        ),
    )
    p.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--json", action="store_true",
                   help='print {"checkpoint": ..., "iteration": ..., "metrics": {...}}')
    p.set_defaults(func=_run)
