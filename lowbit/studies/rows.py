"""The row machinery of the comparison studies (``compare``, ``sweep-mu``): the fine-tuning budget,
one row per (method, bits) trained or applied, evaluated, timed and merged into the results
file, resumably.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lowbit.export.latency import NotExportable, measure_latency
from lowbit.runs import (
    Base,
    add_intervals,
    config_hash,
    eval_batch_size,
    finite_or_none,
    fp32_model,
    load_results,
    memory,
    merge_rows,
    row_dir,
    score,
    seed_summary,
    train_images,
    write_json,
)
from lowbit.runtime import run_info
from lowbit.studies.methods import METHODS, Method
from lowbit.studies.mixed import MIXED_BITS, MIXED_IMAGES

__all__ = [
    "Budget", "qat_config", "quantized_row", "method_extras", "run_rows",
]


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


def _planned(base: Base, method: Method, bits: int, calib: list[list[Tensor]], out: Path
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``method.plan``'s (recipe, info), cached in ``OUT/runs`` per FP32 run, images and
    recipe (a rerun of an unfinished row goes on with the same plan, without measuring)."""
    assert method.plan is not None
    shapes = [[list(im.shape) for im in b] for b in calib]
    key = config_hash({"run": str(base.run_dir), "recipe": method.recipe(bits), "images": shapes,
                 "plan": getattr(method.plan, "__qualname__", str(method.plan)),
                 "mixed": [list(MIXED_BITS), MIXED_IMAGES]})
    path = out / "runs" / f"{method.name}-{bits}b-plan-{key}.json"
    if path.is_file():
        saved = load_results(path)
        return saved["recipe"], saved["info"]
    quant, info = method.plan(fp32_model(base), calib, bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"recipe": quant, "info": info})
    return quant, info


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


def quantized_row(base: Base, method: Method, bits: int, budget: Budget,
                   calib: list[list[Tensor]], out: Path, progress: bool, seeds: int = 1,
                   key: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build, (train,) convert and evaluate one row; returns the converted model and info.
    A QAT row is fine-tuned once per seed (``seeds``); the model and the detections are those
    of the first seed."""
    import lowbit.nn as L
    from lowbit.runs import load_run
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
            run_dir = out / "runs" / f"{method.name}-{bits}b-{config_hash(asdict(cfg))}"
            if progress and seeds > 1:
                print(f"   seed {cfg.train.seed} ({k + 1} of {seeds}) into {run_dir}", flush=True)
            res = fit(cfg, run_dir, resume=True, progress=progress)
            _, _, model = load_run(run_dir)
            model.to(base.device).eval()
            # the converted model re-evaluated (the run's own final evaluation saw the training
            # forward, which differs for relaxations such as clip-qat), detections written
            sc = score(base.task, model, base.test_ds, run_dir, base.device, eval_batch_size(base))
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
    sc = score(base.task, model, base.test_ds, row_dir(out, key or f"{method.name}@{bits}"),
               base.device, eval_batch_size(base))
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


def method_extras(method: Method | None) -> dict[str, Any]:
    """The parts of a method besides its recipe that change its row (in the row's stamp; only
    non-default ones, so rows of methods without them keep their stamps)."""
    if method is None:
        return {}
    out = {"qn_phases": method.qn_phases, "penalty": method.penalty,
           "svd_energy": method.svd_energy, "reevaluate": method.reevaluate}
    return {k: v for k, v in out.items() if v not in (None, 0.0, False)}


def run_rows(base: Base, specs: list[tuple[str, Method | None, int, dict[str, Any]]],
              out: Path, results_name: str, settings: dict[str, Any], budget: Budget,
              calib_images: int, latency: bool, latency_iters: int, progress: bool,
              seeds: int = 1) -> dict[str, Any]:
    """The shared machinery of compare and sweep-mu: run each ``(key, method, bits, extra)``
    row (method None: the FP32 reference), resumably, recording failures; every write of the
    results file merges under a lock (:func:`merge_rows`)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    res_path = out / results_name
    old = load_results(res_path)
    old_rows = {r["key"]: r for r in old.get("rows", [])} \
        if old.get("fp32_run") == str(base.run_dir) else {}
    info = run_info()
    header = {"fp32_run": str(base.run_dir), "settings": settings, "run_info": info}
    mine: list[dict[str, Any]] = []
    calib = train_images(base, calib_images)
    skipped = []
    bar = tqdm(specs, desc="compare", unit="row", disable=not progress)
    for n_row, (key, method, bits, extra) in enumerate(bar):
        bar.set_description(key)
        stamp = config_hash({"settings": settings if method else str(base.run_dir),
                       "recipe": method.recipe(bits) if method else None,
                       "kind": method.kind if method else "fp32", **extra,
                       **method_extras(method)})
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
                row_info = {**score(base.task, model, base.test_ds, row_dir(out, key),
                                    base.device, eval_batch_size(base)),
                            "run_dir": str(base.run_dir)}
            else:
                model, row_info = quantized_row(base, method, bits, budget, calib, out,
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
        mine.append({k: finite_or_none(v) for k, v in row.items()})
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
