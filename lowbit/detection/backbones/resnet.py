"""ResNet-18/34/50/101 backbones with torchvision's module names.

Every parameter and buffer has the name it has in ``torchvision.models.resnet*``
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``, ...), so a local
ImageNet state_dict loads with ``strict=True`` (:func:`load_backbone_weights` skips ``fc.*``
when the backbone has no head). The blocks are torchvision's v1.5: the stride of a Bottleneck
is on its 3x3 conv.

Options beyond torchvision:

* ``width``: channel multiplier for CPU-sized runs; stage ``i`` has ``round(64 * 2**i * width)``
  planes (0.25 gives 16/32/64/128, times 4 at the output of Bottleneck stages). Names are
  unchanged, shapes shrink.
* ``dilate_layer4``: R-FCN's trick, layer4 with stride 1 and dilation 2 so the last stage
  stays at stride 16. As in torchvision's ``replace_stride_with_dilation`` the first block of
  the dilated stage keeps dilation 1 in its 3x3 conv(s); the other blocks use 2.
  (Supported for BasicBlock too, which torchvision refuses.)
* ``norm="frozen_bn"`` uses :class:`FrozenBatchNorm2d` everywhere; ``freeze_at=n`` freezes the
  first ``n`` of (stem, layer1, layer2, layer3, layer4): no gradients, frozen batch norm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from torch import Tensor, nn

from lowbit.detection.backbones.common import (
    FrozenBatchNorm2d,
    StagedBackbone,
    convert_frozen_batchnorm,
    freeze_modules,
    with_weights,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]

STAGES = ("layer1", "layer2", "layer3", "layer4")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


NormLayer = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Names: conv1, bn1, conv2, bn2, downsample."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (strided) → 1x1 (ResNet-50/101). Names: conv1..3, bn1..3, downsample."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(StagedBackbone):
    """ResNet trunk, optionally with torchvision's classification head.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        width: channel multiplier (see the module docstring).
        num_classes: ``None`` (default) builds a detection backbone without ``avgpool``/``fc``;
            an int adds them, and :meth:`forward` then returns logits ``Tensor[N, classes]``.
        return_layers: stages returned by :meth:`forward_features`, any of ``layer1..layer4``.
        norm: ``"bn"`` (BatchNorm2d) or ``"frozen_bn"`` (:class:`FrozenBatchNorm2d`).
        freeze_at: freeze the first ``n`` of (stem, layer1, ..., layer4), ``0 <= n <= 5``.
        dilate_layer4: layer4 with stride 1, dilation 2 (output stride 16 instead of 32).

    Attributes:
        out_channels: ``{"stem": C, "layer1": C1, ..., "layer4": C4}`` channels per stage.
        strides: ``{"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32 or 16}``.
        return_layers: the stages :meth:`forward_features` returns, in network order.
        head_prefixes: ``("fc.",)``, the state_dict keys of the classification head.
    """

    head_prefixes = ("fc.",)
    stage_names = STAGES

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        width: float = 1.0,
        num_classes: int | None = None,
        return_layers: Sequence[str] = ("layer4",),
        norm: Literal["bn", "frozen_bn"] = "bn",
        freeze_at: int = 0,
        dilate_layer4: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries, got {layers}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if norm not in ("bn", "frozen_bn"):
            raise ValueError(f"norm must be 'bn' or 'frozen_bn', got {norm!r}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in [0, 5], got {freeze_at}")
        bad = [name for name in return_layers if name not in STAGES]
        if bad or not return_layers:
            raise ValueError(f"return_layers must be a non-empty subset of {STAGES}, got {bad}")
        norm_layer: NormLayer = nn.BatchNorm2d if norm == "bn" else FrozenBatchNorm2d
        planes = [max(1, round(64 * 2**i * width)) for i in range(4)]
        self._norm_layer = norm_layer
        self.inplanes = planes[0]
        self.dilation = 1

        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2, dilate=dilate_layer4)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        else:
            self.avgpool = None
            self.fc = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        self.out_channels: dict[str, int] = {"stem": planes[0]}
        self.out_channels.update({name: p * block.expansion for name, p in zip(STAGES, planes)})
        self.strides: dict[str, int] = {
            "stem": 4,
            "layer1": 4,
            "layer2": 8,
            "layer3": 16,
            "layer4": 16 if dilate_layer4 else 32,
        }
        self.return_layers: tuple[str, ...] = tuple(s for s in STAGES if s in return_layers)
        self.freeze_at = freeze_at
        if freeze_at >= 1:
            self.conv1.weight.requires_grad_(False)
            self.bn1 = convert_frozen_batchnorm(self.bn1)
        freeze_modules(getattr(self, s) for s in STAGES[: max(freeze_at - 1, 0)])

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        norm_layer = self._norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(self.inplanes, planes, dilation=self.dilation, norm_layer=norm_layer)
            )
        return nn.Sequential(*layers)

    def forward_stem(self, x: Tensor) -> Tensor:
        """``conv1`` → ``bn1`` → ``relu`` → ``maxpool`` (stride 4); the stages, ``forward``
        and ``forward_features`` come from
        :class:`~lowbit.detection.backbones.common.StagedBackbone`."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def _build(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    width: float,
    weights: str | os.PathLike | Mapping[str, Tensor] | None,
    kwargs: dict,
) -> ResNet:
    return with_weights(ResNet(block, layers, width=width, **kwargs), weights)


def resnet18(
    width: float = 1.0, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2). ``weights``: local torchvision-layout state_dict or
    file, loaded strictly (``fc.*`` skipped without a head). Other keywords: :class:`ResNet`."""
    return _build(BasicBlock, (2, 2, 2, 2), width, weights, kwargs)


def resnet34(
    width: float = 1.0, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3); arguments as :func:`resnet18`."""
    return _build(BasicBlock, (3, 4, 6, 3), width, weights, kwargs)


def resnet50(
    width: float = 1.0, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); arguments as :func:`resnet18`."""
    return _build(Bottleneck, (3, 4, 6, 3), width, weights, kwargs)


def resnet101(
    width: float = 1.0, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> ResNet:
    """ResNet-101 (Bottleneck, 3-4-23-3); arguments as :func:`resnet18`."""
    return _build(Bottleneck, (3, 4, 23, 3), width, weights, kwargs)
