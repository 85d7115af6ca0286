"""Detection transforms that move boxes with the image, and batching with padding.

Every transform is a callable ``(image, target) -> (image, target)`` where ``image`` is
``float32[3, H, W]`` and ``target["boxes"]`` is ``float32[K, 4]`` internal 0-based continuous
xyxy (see :mod:`lowbit.data.voc`). Targets are shallow-copied, never modified in place.
``target["size"]`` is kept equal to the current ``(H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Resize",
    "RandomHorizontalFlip",
    "Normalize",
    "hflip_boxes",
    "rescale_boxes",
    "batch_images",
    "collate_detection",
]

Target = dict[str, Any]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Tensor, Target], tuple[Tensor, Target]]]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def rescale_boxes(
    boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
) -> Tensor:
    """Scale ``[K, 4]`` xyxy boxes from an ``(H, W)`` image to another ``(H, W)``.

    Use it to map predictions on a resized image back to ``orig_size``.
    """
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Mirror ``[K, 4]`` continuous xyxy boxes in an image ``width`` wide: ``x -> W - x``."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class Resize:
    """Resize keeping the aspect ratio: shorter side to ``min_size``, unless the longer side
    would exceed ``max_size`` (then longer side to ``max_size``). Bilinear, antialiased.

    Boxes are scaled by the same per-axis factors as the image (``new_W / W``, ``new_H / H``;
    those differ only by the rounding of the new size to whole pixels).
    """

    def __init__(self, min_size: int, max_size: int | None = None) -> None:
        if min_size <= 0 or (max_size is not None and max_size < min_size):
            raise ValueError(f"Resize: need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(new_H, new_W)`` for an ``h x w`` image."""
        scale = self.min_size / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        h, w = image.shape[-2:]
        nh, nw = self.output_size(h, w)
        if (nh, nw) != (h, w):
            image = F.interpolate(
                image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
            )[0]
        target = dict(target)
        target["boxes"] = rescale_boxes(target["boxes"], (h, w), (nh, nw))
        target["size"] = (nh, nw)
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Flip image and boxes left-right with probability ``p`` (``generator`` for determinism)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        target = dict(target)
        target["boxes"] = hflip_boxes(target["boxes"], image.shape[-1])
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(image - mean) / std`` per channel; boxes unchanged."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        mean = self.mean.to(image.device, image.dtype)
        std = self.std.to(image.device, image.dtype)
        return (image - mean) / std, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def batch_images(
    images: Sequence[Tensor], size_divisible: int = 1, fill: float = 0.0
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack ``[C, H_i, W_i]`` images into ``[B, C, H, W]``, padding at the bottom/right.

    ``H, W`` are the maxima rounded up to a multiple of ``size_divisible``. Padding at the
    bottom/right leaves box coordinates unchanged. Returns the batch and the ``(H_i, W_i)``.
    """
    if not images:
        raise ValueError("batch_images: empty batch")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    d = max(1, int(size_divisible))
    h = math.ceil(max(s[0] for s in sizes) / d) * d
    w = math.ceil(max(s[1] for s in sizes) / d) * d
    c = images[0].shape[0]
    batch = images[0].new_full((len(images), c, h, w), fill)
    for b, im in enumerate(images):
        batch[b, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def collate_detection(
    batch: Sequence[tuple[Tensor, Target]], size_divisible: int = 1, pad: bool = True
) -> tuple[Tensor | list[Tensor], list[Target]]:
    """DataLoader ``collate_fn`` for detection.

    Returns ``(images, targets)``: with ``pad`` a padded ``float32[B, 3, H, W]`` batch (see
    :func:`batch_images`; each target's ``size`` is its unpadded ``(H_i, W_i)``), otherwise the
    list of images. Use ``functools.partial`` to set ``size_divisible``.
    """
    images = [im for im, _ in batch]
    targets = [dict(t) for _, t in batch]
    if not pad:
        return images, targets
    tensor, sizes = batch_images(images, size_divisible)
    for t, s in zip(targets, sizes):
        t["size"] = s
    return tensor, targets
