"""VGG-16 backbone with torchvision's module names (``features.N``, ``classifier.N``).

``features`` is torchvision's ``nn.Sequential`` for configuration "D" without batch norm, so
the conv layers sit at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 (ReLU after
each, max pools at 4, 9, 16, 23, 30) and a local ImageNet state_dict loads with
``strict=True`` (``classifier.*`` is skipped when the backbone has no head).

Stages are named by their conv block: ``conv1`` ... ``conv5`` is the output of the last ReLU
of the block (before its pool), strides 1, 2, 4, 8, 16. ``conv5`` at stride 16 is the Faster
R-CNN feature map (the last pool, index 30, is kept as a module but not run without a head).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lowbit.detection.backbones.common import freeze_modules, with_weights

__all__ = ["VGG", "vgg16"]

CFG_D: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
VGG_STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")


class VGG(nn.Module):
    """VGG trunk (``features``) with an optional torchvision classifier.

    Args:
        cfg: torchvision-style layer list (ints: 3x3 conv channels, ``"M"``: 2x2 max pool).
        width: channel multiplier; conv ``c`` gets ``round(c * width)`` channels and the
            classifier's hidden layers ``round(4096 * width)``.
        num_classes: ``None`` (default): no ``avgpool``/``classifier``; an int adds them and
            :meth:`forward` returns logits.
        return_layers: stages returned by :meth:`forward_features` (``conv1`` ... ``conv5``).
        freeze_at: freeze the first ``n`` conv blocks (``0 <= n <= 5``).

    Attributes:
        out_channels, strides: per stage; ``head_prefixes = ("classifier.",)``.
    """

    head_prefixes = ("classifier.",)

    def __init__(
        self,
        cfg: Sequence[int | str] = CFG_D,
        width: float = 1.0,
        num_classes: int | None = None,
        return_layers: Sequence[str] = ("conv5",),
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in [0, 5], got {freeze_at}")
        bad = [name for name in return_layers if name not in VGG_STAGES]
        if bad or not return_layers:
            raise ValueError(f"return_layers must be a non-empty subset of {VGG_STAGES}, got {bad}")
        layers: list[nn.Module] = []
        in_ch = 3
        # Index (into features) of the last ReLU of each block, and the block channels.
        self._stage_end: dict[str, int] = {}
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        block, stride = 0, 1
        for v in cfg:
            if v == "M":
                name = VGG_STAGES[block]
                self._stage_end[name] = len(layers) - 1
                self.out_channels[name] = in_ch
                self.strides[name] = stride
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                block += 1
                stride *= 2
            else:
                out_ch = max(1, round(int(v) * width))
                layers += [
                    nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                ]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        if num_classes is not None:
            hidden = max(1, round(4096 * width))
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(in_ch * 7 * 7, hidden),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(hidden, hidden),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.avgpool = None
            self.classifier = None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

        self.return_layers: tuple[str, ...] = tuple(s for s in VGG_STAGES if s in return_layers)
        self.freeze_at = freeze_at
        if freeze_at:
            end = self._stage_end[VGG_STAGES[freeze_at - 1]]
            freeze_modules([self.features[: end + 1]])

    def forward_features(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``Tensor[N, 3, H, W]`` → ``OrderedDict`` of the ``return_layers`` maps."""
        ends = {self._stage_end[s]: s for s in self.return_layers}
        last = max(ends)
        out: OrderedDict[str, Tensor] = OrderedDict()
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in ends:
                out[ends[i]] = x
            if i == last:
                break
        return out

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor] | Tensor:
        """Without a head: :meth:`forward_features`. With one: logits ``Tensor[N, classes]``."""
        if self.classifier is None:
            return self.forward_features(x)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(
    width: float = 1.0, weights: str | os.PathLike | Mapping[str, Tensor] | None = None, **kwargs
) -> VGG:
    """VGG-16 (configuration "D", no batch norm). ``weights``: local torchvision-layout
    state_dict or file, loaded strictly. Other keywords: :class:`VGG`."""
    return with_weights(VGG(CFG_D, width=width, **kwargs), weights)
