"""`lowbit compare` and `lowbit sweep-mu`: every quantization method on one FP32 detector.

From one FP32 run (an existing run folder, or trained first from a config into
``OUT/runs/fp32``), each requested method of :data:`METHODS` is applied and evaluated with the
VOC07 11-point metric on the run's whole test set:

* ``qat`` methods are fine-tuned with a fixed budget (``--qat-iters`` iterations or
  ``--qat-epochs`` epochs, SGD at ``qat_lr_factor`` times the FP32 run's learning rate, cosine)
  through :func:`lowbit.train.fit` with ``init`` = the FP32 run; every row gets the same budget.
  ``inq`` runs INQ's incremental partition over that budget (the engine steps the portions);
  ``mixed`` first picks per-layer bits from a sensitivity analysis on calibration images
  (:func:`plan_mixed`) within the uniform b-bit memory, then fine-tunes like the others.
* ``ptq`` methods take the FP32 weights, quantize them post-training and calibrate their
  activation ranges on ``calib_images`` training images (no training, no test data).
* ``datafree`` methods quantize the FP32 weights alone (no data at all).

One row per ``(method, bits)``: mAP, drop vs FP32 (mAP points, FP32 minus method, so positive =
worse), conv weight memory (``ceil(numel * bits / 8)`` bytes of codes plus one scale per layer,
as :func:`lowbit.runs.conv_memory` counts it; FP32 = 4 bytes per weight), ``x smaller``
(FP32 conv bytes /
conv bytes), zero share (exact zeros among the conv weights the forward uses) and the median
onnxruntime latency (2 threads, CPU) of the detector's fully convolutional trunk (backbone +
RPN head + R-FCN score maps; proposal filtering, PSRoI pooling and NMS stay in PyTorch): the
FP32 ONNX file for the FP32 row, the int8 QDQ file (:func:`lowbit.export.onnx.export_onnx_int8`,
activations calibrated on training images) for the quantized rows. A row whose model cannot be
exported has ``latency_ms = None`` and the reason in ``latency_note``.

Outputs in ``OUT``: ``results.json`` (``{"fp32_run", "settings", "rows": [...]}``),
``results.md`` and ``map_vs_memory.png``. Resumable: a rerun skips every row already ``ok``
with the same settings (QAT runs continue from their checkpoints), and the finished rows of
earlier invocations on the same FP32 run that were not asked for this time stay in the table
(``"kept"``; each row records its ``settings``); a method that raises is
recorded as ``status = "failed"`` with its error and the others go on (a rerun retries it).
No mAP is ever NaN silently: a non-finite metric fails the row.

Uncertainty: every evaluated row writes its detections in the VOC results format
(``comp4_det_test_<class>.txt``; QAT rows in their run folder, the others in
``OUT/runs/<row>``), and at the end all rows are re-scored from those files with
:func:`lowbit.eval.intervals.interval_table`: the mAP with its 95% percentile bootstrap
interval over test images (``B`` = 1000 resamples, seed 0) and the drop vs FP32 with its
*paired* interval (the same resamples for both), ``drop_excludes_zero`` when the drop's
interval excludes 0 (marked ``*`` in the table). With ``seeds`` > 1 every QAT row is fine-tuned
once per seed (``train.seed`` = the FP32 run's seed + k); the row's mAP and intervals are those
of the first seed, and ``mAP_seed_mean`` / ``mAP_seed_sd`` (sample sd) summarise all seeds.

Concurrent invocations into the same ``OUT`` never lose each other's rows: every write of
``results.json`` holds an exclusive lock (``results.json.lock``), re-reads the file, merges
its rows by key and replaces the file atomically (temp file + rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lowbit.runs import load_base
from lowbit.studies.methods import Method, check_bits, parse_methods
from lowbit.studies.report import (
    budget_text,
    format_table,
    interval_note,
    plot_map_vs_memory,
    run_info_line,
)
from lowbit.studies.rows import Budget, run_rows

__all__ = [
    "compare",
]



# ------------------------------------------------------------------------------------- methods


# ---------------------------------------------------------------------------------- the base


# ------------------------------------------------------------------------------------ latency


# ---------------------------------------------------------------------------- mixed precision

# forward_raw entries that are geometry (anchors, sizes), not functions of the weights


# ------------------------------------------------------------------------------------ the rows


# ------------------------------------------------------------------------------------ compare


def compare(source: str | os.PathLike[str], out: str | os.PathLike[str], *,
            methods: str | Sequence[str] | None = None, bits: Sequence[int] | None = None,
            budget: Budget | None = None, calib_images: int = 32, latency: bool = True,
            latency_iters: int = 20, progress: bool = True, seeds: int = 1) -> dict[str, Any]:
    """Run the comparison (see the module docstring) into ``out``; returns ``results.json``'s
    content plus ``"skipped"`` (rows reused from a previous run), ``"kept"`` (earlier rows not
    asked for this time, still in the table) and ``"files"``. ``seeds``: fine-tunings per QAT
    row (mean and sd across seeds beside the bootstrap interval). ValueError naming a
    ``bits`` width no chosen method accepts, or ``seeds`` < 1."""
    out = Path(out)
    budget = budget or Budget()
    chosen = parse_methods(methods)
    check_bits(bits, chosen)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    out.mkdir(parents=True, exist_ok=True)
    base = load_base(source, out, progress)
    specs: list[tuple[str, Method | None, int, dict[str, Any]]] = [("fp32", None, 32, {})]
    for m in chosen:
        for b in m.widths(bits):
            specs.append((f"{m.name}@{b}", m, b, {}))
    settings = {"budget": asdict(budget), "calib_images": calib_images, "latency": latency,
                "fp32_run": str(base.run_dir)}
    if seeds > 1:  # only then, so rows made before --seeds existed keep their stamps
        settings["seeds"] = seeds
    res = run_rows(base, specs, out, "results.json", settings, budget, calib_images, latency,
                    latency_iters, progress, seeds)
    md = format_table(res["rows"])
    (out / "results.md").write_text(
        "# lowbit compare\n\n" + f"FP32 run `{base.run_dir}`; QAT budget "
        f"{budget_text(budget)}; PTQ calibration on {calib_images} training images"
        + (f"; each QAT row fine-tuned with {seeds} seeds" if seeds > 1 else "") + ".\n\n"
        + md + "\n\n" + interval_note(res.get("bootstrap")) + "\n\n"
        + run_info_line(res.get("run_info")) + "\n\n![mAP vs memory](map_vs_memory.png)\n")
    plot_map_vs_memory(res["rows"], out / "map_vs_memory.png")
    res["files"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md"),
                    "png": str(out / "map_vs_memory.png")}
    if progress:
        print(md)
    return res


# ----------------------------------------------------------------------------------- sweep-mu


