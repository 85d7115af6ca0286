"""Formatting shared by the studies' reports: mAP and drop cells with their intervals, the interval
and run-info notes, the comparison table and its picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.studies.rows import Budget

__all__ = [
    "budget_text", "fmt", "interval_note", "run_info_line", "map_cell", "drop_cell",
    "format_table", "plot_map_vs_memory",
]


def budget_text(b: Budget) -> str:
    n = f"{b.iters} iterations" if b.iters is not None else f"{b.epochs} epoch(s)"
    lr = f"lr {b.lr}" if b.lr is not None else f"lr {b.lr_factor} x FP32 lr"
    return f"{n}, {lr}"


def fmt(v: Any, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def interval_note(boot: dict[str, Any] | None) -> str:
    """The sentence under a table with intervals."""
    if not boot:
        return ""
    return (f"mAP [lo, hi]: 95% percentile bootstrap interval over the test images "
            f"({boot['n_boot']} resamples, seed {boot['seed']}, VOC07 metric); drop [lo, hi]: "
            "FP32 minus the row on the same resamples (paired), positive = worse than FP32; "
            "`*` marks a drop whose interval excludes 0. ± is the interval's half-width.")


def run_info_line(info: dict[str, Any] | None) -> str:
    """``Run on 2 threads (torch default), load average at start 1.0 0.7 0.3, 2 CPUs.``"""
    if not info:
        return ""
    la = info.get("load_average_start")
    load = " ".join(f"{v:.2f}" for v in la) if la else "n/a"
    return (f"Run on {info.get('threads')} thread(s) ({info.get('threads_source')}), load "
            f"average at start {load}, {info.get('cpu_count')} CPUs, torch {info.get('torch')}.")


def map_cell(r: dict[str, Any]) -> str:
    """``43.02 [41.10, 44.90]`` (points of %), with the seed mean ± sd when there is one."""
    from lowbit.eval.intervals import format_ci

    text = format_ci(r.get("mAP"), r.get("mAP_ci"))
    if r.get("mAP_seed_sd") is not None:
        text += (f"; seeds {100 * r['mAP_seed_mean']:.2f} ± {100 * r['mAP_seed_sd']:.2f} "
                 f"(n={len(r['mAP_seeds'])})")
    return text


def drop_cell(r: dict[str, Any]) -> str:
    """``+0.72 [-0.10, +1.50] *`` (``*``: the paired interval excludes 0)."""
    from lowbit.eval.intervals import format_ci

    if r.get("method") == "fp32" or r.get("key") == "fp32":
        return "reference"
    if r.get("drop") is None:
        return "-"
    return format_ci(r["drop"], r.get("drop_ci"), signed=True) + (
        " *" if r.get("drop_excludes_zero") else "")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table as markdown (mAP and drop in points of %, with their 95% bootstrap
    intervals and half-widths)."""
    lines = ["| method | kind | bits | mAP [95% CI] | drop vs FP32 [paired 95% CI] | ± mAP | "
             "± drop | conv weight memory | x smaller | all parameters x smaller | "
             "zero weights | ORT latency | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['kind']} | {r['bits']} | failed | | | | | | | "
                         f"| | {str(r.get('error', '')).replace('|', '/')[:160]} |")
            continue
        lat = (f"{r['latency_ms']:.1f} ms ({r['latency_onnx']})"
               if r.get("latency_ms") is not None else "n/a")
        note = r.get("latency_note") or r.get("interval_note") or ""
        hw = r.get("mAP_half_width")
        dhw = r.get("drop_half_width")
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['bits']} | {map_cell(r)} | {drop_cell(r)} | "
            f"{fmt(None if hw is None else 100 * hw, '.2f')} | "
            f"{fmt(None if dhw is None else 100 * dhw, '.2f')} | "
            f"{r['conv_weight_bytes'] / 1024:.1f} KiB | {r['conv_ratio']:.2f} | "
            f"{r['all_param_ratio']:.2f} | {100 * r['zero_share']:.1f}% | {lat} | {note[:80]} |")
    return "\n".join(lines)


def plot_map_vs_memory(rows: list[dict[str, Any]], path: Path) -> Path:
    """PNG: mAP (%) against conv weight memory (KiB, log axis), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in ok:
        x, y = r["conv_weight_bytes"] / 1024, 100 * r["mAP"]
        fp = r["method"] == "fp32"
        ax.scatter([x], [y], marker="*" if fp else "o", s=120 if fp else 40,
                   color="#c0392b" if fp else ("#2e86c1" if r["kind"] == "qat" else "#27ae60"))
        ax.annotate(f"{r['method']} {r['bits']}b" if not fp else "FP32", (x, y),
                    textcoords="offset points", xytext=(4, 3), fontsize=7)
    if ok:
        ax.set_xscale("log")
    ax.set_xlabel("conv weight memory (KiB, log scale)")
    ax.set_ylabel("VOC07 mAP (%)")
    ax.set_title("mAP against weight memory (blue QAT, green PTQ / data-free, red FP32)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
