"""Darknet-53 (YOLOv3's backbone) and slimmer variants.

Layout (Redmon & Farhadi 2018, table 1), every conv followed by batch norm and LeakyReLU(0.1)::

    conv1     3x3, 32                                   stride 1
    layer1    3x3/2, 64   + 1 x residual(32 -> 64)      stride 2
    layer2    3x3/2, 128  + 2 x residual(64 -> 128)     stride 4
    layer3    3x3/2, 256  + 8 x residual(128 -> 256)    stride 8   (YOLOv3's small-object scale)
    layer4    3x3/2, 512  + 8 x residual(256 -> 512)    stride 16
    layer5    3x3/2, 1024 + 4 x residual(512 -> 1024)   stride 32

A residual block is ``x + conv2(conv1(x))`` with ``conv1`` 1x1 to half the channels and
``conv2`` 3x3 back. Module names follow the ResNet convention of this package
(``conv1``, ``layer3.2.conv1.conv``, ``layer3.2.conv1.bn``; the stride-2 conv opening a stage
is ``layerN.0``, its residual blocks ``layerN.1 ...``); there is no torchvision Darknet, so a
state_dict in this layout (e.g. converted from darknet's ``darknet53.conv.74``) loads with
``strict=True`` through ``weights=``. ``fc.*`` (the optional ImageNet head) is skipped when the
backbone has no head.

Options: ``width`` multiplies every channel count (``round(c * width)``, at least 1) and
``depths`` sets the residual blocks per stage; :func:`darknet_tiny` is width 0.25, depths
``(1, 1, 2, 2, 1)``, the CPU-sized trunk of ``yolov3_tiny_darknet``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

from torch import Tensor, nn

from lowbit.detection.backbones.common import (
    FrozenBatchNorm2d,
    StagedBackbone,
    freeze_modules,
    with_weights,
)

__all__ = ["ConvBNAct", "DarkResidual", "Darknet", "darknet53", "darknet_tiny"]

DARKNET_STAGES = ("layer1", "layer2", "layer3", "layer4", "layer5")
DARKNET53_DEPTHS = (1, 2, 8, 8, 4)


class ConvBNAct(nn.Module):
    """``conv`` (no bias) → ``bn`` → ``act`` (LeakyReLU 0.1); ``padding = kernel // 2``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.bn = norm_layer(out_channels)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DarkResidual(nn.Module):
    """Darknet residual block: ``x + conv2(conv1(x))``, 1x1 to ``channels // 2`` then 3x3."""

    def __init__(self, channels: int, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        mid = max(1, channels // 2)
        self.conv1 = ConvBNAct(channels, mid, 1, norm_layer=norm_layer)
        self.conv2 = ConvBNAct(mid, channels, 3, norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class Darknet(StagedBackbone):
    """Darknet trunk (see the module docstring).

    Args:
        depths: residual blocks per stage, 5 entries (Darknet-53: ``(1, 2, 8, 8, 4)``).
        width: channel multiplier; stage ``i`` (1-based) has ``round(32 * 2**i * width)``
            channels, ``conv1`` ``round(32 * width)``.
        num_classes: ``None`` (default): no head; an int adds ``avgpool`` + ``fc`` and
            :meth:`forward` returns logits ``Tensor[N, classes]``.
        return_layers: stages returned by :meth:`forward_features` (``layer1`` ... ``layer5``).
        norm: ``"bn"`` or ``"frozen_bn"``.
        freeze_at: freeze the first ``n`` of (conv1, layer1, ..., layer5), ``0 <= n <= 6``.

    Attributes:
        out_channels, strides: per stage (``strides = {"conv1": 1, "layer1": 2, ...,
            "layer5": 32}``); ``head_prefixes = ("fc.",)``.
    """

    head_prefixes = ("fc.",)
    stage_names = DARKNET_STAGES

    def __init__(
        self,
        depths: Sequence[int] = DARKNET53_DEPTHS,
        width: float = 1.0,
        num_classes: int | None = None,
        return_layers: Sequence[str] = ("layer3", "layer4", "layer5"),
        norm: Literal["bn", "frozen_bn"] = "bn",
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if len(depths) != 5 or any(int(d) < 0 for d in depths):
            raise ValueError(f"depths must be 5 non-negative ints, got {tuple(depths)}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if norm not in ("bn", "frozen_bn"):
            raise ValueError(f"norm must be 'bn' or 'frozen_bn', got {norm!r}")
        if not 0 <= freeze_at <= 6:
            raise ValueError(f"freeze_at must be in [0, 6], got {freeze_at}")
        bad = [s for s in return_layers if s not in DARKNET_STAGES]
        if bad or not return_layers:
            raise ValueError(
                f"return_layers must be a non-empty subset of {DARKNET_STAGES}, got {bad}"
            )
        norm_layer: type[nn.Module] = nn.BatchNorm2d if norm == "bn" else FrozenBatchNorm2d
        stem = max(1, round(32 * width))
        chans = [max(1, round(32 * 2**i * width)) for i in range(1, 6)]
        self.conv1 = ConvBNAct(3, stem, 3, norm_layer=norm_layer)
        self.out_channels: dict[str, int] = {"conv1": stem}
        self.strides: dict[str, int] = {"conv1": 1}
        in_ch = stem
        for i, (name, c, d) in enumerate(zip(DARKNET_STAGES, chans, depths)):
            blocks: list[nn.Module] = [ConvBNAct(in_ch, c, 3, stride=2, norm_layer=norm_layer)]
            blocks += [DarkResidual(c, norm_layer) for _ in range(int(d))]
            setattr(self, name, nn.Sequential(*blocks))
            self.out_channels[name] = c
            self.strides[name] = 2 ** (i + 1)
            in_ch = c
        if num_classes is not None:
            self.avgpool: nn.Module | None = nn.AdaptiveAvgPool2d((1, 1))
            self.fc: nn.Module | None = nn.Linear(in_ch, num_classes)
        else:
            self.avgpool = None
            self.fc = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.depths = tuple(int(d) for d in depths)
        self.return_layers: tuple[str, ...] = tuple(s for s in DARKNET_STAGES if s in return_layers)
        self.freeze_at = freeze_at
        parts = [self.conv1] + [getattr(self, s) for s in DARKNET_STAGES]
        freeze_modules(parts[:freeze_at])

    def forward_stem(self, x: Tensor) -> Tensor:
        """``conv1`` (stride 1); the stages, ``forward`` and ``forward_features`` come from
        :class:`~lowbit.detection.backbones.common.StagedBackbone`."""
        return self.conv1(x)


def darknet53(
    width: float = 1.0, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> Darknet:
    """Darknet-53 (depths 1-2-8-8-4). ``weights``: local state_dict or file in this module's
    layout, loaded strictly (``fc.*`` skipped without a head). Other keywords: :class:`Darknet`."""
    kwargs.setdefault("depths", DARKNET53_DEPTHS)
    return with_weights(Darknet(width=width, **kwargs), weights)


def darknet_tiny(
    width: float = 0.25, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> Darknet:
    """CPU-sized Darknet: width 0.25 (8-16-32-64-128-256 channels), depths 1-1-2-2-1."""
    kwargs.setdefault("depths", (1, 1, 2, 2, 1))
    return darknet53(width=width, weights=weights, **kwargs)
