"""`lowbit bench quantizers`: full-model quantization passes on ResNet-50-shaped weights.

Every figure is a ratio measured in one run: each quantizer's time for one pass over all
layers against one ``abs().max()`` pass over the same tensors, rounds interleaved so that
machine noise hits every row alike (median of ``repeats`` rounds).
"""

from __future__ import annotations

import os
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


# ------------------------------------------------------------------ whole-model one pass


def _model_rows(ws: list[Tensor], bits: tuple[int, ...]) -> dict[str, Callable[[], object]]:
    """The whole-model passes compared by :func:`run_model_pass_bench` (one call = all layers)."""

    def fake_quant() -> list[Tensor]:  # torch's own 8-bit fake-quant, scale from max|W|
        out = []
        for w in ws:
            scale = float(w.abs().max()) / 127.0 or 1.0
            out.append(torch.fake_quantize_per_tensor_affine(w, scale, 0, -128, 127))
        return out

    rows: dict[str, Callable[[], object]] = {
        "abs().max() per layer": lambda: [w.abs().max() for w in ws],
        "clone per layer": lambda: [w.clone() for w in ws],
        "sort abs(w) per layer": lambda: [torch.sort(w.reshape(-1).abs()) for w in ws],
        "torch fake-quant 8-bit per layer": fake_quant,
    }
    for b in bits:
        rows[f"lbw_exact loop b={b}"] = lambda b=b: [Q.lbw_exact(w, b) for w in ws]
        rows[f"lbw_exact_many b={b}"] = lambda b=b: Q.lbw_exact_many(ws, b)
        rows[f"lbw_exact_many per-channel b={b}"] = \
            lambda b=b: Q.lbw_exact_many(ws, b, per_channel=True)
        # the paper's mu scheme (mu = 3/4 max|W|) as the lbw-mu method's training step runs it
        rows[f"lbw_approx (mu) loop b={b}"] = lambda b=b: [Q.lbw_approx(w, b) for w in ws]
        rows[f"lbw_approx_many (mu) b={b}"] = lambda b=b: Q.lbw_approx_many(ws, b)
    return rows


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_model_pass_bench(
    threads: tuple[int, ...] = (1, 2), bits: tuple[int, ...] = (2, 4, 6), repeats: int = 3,
    seed: int = 0, progress: bool = True,
) -> dict:
    """The whole-model quantization pass over ResNet-50's 54 weight tensors (25.5 M weights).

    For each thread count (set with ``torch.set_num_threads`` inside this one run): one
    ``abs().max()`` pass per layer (the baseline), one ``clone`` per layer, sorting ``|w|`` per
    layer, torch's 8-bit fake-quant per layer, and for each ``bits``: :func:`lbw_exact` once per
    layer, :func:`lbw_exact_many` on all layers, and its per-channel form; the mu scheme
    (:func:`lbw_approx` once per layer, :func:`lbw_approx_many` on all layers). Rounds
    interleave the rows (median of ``repeats``). Also checks that ``lbw_exact_many`` and
    ``lbw_approx_many`` equal their per-layer loops bit for bit on these tensors.

    Returns ``{"params", "layers", "bits", "repeats", "load_average": {"start", "end"},
    "identical": bool, "by_threads": {T: {"seconds": {row: s}, "ratios": {row: x abs-max}}},
    "targets": {...}}``.
    """
    if not threads or min(threads) < 1:
        raise ValueError(f"threads must be integers >= 1, got {threads}")
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g) * 0.02 for s in resnet50_weight_shapes()]
    rows = _model_rows(ws, bits)
    identical = True
    for b in bits:
        for (a, sa), (r, sr) in zip(Q.lbw_exact_many(ws, b), (Q.lbw_exact(w, b) for w in ws)):
            identical &= bool(torch.equal(a.view(torch.int32), r.view(torch.int32))) and \
                int(sa) == sr
        for (a, sa), (r, sr) in zip(Q.lbw_approx_many(ws, b), (Q.lbw_approx(w, b) for w in ws)):
            identical &= bool(torch.equal(a.view(torch.int32), r.view(torch.int32))) and \
                int(sa) == sr
    load_start = _load()
    before = torch.get_num_threads()
    by_threads: dict[int, dict] = {}
    bar = tqdm(total=len(threads) * repeats * len(rows), desc="bench model pass",
               disable=not progress)
    try:
        for t in threads:
            torch.set_num_threads(t)
            for fn in rows.values():  # warm-up (allocator, caches, midpoint tables)
                fn()
            times: dict[str, list[float]] = {k: [] for k in rows}
            for _ in range(repeats):
                for name, fn in rows.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                    bar.update(1)
            sec = {k: statistics.median(v) for k, v in times.items()}
            base = sec["abs().max() per layer"]
            by_threads[t] = {"seconds": sec, "ratios": {k: v / base for k, v in sec.items()}}
    finally:
        torch.set_num_threads(before)
        bar.close()
    one = by_threads[threads[0]]["ratios"]
    worst_many = max(v for k, v in one.items() if k.startswith("lbw_exact_many b="))
    targets = {
        f"lbw_exact_many <= 4x abs().max() at {threads[0]} thread(s)": worst_many <= 4.0,
        "lbw_exact_many faster than sorting": all(
            r["ratios"][f"lbw_exact_many b={b}"] < r["ratios"]["sort abs(w) per layer"]
            for r in by_threads.values() for b in bits),
        "lbw_exact_many faster than torch fake-quant": all(
            r["ratios"][f"lbw_exact_many b={b}"] < r["ratios"]["torch fake-quant 8-bit per layer"]
            for r in by_threads.values() for b in bits),
        "lbw_exact_many and lbw_approx_many bit-identical to their per-layer loops": identical,
    }
    return {"params": sum(w.numel() for w in ws), "layers": len(ws), "bits": list(bits),
            "repeats": repeats, "load_average": {"start": load_start, "end": _load()},
            "identical": identical, "by_threads": by_threads, "targets": targets}


def format_model_pass_bench(res: dict) -> str:
    """Markdown table of :func:`run_model_pass_bench`: ms and ratio to abs-max per thread count."""
    ts = list(res["by_threads"])
    la = res["load_average"]
    lines = [
        f"Whole-model pass, ResNet-50 weight shapes: {res['params'] / 1e6:.1f} M weights in "
        f"{res['layers']} tensors, median of {res['repeats']} interleaved rounds; load average "
        f"at start {la['start']}, at end {la['end']}",
        "",
        "| pass | " + " | ".join(f"ms ({t} thr) | x abs-max ({t} thr)" for t in ts) + " |",
        "|---|" + "---:|---:|" * len(ts),
    ]
    for name in res["by_threads"][ts[0]]["seconds"]:
        cells = []
        for t in ts:
            r = res["by_threads"][t]
            cells += [f"{r['seconds'][name] * 1e3:.1f}", f"{r['ratios'][name]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for k, ok in res["targets"].items():
        lines.append(f"target {k}: {'met' if ok else 'MISSED'}")
    return "\n".join(lines)
