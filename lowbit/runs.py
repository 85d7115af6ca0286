"""Finished runs: the one run loader, the FP32 base of a study, evaluation and scoring helpers,
memory accounting and results files.

Everything the studies (:mod:`lowbit.studies`) and the commands share about a run folder written
by :func:`lowbit.train.fit` lives here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lowbit._files import write_atomic

__all__ = [
    "Base", "LoadedRun", "load_run", "load_base", "fp32_model", "evaluate", "predict", "score",
    "add_intervals", "seed_summary", "train_images", "memory", "conv_memory",
    "effective_weights", "eval_batch_size", "row_dir", "load_results", "write_json", "locked",
    "merge_rows", "finite_or_none", "config_hash", "is_run",
]


@dataclass
class Base:
    """The FP32 run everything starts from, with its task and data sets."""

    run_dir: Path
    cfg: Any
    task: Any
    train_ds: Any
    test_ds: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def is_run(p: Path) -> bool:
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
    if is_run(src):
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
    """Conv weight memory and zero share (:func:`conv_memory`: ``conv_weight_bytes``,
    ``conv_fp32_bytes``, ``conv_ratio``, ``all_param_bytes``, ``all_param_ratio``,
    ``zero_share``)."""
    from lowbit.runs import conv_memory

    return {k: float(v) for k, v in conv_memory(model).items()}


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def eval_batch_size(base: Base) -> int:
    tc = base.cfg.train
    return int(tc.eval_batch_size or tc.batch_size)


def row_dir(out: Path, key: str) -> Path:
    """``OUT/runs/<key>`` with ``@`` as ``-`` and a ``b`` (``kmeans-df@4`` -> ``kmeans-df-4b``)."""
    name = key.replace("@", "-") + ("b" if "@" in key else "")
    return out / "runs" / "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); remove it to start over") from None


def write_json(path: Path, obj: Any) -> None:
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
        cur = load_results(path)
        same = cur.get("fp32_run") == header.get("fp32_run")
        mine = {r["key"]: r for r in rows}
        merged = [mine.pop(r["key"], r) for r in (cur.get("rows", []) if same else [])]
        merged += [r for r in rows if r["key"] in mine]
        res = {**(cur if same else {}), **header, "rows": merged}
        if finish is not None:
            finish(res)
        write_json(path, res)
        return res


def finite_or_none(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


class LoadedRun(NamedTuple):
    """A finished run as :func:`load_run` returns it (unpacks as ``cfg, task, model``)."""

    cfg: Any
    task: Any
    model: nn.Module


def load_run(path: str | os.PathLike[str]) -> LoadedRun:
    """The one run loader: ``(cfg, task, model)`` of a run folder or of a checkpoint inside one
    (``RUN/checkpoints/ckpt-*.json``); the config is ``RUN/config.yaml``. The model is in eval
    mode on the CPU with its quantized layers converted (frozen quantized weights), in the
    channels-last memory format when the run trained so (``train.channels_last``), as
    ``lowbit export``, ``lowbit stats``, the demo and compare use it."""
    from lowbit.config import load_config
    from lowbit.nn import convert, quant_layers
    from lowbit.train import build_model, load_checkpoint
    from lowbit.train.checkpoint import resolve_checkpoint

    p = Path(path)
    ckpt = resolve_checkpoint(p)
    run_dir = p if p.is_dir() and (p / "config.yaml").is_file() else ckpt.parent.parent
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: run config not found (pass a run folder or a "
                                "checkpoint inside its checkpoints/)")
    cfg = load_config(cfg_path)
    task, model = build_model(cfg)
    load_checkpoint(ckpt, model)
    model.eval()
    if quant_layers(model):
        convert(model)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedRun(cfg, task, model)


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv weights as the forward uses them: frozen quantized values, else the float weight."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fr = getattr(m, "frozen", None)
            out[name] = (fr.values if fr is not None else m.weight).detach().float().cpu()
    return out


def conv_memory(model: nn.Module) -> dict[str, float]:
    """Weight memory of the conv weights as the forward uses them.

    Returns ``conv_weights`` (count), ``conv_weight_bytes`` (``ceil(numel * bits / 8) + 1`` per
    quantized conv — codes plus one exponent byte — and 4 bytes per float weight),
    ``conv_fp32_bytes``, ``conv_ratio`` (FP32 / quantized), ``all_param_bytes`` and
    ``all_param_ratio`` (every parameter, :func:`lowbit.nn.weight_memory`) and ``zero_share``
    (exact zeros among the conv weights, in [0, 1])."""
    import lowbit.nn as L

    ws = effective_weights(model)
    n = sum(w.numel() for w in ws.values())
    zeros = sum(int((w == 0).sum()) for w in ws.values())
    qbytes = 0.0
    layers = {name: layer for name, layer in L.quant_layers(model)} if L.quant_layers(model) else {}
    for name, w in ws.items():
        lay = layers.get(name)
        bits = getattr(getattr(lay, "frozen", None), "bits", None) if lay is not None else None
        qbytes += math.ceil(w.numel() * bits / 8) + 1 if bits else 4 * w.numel()
    wm = L.weight_memory(model)
    return {
        "conv_weights": n,
        "conv_weight_bytes": qbytes,
        "conv_fp32_bytes": 4.0 * n,
        "conv_ratio": 4.0 * n / qbytes,
        "all_param_bytes": float(wm["total_bytes"]),
        "all_param_ratio": float(wm["fp32_bytes"]) / float(wm["total_bytes"]),
        "zero_share": zeros / max(n, 1),
    }
