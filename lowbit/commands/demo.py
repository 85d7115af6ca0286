"""`lowbit demo`: the LBW-Net workflow on the built-in digits devkit (see lowbit.studies.demo)."""

from __future__ import annotations

import argparse
import dataclasses
import json


def _run(args: argparse.Namespace) -> int:
    from lowbit.studies.demo import DEFAULT, QUICK, run_demo

    base = QUICK if args.quick else DEFAULT
    over = {k: v for k, v in {
        "train_images": args.train_images, "test_images": args.test_images,
        "image_size": args.size, "fp32_epochs": args.epochs, "qat_epochs": args.qat_epochs,
        "qat_iters": args.qat_iters, "freeze_at": args.freeze_at,
        "width": args.width, "batch_size": args.batch_size, "seeds": args.seeds,
        "pretrain_steps": args.pretrain_steps, "pretrain_crops": args.pretrain_crops,
        "min_objects": args.min_objects, "max_objects": args.max_objects,
        "attempts": args.attempts,
    }.items() if v is not None}
    if args.qat_epochs is not None and args.qat_iters is None:
        over["qat_iters"] = None  # --qat-epochs alone sets the length in epochs
    settings = dataclasses.replace(base, **over)
    res = run_demo(args.out, settings=settings, progress=not args.json)
    if args.json:
        print(json.dumps({"runs": res["runs"], "seconds": res["seconds"],
                          "bootstrap": res.get("bootstrap"), "run_info": res.get("run_info")},
                         indent=2, default=float))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the LBW-Net workflow on the built-in digits devkit (the main job)",
        description="Pretrain the R-FCN's backbone offline on digit/background crops (the "
        "paper's ImageNet initialisation, made from the built-in sources; reused by a rerun), "
        "train the CPU-sized R-FCN in FP32 from it on the built-in digits devkit with dense "
        "scenes (generated into OUT/digits if missing), then LBW QAT at 4/5/6 bits (exact "
        "quantizer) and 6 bits with the paper's mu scheme from that warm start, and an FP32 "
        "control fine-tuned the same way without a quantizer; evaluate with the VOC07 metric; "
        "write "
        "OUT/results.json, OUT/report.md (Table 3.1, weight statistics), histograms and "
        "detection pictures. Every mAP is printed with its 95% bootstrap interval over the test "
        "images and every drop with its paired interval against FP32 ('*': the interval "
        "excludes 0); each phase writes its detections as comp4_det_test_<class>.txt in its run "
        "folder. Rerunning into the same OUT continues where it stopped (finished phases are "
        "reused and keep their timings).",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="small smoke run (a few minutes)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--train-images", type=int, metavar="N",
                   help="training images of the generated digits devkit (default 1000; "
                   "--quick 300)")
    g.add_argument("--test-images", type=int, metavar="N",
                   help="test images the mAP and its interval are measured on (default 1800; "
                   "--quick 60); more images give narrower intervals")
    g.add_argument("--size", type=int, help="image size in px")
    g.add_argument("--min-objects", type=int, metavar="N",
                   help="fewest digits drawn per generated scene (default 10: dense scenes, about "
                   "8.4 objects per image; 1 with --max-objects 6 --attempts 8: the standard "
                   "scenes of lowbit data digits, about 2.8)")
    g.add_argument("--max-objects", type=int, metavar="N",
                   help="most digits drawn per generated scene (default 24)")
    g.add_argument("--attempts", type=int, metavar="N",
                   help="positions tried for each digit before it is dropped (default 60)")
    g.add_argument("--epochs", type=int, help="FP32 epochs (default 2; --quick 4)")
    g.add_argument("--qat-epochs", type=int, help="epochs of each LBW QAT run and of the FP32 "
                   "control where no iteration count is set (--quick: 1)")
    g.add_argument("--qat-iters", type=int, metavar="N",
                   help="iterations of each LBW QAT run and of the FP32 control (default "
                   "150; --quick: --qat-epochs whole epochs)")
    g.add_argument("--freeze-at", type=int, metavar="N",
                   help="backbone stages kept frozen when it is pretrained: 0 none, 1 the stem, "
                   "2 the stem and layer1 (default, as the paper's R-FCN), ... 5 all")
    g.add_argument("--batch-size", type=int, metavar="N",
                   help="images per training step of every phase (default 4)")
    g.add_argument("--seeds", type=int, metavar="N",
                   help="fine-tune each LBW phase with N seeds and report mean ± sd across them "
                   "beside the bootstrap interval (default 1)")
    g.add_argument("--width", type=float, help="backbone width multiplier")
    g.add_argument("--pretrain-steps", type=int, metavar="N",
                   help="backbone pretraining steps (default 1200; --quick 60; 0: train the "
                   "FP32 R-FCN from scratch)")
    g.add_argument("--pretrain-crops", type=int, metavar="N",
                   help="crops rendered for backbone pretraining (default 6000; --quick 660)")
    p.set_defaults(func=_run)
