"""Short GPU benchmark for `make gpu-check`: quantizer throughput and a QAT step, on CUDA.

1. Every registered weight quantizer on ResNet-50's largest conv weight (``[512, 512, 3, 3]``,
   2.36 M values, float32 and bfloat16) against one ``abs().max()`` pass over the same tensor:
   ms per call, G values per second and the ratio, all timed in one run (interleaved rounds,
   median; ``torch.cuda.synchronize`` around every call).
2. A training step of lowbit's ResNet-18 backbone (batch 32, 128 x 128, SGD) in FP32 and
   prepared with lbw-exact 4-bit weights, with and without autocast (float16 on CUDA):
   ms per step and the QAT / FP32 ratio.

    .venv/bin/python benchmarks/bench_gpu.py              # CUDA (error without it)
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick   # the same code on CPU

Prints the device name, torch / CUDA versions, the CPU thread count and the load average
before and after; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int,
                     reps: int) -> dict[str, float]:
    """Median ms per call of each function, ``reps`` calls per round, arms interleaved."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (CUDA context, kernels, caching allocator)
        fn()
    _sync(device)
    for _ in range(rounds):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / reps)
    return {k: 1000.0 * sorted(v)[len(v) // 2] for k, v in times.items()}


def bench_quantizers(device: torch.device, rounds: int, reps: int, shape: tuple[int, ...]
                     ) -> dict[str, Any]:
    from lowbit.quant import get, list_quantizers

    out: dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        w = (torch.randn(shape, generator=g) * 0.05).to(device=device, dtype=dtype)
        fns: dict[str, Callable[[], Any]] = {"abs().max()": lambda w=w: w.abs().max()}
        for name in list_quantizers():
            fns[name] = lambda name=name, w=w: get(name)(w)
        ms = time_interleaved(fns, device, rounds, reps)
        base = ms["abs().max()"]
        key = str(dtype).removeprefix("torch.")
        out[key] = {k: {"ms": round(v, 3), "gvalues_per_s": float(f"{w.numel() / v / 1e6:.3g}"),
                        "over_absmax": round(v / base, 2)} for k, v in ms.items()}
    return out


def _backbone() -> nn.Module:
    from lowbit.detection.backbones.resnet import resnet18

    torch.manual_seed(0)
    return resnet18()


def _out(y: Any) -> torch.Tensor:
    if isinstance(y, dict):
        y = list(y.values())[-1]
    elif isinstance(y, (tuple, list)):
        y = y[-1]
    return y


def bench_qat(device: torch.device, rounds: int, reps: int, batch: int, size: int
              ) -> dict[str, Any]:
    from lowbit.nn import prepare

    fp32 = _backbone().to(device).train()
    qat = prepare(copy.deepcopy(fp32), {"method": "lbw-exact", "bits": 4}).to(device).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step_fn(model: nn.Module, autocast: bool) -> Callable[[], None]:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                              momentum=0.9)

        def step() -> None:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
                loss = _out(model(x)).float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    fns = {"fp32": step_fn(fp32, False), "qat lbw-exact 4b": step_fn(qat, False),
           "fp32 autocast": step_fn(fp32, True), "qat lbw-exact 4b autocast": step_fn(qat, True)}
    ms = time_interleaved(fns, device, rounds, reps)
    return {"input": [batch, 3, size, size], "amp_dtype": str(amp_dtype),
            "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
            "qat_over_fp32": round(ms["qat lbw-exact 4b"] / ms["fp32"], 3),
            "qat_over_fp32_autocast": round(ms["qat lbw-exact 4b autocast"]
                                            / ms["fp32 autocast"], 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few rounds (a smoke run of the same code)")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: bench_gpu.py --device {args.device}: CUDA is not available (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    head = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2)}
    print(f"bench_gpu: {json.dumps(head)}", flush=True)
    rounds, reps = (3, 2) if args.quick else (7, 10)
    shape = (64, 64, 3, 3) if args.quick else (512, 512, 3, 3)
    res: dict[str, Any] = {"head": head}
    res["quantizers"] = bench_quantizers(device, rounds, reps, shape)
    for dt, rows in res["quantizers"].items():
        print(f"\nquantizers on {list(shape)} {dt} (median of {rounds} interleaved rounds):")
        for k, r in rows.items():
            print(f"  {k:<12} {r['ms']:9.3f} ms  {r['gvalues_per_s']:8.3g} Gvalues/s  "
                  f"x{r['over_absmax']:.2f} abs-max")
    batch, size = (2, 32) if args.quick else (32, 128)
    res["qat"] = bench_qat(device, rounds, max(1, reps // 2), batch, size)
    print(f"\nQAT step, ResNet-18 backbone, input {res['qat']['input']}:")
    for k, v in res["qat"]["ms_per_step"].items():
        print(f"  {k:<28} {v:9.2f} ms/step")
    print(f"  qat / fp32: x{res['qat']['qat_over_fp32']}, with autocast "
          f"({res['qat']['amp_dtype']}): x{res['qat']['qat_over_fp32_autocast']}")
    res["load_average_end"] = round(os.getloadavg()[0], 2)
    print(f"\nload average at end: {res['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
