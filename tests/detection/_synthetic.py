"""A tiny synthetic detection batch shared by the single-stage detector tests."""

from __future__ import annotations

import torch

NUM_CLASSES = 3


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
