"""``lowbit sweep-mu``: LBW-Net's choice of mu by retraining (lbw-approx at mu = r max|W| for a
list of ratios r).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lowbit.runs import load_base
from lowbit.studies.methods import Method
from lowbit.studies.report import (
    budget_text,
    drop_cell,
    fmt,
    interval_note,
    map_cell,
    run_info_line,
)
from lowbit.studies.rows import Budget, run_rows

__all__ = [
    "sweep_mu",
]


def sweep_mu(source: str | os.PathLike[str], out: str | os.PathLike[str], *, bits: int = 6,
             mu: Sequence[float] = (0.5, 0.625, 0.75, 0.875, 1.0), partial_terms: int | None = 4,
             budget: Budget | None = None, progress: bool = True) -> dict[str, Any]:
    """LBW-Net's choice of mu (001, section 2.2) by retraining: for each ratio ``r`` in ``mu``,
    ``lbw-approx`` with mu = r * max|W| (per layer, recomputed every step) at ``bits`` bits,
    fine-tuned from the FP32 run with the same budget, evaluated with VOC07 mAP. Writes
    ``OUT/sweep_mu.json`` (rows with ``mu_ratio``), ``sweep_mu.md`` and ``map_vs_mu.png``.
    Resumable like :func:`compare` (same machinery)."""
    out = Path(out)
    budget = budget or Budget()
    ratios = [float(r) for r in mu]
    if not ratios or any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise ValueError(f"mu ratios must be finite and > 0, got {list(mu)}")
    from lowbit.nn import methods as nn_methods
    from lowbit.quant._common import check_bits

    try:  # the width lbw-approx accepts, as its registry entry says
        check_bits(bits, *nn_methods.get("lbw-approx").bit_range, "lbw-approx bits")
    except ValueError as exc:
        raise ValueError(f"--bits {bits}: {exc}") from None
    base = load_base(source, out, progress)
    specs: list[tuple[str, Method | None, int, dict[str, Any]]] = [("fp32", None, 32, {})]
    for r in ratios:
        m = Method(f"lbw-mu{r:g}", "qat", f"lbw-approx mu = {r:g} max|W|", "001",
                   (lambda b, r=r: {"method": "lbw-approx", "bits": b,
                                    "params": {"mu_ratio": r, "partial_terms": partial_terms}}),
                   bits=bits)
        specs.append((f"mu={r:g}", m, bits, {"mu_ratio": r}))
    settings = {"budget": asdict(budget), "bits": bits, "partial_terms": partial_terms,
                "fp32_run": str(base.run_dir)}
    res = run_rows(base, specs, out, "sweep_mu.json", settings, budget, 1, False, 0, progress)
    lines = ["| mu / max|W| | bits | mAP [95% CI] | drop vs FP32 [paired 95% CI] | ± drop | "
             "zero weights | note |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        if r["method"] == "fp32" or "mu_ratio" not in r:
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['mu_ratio']:g} | {bits} | failed | | | | "
                         f"{str(r['error'])[:120]} |")
            continue
        dhw = r.get("drop_half_width")
        lines.append(f"| {r['mu_ratio']:g} | {bits} | {map_cell(r)} | {drop_cell(r)} | "
                     f"{fmt(None if dhw is None else 100 * dhw, '.2f')} | "
                     f"{100 * r['zero_share']:.1f}% | {r.get('interval_note') or ''} |")
    fp = next((r for r in res["rows"] if r["method"] == "fp32" and r["status"] == "ok"), None)
    md = "\n".join(lines).replace("mu / max|W|", "mu / max\\|W\\|")
    (out / "sweep_mu.md").write_text(
        f"# lowbit sweep-mu ({bits}-bit lbw-approx, {budget_text(budget)})\n\n"
        + (f"FP32 mAP {map_cell(fp)}\n\n" if fp else "") + md + "\n\n"
        + interval_note(res.get("bootstrap")) + "\n\n" + run_info_line(res.get("run_info"))
        + "\n\n![mAP vs mu](map_vs_mu.png)\n")
    _plot_mu(res["rows"], bits, out / "map_vs_mu.png")
    res["files"] = {"json": str(out / "sweep_mu.json"), "markdown": str(out / "sweep_mu.md"),
                    "png": str(out / "map_vs_mu.png")}
    if progress:
        print(md)
    return res


def _plot_mu(rows: list[dict[str, Any]], bits: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r["mu_ratio"], 100 * r["mAP"]) for r in rows
                 if r["method"] != "fp32" and r["status"] == "ok")
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="#2e86c1",
                label=f"{bits}-bit lbw-approx")
    fp = [r for r in rows if r["method"] == "fp32" and r["status"] == "ok"]
    if fp:
        ax.axhline(100 * fp[0]["mAP"], color="#c0392b", ls="--", label="FP32")
    ax.set_xlabel("mu / max|W|")
    ax.set_ylabel("VOC07 mAP (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
