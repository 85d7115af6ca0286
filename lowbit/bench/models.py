"""The ResNet-18-shaped reference classifier of ``lowbit bench qat``.

Self-contained (module names follow torchvision's), so the measurement does not depend on the
detection backbones. The digits network of ``lowbit bench digits`` is
:class:`lowbit.tasks.digits.DigitsCNN` (``layout="pooled"``).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["resnet18_classifier", "BasicBlock"]


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
