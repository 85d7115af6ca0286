"""`lowbit export RUN|CHECKPOINT --format packed|onnx|onnx-int8 --out FILE` and the
`lowbit bench deploy` parser (:func:`add_deploy_bench`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _load_run(path: str) -> tuple[Any, Any, Any]:
    """``(cfg, task, converted model)`` of a run folder or checkpoint."""
    from lowbit.config import config_to_dict  # noqa: F401 - fail early if missing
    from lowbit.nn import convert
    from lowbit.train import build_model, load_checkpoint, resolve_checkpoint
    from lowbit.train.checkpoint import read_checkpoint_json
    from lowbit.train.engine import config_for_checkpoint

    json_path = resolve_checkpoint(path)
    cfg = config_for_checkpoint(json_path, read_checkpoint_json(json_path))
    task, model = build_model(cfg)
    load_checkpoint(json_path, model)
    model.eval()
    if cfg.quant is not None:
        convert(model)
    return cfg, task, model


def _batches(task: Any, cfg: Any, n: int, batch: int) -> list[Any]:
    import torch

    _, test_ds = task.build_datasets(cfg)
    out, items = [], []
    for i in range(min(len(test_ds), n * batch)):
        item = test_ds[i]
        items.append(item[0] if isinstance(item, (tuple, list)) else item)
        if len(items) == batch:
            out.append(torch.stack([torch.as_tensor(t).float() for t in items]))
            items = []
    if not out:
        raise ValueError("the run's test set gave no calibration batch")
    return out


def _run(args: argparse.Namespace) -> int:
    from lowbit.config import config_to_dict

    cfg, task, model = _load_run(args.path)
    if args.format == "packed":
        from lowbit.export.packed import save_packed

        info = save_packed(model, args.out, config=config_to_dict(cfg), coding=args.coding)
        info.pop("layers")
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{info['path']}: {info['bytes']} bytes ({args.coding}), FP32 "
                  f"{info['fp32_bytes']} bytes, {info['ratio']:.2f}x smaller")
        return 0
    from lowbit.export.onnx import export_onnx, export_onnx_int8

    batches = _batches(task, cfg, args.calib_batches, 8)
    if args.format == "onnx":
        p = export_onnx(model, batches[0][:1], args.out)
        print(json.dumps({"path": str(p)}) if args.json else f"{p}: FP32 ONNX")
        return 0
    rep = export_onnx_int8(model, batches[0][:1], args.out, batches)
    print(json.dumps(rep) if args.json else f"{rep['path']}: int8 QDQ ONNX "
          f"({sum(v == 'pot-exact' for v in rep['weights'].values())} exact pot weights)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit export`."""
    p = subparsers.add_parser(
        "export", help="export a run to a packed file or ONNX (FP32 / int8 QDQ)",
        description="Rebuild a run's converted model and write it as a bit-packed safetensors "
                    "container (packed), FP32 ONNX (onnx) or int8 QDQ ONNX (onnx-int8, "
                    "activations calibrated on the run's test data).")
    p.add_argument("path", metavar="RUN|CHECKPOINT")
    p.add_argument("--format", choices=("packed", "onnx", "onnx-int8"), default="packed")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--coding", choices=("raw", "zlib", "lzma"), default="raw",
                   help="packed: entropy coding of the code streams")
    p.add_argument("--calib-batches", type=int, default=8, help="onnx-int8: batches of 8")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _bench(args: argparse.Namespace) -> int:
    from lowbit.export.bench_deploy import run_deploy_bench

    res = run_deploy_bench(bits=args.bits, iters=args.iters, out_dir=args.out)
    print(json.dumps(res, indent=1) if args.json else "\n".join(
        f"{k}: {v}" for k, v in res.items()))
    return 0


def add_deploy_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit bench deploy` to the `bench` verb's subparsers."""
    p = bench_subparsers.add_parser(
        "deploy", help="onnxruntime FP32 vs int8 latency, PyTorch eager, file sizes")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=None, help="folder for the exported files (default: tmp)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)
