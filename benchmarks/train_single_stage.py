"""Train a single-stage detector (SSD / YOLOv3) from scratch on a VOC-format devkit and report
VOC07 mAP and images/s, all measured in this one run.

Engine mode (the lowbit engine + the ``detect`` task, a config file)::

    .venv/bin/python benchmarks/train_single_stage.py --config configs/yolov3_digits.yaml \
        --set data.root=/tmp/digits_ss --out runs/yolov3_digits --threads 1

prints the final VOC07 mAP, the engine's logged training images/s (wall clock per logging
window: data loading, forward, backward, step) and the eval images/s (wall clock of the final
evaluation: eval-mode forward, float post-processing and the metric, over the test split).

Loop mode (``--model NAME --devkit DIR``): a minimal loop (SGD + Nesterov, linear warm-up,
cosine decay, gradient-norm clip) for quick trials; ``--quant lbw-exact:4`` trains after
:func:`lowbit.nn.prepare` (all convs, 4-bit LBW exact); its train images/s counts forward +
backward + step only.

``--threads``: intra-op threads; on a 2-core machine shared with other jobs one thread is
usually faster than two (no OpenMP spin-waiting on a busy core).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from lowbit.data import VOCDetection
from lowbit.detection.models.ssd import ssd_lite_vgg  # noqa: F401  (registers the models)
from lowbit.detection.models.yolov3 import yolov3_tiny_darknet  # noqa: F401
from lowbit.detection.registry import create_model
from lowbit.eval.voc import evaluate_voc


def collate(batch):
    return [im for im, _ in batch], [t for _, t in batch]


def lr_at(it: int, total: int, base: float, warmup: int) -> float:
    if it < warmup:
        return base * (0.001 + (1 - 0.001) * it / warmup)
    t = (it - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: VOCDetection, batch_size: int) -> tuple[float, float]:
    model.eval()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    preds, t0 = [], time.perf_counter()
    for images, _ in loader:
        preds += [{k: v.cpu() for k, v in d.items()} for d in model(images)]
    dt = time.perf_counter() - t0
    res = evaluate_voc(preds, ds, metric="07")
    return float(res.map), len(ds) / dt


def run_config(args: argparse.Namespace) -> dict:
    """Engine mode: ``lowbit.train.Trainer`` on the config, timed through its callbacks."""
    from lowbit.config import load_config
    from lowbit.detection.task import register_detect_task
    from lowbit.train import Trainer

    register_detect_task()
    cfg = load_config(args.config, args.set)
    marks: dict[str, float] = {}

    def timer(trainer, event: str, info: dict) -> None:
        marks[event] = time.perf_counter()
        if event == "iteration" and "start" not in marks:
            marks["start"] = marks[event]

    t0 = time.perf_counter()
    res = Trainer(cfg, args.out, progress=False, callbacks=[timer]).fit()
    wall = time.perf_counter() - t0
    logs = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").open()]
    ips = [r["img_per_s"] for r in logs if r["event"] == "train" and "img_per_s" in r]
    split_file = Path(str(cfg.data.root)) / "ImageSets" / "Main" / f"{cfg.data.test_split}.txt"
    n_test = len(split_file.read_text().split())
    eval_s = marks["eval"] - marks["iteration"]
    result = {
        "config": args.config,
        "overrides": args.set,
        "model": cfg.model.name,
        "quant": cfg.quant,
        "iterations": res.iteration,
        "batch_size": cfg.train.batch_size,
        "voc07_map": round(res.metrics["main"], 4),
        "voc_area_map": round(res.metrics.get("mAP_area", float("nan")), 4),
        "train_img_per_s": round(sum(ips) / len(ips), 2) if ips else None,
        "eval_img_per_s": round(n_test / eval_s, 2),
        "train_loop_s": round(marks["iteration"] - t0, 1),
        "total_wall_s": round(wall, 1),
        "threads": args.threads,
        "command": " ".join(sys.argv),
    }
    print(json.dumps(result, indent=2))
    (Path(args.out) / "single_stage_result.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="engine mode: an experiment YAML")
    ap.add_argument("--model", default=None, help="loop mode: a registered detector")
    ap.add_argument("--devkit", default=None)
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--clip", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N images")
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--test-split", default="test", help="loop mode: split to evaluate on")
    ap.add_argument("--quant", default=None, help="method:bits, e.g. lbw-exact:4")
    ap.add_argument(
        "--set", nargs="*", default=[],
        help="engine mode: config overrides key=value; loop mode: model keyword=value",
    )  # fmt: skip
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--save", default=None, help="loop mode: save the trained state_dict here")
    ap.add_argument("--out", default=None, help="engine: run folder; loop: result JSON file")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.config:
        if not args.out:
            ap.error("--config needs --out RUN_DIR")
        return run_config(args)
    if not (args.model and args.devkit):
        ap.error("give --config, or --model and --devkit")
    torch.manual_seed(args.seed)
    train = VOCDetection(args.devkit, "trainval")
    test = VOCDetection(args.devkit, args.test_split)
    if args.train_limit:
        train.items = train.items[: args.train_limit]
        train._cache = train._cache[: args.train_limit]
    if args.test_limit:
        test.items = test.items[: args.test_limit]
        test._cache = test._cache[: args.test_limit]
    kwargs = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    model = create_model(args.model, num_classes=len(train.classes), **kwargs)
    if args.quant:
        from lowbit.nn import prepare

        method, bits = args.quant.split(":")
        prepare(model, {"method": method, "bits": int(bits)})
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay}],
        lr=args.lr, momentum=0.9, nesterov=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
        generator=g,
    )  # fmt: skip
    total = int(args.epochs * len(loader))
    it, seen, train_time = 0, 0, 0.0
    model.train()
    t_start = time.perf_counter()
    while it < total:
        for images, targets in loader:
            if it >= total:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(it, total, args.lr, args.warmup)
            t0 = time.perf_counter()
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"iteration {it}: loss {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            train_time += time.perf_counter() - t0
            seen += len(images)
            it += 1
            if it % args.log_every == 0 or it == total:
                logs = " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
                print(
                    f"it {it}/{total} loss={loss.item():.3f} {logs} "
                    f"lr={opt.param_groups[0]['lr']:.4f} {seen / train_time:.2f} img/s "
                    f"elapsed={time.perf_counter() - t_start:.0f}s",
                    flush=True,
                )
    wall = time.perf_counter() - t_start
    if args.save:
        torch.save(model.state_dict(), args.save)
    mAP, eval_ips = evaluate(model, test, args.batch_size)
    result = {
        "model": args.model,
        "kwargs": kwargs,
        "quant": args.quant,
        "epochs": args.epochs,
        "iterations": total,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_images": len(train),
        "test_images": len(test),
        "train_wall_s": round(wall, 1),
        "train_img_per_s": round(seen / train_time, 2),
        "eval_img_per_s": round(eval_ips, 2),
        "voc07_map": round(mAP, 4),
        "threads": args.threads,
        "command": " ".join(sys.argv),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
