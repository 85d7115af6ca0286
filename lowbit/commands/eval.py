"""`lowbit eval RUN_DIR|CHECKPOINT [--json]`: evaluate a trained checkpoint on its test set;
detectors also get the 95% bootstrap interval of their VOC07 mAP over the test images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _detector_interval(res: Any, device: str | None, n_boot: int, seed: int,
                       dets: str | None) -> dict[str, Any] | None:
    """The VOC07 mAP's percentile bootstrap interval of a detection run (None for other
    tasks); with ``dets`` the detections are written there as VOC results files."""
    cfg = res.config
    if "mAP" not in res.metrics:  # only the detect task reports a VOC mAP
        return None
    from lowbit.eval.intervals import bootstrap_map, file_class_names, match_voc
    from lowbit.eval.voc import write_voc_results
    from lowbit.runs import predict
    from lowbit.train.checkpoint import load_checkpoint
    from lowbit.train.distributed import resolve_device
    from lowbit.train.engine import build_model

    dev = resolve_device(device or cfg.train.device)
    task, model = build_model(cfg)
    load_checkpoint(res.checkpoint, model)
    model.to(dev)
    _, test_ds = task.build_datasets(cfg)
    preds = predict(task, model, test_ds, dev, cfg.train.eval_batch_size or cfg.train.batch_size)
    iv = bootstrap_map(match_voc(preds, test_ds), n_boot=n_boot, seed=seed)
    out = {**iv.to_dict(), "n_images": len(test_ds)}
    if dets:
        ids = [str(t.get("image_id", i)) for i, t in enumerate(test_ds.eval_targets())]
        write_voc_results(preds, ids, file_class_names(test_ds.classes), Path(dets), "test")
        out["dets_dir"] = str(dets)
    return out


def _run(args: argparse.Namespace) -> int:
    from lowbit.train.engine import evaluate_checkpoint

    if args.boot < 0:
        raise ValueError(f"--boot must be >= 0 (0: no interval), got {args.boot}")
    res = evaluate_checkpoint(args.path, device=args.device, batch_size=args.batch_size)
    interval = (_detector_interval(res, args.device, args.boot, args.seed, args.dets)
                if args.boot else None)
    try:
        from lowbit.runtime import run_info

        info = run_info()
    except ImportError:  # pragma: no cover
        info = None
    if args.json:
        print(json.dumps({"checkpoint": str(res.checkpoint), "iteration": res.iteration,
                          "metrics": res.metrics, "interval": interval, "run_info": info}))
    else:
        print(f"{res.checkpoint} (iteration {res.iteration})")
        for key, value in res.metrics.items():
            print(f"  {key:<12} {value:.6f}")
        if interval is not None:
            print(f"  mAP (VOC07) {100 * interval['estimate']:.2f} [{100 * interval['lo']:.2f}, "
                  f"{100 * interval['hi']:.2f}]: 95% percentile bootstrap over the "
                  f"{interval['n_images']} test images ({interval['n_boot']} resamples, seed "
                  f"{interval['seed']}; half-width {100 * interval['half_width']:.2f} points)")
            if interval.get("dets_dir"):
                print(f"  detections written to {interval['dets_dir']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit eval`."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a run folder or checkpoint on its test set (mAP with its 95%% interval)",
        description=(
            "Rebuild the model from the run's resolved config.yaml (or the config stored in the "
            "checkpoint), load the newest checkpoint of RUN_DIR (or the given "
            "ckpt-N.json/.safetensors) and print the task's test metrics ('main' first). For "
            "detectors also the VOC07 mAP with its 95% percentile bootstrap interval over the "
            "test images (resampled with replacement)."
        ),
    )
    p.add_argument("path", metavar="RUN_DIR|CHECKPOINT", help="run folder or checkpoint file")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--boot", type=int, default=1000,
                   help="bootstrap resamples for the mAP interval (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    p.add_argument("--dets", metavar="DIR",
                   help="also write the detections as VOC results files "
                   "(comp4_det_test_<class>.txt) into DIR")
    p.add_argument("--json", action="store_true",
                   help='print {"checkpoint", "iteration", "metrics", "interval", "run_info"}')
    p.set_defaults(func=_run)
