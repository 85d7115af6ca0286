"""`lowbit bench quantizers`: full-model quantization passes on ResNet-50-shaped weights.

Every figure is a ratio measured in one run: each quantizer's time for one pass over all
layers against one ``abs().max()`` pass over the same tensors, rounds interleaved so that
machine noise hits every row alike (median of ``repeats`` rounds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import tqdm

import lowbit.quant as Q


def resnet50_weight_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Per-layer weight shapes of torchvision's ResNet-50 (conv + fc; 25.5 M weights)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            if b == 0:
                shapes.append((planes * 4, inplanes, 1, 1))
            inplanes = planes * 4
    shapes.append((num_classes, 2048))
    return shapes


def _cases() -> dict[str, Callable[[Tensor], object]]:
    cases: dict[str, Callable[[Tensor], object]] = {"abs().max()": lambda w: w.abs().max()}
    for b in (2, 3, 4, 5, 6, 8):
        cases[f"lbw-exact b={b}"] = lambda w, b=b: Q.lbw_exact(w, b)
    cases["lbw-ternary (sorted, 2.6-2.7)"] = Q.lbw_ternary_sorted
    cases["lbw-approx b=6 (mu)"] = lambda w: Q.lbw_approx(w, 6)
    cases["inq b=5"] = lambda w: Q.inq(w, 5)
    cases["twn"] = Q.twn
    cases["binary"] = Q.binary
    cases["dorefa b=4"] = lambda w: Q.dorefa(w, 4)
    cases["uniform b=8 per-channel"] = lambda w: Q.uniform_quantize(w, 8, per_channel=True)
    cases["log b=4"] = lambda w: Q.log_quantize(w, 4)
    return cases


def run_quantizer_bench(repeats: int = 3, seed: int = 0, progress: bool = True) -> dict:
    """Time every quantizer on ResNet-50-shaped random weights (std 0.02).

    Returns ``{"params": N, "threads": T, "seconds": {name: median s}, "ratios": {...}}``.
    """
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g) * 0.02 for s in resnet50_weight_shapes()]
    cases = _cases()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up (allocator, caches)
        fn(ws[1])
    rounds = range(repeats)
    bar = tqdm(total=repeats * len(cases), desc="bench quantizers", disable=not progress)
    for _ in rounds:
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for w in ws:
                fn(w)
            times[name].append(time.perf_counter() - t0)
            bar.update(1)
    bar.close()
    sec = {k: statistics.median(v) for k, v in times.items()}
    base = sec["abs().max()"]
    ratios = {f"{k} / abs().max()": v / base for k, v in sec.items() if k != "abs().max()"}
    sorted_t = sec["lbw-ternary (sorted, 2.6-2.7)"]
    ratios["lbw-ternary (sorted) / lbw-exact b=2"] = sorted_t / sec["lbw-exact b=2"]
    return {
        "params": sum(w.numel() for w in ws),
        "layers": len(ws),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "seconds": sec,
        "ratios": ratios,
        "targets": {
            "lbw-exact / abs().max() <= 5": max(
                v for k, v in ratios.items() if k.startswith("lbw-exact")
            ) <= 5.0,
            "lbw-ternary sorted / lbw-exact b=2 >= 10": ratios[
                "lbw-ternary (sorted) / lbw-exact b=2"
            ] >= 10.0,
        },
    }


def format_quantizer_bench(res: dict) -> str:
    """Markdown table of :func:`run_quantizer_bench`'s result."""
    base = res["seconds"]["abs().max()"]
    lines = [
        f"ResNet-50 weight shapes: {res['params'] / 1e6:.1f} M weights in {res['layers']} "
        f"layers, {res['threads']} threads, median of {res['repeats']} interleaved rounds",
        "",
        "| quantizer | ms / full pass | x abs().max() |",
        "|---|---:|---:|",
    ]
    for k, v in res["seconds"].items():
        lines.append(f"| {k} | {v * 1e3:.1f} | {v / base:.1f} |")
    r = res["ratios"]["lbw-ternary (sorted) / lbw-exact b=2"]
    lines += ["", f"sorted ternary formula / lbw-exact b=2: {r:.1f}x"]
    for k, ok in res["targets"].items():
        lines.append(f"target {k}: {'met' if ok else 'MISSED'}")
    return "\n".join(lines)
