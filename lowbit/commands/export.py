"""`lowbit export RUN|CHECKPOINT --format packed|onnx|onnx-int8 --out FILE`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lowbit.commands._common import check_run_path


def _load_run(path: str) -> tuple[Any, Any, Any]:
    from lowbit.runs import load_run

    check_run_path(path)
    return load_run(path)


def _ptq(model: Any, cfg: Any, method: str | None, bits: int | None, where: str) -> None:
    """Post-training weight quantization of an FP32 run (``--method/--bits``), in place."""
    if method is None and bits is None:
        return
    from lowbit.nn import convert, prepare, quant_layers

    if cfg.quant is not None or quant_layers(model):
        raise ValueError(f"{where}: the run is already quantized; drop --method/--bits")
    prepare(model, {"method": method or "lbw-exact", "bits": bits}).eval()
    from lowbit.nn import coverage

    print(coverage(model), file=sys.stderr)  # never silent about layers left float
    convert(model)


def _calibration(task: Any, cfg: Any, model: Any, n_images: int) -> list[Any]:
    """Network-input batches from the first ``n_images`` of the run's *training* split (the
    detector's own transform applied; see :func:`lowbit.export.detect.calibration_batches`)."""
    from lowbit.export.detect import calibration_batches

    train_ds, _ = task.build_datasets(cfg)
    return calibration_batches(model, train_ds, n_images, batch_size=8)


def check_out_file(out: str) -> None:
    """One-line ``ValueError`` naming ``--out`` when the file cannot be written there: its
    folder is missing or not a folder, or ``out`` is itself a folder. Checked before any run
    is loaded, so a typo costs a second, not a model build."""
    from pathlib import Path

    p = Path(out)
    if p.is_dir():
        raise ValueError(f"--out {out}: is a folder; give the output file's name")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ValueError(f"--out {out}: its folder {parent} {what}")


def _run(args: argparse.Namespace) -> int:
    from lowbit.config import config_to_dict

    check_run_path(args.path)
    check_out_file(args.out)
    cfg, task, model = _load_run(args.path)
    _ptq(model, cfg, args.method, args.bits, args.path)
    if args.format == "packed":
        from lowbit.nn import quant_layers

        if not quant_layers(model):
            raise ValueError(
                f"{args.path}: an FP32 run has no quantized layer to pack; pass --bits "
                "(and --method) to quantize it after training, or use --format onnx"
            )
        from lowbit.export.packed import save_packed

        info = save_packed(model, args.out, config=config_to_dict(cfg), coding=args.coding)
        info.pop("layers")
        if args.json:
            print(json.dumps(info))
        else:
            print(f"{info['path']}: {info['bytes']} bytes ({args.coding}), FP32 "
                  f"{info['fp32_bytes']} bytes, {info['ratio']:.2f}x smaller "
                  f"(weights alone {info['weight_ratio']:.2f}x)")
        return 0
    from lowbit.export.detect import detector_kind, export_detector_onnx
    from lowbit.export.onnx import export_onnx, export_onnx_int8

    batches = _calibration(task, cfg, model, args.calib_images)
    calib = batches if args.format == "onnx-int8" else None
    if detector_kind(model) is not None:
        rep = export_detector_onnx(model, args.out, batches[0][:1], calibration=calib,
                                   config=config_to_dict(cfg))
    elif calib is None:
        rep = {"path": str(export_onnx(model, batches[0][:1], args.out))}
    else:
        rep = export_onnx_int8(model, batches[0][:1], args.out, calib)
    if args.json:
        print(json.dumps(rep))
    elif calib is None:
        print(f"{rep['path']}: FP32 ONNX")
    else:
        fp32 = rep.get("fp32_path") or "a temporary folder, removed"
        print(f"{rep['path']}: int8 QDQ ONNX ({len(batches)} calibration batches; "
              f"{sum(v == 'pot-exact' for v in rep['weights'].values())} of "
              f"{len(rep['weights'])} weights exact powers of two; FP32 intermediate: {fp32})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit export`."""
    p = subparsers.add_parser(
        "export", help="export a run to a packed file or ONNX (FP32 / int8 QDQ)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Rebuild a run's converted model and write it as a bit-packed safetensors
container (packed), FP32 ONNX (onnx) or int8 QDQ ONNX (onnx-int8, activations calibrated on
images of the run's own training split, prepared by the model's transform).

Detectors (rfcn_*, yolov3_*): the ONNX graph is the network only -- R-FCN: backbone + RPN
head + position-sensitive score/box maps (outputs objectness, rpn_deltas, cls_maps,
bbox_maps; any H, W); YOLOv3: backbone + neck + head (out_s8, out_s16, out_s32). Proposals,
NMS, PSRoI pooling, voting and box decoding stay in PyTorch float: run the file with
lowbit.export.detect.OnnxDetector(FILE)(images), which rebuilds them from the run config stored
in the file. NMS inside the graph is not offered: ONNX NonMaxSuppression has no per-class
pre-NMS top-k and an unspecified tie order, so it would not reproduce the PyTorch model's
detections. Faster R-CNN (fc layers on pooled RoIs) and SSD are refused.""")
    p.add_argument("path", metavar="RUN|CHECKPOINT",
                   help="a run folder written by `lowbit train`, or a checkpoint inside its "
                        "checkpoints/ (ckpt-*.json or .safetensors); default: the latest")
    p.add_argument("--format", choices=("packed", "onnx", "onnx-int8"), default="packed",
                   help="packed: bit-packed safetensors container of the quantized codes "
                        "(load with lowbit.export.packed); onnx: FP32 ONNX of the network; "
                        "onnx-int8: int8 QDQ ONNX with calibrated activations (default: "
                        "%(default)s)")
    p.add_argument("--out", required=True,
                   help="output file (written 0644; its folder must exist)")
    p.add_argument("--coding", choices=("raw", "radix", "zlib", "lzma"), default="raw",
                   help="packed: raw bit fields, radix (fixed-rate: 9 LBW levels in 3.18 "
                        "bits), or zlib/lzma entropy coding of the code streams")
    p.add_argument("--method", default=None,
                   help="FP32 run only: post-training weight quantizer before export "
                        "(default lbw-exact when --bits is given)")
    p.add_argument("--bits", type=int, default=None,
                   help="FP32 run only: bit-width of the post-training quantizer (default: "
                        "none, export as trained)")
    p.add_argument("--calib-images", type=int, default=32,
                   help="onnx/onnx-int8: training images for the example input and the "
                        "int8 activation ranges (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the export report (path, sizes, per-layer details) as one "
                        "JSON object instead of the summary line")
    p.set_defaults(func=_run)


