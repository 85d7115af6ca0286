"""`lowbit pretrain CONFIG`: pretrain a detector's backbone offline (the LBW-Net paper's
ImageNet initialisation, made from the built-in sources)."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from lowbit.config import load_config
    from lowbit.tasks.pretrain import config_from_detection, pretrain_backbone

    cfg = load_config(args.config, args.set or [])
    over = {k: v for k, v in (("steps", args.steps), ("train_crops", args.train_crops),
                              ("test_crops", args.test_crops), ("batch", args.batch),
                              ("crop", args.crop), ("lr", args.lr), ("seed", args.seed))
            if v is not None}
    pcfg = config_from_detection(cfg, **over)
    res = pretrain_backbone(pcfg, args.out, force=args.force, progress=not args.json)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    verb = "reused" if res["reused"] else f"trained in {res['seconds']:.0f} s"
    print(f"{res['path']}: {pcfg.model} backbone {verb}; held-out accuracy "
          f"{100 * res['accuracy']:.1f}% on {pcfg.test_crops} crops (11 classes, chance "
          f"{100 * res['chance']:.1f}%), train {100 * res['train_accuracy']:.1f}%")
    print(f"use it: lowbit train {args.config} --set "
          f"model.kwargs.backbone_weights={res['path']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a detector's backbone on digit/background crops (offline ImageNet "
        "stand-in)",
        description="Pretrain the backbone of CONFIG's detector on an 11-class classification "
        "task (ten digits and background) rendered from the built-in sources, and write a "
        "safetensors state_dict in torchvision's layout that the detector's "
        "model.kwargs.backbone_weights loads with strict=True. The file name is keyed by the "
        "pretraining config: a rerun reuses it.",
    )
    p.add_argument("config", help="detection experiment YAML (its model name and kwargs)")
    p.add_argument("--out", default="pretrained",
                   help="folder for the weights and their JSON sidecar (default: pretrained)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. model.kwargs.width=0.25 (repeatable)")
    p.add_argument("--steps", type=int, help="SGD steps (default 1200)")
    p.add_argument("--train-crops", type=int, help="training crops rendered (default 6000)")
    p.add_argument("--test-crops", type=int,
                   help="held-out crops from the test digit pool (default 1100)")
    p.add_argument("--batch", type=int, help="crops per step (default 32)")
    p.add_argument("--crop", type=int, help="crop side in pixels (default 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.03)")
    p.add_argument("--seed", type=int, help="data and initialisation seed (default 0)")
    p.add_argument("--force", action="store_true", help="retrain even if the file exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run)
