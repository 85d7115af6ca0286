"""Training tasks: what the generic engine needs to know about a model family.

A task is any object with these members (:class:`Task`)::

    name: str
    build_model(cfg: ExperimentConfig) -> nn.Module          # float model, before quantization
    build_datasets(cfg) -> (train_ds, test_ds)               # map-style torch Datasets
    collate_fn(samples: list) -> batch                       # used by both DataLoaders
    train_step_loss(model, batch) -> (loss: Tensor[], logs: dict[str, float])
    evaluate(model, loader) -> dict[str, float]              # must contain "main"

and optionally::

    model_names: tuple[str, ...]       # model.name values it claims when model.task is unset
    to_device(batch, device) -> batch  # default: move every tensor in nested lists/dicts
    batch_size_of(batch) -> int        # images in a batch (img/s); default: len(batch[0])

``train_step_loss`` receives the model in train mode (wrapped in DistributedDataParallel under
torchrun: call it, don't reach into it) and a batch already on the device. ``evaluate``
receives the unwrapped model in eval mode under ``torch.no_grad()`` and a loader over the whole
test set; higher ``"main"`` is better.

Register with ``@register_task("name")`` on a class (instantiated without arguments) or a
zero-argument factory. ``get_task("pkg.module:Attr")`` imports a task that lives outside lowbit.
The built-in tasks (``classify-digits``, ``detect``) live in :mod:`lowbit.tasks`, the layer above
``lowbit.train`` and ``lowbit.detection``; they register themselves with the decorator when
that package is imported, which the registry does (by name, once) before its first lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn
from torch.utils.data import Dataset

from lowbit.config import ExperimentConfig, ModelConfig
from lowbit.registry import Registry, unknown_name

__all__ = [
    "Task",
    "register_task",
    "get_task",
    "list_tasks",
    "task_for_model",
    "to_device",
    "batch_size_of",
]

_BUILTIN_MODULES: tuple[str, ...] = ("lowbit.tasks",)
_REGISTRY: Registry[Callable[[], Any]] = Registry("task")
_builtins_loaded = False

T = TypeVar("T")


@runtime_checkable
class Task(Protocol):
    """The interface the engine trains through (see the module docstring)."""

    name: str

    def build_model(self, cfg: ExperimentConfig) -> nn.Module:
        """The float network for ``cfg.model``."""
        ...

    def build_datasets(self, cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
        """``(train, test)`` for ``cfg.data``."""
        ...

    def collate_fn(self, samples: list[Any]) -> Any:
        """Stack samples into a batch."""
        ...

    def train_step_loss(
        self, model: nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and float logs for one batch."""
        ...

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """Metrics on the test loader, including ``"main"``."""
        ...


def register_task(name: str) -> Callable[[T], T]:
    """Decorator registering a task class/factory under ``name``.

    Raises ValueError for a name that is not a non-empty ``str`` (at once) or that is already
    registered (when the decorator is applied)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name must be a non-empty str, got {name!r}")

    def deco(factory: T) -> T:
        _REGISTRY.register(name, factory)  # type: ignore[arg-type]
        return factory

    return deco


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    _load_builtins()
    return _REGISTRY.names()


def get_task(name: str) -> Any:
    """A fresh instance of task ``name`` (or of ``"pkg.module:Attr"``).

    Raises ValueError naming ``name`` and every registered task (:func:`list_tasks`) when
    ``name`` is not registered (or not a str), naming the import error when a
    ``"pkg.module:Attr"`` cannot be imported, and naming the missing methods when the object
    built is not a task."""
    _load_builtins()
    if isinstance(name, str) and name in _REGISTRY:
        factory = _REGISTRY.get(name)
    elif isinstance(name, str) and ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"model.task={name!r}: cannot import ({exc})") from None
    else:
        raise ValueError(f"model.task={name!r}: {unknown_name('task', name, list_tasks())}")
    task = factory()
    missing = [m for m in ("build_model", "build_datasets", "collate_fn", "train_step_loss",
                           "evaluate") if not callable(getattr(task, m, None))]
    if missing:
        raise ValueError(f"task {name!r} lacks {', '.join(missing)}")
    return task


def task_for_model(model_cfg: ModelConfig) -> Any:
    """The task named by ``model.task``, else the one whose ``model_names`` has ``model.name``."""
    if model_cfg.task:
        return get_task(model_cfg.task)
    for name in list_tasks():
        task = get_task(name)
        if model_cfg.name in getattr(task, "model_names", ()):
            return task
    raise ValueError(
        f"model.name={model_cfg.name!r}: no task claims this model; set model.task "
        f"(known tasks: {', '.join(list_tasks())})"
    )


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested lists/tuples/dicts to ``device`` (others untouched)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: a tensor's first dim, or ``len`` of the first element."""
    first = batch[0] if isinstance(batch, Sequence) and not isinstance(batch, str) else batch
    if isinstance(first, torch.Tensor):
        return int(first.shape[0]) if first.dim() else 1
    try:
        return len(first)
    except TypeError:
        return 1
