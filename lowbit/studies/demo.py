"""`lowbit demo`: the LBW-Net workflow end to end on the built-in digits devkit.

1. pretrain the R-FCN's ResNet-18 backbone offline on digit/background crops
   (:mod:`lowbit.tasks.pretrain`; the paper starts from ImageNet-pretrained ResNets), unless
   ``pretrain_steps`` = 0; the weights file is keyed by its settings and reused by a rerun;
2. train the CPU-sized R-FCN in FP32 from that backbone (detection layers random; the stem
   and layer1 frozen, ``freeze_at`` = 2, as the paper's R-FCN fixes conv1 and res2);
3. from that warm start, an FP32 control fine-tuned without a quantizer, and LBW QAT
   (projected SGD, every conv, ``lbw-exact``) at 4, 5 and 6 bits and the paper's
   ``lbw-approx`` (mu = 3/4 max|W|, partial sums t = 0..3) at 6 bits, all with the same
   iterations, learning rate, schedule and seed (``qat_iters`` or ``qat_epochs``); each drop
   is reported against FP32 (the paper's comparison) and against the control (the quantizer's
   effect alone);
4. evaluate each with the VOC07 metric; print the paper's Table 3.1 (mAP, drop vs FP32, weight
   memory, share of zero weights);
5. write ``OUT/results.json``, ``OUT/report.md``, the weight-statistics tables of one residual
   block conv and one RPN conv (Tables 3.2-3.3) with histograms (Fig. 3.2), and detection
   pictures FP32 vs 6-bit (Fig. 3.1).

Every phase trains through :func:`lowbit.train.fit`, so each has its run folder under
``OUT/runs/`` with config, metrics and checkpoint, and writes its test detections there in the
VOC results format (``comp4_det_test_<class>.txt``). Every mAP comes with its 95% percentile
bootstrap interval over the test images and every drop with its paired interval against FP32
(the same 1000 resamples, seed 0; :func:`lowbit.runs.add_intervals`); a drop whose interval
excludes 0 is marked ``*``. ``seeds`` > 1 repeats each QAT phase with ``train.seed`` = seed + k
(folders ``OUT/runs/<phase>_seed<k>``) and reports the mean ± sd across seeds beside the
interval (the interval and the table's mAP are the first seed's).

A rerun into the same ``OUT`` reuses finished phases; their recorded timings are kept (a
phase's ``seconds`` is the time of the invocation that trained it), so the report's total is
the time the work took, not the time of the rerun.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.analysis.pictures import save_histogram
from lowbit.runs import conv_memory, effective_weights, load_run

__all__ = ["DemoSettings", "DEFAULT", "QUICK", "run_demo", "RUNS", "CONTROL", "PHASES",
           "qat_iterations", "format_table_3_1", "paper_claims", "format_claims",
           "precision_summary", "format_precision", "SCORE_BATCH"]

#: images per forward pass when the demo scores a phase (16 at 2 threads: 0.89x the time per
#: image of batches of 4, the training batch it used before)
SCORE_BATCH = 16


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (data, schedule, model)."""

    train_images: int = 1000
    #: test images: the paired drop intervals narrow as 1/sqrt(objects scored); 1,800 dense
    #: images (about 15,000 objects) gave ±0.37-0.43 points on every drop (docs/results.md)
    test_images: int = 1800
    image_size: int = 256
    #: scenes of the generated devkit (:func:`lowbit.data.digits.render_scene`): digits drawn
    #: per scene (uniform in ``min_objects..max_objects``) and positions tried for each; the
    #: dense default (about 8.4 objects per image instead of the standard 2.8) gives the
    #: intervals about 3x the objects per scored image
    min_objects: int = 10
    max_objects: int = 24
    attempts: int = 60
    fp32_epochs: int = 2
    qat_epochs: int = 1
    #: iterations of each fine-tuning phase (LBW QAT and the FP32 control); None: ``qat_epochs``
    #: whole epochs
    qat_iters: int | None = 150
    #: backbone stages kept frozen when the backbone is pretrained (the paper's R-FCN: conv1
    #: and res2 fixed, as ``freeze_at`` = 2 here; 0 = train everything); ignored from scratch
    freeze_at: int = 2
    batch_size: int = 4
    lr: float = 0.1
    qat_lr: float = 0.01
    warmup_iters: int = 300
    width: float = 0.5
    k: int = 3
    seed: int = 0
    pictures: int = 3
    seeds: int = 1
    #: backbone pretraining (phase 1, :func:`lowbit.tasks.pretrain.pretrain_backbone`): SGD
    #: steps (0: no pretraining, the FP32 R-FCN trains from scratch), crops rendered for
    #: training, crops per step, peak learning rate
    pretrain_steps: int = 1200
    pretrain_crops: int = 6000
    pretrain_batch: int = 32
    pretrain_lr: float = 0.03

    def __post_init__(self) -> None:
        for name in ("train_images", "test_images", "fp32_epochs", "qat_epochs", "batch_size",
                     "seeds", "pretrain_crops", "pretrain_batch", "min_objects", "attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo setting {name} must be >= 1, got {getattr(self, name)}")
        if self.max_objects < self.min_objects:
            raise ValueError(f"demo setting max_objects ({self.max_objects}) must be >= "
                             f"min_objects ({self.min_objects})")
        if self.qat_iters is not None and self.qat_iters < 1:
            raise ValueError(f"demo setting qat_iters must be >= 1 (or None: qat_epochs "
                             f"epochs), got {self.qat_iters}")
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f"demo setting freeze_at must be in 0..5, got {self.freeze_at}")
        if self.pretrain_steps < 0:
            raise ValueError(f"demo setting pretrain_steps must be >= 0 (0: no pretraining), "
                             f"got {self.pretrain_steps}")
        if not (self.pretrain_lr > 0 and math.isfinite(self.pretrain_lr)):
            raise ValueError(f"demo setting pretrain_lr must be finite and > 0, "
                             f"got {self.pretrain_lr}")

    def pretrain_config(self) -> Any:
        """The :class:`lowbit.tasks.pretrain.PretrainConfig` of phase 1 (None: no pretraining);
        its key names the weights file, so a rerun with the same settings reuses it."""
        if self.pretrain_steps == 0:
            return None
        from lowbit.tasks.pretrain import PretrainConfig

        return PretrainConfig(model="rfcn_resnet18", model_kwargs={"width": self.width,
                                                                   "k": self.k},
                              train_crops=self.pretrain_crops,
                              test_crops=max(110, self.pretrain_crops // 6),
                              steps=self.pretrain_steps, batch=self.pretrain_batch,
                              lr=self.pretrain_lr, seed=self.seed)


DEFAULT = DemoSettings()
QUICK = DemoSettings(
    train_images=300, test_images=60, image_size=192, fp32_epochs=4, qat_epochs=1, qat_iters=None,
    width=0.25, warmup_iters=100, pictures=2, pretrain_steps=60, pretrain_crops=660,
)

#: The FP32 control: the FP32 weights fine-tuned exactly like the LBW phases (same
#: iterations, learning rate, schedule, seed) but without a quantizer, so a drop against it is
#: the quantizer's effect alone and not that of the extra fine-tuning.
CONTROL = "fp32_ft"

#: run name -> (method of the study catalogue :data:`lowbit.studies.methods.METHODS`, bits);
#: None = FP32 from the (pretrained) backbone; (``"fp32"``, 32) = the FP32 control
RUNS: dict[str, tuple[str, int] | None] = {
    "fp32": None,
    CONTROL: ("fp32", 32),
    "lbw4": ("lbw-exact", 4),
    "lbw5": ("lbw-exact", 5),
    "lbw6": ("lbw-exact", 6),
    "lbw6_mu": ("lbw-mu", 6),
}

#: run name -> the phase's title for people
PHASES: dict[str, str] = {
    "pretrain": "backbone pretrained on digit/background crops (offline ImageNet stand-in)",
    "fp32": "FP32 R-FCN from the pretrained backbone (detection layers random)",
    CONTROL: "FP32 control: the FP32 weights fine-tuned like the LBW phases, no quantizer",
    "lbw4": "4-bit LBW weights (exact quantizer), fine-tuned from the FP32 weights",
    "lbw5": "5-bit LBW weights (exact quantizer), fine-tuned from the FP32 weights",
    "lbw6": "6-bit LBW weights (exact quantizer), fine-tuned from the FP32 weights",
    "lbw6_mu": "6-bit LBW weights (the paper's mu = 3/4 max|W| scheme), fine-tuned from the "
               "FP32 weights",
}

# The paper's Table 3.1 (R-FCN + ResNet-50 / ResNet-101, VOC 07+12 -> VOC07 test), for reference.
PAPER_TABLE_3_1 = {
    "4-bit LBW": (74.37, 76.79),
    "5-bit LBW": (76.99, 77.83),
    "6-bit LBW": (77.05, 78.24),
    "32-bit full-precision": (77.46, 78.94),
}


def qat_iterations(s: DemoSettings) -> int:
    """Iterations of each fine-tuning phase: ``qat_iters``, or ``qat_epochs`` epochs of the
    engine's sampler (full batches only)."""
    if s.qat_iters is not None:
        return s.qat_iters
    from lowbit.train.sampler import ResumableShardedSampler

    return s.qat_epochs * ResumableShardedSampler(s.train_images, s.batch_size).batches_per_epoch


def _config(s: DemoSettings, data_root: Path, run: str, fp32_dir: Path | None,
            seed_offset: int = 0, backbone_weights: str | None = None) -> dict[str, Any]:
    spec = RUNS[run]
    qat = spec is not None  # a fine-tuning from the FP32 run: an LBW phase or the control
    kwargs: dict[str, Any] = {"width": s.width, "k": s.k}
    if backbone_weights is not None and s.freeze_at:
        kwargs["freeze_at"] = s.freeze_at
    cfg: dict[str, Any] = {
        "model": {"name": "rfcn_resnet18", "task": "detect", "num_classes": 10,
                  "kwargs": kwargs},
        "data": {"kind": "digits", "root": str(data_root), "train_split": "trainval",
                 "test_split": "test",
                 "kwargs": {"hflip": False, **_devkit_args(s)}},
        "optim": {"lr": s.qat_lr if qat else s.lr, "momentum": 0.9, "nesterov": True,
                  "weight_decay": 1e-4,
                  "warmup_iters": max(1, min(s.warmup_iters // 6, qat_iterations(s) // 8))
                  if qat else s.warmup_iters,
                  "warmup_factor": 0.001, "schedule": "cosine"},
        "train": {"epochs": s.qat_epochs if qat else s.fp32_epochs, "batch_size": s.batch_size,
                  "eval_interval": 0, "seed": s.seed, "device": "auto", "num_workers": 0,
                  "log_every": 25, "checkpoint_every": 0, "keep_checkpoints": 1,
                  # the demo scores each phase itself (score() writes the detection files),
                  # so the engine's own final evaluation would be the same pass twice
                  "final_eval": False},
        "quant": None,
        "init": None,
    }
    if spec is None:
        # NHWC speeds up the FP32 phase on the CPU (not the QAT steps: see
        # benchmarks/bench_channels_last.py)
        cfg["train"]["channels_last"] = True
        if backbone_weights is not None:
            cfg["model"]["kwargs"]["backbone_weights"] = backbone_weights
    if qat:
        cfg["init"] = str(fp32_dir)
        if s.qat_iters is not None:
            cfg["train"]["iterations"] = s.qat_iters
    if spec is not None and run != CONTROL:
        from lowbit.studies.methods import METHODS

        name, bits = spec
        cfg["quant"] = {"params": {}, **METHODS[name].recipe(bits)}
    cfg["train"]["seed"] = s.seed + seed_offset
    return cfg


def _devkit_args(s: DemoSettings) -> dict[str, Any]:
    """The generator arguments of the demo's devkit (its configs' ``data.kwargs`` but hflip)."""
    return {"train": s.train_images, "test": s.test_images, "size": s.image_size,
            "seed": s.seed, "min_objects": s.min_objects, "max_objects": s.max_objects,
            "attempts": s.attempts}


def _ensure_devkit(s: DemoSettings, data_root: Path, progress: bool) -> None:
    """Write the demo's devkit with every CPU (the detect task, which would otherwise write it,
    renders in one process; the output does not depend on the process count)."""
    from lowbit.data.digits import generate_digits, is_current_devkit

    args = _devkit_args(s)
    if not is_current_devkit(data_root, **args):
        generate_digits(data_root, progress=progress, **args)


def _checkpoint_iteration(run_dir: Path) -> int | None:
    """Iteration of the newest checkpoint of ``run_dir`` (None: none yet)."""
    from lowbit.train.checkpoint import read_checkpoint_json, resolve_checkpoint

    try:
        meta = read_checkpoint_json(resolve_checkpoint(run_dir))
    except (OSError, ValueError):
        return None
    it = (meta.get("state") or {}).get("iteration")
    return int(it) if it is not None else None


def _old_results(path: Path) -> dict[str, Any]:
    """An earlier invocation's results.json ({} when absent or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pick_layers(names: list[str]) -> dict[str, str]:
    """One residual-block conv and one RPN conv, like the paper's Tables 3.2-3.3."""
    res = [n for n in names if re.search(r"layer3\.\d+\.conv2$", n)] or [
        n for n in names if re.search(r"layer\d\.\d+\.conv\d$", n)
    ]
    rpn = [n for n in names if "rpn" in n]
    out = {}
    if res:
        out["residual block conv"] = res[0]
    if rpn:
        out["RPN conv"] = rpn[0]
    return out


def run_demo(out: str | Path, quick: bool = False, settings: DemoSettings | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole workflow into ``out``; returns the ``results.json`` content."""
    from lowbit.analysis.pictures import side_by_side
    from lowbit.analysis.stats import (
        auto_min_exponent,
        format_magnitude_table,
        magnitude_table,
    )
    from lowbit.config import config_from_dict
    from lowbit.runs import add_intervals, score, seed_summary
    from lowbit.runtime import run_info
    from lowbit.train import fit

    s = settings or (QUICK if quick else DEFAULT)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "digits"
    t_start = time.perf_counter()
    old = _old_results(out / "results.json")
    results: dict[str, Any] = {"settings": asdict(s), "runs": {}, "run_info": run_info()}
    fp32_dir = out / "runs" / "fp32"
    reused: list[str] = []
    test_ds = None
    pcfg = s.pretrain_config()
    n_phases = len(RUNS) + (pcfg is not None)
    backbone_weights = None
    if pcfg is not None:
        from lowbit.tasks.pretrain import pretrain_backbone

        if progress:
            print(f"\n== Phase 1 of {n_phases}: {PHASES['pretrain']}", flush=True)
        pre = pretrain_backbone(pcfg, out / "pretrained", progress=progress)
        backbone_weights = pre["path"]
        if pre["reused"]:
            reused.append("pretrain")
        results["pretrain"] = {k: pre[k] for k in ("path", "key", "accuracy", "train_accuracy",
                                                   "seconds", "steps", "chance", "reused")}
        if progress:
            print(f"pretrained backbone: held-out crop accuracy {100 * pre['accuracy']:.1f}% "
                  f"(chance {100 * pre['chance']:.1f}%), {pre['seconds']:.0f} s"
                  + (" (reused)" if pre["reused"] else ""), flush=True)
    for i, run in enumerate(RUNS):
        seeds = 1 if RUNS[run] is None else s.seeds
        title = PHASES[run] if run != "fp32" or pcfg is not None else \
            "FP32 R-FCN trained from scratch"
        if progress:
            print(f"\n== Phase {i + 1 + (pcfg is not None)} of {n_phases}: {title}"
                  + (f" ({seeds} seeds)" if seeds > 1 else ""), flush=True)
        per_seed = []
        mem: dict[str, float] = {}
        for k in range(seeds):
            name = run if k == 0 else f"{run}_seed{k}"
            run_dir = out / "runs" / name
            cfg = config_from_dict(_config(s, data_root, run, fp32_dir, k, backbone_weights))
            done_before = _checkpoint_iteration(run_dir)
            t0 = time.perf_counter()
            if i == 0 and k == 0:
                _ensure_devkit(s, data_root, progress)
            res = fit(cfg, run_dir, resume=True, progress=progress)  # a rerun loses nothing
            _, task, model = load_run(run_dir)
            # scored in NHWC: oneDNN's CPU convolutions skip their layout reorders (the
            # converted 4-bit R-FCN: 0.74x the NCHW time per image at 1 thread, same outputs
            # to 2e-7)
            model.to(memory_format=torch.channels_last)
            if test_ds is None:
                _, test_ds = task.build_datasets(cfg)
                # scored after each phase: decode its images once
                test_ds.cache_images = True
            sc = score(task, model, test_ds, run_dir, torch.device("cpu"), SCORE_BATCH)
            seconds = time.perf_counter() - t0
            prev = old.get("runs", {}).get(name, {})
            if (done_before == res.iteration and prev.get("iterations") == res.iteration
                    and prev.get("seconds") is not None and prev.get("run_dir") == str(run_dir)):
                seconds = float(prev["seconds"])  # nothing trained now: keep the real timing
                reused.append(name)
            per_seed.append({"mAP": sc["mAP"], "mAP_area": sc["mAP_area"],
                             "dets_dir": sc["dets_dir"], "seconds": seconds,
                             "iterations": res.iteration, "run_dir": str(run_dir),
                             "seed": int(cfg.train.seed)})
            if k == 0:
                mem = conv_memory(model)
        results["runs"][run] = {**per_seed[0], **mem}
        for k, extra in enumerate(per_seed[1:], start=1):
            results["runs"][f"{run}_seed{k}"] = {**extra, "phase": run}
        if seeds > 1:
            results["runs"][run].update(seed_summary([r["mAP"] for r in per_seed]))
    fp = results["runs"]["fp32"]["mAP"]
    for r in results["runs"].values():
        r["drop"] = fp - r["mAP"]
    rows = [{"key": k, "status": "ok", **v} for k, v in results["runs"].items()]
    results["bootstrap"] = add_intervals(rows, test_ds, "fp32")
    for row in rows:
        results["runs"][row["key"]].update(
            {k: row[k] for k in ("mAP_ci", "mAP_half_width", "drop_ci", "drop_half_width",
                                 "drop_excludes_zero", "interval_note") if k in row})
    for k in ("drop_ci", "drop_half_width", "drop_excludes_zero"):
        results["runs"]["fp32"].pop(k, None)
    _add_control_drops(results, test_ds, results["bootstrap"])
    # weight statistics of two layers (Tables 3.2-3.3, Fig. 3.2)
    models = {run: load_run(out / "runs" / run) for run in ("fp32", "lbw4", "lbw5", "lbw6")}
    weights = {run: effective_weights(m) for run, (_, _, m) in models.items()}
    chosen = _pick_layers(list(weights["fp32"]))
    stats_md, stats_json = [], {}
    for label, lname in chosen.items():
        cols_w = {run: weights[run][lname] for run in ("lbw4", "lbw5", "lbw6", "fp32")}
        k_min = auto_min_exponent([cols_w["fp32"]])
        cols = {f"{r[3]}-bit LBW" if r != "fp32" else "32-bit float": magnitude_table(w, k_min)
                for r, w in cols_w.items()}
        png = out / f"hist_{label.split()[0].lower()}.png"
        st = save_histogram(cols_w["fp32"], f"{label} ({lname}), FP32", png)
        stats_json[label] = {"layer": lname, "k_min": k_min, "table": cols, "fp32_stats": st,
                             "histogram": png.name}
        stats_md += [f"### {label}: `{lname}`", "", format_magnitude_table(cols, k_min), "",
                     f"FP32 excess kurtosis {st['excess_kurtosis']:.3f}, skewness "
                     f"{st['skewness']:.3f}, normality p = {st['normality_p']:.2e}", "",
                     f"![histogram]({png.name})", ""]
    results["stats"] = stats_json
    zero4 = {label: float((weights["lbw4"][lname] == 0).double().mean())
             for label, lname in chosen.items()}
    results["claims"] = paper_claims(results, test_ds, zero4)
    results["precision"] = precision_summary(results["runs"], len(test_ds))

    # detection pictures FP32 vs 6-bit (Fig. 3.1)
    cfg, task, m32 = models["fp32"]
    _, test_ds = task.build_datasets(cfg)
    imgs = [test_ds[i][0] for i in range(min(s.pictures, len(test_ds)))]
    dets = {}
    with torch.no_grad():
        for run, title in (("fp32", "32-bit full precision"), ("lbw6", "6-bit LBW")):
            dets[title] = models[run][2](imgs)
    classes = list(getattr(test_ds, "classes", [str(i) for i in range(10)]))
    side_by_side(imgs, dets, classes, out / "detections.png", threshold=0.5)
    results["pictures"] = "detections.png"
    from lowbit.runs import write_json
    from lowbit.studies.report import interval_note, run_info_line

    this_call = time.perf_counter() - t_start
    phases = sum(r["seconds"] for r in results["runs"].values()) + float(
        results.get("pretrain", {}).get("seconds", 0.0))
    results["seconds_this_invocation"] = this_call
    results["reused_phases"] = reused
    # the time the work took: each phase's training + evaluation as timed by the invocation
    # that did it (a no-op rerun keeps them); this invocation's own time is recorded apart
    results["seconds"] = phases
    table = format_table_3_1(results)
    write_json(out / "results.json", results)
    timing = (f"Total {results['seconds'] / 60:.1f} min of training and evaluation"
              + (f" (phases reused from an earlier invocation keep the times of the invocation "
                 f"that trained them: {', '.join(reused)})" if reused else "")
              + f"; this invocation took {this_call / 60:.1f} min.")
    seed_text = (f" Each LBW model was fine-tuned with {s.seeds} seeds (mean ± sd across seeds "
                 "beside the first seed's interval)." if s.seeds > 1 else "")
    report = [
        "# lowbit demo: LBW-Net on the built-in digits devkit", "",
        f"R-FCN (ResNet-18 width {s.width}, k = {s.k}), {s.train_images} training and "
        f"{s.test_images} test images at {s.image_size} px. {_start_text(s, results)}"
        f"The FP32 model trains {s.fp32_epochs} epochs"
        f"{_freeze_text(s, results)}; each LBW model is fine-tuned from the FP32 weights for "
        f"{qat_iterations(s)} iterations of {s.batch_size} images, and so is the FP32 control "
        f"without a quantizer (its drop column separates the quantizer's effect from that of "
        f"the extra fine-tuning).{seed_text} {timing}", "",
        run_info_line(results.get("run_info")), "",
        "## Table 3.1 (VOC07 mAP, with 95% bootstrap intervals)", "", table, "",
        interval_note(results.get("bootstrap")), "",
        format_precision(results["precision"]), "",
        "The paper's Table 3.1 (R-FCN on VOC 07+12 → VOC07 test), for reference:", "",
        "| | ResNet-50 | ResNet-101 |", "|---|---:|---:|",
        *[f"| {k} | {a:.2f}% | {b:.2f}% |" for k, (a, b) in PAPER_TABLE_3_1.items()], "",
        "## The paper's claims, checked", "", format_claims(results["claims"]), "",
        "## Weight statistics (Tables 3.2-3.3, Fig. 3.2)", "", *stats_md,
        "## Detections, FP32 (left) vs 6-bit LBW (right), threshold 0.5 (Fig. 3.1)", "",
        "![detections](detections.png)", "",
    ]
    (out / "report.md").write_text("\n".join(report))
    if progress:
        print("\n" + table + "\n\n" + interval_note(results.get("bootstrap")) + "\n\n"
              + format_precision(results["precision"]))
        print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {out / 'detections.png'}")
    return results


def _add_control_drops(results: dict[str, Any], test_ds: Any, boot: dict[str, Any]) -> None:
    """Every LBW row's drop against the FP32 control (:data:`CONTROL`, fine-tuned the same way
    without a quantizer) with its paired interval on the table's resamples (same ``n_boot`` and
    seed): ``drop_vs_control``, ``drop_vs_control_ci``, ``drop_vs_control_half_width``,
    ``drop_vs_control_excludes_zero`` (fractions; positive = worse than the control)."""
    from lowbit.eval.intervals import ground_truth_arrays, match_results_dir, paired_bootstrap

    runs = results["runs"]
    ctrl = runs.get(CONTROL, {})
    if not ctrl.get("dets_dir"):
        return
    gt = ground_truth_arrays(test_ds)
    ref = match_results_dir(gt, ctrl["dets_dir"])
    for key, r in runs.items():
        if key in ("fp32", CONTROL) or r.get("phase") or not r.get("dets_dir"):
            continue
        try:
            iv = paired_bootstrap(ref, match_results_dir(gt, r["dets_dir"]),
                                  int(boot["n_boot"]), int(boot["seed"]))
        except ValueError as exc:  # e.g. no positive box in the test set
            r["interval_note"] = str(exc)
            continue
        r.update({"drop_vs_control": iv.estimate, "drop_vs_control_ci": [iv.lo, iv.hi],
                  "drop_vs_control_half_width": iv.half_width,
                  "drop_vs_control_excludes_zero": iv.excludes_zero})


#: The paper's 4-bit zero shares (Tables 3.2-3.3, R-FCN + ResNet-50), by the demo's layer label
PAPER_ZERO_SHARE_4BIT = {"residual block conv": 0.82882, "RPN conv": 0.58188}


def precision_summary(runs: dict[str, dict[str, Any]], n_images: int, target: float = 0.005
                      ) -> dict[str, Any]:
    """How precise the demo's drops are, and how many test images a target needs.

    ``runs``: the demo's ``results["runs"]`` (fractions). Collects every paired half-width
    (``drop_half_width`` against FP32, ``drop_vs_control_half_width`` against the control) of
    the non-seed rows. A percentile bootstrap's half-width shrinks about as ``1 / sqrt(N)``
    with the number of test images, so ``target`` (a half-width, 0.005 = 0.5 mAP point) needs
    about ``N * (widest / target)**2`` images. Returns ``{"test_images", "target_half_width",
    "half_widths": {"<row> vs <ref>": hw}, "widest", "narrowest", "met",
    "test_images_for_target"}`` (``widest`` etc. None when there is no interval)."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError(f"target half-width must be finite and > 0, got {target}")
    hws: dict[str, float] = {}
    for key, r in runs.items():
        if r.get("phase"):
            continue  # an extra seed: its row has no interval of its own
        for field, ref in (("drop_half_width", "FP32"), ("drop_vs_control_half_width",
                                                         "control")):
            v = r.get(field)
            if v is not None and math.isfinite(v):
                hws[f"{key} vs {ref}"] = float(v)
    out: dict[str, Any] = {"test_images": int(n_images), "target_half_width": target,
                           "half_widths": hws, "widest": None, "narrowest": None,
                           "met": None, "test_images_for_target": None}
    if hws:
        widest = max(hws.values())
        out.update(widest=widest, narrowest=min(hws.values()), met=widest <= target,
                   test_images_for_target=int(math.ceil(n_images * (widest / target) ** 2)))
    return out


def format_precision(p: dict[str, Any]) -> str:
    """One paragraph on :func:`precision_summary` (points of mAP)."""
    if p.get("widest") is None:
        return "No paired interval, so no precision to report."
    t = 100 * p["target_half_width"]
    text = (f"Precision: the paired drop intervals are ±{100 * p['narrowest']:.2f} to "
            f"±{100 * p['widest']:.2f} mAP points at {p['test_images']} test images; ")
    if p["met"]:
        return text + f"every one is within ±{t:.2f}."
    return text + (f"±{t:.2f} on every drop would need about {p['test_images_for_target']} test "
                   f"images (half-widths shrink about as 1/√N; `--test-images N`; "
                   f"docs/results.md has the measured curve).")


def _verdict(lo: float, hi: float, threshold: float, above_holds: bool) -> str:
    """``holds`` / ``does not hold`` / ``not resolved`` for a claim "value > threshold"
    (``above_holds``) or "value < threshold", from the value's interval ``[lo, hi]``."""
    if (lo > threshold) if above_holds else (hi < threshold):
        return "holds"
    if (hi < threshold) if above_holds else (lo > threshold):
        return "does not hold"
    return "not resolved (the interval contains the threshold)"


def paper_claims(results: dict[str, Any], test_ds: Any, zero_share_4bit: dict[str, float],
                 n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """LBW-Net's claims checked on the demo's runs, each with a paired 95% bootstrap interval
    over the test images (the same resamples as the table; fractions, mAP points = x100):

    * the 6-bit drop is within 1 point of FP32 (paper: 0.41 / 0.70 for ResNet-50 / -101);
    * the 4-bit drop is larger than the 6-bit drop, i.e. mAP(6-bit) - mAP(4-bit) > 0 (paper:
      +2.68 / +1.45 points);
    * the semi-analytical mu = 3/4 max|W| scheme (eq. 2.8-2.9) against the exact solution
      (Thm 2.1) at 6 bits: mAP(exact) - mAP(mu), which the paper does not measure (it trains
      with the mu scheme); reported with its interval, no verdict threshold but 0;
    * the 4-bit zero share of the two inspected layers (paper: 82.9% residual conv, 58.2% RPN
      conv) and the FP32 weights' normality (paper: p < 1e-5, excess kurtosis well above 0):
      measured values, no interval.

    Each row: ``claim``, ``paper``, ``estimate``, ``ci`` (or None), ``verdict``.
    """
    from lowbit.eval.intervals import ground_truth_arrays, match_results_dir, paired_bootstrap

    runs = results["runs"]
    gt = ground_truth_arrays(test_ds)
    matched = {k: match_results_dir(gt, runs[k]["dets_dir"])
               for k in ("fp32", CONTROL, "lbw4", "lbw6", "lbw6_mu")
               if runs.get(k, {}).get("dets_dir")}
    rows: list[dict[str, Any]] = []

    def paired(a: str, b: str) -> Any:
        if a not in matched or b not in matched:
            return None
        try:
            return paired_bootstrap(matched[a], matched[b], n_boot, seed)
        except ValueError:
            return None

    # (reference, row, claim, paper, threshold, the claim is "value above threshold")
    for a, b, claim, paper, threshold, above in (
            ("fp32", "lbw6", "6-bit drop vs FP32 within 1 mAP point",
             "0.41 (ResNet-50), 0.70 (ResNet-101)", 0.01, False),
            (CONTROL, "lbw6", "6-bit drop vs the FP32 control (fine-tuned the same way, no "
             "quantizer) within 1 mAP point", "not measured (the paper compares with its FP32 "
             "baseline)", 0.01, False),
            (CONTROL, "lbw4", "4-bit drop vs the FP32 control > 0 (4 bits cost accuracy)",
             "3.09 (ResNet-50), 2.15 (ResNet-101) vs FP32", 0.0, True),
            ("lbw6", "lbw4", "4-bit drop larger than 6-bit drop: mAP(6-bit) - mAP(4-bit) > 0",
             "+2.68 (ResNet-50), +1.45 (ResNet-101)", 0.0, True)):
        iv = paired(a, b)
        if iv is not None:
            rows.append({"claim": claim, "paper": paper, "estimate": iv.estimate,
                         "ci": [iv.lo, iv.hi],
                         "verdict": _verdict(iv.lo, iv.hi, threshold, above_holds=above)})
    mu = paired("lbw6", "lbw6_mu")
    if mu is not None:
        rows.append({"claim": "6-bit exact (Thm 2.1) vs the mu = 3/4 max|W| scheme: "
                              "mAP(exact) - mAP(mu)",
                     "paper": "not measured (the paper trains with the mu scheme)",
                     "estimate": mu.estimate, "ci": [mu.lo, mu.hi],
                     "verdict": "exact better" if mu.lo > 0 else "mu better" if mu.hi < 0
                     else "no difference resolved (the interval contains 0)"})
    for label, z in zero_share_4bit.items():
        paper = PAPER_ZERO_SHARE_4BIT.get(label)
        rows.append({"claim": f"4-bit LBW zero share, {label}",
                     "paper": "n/a" if paper is None else f"{100 * paper:.1f}%",
                     "estimate": z, "ci": None, "verdict": "measured"})
    for label, st in results.get("stats", {}).items():
        p, k = st["fp32_stats"]["normality_p"], st["fp32_stats"]["excess_kurtosis"]
        rows.append({"claim": f"FP32 weights non-Gaussian, {label}: normality p < 1e-5",
                     "paper": "p < 1e-5, excess kurtosis well above 0",
                     "estimate": p, "ci": None, "excess_kurtosis": k,
                     "verdict": "holds" if p < 1e-5 else "does not hold"})
    return rows


def format_claims(rows: list[dict[str, Any]]) -> str:
    """The claims of :func:`paper_claims` as a markdown table (mAP figures in points)."""
    lines = ["| claim | paper | ours [95% CI] | verdict |", "|---|---|---:|---|"]
    for r in rows:
        if "zero share" in r["claim"]:
            ours = f"{100 * r['estimate']:.1f}%"
        elif "normality" in r["claim"]:
            ours = f"p = {r['estimate']:.2e}, excess kurtosis {r['excess_kurtosis']:.2f}"
        else:
            lo, hi = r["ci"]
            ours = f"{100 * r['estimate']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        claim = r["claim"].replace("|", "\\|")
        lines.append(f"| {claim} | {r['paper']} | {ours} | {r['verdict']} |")
    return "\n".join(lines)


def _freeze_text(s: DemoSettings, results: dict[str, Any]) -> str:
    if results.get("pretrain") is None or not s.freeze_at:
        return ""
    stages = ["the stem", "layer1", "layer2", "layer3", "layer4"][:s.freeze_at]
    return (f" with {', '.join(stages)} of the pretrained backbone frozen (weights and batch "
            f"norms; the paper's R-FCN fixes conv1 and res2)")


def _start_text(s: DemoSettings, results: dict[str, Any]) -> str:
    pre = results.get("pretrain")
    if pre is None:
        return "The FP32 model starts from random weights (no pretraining). "
    return (f"As in the paper (ImageNet-pretrained backbone, random detection layers), the "
            f"backbone is first pretrained offline on digit/background crops ({s.pretrain_steps} "
            f"steps of {s.pretrain_batch} crops, held-out accuracy {100 * pre['accuracy']:.1f}%, "
            f"chance {100 * pre['chance']:.1f}%, `{Path(pre['path']).name}`). ")


def format_table_3_1(results: dict[str, Any]) -> str:
    """The demo's Table 3.1 as markdown (rows 4/5/6-bit LBW, 6-bit mu, FP32)."""
    rows = [("4-bit LBW (exact)", "lbw4"), ("5-bit LBW (exact)", "lbw5"),
            ("6-bit LBW (exact)", "lbw6"), ("6-bit LBW (paper's mu scheme)", "lbw6_mu"),
            ("FP32 control (fine-tuned like the LBW rows)", CONTROL),
            ("32-bit full precision", "fp32")]
    from lowbit.studies.report import drop_cell, map_cell

    lines = ["| model | mAP [95% CI] | drop vs FP32 [paired 95% CI] | ± drop | "
             "drop vs FP32 control [paired 95% CI] | ± | "
             "conv weight memory | × smaller | zero weights |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for title, key in rows:
        r = results["runs"].get(key)
        if r is None:
            continue
        hw = r.get("drop_half_width")
        drop = "" if key == "fp32" else drop_cell(r)
        chw = r.get("drop_vs_control_half_width")
        cdrop = "" if "drop_vs_control" not in r else drop_cell(
            {"drop": r["drop_vs_control"], "drop_ci": r.get("drop_vs_control_ci"),
             "drop_excludes_zero": r.get("drop_vs_control_excludes_zero")})
        lines.append(
            f"| {title} | {map_cell(r)} | {drop} | "
            f"{'' if hw is None else f'{100 * hw:.2f}'} | {cdrop} | "
            f"{'' if chw is None else f'{100 * chw:.2f}'} | "
            f"{r['conv_weight_bytes'] / 1024:.1f} KiB | {r['conv_ratio']:.2f} | "
            f"{100 * r['zero_share']:.1f}% |"
        )
    return "\n".join(lines)
