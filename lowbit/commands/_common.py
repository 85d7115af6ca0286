"""Helpers shared by the command modules (a command never imports another command)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def budget_from_args(args: argparse.Namespace) -> Any:
    """The :class:`lowbit.studies.rows.Budget` of ``--qat-iters/--qat-epochs/--qat-lr/
    --qat-lr-factor`` (ValueError when both iterations and epochs are given)."""
    from lowbit.studies.rows import Budget

    if args.qat_iters is not None and args.qat_epochs is not None:
        raise ValueError("give --qat-iters or --qat-epochs, not both")
    epochs = None if args.qat_iters is not None else (args.qat_epochs or 1)
    return Budget(iters=args.qat_iters, epochs=epochs, lr=args.qat_lr,
                  lr_factor=args.qat_lr_factor)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """The QAT budget options shared by compare and sweep-mu."""
    g = p.add_argument_group("QAT budget (the same for every fine-tuned row)")
    g.add_argument("--qat-iters", type=int, help="fine-tuning iterations per QAT row")
    g.add_argument("--qat-epochs", type=int,
                   help="fine-tuning epochs per QAT row (default 1 when --qat-iters is not given)")
    g.add_argument("--qat-lr", type=float, help="absolute QAT learning rate")
    g.add_argument("--qat-lr-factor", type=float, default=0.1,
                   help="QAT lr as a fraction of the FP32 run's optim.lr (default 0.1)")


def print_result(res: dict, as_json: bool) -> int:
    """Print a compare / sweep-mu / datafree result: the whole JSON, or the files written."""
    if as_json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print(f"\nwrote {res['files']['json']}, {res['files']['markdown']}, "
              f"{res['files']['png']}")
    return 0


def check_run_path(path: str) -> None:
    """Raise a one-line error naming ``path`` unless it is a run folder (with ``config.yaml``),
    its ``checkpoints/`` folder, or a checkpoint file (``.json`` / ``.safetensors``) inside a
    run's ``checkpoints/``: what `lowbit export` and `lowbit stats` accept.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it exists but is none of the above (a ``.pt`` file, a plain folder, ...).
    """
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such run folder or checkpoint")
    if p.is_dir():
        if (p / "config.yaml").is_file():
            return
        if p.name == "checkpoints" and (p.parent / "config.yaml").is_file():
            return
        raise ValueError(f"{path}: not a run folder (it has no config.yaml)")
    in_run = p.parent.name == "checkpoints" and (p.parent.parent / "config.yaml").is_file()
    if p.suffix in (".json", ".safetensors") and in_run:
        return
    raise ValueError(
        f"{path}: not a run folder or a checkpoint inside one (RUN/checkpoints/ckpt-*.json); "
        "lowbit reads runs written by `lowbit train`, never pickled .pt/.pth files"
    )
