"""`lowbit train CONFIG [--set key=value ...] [--out DIR] [--resume [--override]] [--skip-bad]`.

``lowbit train --resume --out RUN`` continues RUN with its stored config (no CONFIG needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lowbit.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    read_yaml,
)


def _stored_config(out: Path) -> tuple[dict[str, Any], Path] | None:
    """The run's own config as plain data: the newest checkpoint's, else ``config.yaml`` (a run
    killed before its first checkpoint); ``None`` for a new folder."""
    from lowbit.train.checkpoint import find_latest_checkpoint, read_checkpoint_json

    for _ in range(5):  # a checkpoint pruned between finding and reading it: look again
        latest = find_latest_checkpoint(out) if out.is_dir() else None
        if latest is None:
            break
        try:
            saved = (read_checkpoint_json(latest).get("state") or {}).get("config")
        except FileNotFoundError:
            continue
        if isinstance(saved, dict):
            return saved, latest
        break
    if (out / "config.yaml").is_file():
        raw = read_yaml(out / "config.yaml")
        if isinstance(raw, dict):
            return raw, out / "config.yaml"
    return None


def _config(args: argparse.Namespace, out: Path, overrides: list[str]) -> ExperimentConfig:
    stored = _stored_config(out) if args.resume else None
    if stored is None:
        if args.config is None:
            raise ValueError(f"{out}: no checkpoint or config.yaml to resume from; give CONFIG")
        return load_config(args.config, overrides)
    raw, source = stored
    try:
        cfg = config_from_dict(apply_overrides(raw, overrides))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    # say so when the CONFIG file would have given another run: resume does not read it
    try:
        from_file = config_to_dict(load_config(args.config)) if args.config else None
    except (ValueError, FileNotFoundError):
        from_file = None
    if from_file is not None and _is_main():
        from lowbit.train.engine import absolute_paths, config_changes

        base = config_to_dict(absolute_paths(config_from_dict(raw)))
        differ = config_changes(base, config_to_dict(absolute_paths(config_from_dict(
            from_file))), ignore=())
        if differ:
            print(f"note: resuming with the run's stored config ({source}); {args.config} "
                  f"differs in {', '.join(differ[:8])}{' ...' if len(differ) > 8 else ''} "
                  "and is not used", file=sys.stderr)
    return cfg


def _run(args: argparse.Namespace) -> int:
    from lowbit.train.engine import fit

    if args.override and not args.resume:
        raise ValueError("--override only applies with --resume")
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.amp:
        overrides.append("train.amp=true")
    if args.config is None and not (args.resume and args.out):
        raise ValueError("train: give CONFIG (or --resume --out RUN to continue a run)")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if os.environ.get("WORLD_SIZE", "1") in ("", "1") and (out / ".lock").exists():
        # a live writer: say so before reading anything it may be rotating (the engine takes
        # the lock for the run itself; a stale lock is taken over here, with its message)
        from lowbit.train.lock import RunLock

        probe = RunLock(out)
        note = probe.acquire()
        probe.release()
        if note:
            print(f"note: {note}", file=sys.stderr)
    # data.root / init are made absolute by the engine: the stored run works from anywhere
    cfg = _config(args, out, overrides)
    result = fit(cfg, out, resume=args.resume, override=args.override, skip_bad=args.skip_bad,
                 progress=False if args.json else None)
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
            "recipe and init checkpoint). Writes DIR/config.yaml (resolved, with absolute data "
            "paths), DIR/metrics.jsonl, DIR/checkpoints/ckpt-N.{safetensors,json} and "
            "DIR/result.json; DIR/.lock (pid, host) keeps a second process out while it runs. "
            "The data set is checked before the first step; the loss every step (a NaN or "
            "infinite loss stops the run, keeping the last good checkpoint). Runs under "
            "`torchrun --nproc-per-node N -m lowbit.cli train ...` with DistributedDataParallel "
            "(train.batch_size is the global batch)."
        ),
    )
    p.add_argument("config", nargs="?", default=None,
                   help="experiment YAML file (with --resume only used for the default --out "
                        "and when the run folder has no config yet; may then be left out)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, dotted key, YAML value "
                        "(e.g. --set optim.lr=0.05 --set train.epochs=2); repeatable")
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest complete checkpoint, with "
                        "the config stored in the run (not CONFIG); a --set that changes it is "
                        "refused unless --override")
    p.add_argument("--override", action="store_true",
                   help="with --resume: accept --set values that change the run's config "
                        "(e.g. more epochs, a lower optim.lr after a divergence)")
    p.add_argument("--skip-bad", action="store_true",
                   help="train and evaluate on the good items when the data check finds bad "
                        "annotations or images (the count is printed and logged); without it "
                        "a bad item stops the run before training, naming the file")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (same as --set train.device=...)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (same as --set train.amp=true)")
    p.add_argument("--json", action="store_true", help="print a JSON summary, no progress bar")
    p.set_defaults(func=_run)
