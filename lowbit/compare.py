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
as :func:`lowbit.demo` counts it; FP32 = 4 bytes per weight), ``x smaller`` (FP32 conv bytes /
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

import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit._files import write_atomic

__all__ = [
    "Method",
    "METHODS",
    "DEFAULT_METHODS",
    "Budget",
    "Base",
    "load_base",
    "compare",
    "sweep_mu",
    "format_table",
    "methods_markdown",
    "measure_latency",
    "OutputMSE",
    "plan_mixed",
]


# ------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A named quantization recipe of the comparison.

    ``kind``: ``"qat"`` (fine-tuned from FP32 with the budget), ``"ptq"`` (post-training,
    activation ranges calibrated on training images when ``calibrate``) or ``"datafree"``
    (weights only, no data). ``bits``: default bit-width; ``bit_range``: the widths it accepts
    (a requested width outside it falls back to ``bits``). ``recipe(bits)`` returns the
    :meth:`lowbit.nn.Recipe.from_dict` mapping. ``qn_phases``: Quantization Networks' training
    phases as shares of the QAT budget (``(("weights", 0.3), ...)``, turned into
    ``train.qn_phases`` in epochs); QN temperatures (T0 = 20 per epoch) and INQ's portions are
    driven by the engine for every row that has such quantizers
    (:class:`lowbit.train.quant_schedule.QuantClock`).
    ``penalty``: lambda of 002's extra loss term (``train.quant_penalty``) during QAT.
    ``svd_energy``: before quantizing, replace every ``nn.Linear`` by its truncated SVD keeping
    this share of the singular values' energy (002's compression of the fully connected head;
    a no-op for models without Linear layers, such as R-FCN). ``reevaluate``: the row's
    mAP must come from the converted model, not the training run's final evaluation (needed
    when training runs a relaxation, e.g. 002's clip-only forward, and the b-bit rounding
    only happens at conversion); every QAT row is now scored on its converted model (that
    is where its detections files come from; the run's own figure is ``train_final_mAP``),
    so the flag only remains part of the row's stamp. ``plan``: before QAT,
    ``plan(fp32_model, calib_batches, bits) -> (recipe dict, info)`` turns ``recipe(bits)``
    into the recipe that is trained (e.g. per-layer bits from a sensitivity analysis); the
    info lands in the row (cached under ``OUT/runs`` so a rerun does not measure again).
    """

    name: str
    kind: str
    bits: int
    bit_range: tuple[int, int]
    summary: str
    paper: str
    recipe: Callable[[int], dict[str, Any]]
    calibrate: bool = False
    qn_phases: tuple[tuple[str, float], ...] | None = None
    penalty: float = 0.0
    svd_energy: float | None = None
    reevaluate: bool = False
    plan: Callable[[nn.Module, list[list[Tensor]], int],
                   tuple[dict[str, Any], dict[str, Any]]] | None = None

    def widths(self, requested: Sequence[int] | None) -> list[int]:
        """The bit-widths of this method's rows for a ``--bits`` request (None: default): the
        requested widths in ``bit_range``; when none is, the method's default width (a width no
        method accepts is refused by :func:`check_bits` before)."""
        if not requested:
            return [self.bits]
        ok = [b for b in requested if self.bit_range[0] <= b <= self.bit_range[1]]
        return sorted(set(ok)) or [self.bits]


def check_bits(bits: Sequence[int] | None, methods: Sequence[Method]) -> None:
    """ValueError naming any requested width that none of ``methods`` accepts (e.g. 0, 99)."""
    for b in bits or ():
        if not any(m.bit_range[0] <= b <= m.bit_range[1] for m in methods):
            lo = min(m.bit_range[0] for m in methods)
            hi = max(m.bit_range[1] for m in methods)
            raise ValueError(f"--bits {b}: no chosen method accepts it (widths {lo}..{hi})")


def _clip(b: int, learnable: bool) -> dict[str, Any]:
    """002's recipe: b-bit weights of every conv and fully connected layer from a (learnable or
    calibrated) clip, 8-bit activation clips initialised MSE-optimally."""
    return {"method": "clip", "bits": b, "params": {"learnable": learnable},
            "layers": ["conv", "linear"],
            "act": {"method": "clip", "bits": 8, "calibrator": "mse"}}


#: 003's three phases as shares of the QAT budget (``qn-a8`` rows)
_QN_A8_PHASES: tuple[tuple[str, float], ...] = (("weights", 0.3), ("activations", 0.3),
                                                ("both", 0.4))


def _qn_a8(b: int, bias_init: str) -> dict[str, Any]:
    """QN weights at b bits + 8-bit QN activations over the data's min/max range."""
    return {"method": "qn", "bits": b,
            "act": {"method": "qn", "bits": 8, "bias_init": bias_init, "outlier": 0.0}}


def _plan_mixed(model: nn.Module, calib: list[list[Tensor]], bits: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    return plan_mixed(model, calib, bits)


def _plan_dorefa(model: nn.Module, calib: list[list[Tensor]], bits: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """DoReFa's recipe for this model: every Conv2d that no BatchNorm follows stays float
    (found by :func:`lowbit.nn.find_conv_bn_pairs`)."""
    from lowbit.nn import find_conv_bn_pairs

    paired = {c for c, _ in find_conv_bn_pairs(model)}
    loose = sorted(n for n, m in model.named_modules()
                   if isinstance(m, nn.Conv2d) and n not in paired)
    return ({"method": "dorefa", "bits": int(bits), "exclude": loose},
            {"dorefa_float_layers": loose})


#: Every method of the comparison, in table order. README lists this table.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lbw-exact", "qat", 4, (2, 8),
           "power-of-two weights {0, +-2^(s-n+1..s)}, exact least-squares scale (Thm 2.1), "
           "projected SGD", "001 LBW-Net",
           lambda b: {"method": "lbw-exact", "bits": b}),
    Method("lbw-exact-ch", "qat", 4, (2, 8),
           "lbw-exact with one power-of-two scale per output channel", "001 LBW-Net "
           "(per-channel variant)",
           lambda b: {"method": "lbw-exact", "bits": b, "params": {"per_channel": True}}),
    Method("lbw-mu", "qat", 6, (2, 8),
           "LBW-Net's semi-analytical scheme with mu = 3/4 max|W|, 4 partial terms "
           "(eq. 2.8-2.9)", "001 LBW-Net",
           lambda b: {"method": "lbw-approx", "bits": b,
                      "params": {"mu_ratio": 0.75, "partial_terms": 4}}),
    Method("twn", "qat", 2, (2, 2),
           "ternary {-a, 0, a}, threshold 0.7 mean|W|", "TWN",
           lambda b: {"method": "twn", "bits": 2}),
    Method("inq", "qat", 4, (2, 8),
           "Incremental Network Quantization: per layer the largest-|w| 50%, 75%, 87.5%, 100% "
           "of the weights are frozen on INQ's power-of-two grid (exponents from max|W| at the "
           "start) in stages spread over the budget, the float rest re-trained in between; "
           "the last quarter trains only BN/biases", "INQ",
           lambda b: {"method": "inq-incremental", "bits": b}),
    Method("dorefa", "qat", 4, (2, 8),
           "DoReFa weights (tanh, normalised to [-1, 1], uniform) on every conv followed by a "
           "BatchNorm; the convs without one (R-FCN's RPN and head, YOLO's and SSD's output "
           "convs) stay float: DoReFa drops each layer's scale, which only a following "
           "BatchNorm restores", "DoReFa-Net",
           lambda b: {"method": "dorefa", "bits": b}, plan=_plan_dorefa),
    Method("uniform-ptq", "ptq", 8, (2, 8),
           "uniform symmetric per-channel min/max weights + uint8 min/max activations "
           "calibrated on training images", "002 baseline",
           lambda b: {"method": "uniform", "bits": b, "params": {"per_channel": True},
                      "layers": ["conv", "linear"],
                      "act": {"method": "uniform", "bits": 8, "calibrator": "minmax"}},
           calibrate=True),
    Method("uniform-ptq-tensor", "ptq", 8, (2, 8),
           "uniform-ptq with one min/max range per weight tensor: 002's contrast without "
           "clipping at the clip methods' granularity (their weight clip is per tensor)",
           "002 baseline",
           lambda b: {"method": "uniform", "bits": b, "params": {"per_channel": False},
                      "layers": ["conv", "linear"],
                      "act": {"method": "uniform", "bits": 8, "calibrator": "minmax"}},
           calibrate=True),
    Method("clip-ptq", "ptq", 8, (2, 8),
           "clipping-based PTQ: MSE-optimal weight clip and activation clips, b-bit uniform "
           "from the clip values (no clip training here)", "002",
           lambda b: _clip(b, learnable=False),
           calibrate=True),
    Method("clip-qat", "qat", 8, (2, 8),
           "002 in full: fine-tune with learnable weight/activation clips and the extra loss "
           "term (lambda = 1, train.quant_penalty), then b-bit uniform from the clip values",
           "002",
           lambda b: _clip(b, learnable=True),
           penalty=1.0, reevaluate=True),
    Method("clip-ptq-svd", "ptq", 8, (2, 8),
           "clip-ptq after replacing each fully connected layer by its truncated SVD (90% of "
           "the singular-value energy; 002's FC compression, Faster R-CNN's fc6/fc7)", "002",
           lambda b: _clip(b, learnable=False),
           calibrate=True, svd_energy=0.9),
    Method("qn", "qat", 3, (1, 8),
           "Quantization Networks: soft staircase of sigmoids, learnable alpha/beta, "
           "temperature annealed (weights only)", "003",
           lambda b: {"method": "qn", "bits": b}),
    Method("qn-a8", "qat", 3, (1, 8),
           "Quantization Networks weights as `qn` plus 8-bit QN activations (a 255-sigmoid "
           "staircase, evaluated in a window around each value) at every quantized layer's "
           "input (range = min/max of the data: the public code's 0.1% outlier clipping cost "
           "2.7 mAP points on SSD), trained in 003's three phases over the budget: weights "
           "30%, activations 30% (weights held on their hard staircase), both 40%", "003",
           lambda b: _qn_a8(b, "kmeans"), qn_phases=_QN_A8_PHASES),
    Method("qn-a8-uniform", "qat", 3, (1, 8),
           "qn-a8 with the activation staircase's steps at the midpoints of uniform levels "
           "(bias_init uniform) instead of k-means: the hard staircase is plain 8-bit uniform "
           "quantization, deployable as uint8", "003 variant",
           lambda b: _qn_a8(b, "uniform"), qn_phases=_QN_A8_PHASES),
    Method("kmeans-df", "datafree", 4, (1, 8),
           "optimal 1-D clustering (k-means) of each layer's weights, no data", "004",
           lambda b: {"method": "kmeans", "bits": b}),
    Method("mixed", "qat", 4, (2, 8),
           "LBW exact with per-layer bits in {2, 3, 4, 6, 8} (and b) chosen by sensitivity: "
           "each conv quantized alone, cost = relative MSE of the raw detector outputs against "
           "FP32 on 8 calibration images; exact DP minimising the summed cost within the conv "
           "weight memory of uniform b-bit LBW exact; then QAT", "001 + mixed precision",
           lambda b: {"method": "lbw-exact", "bits": b}, plan=_plan_mixed),
)}

#: ``clip-qat``, ``clip-ptq-svd``, ``qn-a8(-uniform)``, ``uniform-ptq-tensor`` and
#: ``lbw-exact-ch`` are opt-in (``--methods``): QAT runs on top of ``clip-ptq`` / ``qn``, the
#: SVD row only differs from ``clip-ptq`` on models with Linear layers, the per-tensor row is
#: 002's contrast, and the per-channel LBW row is a variant of ``lbw-exact``.
OPT_IN: tuple[str, ...] = ("clip-qat", "clip-ptq-svd", "qn-a8", "qn-a8-uniform",
                           "uniform-ptq-tensor", "lbw-exact-ch")
DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in OPT_IN)


def methods_markdown() -> str:
    """The method table as markdown (for README / ``lowbit compare --list``)."""
    lines = ["| method | kind | default bits | what | from |", "|---|---|---:|---|---|"]
    for m in METHODS.values():
        what = m.summary.replace("|", "\\|")
        lines.append(f"| `{m.name}` | {m.kind} | {m.bits} | {what} | {m.paper} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the base


@dataclass
class Budget:
    """The fine-tuning budget of every QAT row: ``iters`` iterations, else ``epochs`` epochs.

    ``lr``: absolute learning rate (None: ``lr_factor`` times the FP32 run's ``optim.lr``)."""

    iters: int | None = None
    epochs: int | None = 1
    lr: float | None = None
    lr_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"qat iterations must be >= 1, got {self.iters}")
        if self.iters is None and (self.epochs is None or self.epochs < 1):
            raise ValueError(f"qat epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"qat lr must be > 0, got {self.lr}")
        if not self.lr_factor > 0:
            raise ValueError(f"qat lr factor must be > 0, got {self.lr_factor}")


@dataclass
class Base:
    """The FP32 run everything starts from, with its task and data sets."""

    run_dir: Path
    cfg: Any
    task: Any
    train_ds: Any
    test_ds: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _is_run(p: Path) -> bool:
    return p.is_dir() and (p / "config.yaml").is_file()


def load_base(source: str | os.PathLike[str], out: Path, progress: bool = True) -> Base:
    """The FP32 base of a comparison: ``source`` is a finished FP32 run folder, or a config
    file trained (resumably) into ``out/runs/fp32`` first. Raises ValueError naming the run
    when it is quantized or unfinished."""
    from lowbit.config import load_config
    from lowbit.train import fit
    from lowbit.train.checkpoint import resolve_checkpoint
    from lowbit.train.distributed import resolve_device

    src = Path(source)
    if _is_run(src):
        run_dir = src
        cfg = load_config(run_dir / "config.yaml")
        try:
            resolve_checkpoint(run_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{run_dir}: no checkpoint to compare from ({exc})") from None
    elif src.is_file():
        cfg = load_config(src)
        if cfg.quant is not None:
            raise ValueError(f"{src}: config has a quant section; compare needs an FP32 config")
        run_dir = out / "runs" / "fp32"
        if progress:
            print(f"== FP32 from {src} into {run_dir}", flush=True)
        fit(cfg, run_dir, resume=True, progress=progress)
        cfg = load_config(run_dir / "config.yaml")
    elif src.is_dir():
        raise ValueError(f"{src}: not a run folder (no config.yaml)")
    else:
        raise FileNotFoundError(f"{src}: no such config or run folder")
    if cfg.quant is not None:
        raise ValueError(f"{run_dir}: is a quantized run (quant.method="
                         f"{cfg.quant.get('method')!r}); compare needs an FP32 run")
    from lowbit.train.tasks import task_for_model

    task = task_for_model(cfg.model)
    train_ds, test_ds = task.build_datasets(cfg)
    return Base(run_dir.resolve(), cfg, task, train_ds, test_ds,
                resolve_device(cfg.train.device))


def fp32_model(base: Base) -> nn.Module:
    """The FP32 run's float model (eval mode, on ``base.device``)."""
    from lowbit.train import build_model, load_checkpoint
    from lowbit.train.checkpoint import resolve_checkpoint

    _, model = build_model(base.cfg)
    load_checkpoint(resolve_checkpoint(base.run_dir), model)
    return model.to(base.device).eval()


def evaluate(base: Base, model: nn.Module, test_ds: Any | None = None) -> dict[str, float]:
    """VOC metrics of ``model`` on ``test_ds`` (default the run's test set); ``main`` is the
    VOC07 11-point mAP in [0, 1]. Raises ValueError when it is not finite."""
    from torch.utils.data import DataLoader

    from lowbit.train import evaluate_model

    ds = base.test_ds if test_ds is None else test_ds
    tc = base.cfg.train
    loader = DataLoader(ds, batch_size=tc.eval_batch_size or tc.batch_size, shuffle=False,
                        collate_fn=getattr(base.task, "eval_collate_fn", base.task.collate_fn),
                        num_workers=0)
    metrics = evaluate_model(base.task, model, loader, device=base.device)
    if not math.isfinite(metrics["main"]):
        raise ValueError(f"non-finite mAP {metrics['main']}")
    return metrics


def predict(task: Any, model: nn.Module, ds: Any, device: torch.device,
            batch_size: int = 1) -> list[dict[str, Tensor]]:
    """Detections of ``model`` (eval mode, no grad) on every image of ``ds`` in order: one dict
    per image (``boxes [K, 4]`` internal 0-based xyxy in the original image size, ``labels``,
    ``scores``, on the CPU), as the detect task's evaluation sees them."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_size=max(1, batch_size), shuffle=False,
                        collate_fn=getattr(task, "eval_collate_fn", task.collate_fn),
                        num_workers=0)
    was = model.training
    model.eval()
    preds: list[dict[str, Tensor]] = []
    try:
        with torch.no_grad():
            for images, _ in loader:
                out = model([im.to(device) for im in images])
                preds.extend({k: v.detach().cpu() for k, v in d.items()} for d in out)
    finally:
        model.train(was)
    return preds


def score(task: Any, model: nn.Module, ds: Any, folder: Path, device: torch.device,
          batch_size: int = 1, split: str = "test") -> dict[str, Any]:
    """Evaluate ``model`` on ``ds`` with the VOC metric and write its detections into
    ``folder`` in the VOC results format (``comp4_det_<split>_<class>.txt``, 1-based pixels),
    so any evaluator can re-score them. Returns ``{"mAP" (VOC07), "mAP_area", "dets_dir"}``;
    ValueError when the mAP is not finite."""
    from lowbit.eval.intervals import file_class_names
    from lowbit.eval.voc import evaluate_voc, write_voc_results

    preds = predict(task, model, ds, device, batch_size)
    r07 = evaluate_voc(preds, ds, metric="07")
    rarea = evaluate_voc(preds, ds, metric="area")
    if not math.isfinite(r07.map):
        raise ValueError(f"{folder}: non-finite mAP {r07.map}")
    targets = ds.eval_targets()
    ids = [str(t.get("image_id", i)) for i, t in enumerate(targets)]
    write_voc_results(preds, ids, file_class_names(ds.classes), folder, split)
    return {"mAP": float(r07.map), "mAP_area": float(rarea.map), "dets_dir": str(folder)}


def add_intervals(rows: list[dict[str, Any]], test_ds: Any, reference: str | None = "fp32",
                  n_boot: int | None = None, seed: int = 0, split: str = "test"
                  ) -> dict[str, Any]:
    """Re-score every ``ok`` row that has a ``dets_dir`` from its VOC results files and add
    ``mAP_ci``, ``mAP_half_width`` and (vs the row keyed ``reference``) ``drop_ci``,
    ``drop_half_width``, ``drop_excludes_zero`` (fractions; see
    :func:`lowbit.eval.intervals.interval_table`). Rows whose files are missing get an
    ``interval_note``. Returns the bootstrap settings."""
    from lowbit.eval.intervals import (
        DEFAULT_BOOT,
        ground_truth_arrays,
        interval_table,
        match_results_dir,
    )

    n_boot = DEFAULT_BOOT if n_boot is None else n_boot
    gt = ground_truth_arrays(test_ds)
    matched = {}
    for r in rows:
        for k in ("mAP_ci", "mAP_half_width", "drop_ci", "drop_half_width",
                  "drop_excludes_zero", "interval_note"):
            r.pop(k, None)
        if r.get("status") != "ok":
            continue
        if not r.get("dets_dir"):
            r["interval_note"] = "no detections file (row made before intervals existed)"
            continue
        try:
            matched[r["key"]] = match_results_dir(gt, r["dets_dir"], split)
        except (ValueError, OSError) as exc:
            r["interval_note"] = str(exc)
    ref = reference if reference in matched else None
    try:
        table = interval_table(matched, ref, n_boot, seed) if matched else {}
    except ValueError as exc:  # e.g. a test set without any positive box: mAP undefined
        table = {}
        for r in rows:
            if r.get("key") in matched:
                r["interval_note"] = str(exc)
    for r in rows:
        t = table.get(r.get("key", ""))
        if t:
            r.update({k: v for k, v in t.items() if k not in ("mAP", "drop", "n_undefined")})
    return {"n_boot": n_boot, "seed": seed, "level": 0.95, "metric": "07",
            "resampled": "test images, with replacement", "reference": ref}


def seed_summary(maps: Sequence[float]) -> dict[str, Any]:
    """``{"mAP_seeds", "mAP_seed_mean", "mAP_seed_sd"}`` (sample sd; None for one seed)."""
    import statistics

    maps = [float(m) for m in maps]
    return {"mAP_seeds": maps, "mAP_seed_mean": statistics.fmean(maps),
            "mAP_seed_sd": statistics.stdev(maps) if len(maps) > 1 else None}


def train_images(base: Base, n: int, batch: int = 4) -> list[list[Tensor]]:
    """The first ``n`` training images (``Tensor[3, H, W]`` in [0, 1]) in batches of
    ``batch`` lists, for calibration."""
    if n < 1:
        raise ValueError(f"calibration images must be >= 1, got {n}")
    imgs = [base.train_ds[i][0] for i in range(min(n, len(base.train_ds)))]
    if not imgs:
        raise ValueError(f"{base.run_dir}: the training set is empty, nothing to calibrate on")
    return [imgs[i:i + batch] for i in range(0, len(imgs), batch)]


def memory(model: nn.Module) -> dict[str, float]:
    """Conv weight memory and zero share (:func:`lowbit.demo.conv_memory`: ``conv_weight_bytes``,
    ``conv_fp32_bytes``, ``conv_ratio``, ``all_param_bytes``, ``all_param_ratio``,
    ``zero_share``)."""
    from lowbit.demo import conv_memory

    return {k: float(v) for k, v in conv_memory(model).items()}


# ------------------------------------------------------------------------------------ latency


class NotExportable(Exception):
    """The model has no exportable trunk (the reason is the message)."""


class _Trunk(nn.Module):
    """The convolutional part of a detector: a prepared batch ``Tensor[N, 3, H, W]`` -> its
    raw maps. R-FCN and YOLOv3: :class:`lowbit.export.detect.DetectorNetwork` (what
    ``lowbit export`` writes); Faster R-CNN: backbone + RPN head (objectness, deltas, the
    RoI feature map; its FC head runs per RoI and is not part of the trunk)."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        from lowbit.export.detect import DetectorNetwork, detector_kind

        self.net: nn.Module | None = None
        try:
            if detector_kind(det) is not None:
                self.net = DetectorNetwork(det)
        except ValueError:
            pass
        if self.net is None:
            for attr in ("features", "rpn", "rpn_feature", "head_feature"):
                if not hasattr(det, attr):
                    raise NotExportable(f"{type(det).__name__} has no exportable trunk (R-FCN, "
                                        "YOLOv3 and two-stage backbones + RPN are)")
        self.det = det

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.net is not None:
            return self.net(x)
        feats = self.det.features(x)
        obj, deltas = self.det.rpn.head(feats[self.det.rpn_feature])
        return obj, deltas, feats[self.det.head_feature]


def _prepared(model: nn.Module, images: Sequence[Tensor]) -> list[Tensor]:
    """Each image through the detector's transform: ``Tensor[1, 3, H, W]`` each."""
    out = []
    with torch.no_grad():
        for im in images:
            batch, _, _ = model.transform([im], None)
            out.append(batch.detach().float().cpu())
    return out


def measure_latency(model: nn.Module, images: Sequence[Tensor], workdir: Path, int8: bool,
                    iters: int = 20, threads: int = 2) -> tuple[float, str]:
    """Median onnxruntime latency (ms, batch 1) of ``model``'s trunk and the ONNX kind
    (``"fp32"`` / ``"int8-qdq"``). The int8 file's activation ranges come from ``images``
    (training images). Raises :class:`NotExportable` for models without a trunk."""
    from lowbit.export.onnx import export_onnx, export_onnx_int8, ort_session

    model = model.cpu().eval()
    trunk = _Trunk(model).eval()
    batches = _prepared(model, images)
    example = batches[0]
    calib = [b for b in batches if b.shape == example.shape]
    workdir.mkdir(parents=True, exist_ok=True)
    if int8:
        rep = export_onnx_int8(trunk, example, workdir / "trunk.int8.onnx", calib)
        path, kind = Path(rep["path"]), "int8-qdq"
    else:
        path, kind = export_onnx(trunk, example, workdir / "trunk.fp32.onnx"), "fp32"
    sess = ort_session(path, threads=threads)
    feed = {sess.get_inputs()[0].name: example.numpy()}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000.0 * times[len(times) // 2], kind


# ---------------------------------------------------------------------------- mixed precision

#: candidate bit-widths of ``mixed`` (the requested b is added)
MIXED_BITS: tuple[int, ...] = (2, 3, 4, 6, 8)
#: calibration images ``mixed``'s sensitivity runs on (each (layer, bits) pair is one pass)
MIXED_IMAGES = 8
# forward_raw entries that are geometry (anchors, sizes), not functions of the weights
_GEOMETRY = frozenset({"anchors", "proposals", "default_boxes", "image_sizes", "strides"})


def _raw_tensors(raw: dict[str, Any]) -> list[Tensor]:
    """The float tensors of a ``forward_raw`` dict that depend on the weights, in key order
    (lists flattened: YOLOv3's per-level maps)."""
    out: list[Tensor] = []
    for key, v in raw.items():
        if key in _GEOMETRY:
            continue
        for t in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(t, Tensor) and t.is_floating_point():
                out.append(t)
    return out


class OutputMSE:
    """A cheap, data-driven sensitivity metric: how far a model's raw detector outputs move from
    the FP32 reference's on a few images.

    Every detector here has ``forward_raw(batch)`` (the network before post-processing:
    R-FCN/Faster R-CNN objectness, RPN deltas and the head's class logits / box deltas;
    YOLOv3's three maps; SSD's logits and box regressions). The reference's outputs are
    computed once per batch of ``images`` (lists of ``Tensor[3, H, W]`` in [0, 1], prepared by
    ``reference.transform``); two-stage detectors get the reference's proposals as fixed input,
    so their head outputs stay aligned RoI by RoI (the RPN's effect is seen in its own maps).

    ``errors(model)``: per output tensor ``k`` (in ``forward_raw`` key order),
    ``sum_batches ||o_k - r_k||^2 / sum_batches ||r_k||^2`` (float64; the denominator is
    floored at 1e-30). ``model(...)``: ``-mean_k errors`` -- higher is better, 0 for a model
    that reproduces the reference; what :func:`lowbit.nn.sensitivity` expects.
    """

    def __init__(self, reference: nn.Module, images: Sequence[Sequence[Tensor]]) -> None:
        import inspect

        if not hasattr(reference, "forward_raw") or not hasattr(reference, "transform"):
            raise ValueError(f"{type(reference).__name__}: the output metric needs a detector "
                             "with transform and forward_raw")
        params = inspect.signature(reference.forward_raw).parameters
        self._fixed_proposals = "proposals" in params
        self.inputs: list[tuple[Tensor, dict[str, Any]]] = []
        self.reference: list[list[Tensor]] = []
        was = reference.training
        reference.eval()
        with torch.no_grad():
            for ims in images:
                if not ims:
                    continue
                dev = next(reference.parameters()).device
                batch, sizes, _ = reference.transform([im.to(dev) for im in ims], None)
                kw: dict[str, Any] = {}
                if self._fixed_proposals:
                    kw["image_sizes"] = sizes
                raw = reference.forward_raw(batch, **kw)
                if self._fixed_proposals:
                    kw["proposals"] = [p.detach().clone() for p in raw["proposals"]]
                self.inputs.append((batch, kw))
                self.reference.append([t.detach().double() for t in _raw_tensors(raw)])
        reference.train(was)
        if not self.inputs:
            raise ValueError("the output metric needs at least one image")

    @torch.no_grad()
    def errors(self, model: nn.Module) -> list[float]:
        num = [0.0] * len(self.reference[0])
        den = [0.0] * len(self.reference[0])
        for (batch, kw), ref in zip(self.inputs, self.reference):
            outs = _raw_tensors(model.forward_raw(batch, **kw))
            if len(outs) != len(ref):
                raise ValueError(f"forward_raw gave {len(outs)} outputs, the reference {len(ref)}")
            for k, (o, r) in enumerate(zip(outs, ref)):
                num[k] += float(((o.double() - r) ** 2).sum())
                den[k] += float((r ** 2).sum())
        errs = [n / max(d, 1e-30) for n, d in zip(num, den)]
        if not all(math.isfinite(e) for e in errs):
            raise ValueError(f"non-finite output error {errs}")
        return errs

    def __call__(self, model: nn.Module) -> float:
        errs = self.errors(model)
        return -sum(errs) / len(errs)


def plan_mixed(model: nn.Module, calib: Sequence[Sequence[Tensor]], bits: int,
               candidates: Sequence[int] = MIXED_BITS, images: int = MIXED_IMAGES,
               metric: Callable[[nn.Module], float] | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``mixed``'s recipe: LBW exact with per-layer bits chosen by sensitivity.

    1. :func:`lowbit.nn.sensitivity` quantizes each conv of the uniform ``{"method":
       "lbw-exact", "bits": bits}`` recipe alone (post-training, weights only) at every
       candidate width (``candidates`` plus ``bits``); the cost is the drop of ``metric``
       (default :class:`OutputMSE` on the first ``images`` images of ``calib``, whose FP32
       value is 0: the mean relative MSE of the raw outputs).
    2. The budget is that recipe's weight memory at ``bits`` (``ceil(numel * bits / 8) + 4``
       bytes per layer, :func:`lowbit.nn.layer_bytes`); :func:`lowbit.nn.assign_bits` picks
       the widths minimising the summed cost within it (exact DP; monotone costs).

    ``model`` (the FP32 detector) is not modified. Returns ``(recipe dict, info)``; info:
    ``mixed_assignment`` ``{layer: bits}``, ``mixed_sensitivity`` ``{layer: {"b": cost}}``,
    ``mixed_budget_bytes``, ``mixed_assigned_bytes``, ``mixed_candidates`` and
    ``sensitivity_images``. Deterministic for a deterministic forward.
    """
    import lowbit.nn as L

    cand = tuple(sorted(set(int(b) for b in candidates) | {int(bits)}))
    flat = [im for b in calib for im in b][:max(1, images)]
    if metric is None:
        metric = OutputMSE(model, [flat[i:i + 4] for i in range(0, len(flat), 4)])
    recipe = L.Recipe.from_dict({"method": "lbw-exact", "bits": int(bits)})
    sens = L.sensitivity(model, metric, recipe, bits=cand)
    budget = sum(L.layer_bytes(sens.numel[n], int(bits), sens.overhead[n]) for n in sens.numel)
    chosen = L.assign_bits(sens, budget)
    assignment = {n: int(chosen.overrides[n]["bits"]) for n in sens.drops}
    used = sum(L.layer_bytes(sens.numel[n], b, sens.overhead[n]) for n, b in assignment.items())
    info = {"mixed_assignment": assignment,
            "mixed_sensitivity": {n: {str(b): float(d) for b, d in sorted(ds.items())}
                                  for n, ds in sens.drops.items()},
            "mixed_budget_bytes": int(budget), "mixed_assigned_bytes": int(used),
            "mixed_candidates": list(cand), "sensitivity_images": len(flat)}
    return chosen.to_dict(), info


def _planned(base: Base, method: Method, bits: int, calib: list[list[Tensor]], out: Path
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``method.plan``'s (recipe, info), cached in ``OUT/runs`` per FP32 run, images and
    recipe (a rerun of an unfinished row goes on with the same plan, without measuring)."""
    assert method.plan is not None
    shapes = [[list(im.shape) for im in b] for b in calib]
    key = _hash({"run": str(base.run_dir), "recipe": method.recipe(bits), "images": shapes,
                 "plan": getattr(method.plan, "__qualname__", str(method.plan)),
                 "mixed": [list(MIXED_BITS), MIXED_IMAGES]})
    path = out / "runs" / f"{method.name}-{bits}b-plan-{key}.json"
    if path.is_file():
        saved = _load_results(path)
        return saved["recipe"], saved["info"]
    quant, info = method.plan(fp32_model(base), calib, bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"recipe": quant, "info": info})
    return quant, info


# ------------------------------------------------------------------------------------ the rows


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def qat_config(base: Base, quant: dict[str, Any], budget: Budget, penalty: float = 0.0,
               qn_phases: Sequence[tuple[str, float]] | None = None, seed_offset: int = 0
               ) -> Any:
    """The FP32 run's config turned into a QAT run: ``quant``, ``init`` = the FP32 run, the
    budget's length and learning rate (cosine, short warm-up), evaluation only at the end,
    ``train.quant_penalty = penalty``; ``qn_phases`` (shares of the budget) become
    ``train.qn_phases`` in epochs of the engine's sampler, each a whole number of iterations.
    ``seed_offset`` k: ``train.seed`` = the FP32 run's seed + k (k = 0 leaves the config, and
    so the run folder's name, as without it)."""
    from lowbit.config import config_from_dict, config_to_dict
    from lowbit.train.sampler import ResumableShardedSampler

    d = config_to_dict(base.cfg)
    d["quant"] = quant
    d["init"] = str(base.run_dir)
    lr = budget.lr if budget.lr is not None else budget.lr_factor * float(d["optim"]["lr"])
    t = d["train"]
    ipe = ResumableShardedSampler(len(base.train_ds), int(t["batch_size"])).batches_per_epoch
    total = budget.iters if budget.iters is not None else int(budget.epochs or 1) * ipe
    d["optim"].update({"lr": lr, "schedule": "cosine", "milestones": [],
                       "warmup_iters": min(20, total // 10), "min_lr": 0.0})
    t.update({"iterations": budget.iters, "epochs": budget.epochs or 1, "eval_interval": 0,
              "checkpoint_every": 0, "keep_checkpoints": 1,
              "log_every": max(1, min(25, total)), "quant_penalty": float(penalty),
              "qn_phases": None if qn_phases is None
              else [[str(n), round(float(f) * total) / ipe] for n, f in qn_phases]})
    if seed_offset:
        t["seed"] = int(t.get("seed", 0)) + int(seed_offset)
    return config_from_dict(d)


def _eval_batch(base: Base) -> int:
    tc = base.cfg.train
    return int(tc.eval_batch_size or tc.batch_size)


def _row_dir(out: Path, key: str) -> Path:
    """``OUT/runs/<key>`` with ``@`` as ``-`` and a ``b`` (``kmeans-df@4`` -> ``kmeans-df-4b``)."""
    name = key.replace("@", "-") + ("b" if "@" in key else "")
    return out / "runs" / "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def _quantized_row(base: Base, method: Method, bits: int, budget: Budget,
                   calib: list[list[Tensor]], out: Path, progress: bool, seeds: int = 1,
                   key: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build, (train,) convert and evaluate one row; returns the converted model and info.
    A QAT row is fine-tuned once per seed (``seeds``); the model and the detections are those
    of the first seed."""
    import lowbit.nn as L
    from lowbit.demo import load_run_model
    from lowbit.train import fit

    quant = method.recipe(bits)
    L.Recipe.from_dict(dict(quant))  # a bad recipe fails here, naming the quantizer
    plan_info: dict[str, Any] = {}
    if method.kind == "qat":
        if method.plan is not None:
            quant, plan_info = _planned(base, method, bits, calib, out)
        first: tuple[nn.Module, dict[str, Any]] | None = None
        seed_runs = []
        for k in range(max(1, seeds)):
            cfg = qat_config(base, quant, budget, method.penalty, method.qn_phases, k)
            run_dir = out / "runs" / f"{method.name}-{bits}b-{_hash(asdict(cfg))}"
            if progress and seeds > 1:
                print(f"   seed {cfg.train.seed} ({k + 1} of {seeds}) into {run_dir}", flush=True)
            res = fit(cfg, run_dir, resume=True, progress=progress)
            _, model, _ = load_run_model(run_dir)
            model.to(base.device).eval()
            # the converted model re-evaluated (the run's own final evaluation saw the training
            # forward, which differs for relaxations such as clip-qat), detections written
            sc = score(base.task, model, base.test_ds, run_dir, base.device, _eval_batch(base))
            seed_runs.append({"seed": int(cfg.train.seed), "mAP": sc["mAP"],
                              "run_dir": str(run_dir)})
            if first is None:
                first = (model, {**sc, "run_dir": str(run_dir), "iterations": res.iteration,
                                 "train_final_mAP": float(res.metrics["main"])})
            else:
                del model
        assert first is not None
        model, info = first
        if seeds > 1:
            info.update(seed_summary([r["mAP"] for r in seed_runs]), seed_runs=seed_runs)
        return model, {**info, **plan_info}
    model = fp32_model(base)
    svd_info: dict[str, Any] = {}
    if method.svd_energy is not None:
        rep = L.svd_compress(model, energy=method.svd_energy)
        svd_info = {"svd_params_before": rep["params_before"],
                    "svd_params_after": rep["params_after"],
                    "svd_layers": sorted(n for n, v in rep["layers"].items() if v["replaced"])}
    model = L.prepare(model, quant).eval()
    if method.calibrate:
        # batches as (images, targets) pairs: calibrate() feeds the first item to the model
        L.calibrate(model, [([im.to(base.device) for im in b], None) for b in calib])
    L.convert(model)
    sc = score(base.task, model, base.test_ds, _row_dir(out, key or f"{method.name}@{bits}"),
               base.device, _eval_batch(base))
    return model, {**sc, "run_dir": None, "calib_images": sum(len(b) for b in calib)
                   if method.calibrate else 0, **svd_info}


def _latency(model: nn.Module, calib: list[list[Tensor]], out: Path, name: str, int8: bool,
             iters: int) -> dict[str, Any]:
    imgs = [im for b in calib for im in b][:8]
    try:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            ms, kind = measure_latency(model, imgs, Path(tmp), int8, iters)
        return {"latency_ms": ms, "latency_onnx": kind, "latency_note": None}
    except NotExportable as exc:
        return {"latency_ms": None, "latency_onnx": None, "latency_note": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an export failure must not lose the row
        return {"latency_ms": None, "latency_onnx": None,
                "latency_note": f"{name}: export failed: {type(exc).__name__}: {exc}"}


def _load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); remove it to start over") from None


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` to a unique temp file next to ``path``, then rename it over ``path``."""
    write_atomic(path, json.dumps(obj, indent=2, default=float).encode("utf-8"))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<path>.lock`` for a read-merge-write of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def merge_rows(path: Path, header: dict[str, Any], rows: Sequence[dict[str, Any]],
               finish: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Under :func:`locked`: re-read ``path``, replace its rows that have the keys of ``rows``
    by ``rows`` (the others stay, in place; a file of another ``fp32_run`` is replaced), apply
    ``finish`` to the merged content, write it atomically and return it."""
    with locked(path):
        cur = _load_results(path)
        same = cur.get("fp32_run") == header.get("fp32_run")
        mine = {r["key"]: r for r in rows}
        merged = [mine.pop(r["key"], r) for r in (cur.get("rows", []) if same else [])]
        merged += [r for r in rows if r["key"] in mine]
        res = {**(cur if same else {}), **header, "rows": merged}
        if finish is not None:
            finish(res)
        _write_json(path, res)
        return res


def _finite_or_none(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _method_extras(method: Method | None) -> dict[str, Any]:
    """The parts of a method besides its recipe that change its row (in the row's stamp; only
    non-default ones, so rows of methods without them keep their stamps)."""
    if method is None:
        return {}
    out = {"qn_phases": method.qn_phases, "penalty": method.penalty,
           "svd_energy": method.svd_energy, "reevaluate": method.reevaluate}
    return {k: v for k, v in out.items() if v not in (None, 0.0, False)}


def _run_info() -> dict[str, Any]:
    try:
        from lowbit.runtime import run_info
    except ImportError:  # pragma: no cover - lowbit.runtime is part of the package
        return {}
    return run_info()


def _run_rows(base: Base, specs: list[tuple[str, Method | None, int, dict[str, Any]]],
              out: Path, results_name: str, settings: dict[str, Any], budget: Budget,
              calib_images: int, latency: bool, latency_iters: int, progress: bool,
              seeds: int = 1) -> dict[str, Any]:
    """The shared machinery of compare and sweep-mu: run each ``(key, method, bits, extra)``
    row (method None: the FP32 reference), resumably, recording failures; every write of the
    results file merges under a lock (:func:`merge_rows`)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    res_path = out / results_name
    old = _load_results(res_path)
    old_rows = {r["key"]: r for r in old.get("rows", [])} \
        if old.get("fp32_run") == str(base.run_dir) else {}
    info = _run_info()
    header = {"fp32_run": str(base.run_dir), "settings": settings, "run_info": info}
    mine: list[dict[str, Any]] = []
    calib = train_images(base, calib_images)
    skipped = []
    bar = tqdm(specs, desc="compare", unit="row", disable=not progress)
    for n_row, (key, method, bits, extra) in enumerate(bar):
        bar.set_description(key)
        stamp = _hash({"settings": settings if method else str(base.run_dir),
                       "recipe": method.recipe(bits) if method else None,
                       "kind": method.kind if method else "fp32", **extra,
                       **_method_extras(method)})
        prev = old_rows.get(key)
        if (prev is not None and prev.get("status") == "ok" and prev.get("stamp") == stamp
                and prev.get("dets_dir")):
            mine.append(prev)
            skipped.append(key)
            continue
        row: dict[str, Any] = {"key": key, "method": method.name if method else "fp32",
                               "kind": method.kind if method else "fp32", "bits": bits,
                               "stamp": stamp, "settings": settings, **extra}
        if progress:
            what = "the FP32 reference" if method is None else f"{method.kind}: {method.summary}"
            tqdm.write(f"== row {n_row + 1} of {len(specs)}: {key} ({what})")
        t0 = time.perf_counter()
        try:
            if method is None:
                model = fp32_model(base)
                row_info = {**score(base.task, model, base.test_ds, _row_dir(out, key),
                                    base.device, _eval_batch(base)),
                            "run_dir": str(base.run_dir)}
            else:
                model, row_info = _quantized_row(base, method, bits, budget, calib, out,
                                                 progress, seeds if method.kind == "qat" else 1,
                                                 key)
            row.update(row_info)
            row.update(memory(model))
            if "svd_params_before" in row:  # against the FP32 model before its SVD
                row["all_param_ratio"] = 4.0 * row["svd_params_before"] / row["all_param_bytes"]
            if latency:
                row.update(_latency(model, calib, out, key, int8=method is not None,
                                    iters=latency_iters))
            else:
                row.update({"latency_ms": None, "latency_onnx": None,
                            "latency_note": "not measured (--no-latency)"})
            row["status"] = "ok"
            row["error"] = None
        except Exception as exc:  # noqa: BLE001 - one failing method must not stop the others
            row["status"] = "failed"
            row["error"] = f"{key}: {type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=6)
            if progress:
                tqdm.write(f"!! {row['error']}")
        row["seconds"] = time.perf_counter() - t0
        mine.append({k: _finite_or_none(v) for k, v in row.items()})
        merge_rows(res_path, header, mine)

    done = {r["key"] for r in mine}
    order = {name: i for i, name in enumerate(METHODS)}

    def finish(res: dict[str, Any]) -> None:
        # finished rows of other invocations on the same FP32 run (other methods / widths)
        # stay in the table; each carries the settings it was made with
        rows = [r for r in res["rows"] if r["key"] in done or r.get("status") == "ok"]
        if all(r["key"] in done for r in rows):  # only this invocation's rows: its order
            rank = {r["key"]: i for i, r in enumerate(mine)}
            res["rows"] = sorted(rows, key=lambda r: rank[r["key"]])
        else:  # with rows of other invocations: FP32 first, then METHODS order
            res["rows"] = sorted(rows, key=lambda r: (
                r["method"] != "fp32", order.get(r["method"], len(order))))
        fp = next((r for r in res["rows"] if r["key"] == "fp32" and r["status"] == "ok"), None)
        for r in res["rows"]:
            r["drop"] = (fp["mAP"] - r["mAP"]) if (fp is not None and r.get("mAP") is not None
                                                   and r["status"] == "ok") else None
        res["bootstrap"] = add_intervals(res["rows"], base.test_ds, "fp32")
        res["kept"] = [r["key"] for r in res["rows"] if r["key"] not in done]
        res["skipped"] = list(skipped)

    return merge_rows(res_path, header, mine, finish)


# ------------------------------------------------------------------------------------ compare


def parse_methods(names: str | Sequence[str] | None) -> list[Method]:
    """Methods by name (comma-separated or a list; None: the defaults); ValueError naming an
    unknown one with the known names."""
    if names is None:
        return [METHODS[n] for n in DEFAULT_METHODS]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if n not in METHODS:
            raise ValueError(f"unknown method {n!r}; known: {', '.join(METHODS)}")
        out.append(METHODS[n])
    if not out:
        raise ValueError("no method given")
    return out


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
    res = _run_rows(base, specs, out, "results.json", settings, budget, calib_images, latency,
                    latency_iters, progress, seeds)
    md = format_table(res["rows"])
    (out / "results.md").write_text(
        "# lowbit compare\n\n" + f"FP32 run `{base.run_dir}`; QAT budget "
        f"{_budget_text(budget)}; PTQ calibration on {calib_images} training images"
        + (f"; each QAT row fine-tuned with {seeds} seeds" if seeds > 1 else "") + ".\n\n"
        + md + "\n\n" + interval_note(res.get("bootstrap")) + "\n\n"
        + run_info_line(res.get("run_info")) + "\n\n![mAP vs memory](map_vs_memory.png)\n")
    plot_map_vs_memory(res["rows"], out / "map_vs_memory.png")
    res["files"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md"),
                    "png": str(out / "map_vs_memory.png")}
    if progress:
        print(md)
    return res


def _budget_text(b: Budget) -> str:
    n = f"{b.iters} iterations" if b.iters is not None else f"{b.epochs} epoch(s)"
    lr = f"lr {b.lr}" if b.lr is not None else f"lr {b.lr_factor} x FP32 lr"
    return f"{n}, {lr}"


def _fmt(v: Any, spec: str, none: str = "-") -> str:
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
            f"{_fmt(None if hw is None else 100 * hw, '.2f')} | "
            f"{_fmt(None if dhw is None else 100 * dhw, '.2f')} | "
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


# ----------------------------------------------------------------------------------- sweep-mu


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
    if not 2 <= int(bits) <= 8 or int(bits) != bits:
        raise ValueError(f"--bits {bits}: lbw-approx takes 2..8 bits")
    base = load_base(source, out, progress)
    specs: list[tuple[str, Method | None, int, dict[str, Any]]] = [("fp32", None, 32, {})]
    for r in ratios:
        m = Method(f"lbw-mu{r:g}", "qat", bits, (2, 8), f"lbw-approx mu = {r:g} max|W|", "001",
                   (lambda b, r=r: {"method": "lbw-approx", "bits": b,
                                    "params": {"mu_ratio": r, "partial_terms": partial_terms}}))
        specs.append((f"mu={r:g}", m, bits, {"mu_ratio": r}))
    settings = {"budget": asdict(budget), "bits": bits, "partial_terms": partial_terms,
                "fp32_run": str(base.run_dir)}
    res = _run_rows(base, specs, out, "sweep_mu.json", settings, budget, 1, False, 0, progress)
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
                     f"{_fmt(None if dhw is None else 100 * dhw, '.2f')} | "
                     f"{100 * r['zero_share']:.1f}% | {r.get('interval_note') or ''} |")
    fp = next((r for r in res["rows"] if r["method"] == "fp32" and r["status"] == "ok"), None)
    md = "\n".join(lines).replace("mu / max|W|", "mu / max\\|W\\|")
    (out / "sweep_mu.md").write_text(
        f"# lowbit sweep-mu ({bits}-bit lbw-approx, {_budget_text(budget)})\n\n"
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
