"""`lowbit train CONFIG [--set key=value ...] [--out DIR] [--resume]`: train an experiment."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

from lowbit.config import load_config


def _run(args: argparse.Namespace) -> int:
    from lowbit.train.engine import fit

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.amp:
        overrides.append("train.amp=true")
    cfg = load_config(args.config, overrides)
    # the resolved config must still work from another working directory (lowbit eval, resume)
    if cfg.data.root and not Path(cfg.data.root).is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, root=str(Path(cfg.data.root).resolve())))
    if cfg.init and not Path(cfg.init).is_absolute():
        cfg = replace(cfg, init=str(Path(cfg.init).resolve()))
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = fit(cfg, out, resume=args.resume, progress=False if args.json else None)
    if _is_main():
        if args.json:
            print(json.dumps({
                "run_dir": str(result.run_dir), "iteration": result.iteration,
                "metrics": result.metrics,
                "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                "resumed_from": result.resumed_from,
            }))
        else:
            metrics = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
            print(f"run {result.run_dir}: {result.iteration} iterations; {metrics}")
    return 0


def _is_main() -> bool:
    """Only global rank 0 prints (torchrun sets RANK)."""
    return os.environ.get("RANK", "0") == "0"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit train`."""
    p = subparsers.add_parser(
        "train",
        help="train an experiment from a YAML config",
        description=(
            "Train the experiment in CONFIG (YAML: model, data, optim, train, optional quant "
            "recipe and init checkpoint). Writes DIR/config.yaml (resolved), DIR/metrics.jsonl, "
            "DIR/checkpoints/ckpt-N.{safetensors,json} and DIR/result.json. Runs under "
            "`torchrun --nproc-per-node N -m lowbit.cli train ...` with DistributedDataParallel "
            "(train.batch_size is the global batch)."
        ),
    )
    p.add_argument("config", help="experiment YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, dotted key, YAML value "
                        "(e.g. --set optim.lr=0.05 --set train.epochs=2); repeatable")
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in the run folder")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (same as --set train.device=...)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (same as --set train.amp=true)")
    p.add_argument("--json", action="store_true", help="print a JSON summary, no progress bar")
    p.set_defaults(func=_run)
