"""The training engine: one loop for every task, single process or under ``torchrun``.

``Trainer(cfg, out_dir).fit()`` does, in order:

1. open the process group from torchrun's env vars (gloo on CPU, NCCL on CUDA);
2. seed torch / NumPy / Python with ``train.seed`` (the same on every rank, so every rank builds
   the same initial model), build the task's data sets and float model;
3. warm start from ``init`` (matching tensors; skipped when resuming), apply the quantization
   recipe (``lowbit.nn.prepare``), build SGD and the LR schedule;
4. on ``resume``: load the newest committed checkpoint (weights, optimizer, GradScaler, each
   rank's RNG states) and continue at its iteration — mid-epoch too, because the sampler's
   order is a pure function of ``(seed, epoch)`` and the schedule a pure function of the
   iteration;
5. wrap in DistributedDataParallel (per-rank batch = global batch / world size) and train,
   logging to ``metrics.jsonl`` and a tqdm bar; evaluate every ``eval_interval`` epochs and at
   the end (rank 0, whole test set); checkpoint every ``checkpoint_every`` iterations, at epoch
   ends and at the end (rank 0 writes; every rank's RNG state is gathered into it).

The run folder holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/ckpt-N.*``,
``result.json`` (final metrics) and, while a process trains into it, ``.lock``.

What a run promises (each held by a test in ``tests/train``):

* one writer per run folder (:class:`lowbit.train.lock.RunLock`: a second one is refused naming
  the holder's pid and host; the lock of a dead process is taken over with a message);
* the data sets are checked before the first step (every annotation parsed, every image header
  read, :mod:`lowbit.data.validate`): a bad item stops the run naming the file, or with
  ``skip_bad`` is left out and counted;
* the loss is checked every step: a non-finite loss stops the run (:class:`TrainingDiverged`,
  naming the iteration) before the optimizer takes that step, and no checkpoint holding
  non-finite tensors is ever written, so the last good one is never pruned;
* checkpoints are written before the evaluation that follows them (a failing evaluation loses
  no training; resume re-runs it), and evaluation never changes the training RNG streams;
* ``resume`` continues the run's stored config: a config that differs is refused naming the
  keys unless ``override``; ``metrics.jsonl`` is cut back to what was written before the
  checkpoint (a fresh start empties it), so no iteration is ever logged twice;
* data roots and ``init`` are stored as absolute paths, so a run folder works from any
  directory.

Bit-exact resume holds for a given device, thread count and world size with ``num_workers=0``,
or with workers when the data set's randomness depends only on the sample index (worker RNG
streams are re-seeded per epoch, not checkpointed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lowbit.config import (
    ExperimentConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_config,
    load_config,
)
from lowbit.data.validate import drop_items, summarize_bad, validate_dataset
from lowbit.train.checkpoint import (
    CheckpointWriteError,
    NonFiniteError,
    _write_json_atomic,
    capture_rng_state,
    find_latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_checkpoint_json,
    read_safetensors,
    remove_stale_files,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from lowbit.train.distributed import (
    DistContext,
    all_gather_json,
    all_reduce_mean,
    any_true,
    barrier,
    broadcast_json,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from lowbit.train.lock import RunLock, RunLockedError
from lowbit.train.metrics import MetricsLogger, truncate_metrics, truncate_metrics_bytes
from lowbit.train.quant_schedule import QuantClock
from lowbit.train.sampler import ResumableShardedSampler, epoch_generator_seed
from lowbit.train.schedules import LRSchedule
from lowbit.train.tasks import batch_size_of, task_for_model, to_device

__all__ = [
    "Trainer",
    "RunResult",
    "EvalResult",
    "fit",
    "evaluate_checkpoint",
    "build_model",
    "apply_quantization",
    "warm_start",
    "evaluate_model",
    "seed_everything",
    "TrainingDiverged",
    "absolute_paths",
    "config_changes",
]

Callback = Callable[["Trainer", str, dict[str, Any]], None]

# Keys a resumed run may change without --override: where it runs and how it is watched.
_RESUME_FREE = ("train.device", "train.tensorboard", "train.eval_batch_size")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the step was not taken."""


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with a relative ``data.root`` and ``init`` made absolute (against the current
    directory), so the stored run works from any directory."""
    if cfg.data.root and not Path(cfg.data.root).is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, root=str(Path(cfg.data.root).resolve())))
    if cfg.init and not Path(cfg.init).is_absolute():
        cfg = replace(cfg, init=str(Path(cfg.init).resolve()))
    return cfg


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_changes(old: dict[str, Any], new: dict[str, Any],
                   ignore: Sequence[str] = _RESUME_FREE) -> list[str]:
    """Dotted keys (leaves, ``model.kwargs.width``) whose values differ between two plain
    configs, sorted; keys under ``ignore`` are left out."""
    a, b = _flatten(old), _flatten(new)

    def same(x: Any, y: Any) -> bool:
        return json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True,
                                                                        default=str)

    keys = sorted(k for k in set(a) | set(b) if not same(a.get(k), b.get(k)))
    return [k for k in keys if not any(k == i or k.startswith(i + ".") for i in ignore)]


@dataclass
class RunResult:
    """What :meth:`Trainer.fit` returns (on every rank)."""

    run_dir: Path
    metrics: dict[str, float]
    iteration: int
    checkpoint: Path | None
    resumed_from: int | None = None


@dataclass
class EvalResult:
    """What :func:`evaluate_checkpoint` returns."""

    metrics: dict[str, float]
    checkpoint: Path
    iteration: int | None
    config: ExperimentConfig = field(repr=False)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))  # noqa: NPY002 - user code may draw from the global RNG
    torch.manual_seed(seed)


def apply_quantization(model: nn.Module, quant: dict[str, Any] | None) -> nn.Module:
    """``lowbit.nn.prepare(model, lowbit.nn.Recipe.from_dict(quant))``; ``quant=None``: no-op.

    ``lowbit.nn`` is imported here, lazily, so float training never needs it.
    """
    if quant is None:
        return model
    try:
        from lowbit.nn import Recipe, prepare  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ValueError(
            f"config quant: quantization asked for but lowbit.nn.Recipe/prepare are not "
            f"available ({exc})"
        ) from None
    recipe = Recipe.from_dict(dict(quant))
    out = prepare(model, recipe)
    return model if out is None else out


def build_model(cfg: ExperimentConfig) -> tuple[Any, nn.Module]:
    """``(task, model)``: the task's float model with the config's recipe applied (no
    weights loaded). Export and analysis use this to rebuild a trained network."""
    task = task_for_model(cfg.model)
    model = apply_quantization(task.build_model(cfg), cfg.quant)
    return task, model


def _read_init_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    p = Path(path)
    if p.is_dir() or p.suffix == ".json" or (
        p.suffix == ".safetensors" and p.with_suffix(".json").is_file()
    ):
        return load_checkpoint(p).model_state
    if not p.exists():
        raise FileNotFoundError(f"{p}: init checkpoint not found")
    tensors = read_safetensors(p)
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = {k[6:]: v for k, v in tensors.items()}
    return tensors


def warm_start(
    model: nn.Module, source: str | os.PathLike[str] | dict[str, torch.Tensor],
    *, skip: set[str] | None = None,
) -> dict[str, Any]:
    """Copy every tensor of ``source`` whose name and shape match into ``model`` (in place).

    ``source``: a lowbit checkpoint (``.json``, its ``.safetensors``, or a run folder) or a
    plain ``.safetensors`` state dict, or a loaded dict. Names in ``skip`` are not considered.
    Returns ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.
    ValueError if nothing matched.
    """
    tensors = source if isinstance(source, dict) else _read_init_tensors(source)
    skip = skip or set()
    own = unwrap_model(model).state_dict()
    loaded, mismatched = [], []
    with torch.no_grad():
        for name, target in own.items():
            if name in skip or name not in tensors:
                continue
            src = tensors[name]
            if tuple(src.shape) != tuple(target.shape):
                mismatched.append(name)
                continue
            target.copy_(src.to(dtype=target.dtype))
            loaded.append(name)
    if not loaded and not skip:
        raise ValueError(f"init {source if not isinstance(source, dict) else '<dict>'}: "
                         "no tensor matches the model (names or shapes differ)")
    return {
        "loaded": loaded,
        "missing": [k for k in own if k not in tensors and k not in skip],
        "unexpected": [k for k in tensors if k not in own and k not in skip],
        "mismatched": mismatched,
    }


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def _eval_loader(task: Any, cfg: ExperimentConfig, test_ds: Dataset, device: torch.device
                 ) -> DataLoader:
    return DataLoader(
        test_ds,
        batch_size=cfg.train.eval_batch_size or cfg.train.batch_size,
        shuffle=False,
        collate_fn=getattr(task, "eval_collate_fn", task.collate_fn),
        num_workers=cfg.train.num_workers,
        pin_memory=device.type == "cuda",
    )


def evaluate_model(task: Any, model: nn.Module, loader: DataLoader, *, device: torch.device,
                   amp: bool = False) -> dict[str, float]:
    """``task.evaluate`` in eval mode under ``no_grad`` (and autocast with ``amp``); restores
    the model's train/eval mode. Checks the result has a float ``"main"``."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(device, amp):
            metrics = task.evaluate(model, loader)
    finally:
        model.train(was_training)
    if not isinstance(metrics, dict) or "main" not in metrics:
        raise ValueError(f"task {getattr(task, 'name', task)!r}: evaluate() must return a dict "
                         "with a 'main' metric")
    return {str(k): float(v) for k, v in metrics.items()}


def _finished(run_dir: Path, latest: Path, iteration: int) -> dict[str, float] | None:
    """The final metrics of ``result.json`` when it belongs to checkpoint ``latest``."""
    try:
        res = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("iteration") != iteration \
            or Path(str(res.get("checkpoint"))).name != latest.name \
            or not isinstance(res.get("metrics"), dict):
        return None
    return {str(k): float(v) for k, v in res["metrics"].items()}


class Trainer:
    """Trains ``cfg`` into ``out_dir`` (see the module docstring).

    Args:
        cfg: the experiment (a relative ``data.root`` / ``init`` is made absolute).
        out_dir: run folder (created). Holding checkpoints already is an error unless
            ``resume``.
        resume: continue from the newest committed checkpoint in ``out_dir`` (start from
            scratch when there is none).
        override: with ``resume``, accept a ``cfg`` that differs from the checkpoint's config
            (without it such a resume is a ``ValueError`` naming the keys).
        skip_bad: train and evaluate on the good items when validation finds bad ones (the
            count is printed and logged); without it a bad item is a ``ValueError``.
        progress: show the tqdm bar (default: when stderr is a TTY); only rank 0 shows it.
        callbacks: ``cb(trainer, event, info)`` called on every rank for events ``iteration``
            (after each optimizer step), ``eval``, ``checkpoint`` (rank 0 only) and ``end``.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | os.PathLike[str],
        *,
        resume: bool = False,
        override: bool = False,
        skip_bad: bool = False,
        progress: bool | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg = absolute_paths(cfg)
        self.run_dir = Path(out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume = resume
        self.override = override
        self.skip_bad = skip_bad
        self.progress = progress
        self.callbacks = list(callbacks)
        self.iteration = 0
        self.ctx: DistContext | None = None
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule: LRSchedule | None = None
        self.task: Any = None
        self.last_metrics: dict[str, float] = {}
        self.skipped: dict[str, int] = {}
        self._window: dict[str, Any] = {}
        self._logger: MetricsLogger | None = None
        self._last_good: Path | None = None

    # -- setup -------------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Run the whole training; returns the final metrics on every rank."""
        opened_here = not (dist.is_available() and dist.is_initialized())
        ctx = init_distributed(self.cfg.train.device)
        self.ctx = ctx
        lock = RunLock(self.run_dir) if ctx.is_main else None
        try:
            failure = None
            if lock is not None:
                try:
                    note = lock.acquire()
                except (RunLockedError, ValueError) as exc:
                    failure = [type(exc).__name__, str(exc)]
                else:
                    if note:
                        print(f"note: {note}", file=sys.stderr)
            failure = broadcast_json(failure, ctx)
            if failure is not None:
                raise (RunLockedError if failure[0] == "RunLockedError" else ValueError)(
                    failure[1])
            return self._fit(ctx)
        finally:
            if lock is not None:
                lock.release()
            if opened_here:
                shutdown_distributed(ctx)

    def _emit(self, event: str, **info: Any) -> None:
        for cb in self.callbacks:
            cb(self, event, info)

    def _datasets(self, task: Any, ctx: DistContext) -> tuple[Dataset, Dataset]:
        """The task's data sets, validated (see :mod:`lowbit.data.validate`)."""
        cfg = self.cfg
        train_ds, test_ds = task.build_datasets(cfg)
        found = {"train": validate_dataset(train_ds), "test": validate_dataset(test_ds)}
        sets = {"train": train_ds, "test": test_ds}
        bad = {k: v for k, v in found.items() if v}
        if bad and not self.skip_bad:
            lines = " | ".join(summarize_bad(v, f"{cfg.data.root or cfg.data.kind} {k}",
                                             len(sets[k])) for k, v in bad.items())
            raise ValueError(f"{lines} (pass --skip-bad to train on the rest)")
        for k, v in bad.items():
            if len(v) == len(sets[k]):
                raise ValueError(summarize_bad(v, f"{cfg.data.root} {k}", len(sets[k]))
                                 + " (nothing left to use)")
            sets[k] = drop_items(sets[k], v)
            self.skipped[k] = len(v)
            if ctx.is_main:
                print(f"warning: skipping {len(v)} bad of {len(v) + len(sets[k])} {k} items: "
                      + summarize_bad(v, k, len(v) + len(sets[k]), shown=1), file=sys.stderr)
        return sets["train"], sets["test"]

    def _fit(self, ctx: DistContext) -> RunResult:
        cfg, tc = self.cfg, self.cfg.train
        latest = find_latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        if latest is not None and not self.resume:
            raise ValueError(f"{self.run_dir}: holds checkpoints already ({latest.name}); pass "
                             "--resume to continue that run or choose another --out")
        barrier(ctx)  # every rank has looked before rank 0 writes anything

        task = self.task = task_for_model(cfg.model)
        seed_everything(tc.seed)
        # building the data sets must not move the RNG streams the model and the training
        # draw from: neither the task's own draws nor import side effects of what it loads
        # (scikit-learn imports rich when it is installed, whose import draws from Python's
        # global `random`: only in a process's first run, so a run resumed in a fresh process
        # would diverge from one that ran on)
        rng = capture_rng_state()
        try:
            train_ds, test_ds = self._datasets(task, ctx)
        finally:
            restore_rng_state(rng)
        float_model = task.build_model(cfg)
        init_report = None
        if cfg.init and latest is None:
            tensors = _read_init_tensors(cfg.init)
            init_report = warm_start(float_model, tensors)
        model = apply_quantization(float_model, cfg.quant)
        if init_report is not None and cfg.quant is not None:
            # quantizer state (scales, ...) saved by a quantized run loads after prepare
            more = warm_start(model, tensors, skip=set(init_report["loaded"]))
            init_report["loaded"] += more["loaded"]
            init_report["missing"] = more["missing"]
        if ctx.distributed and tc.sync_bn and ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(ctx.device)
        if tc.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
            nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay,
        )
        self.optimizer = optimizer
        sampler = ResumableShardedSampler(
            len(train_ds), tc.batch_size, seed=tc.seed, rank=ctx.rank, world_size=ctx.world_size
        )
        ipe = sampler.batches_per_epoch
        total = tc.iterations or tc.epochs * ipe
        schedule = self.schedule = LRSchedule.from_config(cfg.optim, total, ipe)
        scaler = torch.amp.GradScaler(ctx.device.type,
                                      enabled=tc.amp and ctx.device.type == "cuda")

        start = 0
        ckpt_state: dict[str, Any] = {}
        changed: list[str] = []
        if latest is not None:
            meta = read_checkpoint_json(latest)
            saved = (meta.get("state") or {}).get("config") or {}
            try:  # runs written before roots were stored absolute: as they were meant then
                saved = config_to_dict(absolute_paths(config_from_dict(saved)))
            except ValueError:
                pass
            changed = config_changes(saved, config_to_dict(cfg)) if saved else []
            if changed and not self.override:
                raise ValueError(
                    f"{latest}: --resume with a config that differs from the run's in "
                    f"{', '.join(changed)}; pass --override to change them, or drop those "
                    "--set flags (resume uses the run's stored config)")
            ckpt = load_checkpoint(latest, model, optimizer, scaler=scaler)
            ckpt_state = ckpt.state
            if any(k.startswith("optim.") for k in changed):
                # the optimizer state carries the old hyper-parameters (and the schedule's
                # base rate, initial_lr): the overridden ones take their place
                for group in optimizer.param_groups:
                    group.update(initial_lr=cfg.optim.lr, lr=cfg.optim.lr,
                                 momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                                 weight_decay=cfg.optim.weight_decay)
            start = int(ckpt.state["iteration"])
            self.last_metrics = dict(ckpt.state.get("metrics") or {})
            rngs = ckpt.state.get("rng") or []
            if len(rngs) == ctx.world_size:
                restore_rng_state(rngs[ctx.rank])
                self._window = (ckpt.state.get("log_window") or [{}] * ctx.world_size)[ctx.rank]
            else:  # another world size: not bit-exact anyway; keep streams distinct
                seed_everything(epoch_generator_seed(tc.seed, start, salt=ctx.rank + 1))
            self._last_good = latest
        elif ctx.rank > 0:
            seed_everything(epoch_generator_seed(tc.seed, 0, salt=ctx.rank))
        self.iteration = start

        # a complete run whose final evaluation finished (result.json is written after it):
        # nothing to redo, its log stays as it is
        done = _finished(self.run_dir, latest, start) if (
            ctx.is_main and latest is not None and start >= total and not changed) else None
        done = broadcast_json(done, ctx)
        if done is not None:
            self.last_metrics = done
        metrics_file = self.run_dir / "metrics.jsonl"
        if ctx.is_main:
            dump_config(cfg, self.run_dir / "config.yaml")
            remove_stale_files(self.ckpt_dir)
            if done is not None:
                pass
            elif latest is None:
                # an earlier attempt that left no checkpoint: its lines would repeat iterations
                dropped = truncate_metrics_bytes(metrics_file, 0)
                if dropped:
                    print(f"note: {metrics_file}: dropped {dropped} lines of an earlier attempt "
                          "that left no checkpoint", file=sys.stderr)
            elif "log_bytes" in ckpt_state:
                truncate_metrics_bytes(metrics_file, int(ckpt_state["log_bytes"]))
            else:  # a checkpoint from before log_bytes was recorded
                truncate_metrics(metrics_file, start)
            if done is None:
                (self.run_dir / "result.json").unlink(missing_ok=True)
            if latest is not None:
                msg = f"resuming from iteration {start} ({latest})"
                if changed:
                    msg += f"; --override changes {', '.join(changed)}"
                if start >= total:
                    msg += f"; the run is complete at {total} iterations"
                print(msg, file=sys.stderr)
        logger = MetricsLogger(self.run_dir, enabled=ctx.is_main, tensorboard=tc.tensorboard)
        self._logger = logger
        try:
            if init_report is not None:
                logger.log("init", 0, 0.0, source=str(cfg.init),
                           loaded=len(init_report["loaded"]), missing=init_report["missing"],
                           unexpected=init_report["unexpected"],
                           mismatched=init_report["mismatched"])
            if self.skipped:
                logger.log("data", start, start / ipe, skipped=dict(self.skipped))
            if latest is not None:
                if "log_bytes" in ckpt_state and done is None:  # cut with the lines after it
                    logger.log("checkpoint", start, start / ipe,
                               path=str(latest.relative_to(self.run_dir)))
                logger.log("resume", start, start / ipe, checkpoint=str(latest),
                           **({"override": changed} if changed else {}))
            if ctx.distributed:
                # QN phases switch requires_grad of the weights on and off between steps:
                # DDP must then look for parameters without a gradient in every step
                ddp = nn.parallel.DistributedDataParallel(
                    model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                    find_unused_parameters=tc.qn_phases is not None,
                )
            else:
                ddp = model
            test_loader = _eval_loader(task, cfg, test_ds, ctx.device) if ctx.is_main else None
            if latest is not None and done is None and (ckpt_state.get("eval_due") or (
                    start >= total and "eval_due" not in ckpt_state)):
                # the evaluation that followed this checkpoint (it may not have finished); the
                # quantizers' state at that point is in the checkpoint's buffers
                self._evaluate(task, ddp, test_loader, start, ipe, logger)
            last_ckpt = self._loop(ctx, task, ddp, optimizer, schedule, scaler, sampler,
                                   train_ds, test_loader, start, total, ipe, logger)
        finally:
            logger.close()
            self._logger = None
        result = RunResult(self.run_dir, dict(self.last_metrics), self.iteration, last_ckpt,
                           start if latest is not None else None)
        if ctx.is_main:
            _write_json_atomic(self.run_dir / "result.json", {
                "iteration": self.iteration, "metrics": result.metrics,
                "checkpoint": str(last_ckpt) if last_ckpt else None,
                "config_hash": config_hash(cfg),
                **({"skipped": dict(self.skipped)} if self.skipped else {}),
            })
        self._emit("end", result=result)
        barrier(ctx)
        return result

    # -- loop --------------------------------------------------------------------------------

    def _train_batches(self, task: Any, train_ds: Dataset, sampler: ResumableShardedSampler,
                       epoch: int, start_batch: int) -> Iterator[Any]:
        ctx, tc = self.ctx, self.cfg.train
        assert ctx is not None
        sampler.set_epoch(epoch, start_batch)
        # An explicit generator keeps DataLoader from drawing on the global torch RNG (which
        # would shift every later random number after a mid-epoch resume) and seeds workers
        # per (seed, epoch, rank).
        g = torch.Generator()
        g.manual_seed(epoch_generator_seed(tc.seed, epoch, salt=1000 + ctx.rank))
        loader = DataLoader(
            train_ds, batch_size=sampler.per_rank, sampler=sampler, collate_fn=task.collate_fn,
            num_workers=tc.num_workers, pin_memory=ctx.device.type == "cuda", drop_last=False,
            generator=g,
        )
        yield from loader

    def _last_words(self) -> str:
        last = self._last_good
        if last is None:
            return ("there is no earlier checkpoint (start again with a smaller learning rate: "
                    "--set optim.lr=...)")
        return (f"the last good checkpoint is {last} (resume it with a smaller learning rate: "
                f"lowbit train --out {self.run_dir} --resume --override --set optim.lr=...)")

    def _diverged(self, loss: torch.Tensor, it: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"{self.run_dir}: non-finite loss ({float(loss.detach().float().sum())}) at iteration "
            f"{it + 1}: training stopped before that step; {self._last_words()}")

    def _loop(self, ctx: DistContext, task: Any, ddp: nn.Module, optimizer: torch.optim.Optimizer,
              schedule: LRSchedule, scaler: Any, sampler: ResumableShardedSampler,
              train_ds: Dataset, test_loader: DataLoader | None, start: int, total: int,
              ipe: int, logger: MetricsLogger) -> Path | None:
        tc = self.cfg.train
        show = (self.progress if self.progress is not None else sys.stderr.isatty())
        bar = tqdm(total=total, initial=min(start, total),
                   disable=not (show and ctx.is_main), unit="it", dynamic_ncols=True,
                   desc="train")
        move = getattr(task, "to_device", None) or to_device
        count = getattr(task, "batch_size_of", None) or batch_size_of
        params = [p for p in ddp.parameters() if p.requires_grad]
        it = start
        last_ckpt: Path | None = None
        saved_at = start if start else -1
        # running sums since the last log line; checkpointed so a resumed run logs the same
        window_loss = torch.tensor(self._window.get("loss", 0.0), dtype=torch.float64,
                                   device=ctx.device)
        window_logs: dict[str, float] = dict(self._window.get("logs", {}))
        window_n, window_imgs, t0 = int(self._window.get("n", 0)), 0, time.perf_counter()
        self._window = {"loss": window_loss, "logs": window_logs, "n": window_n}
        lr = schedule.lr(it)
        ddp.train()
        clock = QuantClock(getattr(ddp, "module", ddp), ipe, total, tc.qn_t0, tc.qn_phases)
        clock_state: dict[str, Any] = {}

        def tick(i: int) -> None:
            # QN temperatures / phases and INQ portions for the step that starts at i
            nonlocal clock_state
            if not clock.active:
                return
            got = clock.apply(getattr(ddp, "module", ddp), i)
            changed = {k: v for k, v in got.items() if k in ("qn_phase", "inq_portion")
                       and clock_state.get(k) != v}
            if changed:
                logger.log("quant_schedule", i, i / ipe, **got)
            clock_state = got

        try:
            while it < total:
                epoch, start_batch = divmod(it, ipe)
                for batch in self._train_batches(task, train_ds, sampler, epoch, start_batch):
                    tick(it)
                    lr = schedule.apply(optimizer, it)
                    batch = move(batch, ctx.device)
                    with _autocast(ctx.device, tc.amp):
                        loss, logs = task.train_step_loss(ddp, batch)
                        if tc.quant_penalty > 0:
                            from lowbit.nn import quant_penalty

                            extra = quant_penalty(getattr(ddp, "module", ddp), tc.quant_penalty)
                            loss = loss + extra.to(loss.device)
                            logs = {**(logs or {}), "loss_quant": float(extra.detach())}
                    # every step, before the step: a diverged loss never reaches the weights
                    if any_true(not bool(torch.isfinite(loss.detach()).all()), ctx):
                        raise self._diverged(loss, it)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if tc.clip_grad_norm is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(params, tc.clip_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    it += 1
                    self.iteration = it
                    window_loss += loss.detach().double()
                    for k, v in (logs or {}).items():
                        window_logs[k] = window_logs.get(k, 0.0) + float(v)
                    window_n += 1
                    window_imgs += count(batch)
                    bar.update(1)
                    if it % tc.log_every == 0 or it == total:
                        values = {"loss": window_loss.item() / window_n,
                                  **{k: v / window_n for k, v in window_logs.items()}}
                        values = all_reduce_mean(values, ctx)
                        dt = max(time.perf_counter() - t0, 1e-9)
                        ips = window_imgs * ctx.world_size / dt
                        logger.log("train", it, it / ipe, lr=lr, img_per_s=round(ips, 1),
                                   **values)
                        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{ips:.0f}",
                                        lr=f"{lr:.3g}")
                        window_loss.zero_()
                        window_logs, window_n, window_imgs = {}, 0, 0
                        t0 = time.perf_counter()
                    # what a checkpoint taken now must carry (also at the end: a resumed,
                    # extended run continues from it)
                    self._window = {"loss": window_loss, "logs": window_logs, "n": window_n}
                    self._emit("iteration", iteration=it, loss=loss.detach())
                    if it >= total:
                        break
                    if tc.checkpoint_every and it % tc.checkpoint_every == 0 and it % ipe:
                        last_ckpt = self._save(ddp, optimizer, schedule, scaler, it, ipe, logger,
                                               eval_due=False)
                        saved_at = it
                epoch_end = it % ipe == 0
                final = it >= total
                if final:
                    tick(it)  # the run's end state (INQ: every weight quantized) is evaluated
                n_epochs = it // ipe
                due = (final and tc.final_eval) or bool(
                    epoch_end and tc.eval_interval and n_epochs % tc.eval_interval == 0)
                # the checkpoint first: an evaluation that fails loses no training
                if (epoch_end or final) and saved_at != it:
                    last_ckpt = self._save(ddp, optimizer, schedule, scaler, it, ipe, logger,
                                           eval_due=due)
                    saved_at = it
                if due:
                    self._evaluate(task, ddp, test_loader, it, ipe, logger)
        finally:
            bar.close()
        if last_ckpt is None and ctx.is_main:
            last_ckpt = find_latest_checkpoint(self.run_dir)
        return last_ckpt

    def _evaluate(self, task: Any, ddp: nn.Module, loader: DataLoader | None, it: int, ipe: int,
                  logger: MetricsLogger) -> dict[str, float]:
        ctx = self.ctx
        assert ctx is not None
        metrics = None
        if ctx.is_main:
            assert loader is not None
            # evaluation must not move the training RNG streams: a run resumed from the
            # checkpoint written just before it continues exactly as this one does
            rng = capture_rng_state()
            try:
                metrics = evaluate_model(task, ddp, loader, device=ctx.device,
                                         amp=self.cfg.train.amp)
            finally:
                restore_rng_state(rng)
            logger.log("eval", it, it / ipe, **metrics)
            tqdm.write(f"eval @ iteration {it}: "
                       + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), file=sys.stderr)
        metrics = broadcast_json(metrics, ctx)
        self.last_metrics = metrics
        self._emit("eval", iteration=it, metrics=metrics)
        return metrics

    def _save(self, ddp: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
              scaler: Any, it: int, ipe: int, logger: MetricsLogger, *,
              eval_due: bool = False) -> Path | None:
        ctx, cfg = self.ctx, self.cfg
        assert ctx is not None
        w = self._window
        window = {"loss": float(w.get("loss", 0.0)), "logs": dict(w.get("logs", {})),
                  "n": int(w.get("n", 0))}
        ranks = all_gather_json({"rng": capture_rng_state(), "window": window}, ctx)
        path = None
        failure = None
        if ctx.is_main:
            state = {
                "iteration": it,
                "epoch": it / ipe,
                "iters_per_epoch": ipe,
                "world_size": ctx.world_size,
                "sampler": {"seed": cfg.train.seed, "epoch": it // ipe, "batch": it % ipe,
                            "global_batch": cfg.train.batch_size},
                "rng": [r["rng"] for r in ranks],
                "log_window": [r["window"] for r in ranks],
                "log_bytes": logger.size(),
                "eval_due": eval_due,
                "metrics": self.last_metrics,
                "config": config_to_dict(cfg),
                "config_hash": config_hash(cfg),
                "torch": torch.__version__,
            }
            try:
                path = save_checkpoint(self.ckpt_dir, ddp, optimizer, schedule, state,
                                       scaler=scaler)
            except NonFiniteError as exc:
                failure = ["TrainingDiverged", (
                    f"{self.run_dir}: training diverged by iteration {it}: the weights hold NaN "
                    f"or infinity ({exc.tensor}), so checkpoint {it} was not written; "
                    f"{self._last_words()}")]
            except CheckpointWriteError as exc:
                failure = ["RuntimeError", f"{exc} (iteration {it}); {self._last_words()}"]
            else:
                self._last_good = path
                prune_checkpoints(self.ckpt_dir, cfg.train.keep_checkpoints)
                logger.log("checkpoint", it, it / ipe, path=str(path.relative_to(self.run_dir)))
                self._emit("checkpoint", iteration=it, path=path)
        failure = broadcast_json(failure, ctx)
        if failure is not None:
            raise (TrainingDiverged if failure[0] == "TrainingDiverged" else RuntimeError)(
                failure[1])
        return path


def fit(
    cfg: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    override: bool = False,
    skip_bad: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """``Trainer(cfg, out_dir, resume=..., ...).fit()`` (see :class:`Trainer`)."""
    return Trainer(cfg, out_dir, resume=resume, override=override, skip_bad=skip_bad,
                   progress=progress, callbacks=callbacks).fit()


def _run_dir_of(json_path: Path) -> Path:
    return json_path.parent.parent if json_path.parent.name == "checkpoints" else json_path.parent


def _stored_paths(cfg: ExperimentConfig, run_dir: Path, source: Path) -> ExperimentConfig:
    """A stored config's relative ``data.root`` (runs written before roots were stored
    absolute) resolved against the run folder, else the current directory; one found in
    neither is an error rather than data written under the current directory."""
    root = cfg.data.root
    if not root or Path(root).is_absolute():
        return cfg
    for base in (run_dir, Path.cwd()):
        if (base / root).exists():
            return replace(cfg, data=replace(cfg.data, root=str((base / root).resolve())))
    raise ValueError(f"{source}: data.root {root!r} is relative and exists neither under the "
                     f"run folder {run_dir} nor the current directory; set it to an absolute "
                     "path there")


def config_for_checkpoint(json_path: Path, meta: dict[str, Any]) -> ExperimentConfig:
    """The config of the run a checkpoint belongs to: its run folder's ``config.yaml``, else
    the config stored inside the checkpoint; a relative ``data.root`` is resolved as
    :func:`_stored_paths` says."""
    run_dir = _run_dir_of(json_path)
    cfg_file = run_dir / "config.yaml"
    if cfg_file.is_file():
        return _stored_paths(load_config(cfg_file), run_dir, cfg_file)
    saved = (meta.get("state") or {}).get("config")
    if not saved:
        raise ValueError(f"{json_path}: no config.yaml next to it and no config inside it")
    try:
        cfg = config_from_dict(saved)
    except ValueError as exc:
        raise ValueError(f"{json_path}: embedded config: {exc}") from None
    return _stored_paths(cfg, run_dir, json_path)


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | None = None,
    batch_size: int | None = None,
) -> EvalResult:
    """Rebuild the model of a run (its resolved ``config.yaml``, else the config inside the
    checkpoint), load the checkpoint (newest in a run folder) and evaluate on the test set.

    A checkpoint with non-finite tensors is refused (``ValueError`` naming the file), and so is
    a non-finite ``main`` or ``loss`` metric. Given a run folder that a training process is
    rotating checkpoints in, a checkpoint deleted between finding and reading it is looked up
    again (a few times)."""
    for attempt in range(5):
        json_path = resolve_checkpoint(path)
        try:
            meta = read_checkpoint_json(json_path)
            cfg = config_for_checkpoint(json_path, meta)
            if batch_size is not None:
                cfg = replace(cfg, train=replace(cfg.train, eval_batch_size=batch_size))
            dev = resolve_device(device or cfg.train.device)
            seed_everything(cfg.train.seed)
            task, model = build_model(cfg)
            load_checkpoint(json_path, model)
            break
        except (FileNotFoundError, ValueError):
            pruned = Path(path).is_dir() and not json_path.exists()
            if not pruned or attempt == 4:
                raise
    _, test_ds = task.build_datasets(cfg)
    model.to(dev)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = _eval_loader(task, cfg, test_ds, dev)
    metrics = evaluate_model(task, model, loader, device=dev, amp=cfg.train.amp)
    for key in ("main", "loss"):
        if key in metrics and not math.isfinite(metrics[key]):
            raise ValueError(f"{json_path}: evaluation gave {key}={metrics[key]} (non-finite); "
                             "the weights do not produce usable outputs")
    iteration = (meta.get("state") or {}).get("iteration")
    return EvalResult(metrics, json_path, iteration, cfg)
