"""Helpers shared by the single-stage detector tests: a tiny synthetic detection batch, tiny
SSD / YOLOv3 builders, and a few-step training loop."""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.detection.models.ssd import SSD, ssd_lite_vgg
from lowbit.detection.models.yolov3 import YOLOv3, yolov3_tiny_darknet

NUM_CLASSES = 3

# 64 px SSD: six maps 8-4-2-1-1-1, 4 boxes per location (348 default boxes)
TINY_SSD = {
    "width": 0.0625,
    "image_size": 64,
    "steps": None,
    "min_ratio": 0.15,
    "max_ratio": 0.9,
}
TINY_YOLO_ANCHORS = (
    (4, 6), (6, 8), (8, 8), (10, 12), (12, 14), (16, 16), (18, 22), (24, 24), (30, 32),
)  # fmt: skip
# 64 px YOLOv3: grids 8-4-2, 3 anchors per cell (252 boxes)
TINY_YOLO = {"width": 0.125, "image_size": 64, "anchors": TINY_YOLO_ANCHORS}


def tiny_ssd(**kw) -> SSD:
    """Seeded untrained ``ssd_lite_vgg`` at :data:`TINY_SSD` (keywords override)."""
    torch.manual_seed(0)
    return ssd_lite_vgg(NUM_CLASSES, **{**TINY_SSD, **kw})


def tiny_yolo(**kw) -> YOLOv3:
    """Seeded untrained ``yolov3_tiny_darknet`` at :data:`TINY_YOLO` (keywords override)."""
    torch.manual_seed(0)
    return yolov3_tiny_darknet(NUM_CLASSES, **{**TINY_YOLO, **kw})


def train_steps(model: nn.Module, steps: int, lr: float) -> tuple[float, float]:
    """SGD (momentum 0.9, gradient norm clipped at 10) on :func:`synthetic_batch` ``(8)``;
    returns the mean total loss of the first two and of the last two steps."""
    images, targets = synthetic_batch(8)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(loss.item())
    return sum(losses[:2]) / 2, sum(losses[-2:]) / 2


def check_lbw_4bit_trains(model: nn.Module) -> None:
    """``prepare`` with 4-bit LBW swaps every ``nn.Conv2d`` for a ``QuantConv2d`` and 12 steps
    still lower the loss by 20 %."""
    from lowbit.nn import QuantConv2d, prepare

    n_conv = sum(type(m) is nn.Conv2d for m in model.modules())
    prepare(model, {"method": "lbw-exact", "bits": 4})
    assert sum(isinstance(m, QuantConv2d) for m in model.modules()) == n_conv
    assert not any(type(m) is nn.Conv2d for m in model.modules())
    first, last = train_steps(model, 12, 0.01)
    assert math.isfinite(last) and last < 0.8 * first


def synthetic_batch(n: int, size: int = 64, seed: int = 0):
    """Coloured rectangles on a dark noisy background; the colour is the class."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]])
    images, targets = [], []
    for _ in range(n):
        im = torch.rand(3, size, size, generator=g) * 0.2
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            w, h = (torch.randint(size // 5, size // 2, (2,), generator=g)).tolist()
            x, y = torch.randint(0, size - w, (1,), generator=g).item(), torch.randint(
                0, size - h, (1,), generator=g
            ).item()
            c = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
            im[:, y : y + h, x : x + w] = colours[c][:, None, None]
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        images.append(im)
        targets.append(
            {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        )
    return images, targets
