"""Detector registry: ``create_model(name, num_classes, **kw)`` and ``list_models()``.

Entries are small functions ``fn(num_classes, **kw) -> nn.Module`` registered with
:func:`register_model` (timm's pattern: tiny registered entry points over one builder). The
built-in entries live in :mod:`lowbit.detection.models` and are imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from torch import nn

from lowbit.registry import Registry

__all__ = ["create_model", "list_models", "model_size_option", "register_model"]

ModelFn = Callable[..., nn.Module]
_MODELS: Registry[ModelFn] = Registry("detection model")
_SIZE_OPTIONS: dict[str, str | None] = {}
# Modules whose import registers the built-in entries (those present in this checkout).
_BUILTINS = (
    "lowbit.detection.models",
    "lowbit.detection.models.ssd",
    "lowbit.detection.models.yolov3",
)


def register_model(
    name: str, size_option: str | None = "min_size"
) -> Callable[[ModelFn], ModelFn]:
    """Decorator adding ``fn`` under ``name``; raises ``ValueError`` on a duplicate name.

    Args:
        name: the registry name.
        size_option: the keyword of ``fn`` that sets the input size from one number (a
            config's ``data.image_size``): ``"min_size"`` (shorter side, the two-stage
            detectors), ``"image_size"`` (fixed square input, SSD / YOLOv3), or ``None`` (no
            such keyword). Read back with :func:`model_size_option`.
    """

    def deco(fn: ModelFn) -> ModelFn:
        _MODELS.register(name, fn)  # ValueError on a duplicate or a non-str name
        _SIZE_OPTIONS[name] = size_option
        return fn

    return deco


def model_size_option(name: str) -> str | None:
    """The keyword of the registered model ``name`` that one input-size number sets (see
    :func:`register_model`); raises ``ValueError`` for an unknown name."""
    _load_builtins()
    _MODELS.get(name)  # ValueError listing the known names
    return _SIZE_OPTIONS[name]


def _load_builtins() -> None:
    for mod in _BUILTINS:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered detector ``name`` for ``num_classes`` foreground classes.

    Keywords override the preset's fields (see :class:`~lowbit.detection.models.RFCNConfig`,
    :class:`~lowbit.detection.models.FasterRCNNConfig`); an unknown name or keyword raises
    ``ValueError`` listing the valid ones.
    """
    _load_builtins()
    return _MODELS.get(name)(num_classes, **kwargs)


def list_models() -> list[str]:
    """Registered detector names, sorted."""
    _load_builtins()
    return _MODELS.names()
