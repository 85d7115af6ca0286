"""Backbones with torchvision's module names: ResNet-18/34/50/101 and VGG-16; Darknet-53
(YOLOv3, lowbit's own names, see :mod:`lowbit.detection.backbones.darknet`).

A user's local ImageNet state_dict (torchvision layout, ``.pth`` or ``.safetensors``) loads
with ``strict=True`` via the ``weights=`` argument or :func:`load_backbone_weights`; nothing is
downloaded.
"""

from collections.abc import Callable
from typing import Any

from torch import nn

from lowbit.detection.backbones.common import (
    FrozenBatchNorm2d,
    LoadResult,
    convert_frozen_batchnorm,
    freeze_modules,
    load_backbone_weights,
    read_state_dict,
)
from lowbit.detection.backbones.darknet import Darknet, darknet53, darknet_tiny
from lowbit.detection.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from lowbit.detection.backbones.vgg import VGG, vgg16
from lowbit.registry import unknown_name

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "vgg16": vgg16,
    "darknet53": darknet53,
    "darknet_tiny": darknet_tiny,
}


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a backbone by name (``list_backbones()``); keywords go to its constructor.
    ValueError listing the known names for an unknown one."""
    if name not in BACKBONES:
        raise unknown_name("backbone", name, BACKBONES)
    return BACKBONES[name](**kwargs)


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(BACKBONES)


__all__ = [
    "BACKBONES",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "Darknet",
    "FrozenBatchNorm2d",
    "LoadResult",
    "ResNet",
    "convert_frozen_batchnorm",
    "create_backbone",
    "darknet53",
    "darknet_tiny",
    "freeze_modules",
    "list_backbones",
    "load_backbone_weights",
    "read_state_dict",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vgg16",
]
