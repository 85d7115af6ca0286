"""Train a registered detector from scratch on the digits devkit and report VOC07 mAP + images/s.

A minimal stand-alone loop (SGD + momentum, linear warm-up, cosine decay) used to measure the
CPU detectors before/independently of ``lowbit train``::

    .venv/bin/lowbit data digits --out /tmp/digits
    .venv/bin/python benchmarks/train_detector_digits.py --model rfcn_resnet18 \
        --devkit /tmp/digits --epochs 6

Throughput is training images per second of wall time spent in the training loop (data
loading included, evaluation excluded). Use ``--set key=value`` for model options
(``--set k=5 --set ohem=true``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time

import torch
import yaml

from lowbit.data.transforms import collate_detection
from lowbit.data.voc import VOCDetection
from lowbit.detection.registry import create_model
from lowbit.eval.voc import evaluate_voc


def evaluate(model: torch.nn.Module, ds: VOCDetection, batch_size: int = 16) -> dict:
    model.eval()
    collate = functools.partial(collate_detection, pad=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    preds = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            preds.extend(model(images))
    dt = time.perf_counter() - t0
    res = evaluate_voc(preds, ds, metric="07")
    return {"mAP": res.map, "eval_images_per_s": len(ds) / dt, "result": res}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="rfcn_resnet18")
    p.add_argument("--devkit", default="/tmp/digits")
    p.add_argument("--epochs", type=float, default=6.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=200, help="warm-up iterations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="use the first N train images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--save", default=None, help="write the trained state_dict here (.pt)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kw = {}
    for item in args.set:
        k, v = item.split("=", 1)
        kw[k] = yaml.safe_load(v)
    train = VOCDetection(args.devkit, "trainval")
    test = VOCDetection(args.devkit, "test")
    if args.max_train:
        train = torch.utils.data.Subset(train, range(args.max_train))
    model = create_model(args.model, len(test.classes), **kw)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=functools.partial(collate_detection, pad=False),
        generator=torch.Generator().manual_seed(args.seed),
    )
    total_iters = int(args.epochs * len(loader))

    def lr_at(it: int) -> float:
        if it < args.warmup:
            return args.lr * (0.001 + 0.999 * it / args.warmup)
        t = (it - args.warmup) / max(1, total_iters - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    it = 0
    seen = 0
    train_time = 0.0
    log = []
    while it < total_iters:
        model.train()
        t0 = time.perf_counter()
        run = {}
        n = 0
        for images, targets in loader:
            for g in opt.param_groups:
                g["lr"] = lr_at(it)
            losses = model(images, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in losses.items():
                run[k] = run.get(k, 0.0) + float(v.detach())
            n += 1
            it += 1
            seen += len(images)
            if it >= total_iters:
                break
        dt = time.perf_counter() - t0
        train_time += dt
        entry = {k: round(v / n, 4) for k, v in run.items()}
        entry.update(iter=it, images_per_s=round(n * args.batch_size / dt, 2))
        log.append(entry)
        if not args.json:
            print(json.dumps(entry), flush=True)
    if args.save:
        torch.save(model.state_dict(), args.save)
    ev = evaluate(model, test)
    out = {
        "model": args.model,
        "options": kw,
        "iters": it,
        "images": seen,
        "train_minutes": round(train_time / 60, 2),
        "train_images_per_s": round(seen / train_time, 2),
        "voc07_mAP": round(ev["mAP"], 4),
        "eval_images_per_s": round(ev["eval_images_per_s"], 2),
    }
    if not args.json:
        print(ev["result"].format_table())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
