"""Experiment configs: YAML files to validated dataclasses, and back.

This is the one place that parses YAML (``read_yaml``); everything else receives dataclasses.
A config file has the sections of :class:`ExperimentConfig`::

    model: {name: digits-cnn, task: classify-digits, num_classes: 10, kwargs: {width: 16}}
    data: {kind: sklearn-digits}
    optim: {lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 1.0e-4,
            warmup_iters: 20, schedule: cosine}
    train: {epochs: 5, batch_size: 64, eval_interval: 1, seed: 0}
    quant: {...}     # optional; any lowbit.nn.Recipe.from_dict mapping
    init: null       # optional warm-start checkpoint (.safetensors / .json / run folder)

``load_config(path, ["optim.lr=0.05", "train.epochs=2"])`` applies dotted overrides whose values
are parsed as YAML scalars (``1e-3`` and other numbers written without a dot are read as
numbers where the field wants one). Every validation error is a ``ValueError`` naming the
dotted key and the offending value; :func:`load_config` adds the file and the line of the key
(``configs/x.yaml:14: config optim.lr=-1.0: must be > 0``) or the ``--set`` item that set it.
Any input, however broken, loads or raises ``ValueError`` (never another exception, never a
hang): invalid YAML or non-UTF-8 text name the file and line, recursive aliases and alias
bombs (more than :data:`MAX_NODES` nodes once expanded) are refused, non-finite numbers too.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lowbit._files import write_atomic

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "ExperimentConfig",
    "read_yaml",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "apply_overrides",
    "config_hash",
    "DATA_KINDS",
    "ConfigError",
    "MAX_NODES",
]

DATA_KINDS: tuple[str, ...] = ("voc", "coco", "digits", "sklearn-digits")
_ROOTLESS_KINDS = ("sklearn-digits",)
MAX_NODES = 1_000_000  # values in a config once YAML aliases are expanded


class ConfigError(ValueError):
    """A config value is wrong; ``key`` is its dotted name (``optim.lr``, ``milestones[1]``)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"config {key}={_short(value)}: {why}", key)


@dataclass
class ModelConfig:
    """Which network to build.

    ``name`` is looked up by the task (e.g. ``digits-cnn``; detectors by the detection
    registry). ``task`` names the training task (``lowbit.train.tasks``); when ``None`` the
    task that claims ``name`` is used. ``kwargs`` go to the model builder unchanged.
    """

    name: str
    task: str | None = None
    num_classes: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise _fail("model.name", self.name, "must be a non-empty string")
        if self.num_classes is not None and self.num_classes < 1:
            raise _fail("model.num_classes", self.num_classes, "must be >= 1")


@dataclass
class DataConfig:
    """Which data set. ``root`` is required for on-disk kinds (voc, coco, digits devkit).

    ``image_size`` is the network input side in pixels (``None``: the task's default);
    ``kwargs`` go to the task's dataset builder unchanged.
    """

    kind: str = "sklearn-digits"
    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    image_size: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise _fail("data.kind", self.kind, f"must be one of {', '.join(DATA_KINDS)}")
        if self.root is None and self.kind not in _ROOTLESS_KINDS:
            raise _fail("data.root", self.root, f"is required for data.kind={self.kind!r}")
        if self.image_size is not None and self.image_size < 1:
            raise _fail("data.image_size", self.image_size, "must be >= 1")


@dataclass
class OptimConfig:
    """SGD (Nesterov momentum by default, as the LBW-Net paper) and its LR schedule.

    The learning rate at iteration ``i`` (0-based, counted over the whole run) is
    ``lr * warmup(i) * decay(i)``: ``warmup`` rises linearly from ``warmup_factor`` to 1 over
    ``warmup_iters``; ``decay`` is ``gamma ** (number of milestones <= i)`` for ``step`` or a
    half cosine from 1 to ``min_lr / lr`` over the run for ``cosine``. ``milestones`` are in
    ``milestone_unit`` (epochs or iterations; fractional epochs allowed).
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    schedule: Literal["step", "cosine"] = "step"
    milestones: list[float] = field(default_factory=list)
    milestone_unit: Literal["epoch", "iter"] = "epoch"
    gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise _fail("optim.lr", self.lr, "must be > 0")
        if not 0 <= self.momentum < 1:
            raise _fail("optim.momentum", self.momentum, "must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise _fail("optim.nesterov", self.nesterov, "Nesterov needs optim.momentum > 0")
        if self.weight_decay < 0:
            raise _fail("optim.weight_decay", self.weight_decay, "must be >= 0")
        if self.warmup_iters < 0:
            raise _fail("optim.warmup_iters", self.warmup_iters, "must be >= 0")
        if not 0 < self.warmup_factor <= 1:
            raise _fail("optim.warmup_factor", self.warmup_factor, "must be in (0, 1]")
        if self.schedule not in ("step", "cosine"):
            raise _fail("optim.schedule", self.schedule, "must be 'step' or 'cosine'")
        if self.milestone_unit not in ("epoch", "iter"):
            raise _fail("optim.milestone_unit", self.milestone_unit, "must be 'epoch' or 'iter'")
        if any(m < 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise _fail("optim.milestones", self.milestones, "must be non-negative, ascending")
        if not 0 < self.gamma <= 1:
            raise _fail("optim.gamma", self.gamma, "must be in (0, 1]")
        if not 0 <= self.min_lr <= self.lr:
            raise _fail("optim.min_lr", self.min_lr, "must be in [0, optim.lr]")


@dataclass
class TrainConfig:
    """The loop. Intervals: ``eval_interval`` in epochs (0: only at the end), ``log_every`` and
    ``checkpoint_every`` in iterations (``checkpoint_every=0``: only at epoch ends and the end).

    ``batch_size`` is the *global* batch: under ``torchrun`` each of the N processes gets
    ``batch_size / N``. ``iterations``, when set, replaces ``epochs`` as the run length (the
    schedule spans it). ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda``,
    ``cuda:N``. ``amp``: autocast (float16 + GradScaler on CUDA, bfloat16 on CPU).
    ``sync_bn``: convert BatchNorm to SyncBatchNorm under multi-process CUDA training
    (SyncBatchNorm has no CPU kernel: on CPU each process normalises its own slice).
    ``quant_penalty``: lambda of the clipping paper's (002) extra loss term
    :func:`lowbit.nn.quant_penalty` added to every training loss (0: off; needs a ``quant``
    recipe); logged as ``loss_quant``. ``qn_t0`` and ``qn_phases``: Quantization Networks'
    temperature slope per epoch and training phases (``[[weights|activations|both, epochs],
    ...]``, fractional epochs allowed; null: one ``both`` phase), applied by the engine to
    every QN quantizer before each step (:class:`lowbit.train.quant_schedule.QuantClock`,
    which also steps INQ's frozen portions over the run). ``channels_last``: keep the
    model's 4-D parameters in the channels-last memory format (NHWC), for training,
    evaluation and :func:`lowbit.runs.load_run`; oneDNN's CPU convolutions then skip their
    layout reorders: an FP32 training step of the demo's R-FCN took 0.70x the time at 1
    thread on the idle machine, while an ``lbw-exact`` QAT step did not gain (1.03x), measured
    in one process by ``benchmarks/bench_channels_last.py`` (docs/benchmarks.md). Results
    equal the default layout's up to float rounding; checkpoints are stored contiguous either
    way.
    ``final_eval``: evaluate on the test set after the last iteration (False: the run ends
    with its final checkpoint and ``result.json`` holds the last evaluation made, if any; for
    callers that score the model themselves, as the demo does while writing its detections).
    """

    epochs: int = 1
    batch_size: int = 64
    eval_batch_size: int | None = None
    iterations: int | None = None
    eval_interval: int = 1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    amp: bool = False
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    clip_grad_norm: float | None = None
    sync_bn: bool = True
    tensorboard: bool = False
    quant_penalty: float = 0.0
    channels_last: bool = False
    final_eval: bool = True
    qn_t0: float = 20.0
    qn_phases: list[list[Any]] | None = None

    def __post_init__(self) -> None:
        from lowbit.nn.training import QNSchedule

        try:
            QNSchedule(t0=self.qn_t0, phases=self.qn_phases)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
            raise _fail("train.qn_t0/qn_phases", (self.qn_t0, self.qn_phases), str(exc)) from None
        if not (math.isfinite(self.quant_penalty) and self.quant_penalty >= 0):
            raise _fail("train.quant_penalty", self.quant_penalty, "must be a finite value >= 0")
        for key in ("epochs", "batch_size", "log_every"):
            if getattr(self, key) < 1:
                raise _fail(f"train.{key}", getattr(self, key), "must be >= 1")
        for key in ("eval_interval", "num_workers", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, key) < 0:
                raise _fail(f"train.{key}", getattr(self, key), "must be >= 0")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise _fail("train.eval_batch_size", self.eval_batch_size, "must be >= 1")
        if self.iterations is not None and self.iterations < 1:
            raise _fail("train.iterations", self.iterations, "must be >= 1")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise _fail("train.clip_grad_norm", self.clip_grad_norm, "must be > 0")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise _fail("train.device", dev, "must be auto, cpu, cuda or cuda:N")


@dataclass
class ExperimentConfig:
    """A whole experiment. ``quant`` is a plain mapping for ``lowbit.nn.Recipe.from_dict``
    (``None``: train in float). ``init`` is a warm-start checkpoint path (``None``: scratch)."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: dict[str, Any] | None = None
    init: str | None = None

    def __post_init__(self) -> None:
        if self.quant is not None and not isinstance(self.quant, dict):
            raise _fail("quant", self.quant, "must be a mapping or null")
        if self.train.quant_penalty > 0 and self.quant is None:
            raise _fail("train.quant_penalty", self.train.quant_penalty,
                        "needs a quant recipe (the term measures the distance to Q(W))")


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, tp


def _number(key: str, value: Any, want: type) -> Any:
    """Coerce YAML scalars to ``want`` (int or float): YAML 1.1 reads ``1e-3`` as a string."""
    if isinstance(value, bool):
        raise _fail(key, value, f"expected {want.__name__}, got a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(key, value, f"expected {want.__name__}") from None
    if not isinstance(value, (int, float)):
        raise _fail(key, value, f"expected {want.__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(key, value, "must be a finite number")
    if want is int:
        if isinstance(value, float) and not value.is_integer():
            raise _fail(key, value, "expected an integer")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise _fail(key, value, "is too large for a float") from None


def _check(key: str, value: Any, tp: Any) -> Any:
    """Check/coerce ``value`` against annotation ``tp``; raise naming ``key``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise _fail(key, value, "may not be null")
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(repr, typing.get_args(tp)))
            raise _fail(key, value, f"must be one of {choices}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, value, "expected true or false")
        return value
    if tp in (int, float):
        return _number(key, value, tp)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise _fail(key, value, "expected a string")
        return str(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, "expected a list")
        return [_check(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(key, value, "expected a mapping")
        return copy.deepcopy(dict(value))
    raise TypeError(f"config {key}: unsupported annotation {tp!r}")  # programming error


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise _fail(prefix or "<top>", raw, "expected a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((k for k in raw if k not in names), key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"config {where}{_short(unknown[0], 60)}: unknown key (known in "
            f"{prefix or 'top level'}: {', '.join(names)})", f"{where}{unknown[0]}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            kwargs[f.name] = _check(key, raw[f.name], hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config {key}: required key is missing", prefix)
    return cls(**kwargs)


def _check_size(raw: Any) -> None:
    """Refuse recursive structures (``&a [*a]``) and more than :data:`MAX_NODES` values once
    shared (aliased) parts are counted every time they appear; linear in the distinct nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(raw, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        nid = id(node)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) \
            else list(node)
        if done:
            on_path.discard(nid)
            total = 1 + sum(sizes.get(id(c), 1) if isinstance(c, (dict, list, tuple)) else 1
                            for c in children)
            if total > MAX_NODES:
                raise ConfigError(f"config: more than {MAX_NODES} values once YAML aliases are "
                                  "expanded (an alias bomb?)")
            sizes[nid] = total
            continue
        if nid in sizes:
            continue
        if nid in on_path:
            raise ConfigError("config: a recursive YAML alias (a value contains itself)")
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in children)


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from plain (YAML-loaded) data."""
    _check_size(raw)
    return _build(ExperimentConfig, raw, "")


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain-data form (JSON/YAML-safe) of ``cfg``; ``config_from_dict`` inverts it."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: ExperimentConfig | dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a config."""
    data = config_to_dict(cfg) if isinstance(cfg, ExperimentConfig) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# YAML: the one place


def _yaml_error(p: Path | str, exc: Exception, text: str) -> ValueError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        pos = int(exc.position)
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return ValueError(f"{p}:{line}:{col}: invalid YAML: character {exc.character!r} "
                          f"({exc.reason})")
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0]
    if mark is not None:
        return ValueError(f"{p}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}")
    return ValueError(f"{p}: invalid YAML: {problem or type(exc).__name__}")


def _parse_yaml(text: str, p: Path | str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(p, exc, text) from None
    except RecursionError:
        raise ValueError(f"{p}: invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. a timestamp out of range
        raise ValueError(f"{p}: invalid YAML value: {exc}") from None


def _read_text(p: Path) -> str:
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ValueError(f"{p}: cannot read ({exc.strerror or exc})") from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file with ``yaml.safe_load``; errors name the file (and line)."""
    p = Path(path)
    return _parse_yaml(_read_text(p), p)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError, TypeError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.sub=value`` overrides applied.

    Values are YAML (``true``, ``0.5``, ``[30, 40]``, ``null``); missing intermediate mappings
    are created, so ``quant.bits=4`` works when ``quant`` was absent.
    """
    _check_size(raw)
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {_short(item)}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ValueError(f"--set {_short(item)}: bad key {_short(key)}")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"--set {_short(item)}: {where} is not a mapping "
                                 f"({_short(nxt)})")
            node = nxt
        node[parts[-1]] = _parse_scalar(text)
    return out


def _key_line(text: str, key: str) -> int | None:
    """1-based line of dotted ``key`` (``a.b[2].c``) in YAML ``text``, as deep as it exists."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    line = None
    for part in key.replace("[", ".[").split("."):
        if not part or node is None:
            continue
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            try:
                node = node.value[int(part[1:-1])]
            except (ValueError, IndexError):
                break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                break
        else:
            break
        line = node.start_mark.line + 1 if part.startswith("[") else line
    return line


def _set_by(key: str, overrides: list[str] | tuple[str, ...]) -> str | None:
    """The last ``--set`` item that set ``key`` or a mapping above it."""
    base = key.split("[")[0]
    for item in reversed(overrides):
        k = item.split("=", 1)[0].strip()
        if k and (base == k or base.startswith(k + ".") or k.startswith(base + ".")):
            return item
    return None


BASE_KEY = "_base_"
_MAX_BASE_DEPTH = 16


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key (recursively), anything else in
    ``child`` (lists included) replaces the base's value."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_bases(raw: Any, p: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The mapping of config file ``p`` (parsed as ``raw``) with its ``_base_`` files merged
    under it. ``_base_``: a path or a list of paths, relative to ``p``'s folder, merged in
    order (later ones win), each resolved the same way. Errors name the file: a missing base,
    a cycle, a non-mapping top level, a bad ``_base_`` value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    if BASE_KEY not in raw:
        return raw
    if len(chain) >= _MAX_BASE_DEPTH:
        raise ValueError(f"{p}: {BASE_KEY} chain deeper than {_MAX_BASE_DEPTH} files")
    bases = raw[BASE_KEY]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(
            isinstance(b, str) and b for b in bases):
        raise ValueError(f"{p}: {BASE_KEY} must be a file path or a list of them, got {bases!r}")
    merged: dict[str, Any] = {}
    here = chain + (p.resolve(),)
    for b in bases:
        if "\x00" in b:
            raise ValueError(f"{p}: {BASE_KEY} path contains a NUL character")
        bp = p.parent / b
        try:
            bp_real = bp.resolve()
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{p}: {BASE_KEY} {b!r}: {exc}") from None
        if bp_real in here:
            raise ValueError(f"{p}: {BASE_KEY} {b!r} makes a cycle "
                             f"({' -> '.join(x.name for x in here + (bp_real,))})")
        try:
            btext = _read_text(bp)
        except FileNotFoundError:
            raise ValueError(f"{p}: {BASE_KEY} file {b!r} not found (looked at {bp})") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p}: {BASE_KEY} {b!r}: {exc}") from None
        merged = _merge(merged, _resolve_bases(_parse_yaml(btext, bp), bp, here))
    child = {k: v for k, v in raw.items() if k != BASE_KEY}
    return _merge(merged, child)


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Read a YAML experiment file (with its ``_base_`` files merged under it: see
    :func:`_resolve_bases`), apply ``--set`` overrides, validate.

    Every error is a ``ValueError`` naming the file, and the line of the offending key (or the
    ``--set`` item that gave it)."""
    p = Path(path)
    text = _read_text(p)
    raw = _resolve_bases(_parse_yaml(text, p), p, ())
    try:
        return config_from_dict(apply_overrides(raw, overrides))
    except ConfigError as exc:
        item = _set_by(exc.key, overrides) if exc.key else None
        if item is not None:
            raise ValueError(f"{path}: --set {_short(item)}: {exc}") from None
        line = _key_line(text, exc.key) if exc.key else None
        raise ValueError(f"{path}:{line}: {exc}" if line else f"{path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML to ``path`` atomically (temp file + rename); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    write_atomic(p, text.encode("utf-8"))
    return p
