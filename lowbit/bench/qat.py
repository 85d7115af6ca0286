"""``lowbit bench qat``: the per-step cost of quantization-aware training.

A ResNet-18-shaped classifier (11.7 M parameters, 1000 classes) at batch 16; one training step
is forward + cross-entropy + backward + SGD (Nesterov momentum, weight decay). The same model
is timed in FP32 and with every conv under ``lbw-exact`` 6-bit (the quantizer runs once per
conv per step; straight-through gradient), steps alternating FP32 / QAT / QAT / FP32 ... in one
run so that machine noise hits both alike. Reports mean and median step times and their ratio.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lowbit.bench.models import resnet18_classifier
from lowbit.nn.surgery import prepare

__all__ = ["run_qat_bench", "format_qat_bench"]


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
          ) -> float:
    t = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def run_qat_bench(json_out: bool = False, quick: bool = False, steps: int = 12,
                  batch: int = 16, input_size: int = 144, method: str = "lbw-exact",
                  bits: int = 6, warmup: int = 2, seed: int = 0, progress: bool = True,
                  verbose: bool = True, threads: int | None = 1) -> dict[str, Any]:
    """Time training steps FP32 vs QAT (every conv under ``method`` at ``bits``).

    ``steps`` timed steps per model (after ``warmup`` each), interleaved ABBA. ``quick``:
    4 steps at input 64 (a smoke run; its ratio is noisier). Prints a table (or JSON) and
    returns ``{"input_size", "batch", "params", "conv_weights", "threads", "fp32_s":
    {"mean", "median"}, "qat_s": {...}, "ratio_mean", "ratio_median", "target": 1.10}``.
    ``threads``: intra-op threads for the run (None: torch's setting), restored afterwards.
    Default 1: on the shared 2-core machine two OpenMP threads made every step 2-5x slower and
    erratic (spin-waits while the other core is busy), and the weight quantizer runs on one
    thread anyway (:func:`lowbit.nn.layers.set_quantizer_threads`). With one thread an FP32
    step at input 144 takes about a second here.
    """
    nt = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(json_out, quick, steps, batch, input_size, method, bits, warmup, seed,
                    progress, verbose)
    finally:
        torch.set_num_threads(nt)


def _run(json_out: bool, quick: bool, steps: int, batch: int, input_size: int, method: str,
         bits: int, warmup: int, seed: int, progress: bool, verbose: bool) -> dict[str, Any]:
    if steps < 1 or batch < 1 or input_size < 32:
        raise ValueError(f"need steps >= 1, batch >= 1, input_size >= 32; got {steps}, {batch}, "
                         f"{input_size}")
    if quick:
        steps, input_size, warmup = 4, 64, 1
    torch.manual_seed(seed)
    fp32 = resnet18_classifier()
    qat = prepare(copy.deepcopy(fp32), {"method": method, "bits": bits})
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, input_size, input_size, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    models = {"fp32": fp32, "qat": qat}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                               weight_decay=1e-4) for k, m in models.items()}
    for m in models.values():
        m.train()
    for _ in range(warmup):
        for k in ("fp32", "qat"):
            _step(models[k], opts[k], x, y)
    times: dict[str, list[float]] = {"fp32": [], "qat": []}
    order = [("fp32", "qat") if i % 2 == 0 else ("qat", "fp32") for i in range(steps)]
    for pair in tqdm(order, desc="qat bench", disable=not progress, leave=False):
        for k in pair:
            times[k].append(_step(models[k], opts[k], x, y))
    conv_w = sum(m.weight.numel() for m in fp32.modules() if isinstance(m, nn.Conv2d))
    res = {
        "model": "resnet18-shaped (1000 classes)",
        "method": method,
        "bits": bits,
        "input_size": input_size,
        "batch": batch,
        "steps": steps,
        "params": sum(p.numel() for p in fp32.parameters()),
        "conv_weights": conv_w,
        "threads": torch.get_num_threads(),
        "fp32_s": {"mean": statistics.fmean(times["fp32"]),
                   "median": statistics.median(times["fp32"])},
        "qat_s": {"mean": statistics.fmean(times["qat"]),
                  "median": statistics.median(times["qat"])},
        "overhead_ms": 1e3 * (statistics.fmean(times["qat"]) - statistics.fmean(times["fp32"])),
        "target": 1.10,
    }
    res["ratio_mean"] = res["qat_s"]["mean"] / res["fp32_s"]["mean"]
    res["ratio_median"] = res["qat_s"]["median"] / res["fp32_s"]["median"]
    if verbose:
        print(json.dumps(res, indent=2) if json_out else format_qat_bench(res))
    return res


def format_qat_bench(res: dict[str, Any]) -> str:
    """Markdown table of :func:`run_qat_bench`'s result."""
    return "\n".join([
        f"{res['model']}, batch {res['batch']}, input {res['input_size']}x{res['input_size']}, "
        f"{res['params'] / 1e6:.1f} M params ({res['conv_weights'] / 1e6:.1f} M conv weights), "
        f"{res['threads']} threads, {res['steps']} interleaved steps each",
        "",
        "| step (fwd+bwd+SGD) | mean s | median s |",
        "|---|---:|---:|",
        f"| FP32 | {res['fp32_s']['mean']:.3f} | {res['fp32_s']['median']:.3f} |",
        f"| {res['method']} {res['bits']}-bit QAT | {res['qat_s']['mean']:.3f} | "
        f"{res['qat_s']['median']:.3f} |",
        f"| ratio | {res['ratio_mean']:.3f} | {res['ratio_median']:.3f} |",
        "",
        f"QAT overhead {res['overhead_ms']:.0f} ms per step "
        f"({res['overhead_ms'] / (res['conv_weights'] / 1e6):.1f} ms per million conv weights)",
        "",
        f"target: ratio <= {res['target']:.2f}",
    ])
