"""Small reference models for the ``lowbit bench digits`` / ``lowbit bench qat`` measurements.

(``lowbit.nn`` may not import ``lowbit.detection``, so the ResNet-18-shaped classifier is
defined here; its module names follow torchvision's.)
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DigitsCNN", "resnet18_classifier", "BasicBlock"]


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsCNN(nn.Module):
    """Four 3x3 conv + BN + ReLU layers and a linear classifier for 8x8 digits.

    Input ``Tensor[N, 1, 8, 8]`` (pixels in [0, 1]); output logits ``Tensor[N, 10]``.
    ``width`` 32: 65 k conv weights, 650 classifier parameters.
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_cbr(1, w), *_cbr(w, w), nn.MaxPool2d(2), *_cbr(w, 2 * w), *_cbr(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), torchvision names."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class _ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, n in enumerate(layers):
            cout = width * (2**i)
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18_classifier(num_classes: int = 1000, width: int = 64) -> nn.Module:
    """ResNet-18 layout (torchvision names; 11.7 M parameters at width 64, 1000 classes).
    Input ``Tensor[N, 3, H, W]``, output ``Tensor[N, num_classes]``."""
    return _ResNet((2, 2, 2, 2), num_classes, width)
