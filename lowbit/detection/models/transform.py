"""Pre-processing outside the quantizable network: target checks, normalise, resize, batch.

:class:`DetectorTransform` plays the part of torchvision's ``GeneralizedRCNNTransform``. It is
*not* part of the network that :func:`lowbit.nn.prepare` quantizes or that export traces: it
turns a list of ``[0, 1]`` images into one normalised, zero-padded ``Tensor[N, 3, H, W]``
(``H, W`` multiples of ``size_divisible``) and scales the targets' boxes the same way, and maps
detections back to the original image sizes afterwards.

Label convention of the detectors: datasets give ``labels`` as 0-based *foreground* class
indices (``0 <= label < num_classes``, as :class:`lowbit.data.voc.VOCDetection`); inside the
detector class 0 is background and foreground class ``c`` is ``c + 1``
(:func:`to_internal_targets`); detections come back 0-based again
(:mod:`lowbit.detection.models.postprocess`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectorTransform",
    "SSDTransform",
    "check_inputs",
    "image_name",
    "to_internal_targets",
    "validate_images",
    "validate_targets",
]


Target = dict[str, Any]


def image_name(target: Target | None, index: int) -> str:
    """How errors name an image: its ``image_id`` if the target has one, else its index."""
    if target is not None and "image_id" in target:
        return f"image {target['image_id']!r} (batch index {index})"
    return f"image at batch index {index}"


def validate_images(images: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """``Tensor[N, 3, H, W]`` or a list of ``Tensor[3, H_i, W_i]`` → list of float images."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"images must be Tensor[N, 3, H, W] or a list of Tensor[3, H, W], "
                f"got shape {tuple(images.shape)}"
            )
        images = list(images.unbind(0))
    out = []
    for i, im in enumerate(images):
        if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
            shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise ValueError(f"image at batch index {i}: expected Tensor[3, H, W], got {shape}")
        if not im.is_floating_point():
            raise ValueError(f"image at batch index {i}: expected a float image, got {im.dtype}")
        out.append(im)
    if not out:
        raise ValueError("empty batch of images")
    return out


def validate_targets(
    targets: Sequence[Target], num_classes: int, image_sizes: Sequence[tuple[int, int]]
) -> None:
    """Raise ``ValueError`` naming the image for malformed targets.

    Each target needs ``boxes`` float ``Tensor[K, 4]`` (0-based continuous xyxy, finite,
    ``x2 > x1`` and ``y2 > y1``) and ``labels`` integer ``Tensor[K]`` with
    ``0 <= label < num_classes`` (0-based foreground classes, no background). ``K = 0`` (an
    image with no objects) is valid. Boxes may leave the image (they are not clipped here).
    """
    if len(targets) != len(image_sizes):
        raise ValueError(f"{len(image_sizes)} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        name = image_name(t, i)
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"{name}: target must be a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{name}: target boxes must be Tensor[K, 4], got {shape}")
        if not boxes.is_floating_point():
            raise ValueError(f"{name}: target boxes must be float, got {boxes.dtype}")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(
                f"{name}: target labels must be Tensor[{boxes.shape[0]}] (one per box), "
                f"got {shape}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"{name}: target labels must be integers, got {labels.dtype}")
        if boxes.numel() == 0:
            continue
        if not torch.isfinite(boxes).all():
            raise ValueError(f"{name}: target boxes contain NaN or Inf")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            k = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"{name}: degenerate target box {k}: {boxes[k].tolist()} "
                "(need x2 > x1 and y2 > y1, 0-based continuous xyxy)"
            )
        out = (labels < 0) | (labels >= num_classes)
        if out.any():
            k = int(torch.nonzero(out)[0])
            raise ValueError(
                f"{name}: target label {int(labels[k])} of box {k} is outside "
                f"0..{num_classes - 1} (0-based foreground classes, no background)"
            )


def check_inputs(
    images: Sequence[Tensor] | Tensor, targets: Sequence[Target] | None, num_classes: int,
    training: bool,
) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """The checks every detector's ``forward`` starts with: images validated into a list of
    ``Tensor[3, H, W]``, their original ``(H, W)``, targets required in training and validated
    whenever given (ValueError naming the image)."""
    ims = validate_images(images)
    original = [(int(im.shape[-2]), int(im.shape[-1])) for im in ims]
    if training and targets is None:
        raise ValueError("targets are required in training mode")
    if targets is not None:
        validate_targets(targets, num_classes, original)
    return ims, original


def to_internal_targets(targets: Sequence[Target]) -> list[Target]:
    """Shallow copies with ``labels + 1`` (background = 0 inside the detector)."""
    out = []
    for t in targets:
        t = dict(t)
        t["labels"] = t["labels"].to(torch.int64) + 1
        out.append(t)
    return out


class DetectorTransform(nn.Module):
    """Normalise, resize (keeping the aspect ratio) and batch images; scale targets alike.

    Args:
        min_size: shorter side after resizing; ``None`` keeps every image at its native size
            (fastest; the digits devkit's 256 px images are used this way).
        max_size: cap on the longer side (only with ``min_size``).
        image_mean, image_std: per-channel normalisation of ``[0, 1]`` RGB input.
        size_divisible: the padded batch's ``H, W`` are multiples of this (32 by default, the
            largest stride of a ResNet).

    Resizing is bilinear (``align_corners=False``); boxes are scaled by the per-axis factors
    ``new_W / W`` and ``new_H / H``.
    """

    def __init__(
        self,
        min_size: int | None = None,
        max_size: int | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        if min_size is not None and min_size <= 0:
            raise ValueError(f"min_size must be > 0 or None, got {min_size}")
        if max_size is not None and (min_size is None or max_size < min_size):
            raise ValueError(f"max_size needs min_size <= max_size, got {min_size}, {max_size}")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(f"image_mean/std need 3 entries, std > 0: {image_mean}, {image_std}")
        if size_divisible < 1:
            raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
        self.min_size = min_size
        self.max_size = max_size
        self.size_divisible = int(size_divisible)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(3, 1, 1), persistent=False)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """``(new_H, new_W)`` of an ``h x w`` image."""
        if self.min_size is None:
            return h, w
        scale = self.min_size / min(h, w)
        if self.max_size is not None and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[Target] | None = None
    ) -> tuple[Tensor, list[tuple[int, int]], list[Target] | None]:
        """Prepare a batch.

        Args:
            images: list of ``Tensor[3, H_i, W_i]`` in ``[0, 1]`` (or ``Tensor[N, 3, H, W]``).
            targets: optional per-image dicts with ``boxes`` ``Tensor[K_i, 4]``.

        Returns:
            ``(batch, image_sizes, targets)``: ``batch`` ``Tensor[N, 3, H, W]`` normalised and
            zero-padded at the bottom/right, ``image_sizes`` the ``(h_i, w_i)`` after resizing
            (before padding), ``targets`` shallow copies with scaled ``boxes`` (or ``None``).
        """
        ims = validate_images(images)
        out_targets = None if targets is None else [dict(t) for t in targets]
        processed, sizes = [], []
        for i, im in enumerate(ims):
            h, w = int(im.shape[-2]), int(im.shape[-1])
            im = (im - self.image_mean.to(im)) / self.image_std.to(im)
            nh, nw = self.resized_size(h, w)
            if (nh, nw) != (h, w):
                im = F.interpolate(im[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
                if out_targets is not None:
                    scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
                    boxes = out_targets[i]["boxes"]
                    out_targets[i]["boxes"] = boxes * scale.to(boxes)
            processed.append(im)
            sizes.append((nh, nw))
        d = self.size_divisible
        hp = math.ceil(max(s[0] for s in sizes) / d) * d
        wp = math.ceil(max(s[1] for s in sizes) / d) * d
        if all(s == (hp, wp) for s in sizes):
            batch = torch.stack(processed)
        else:
            batch = processed[0].new_zeros((len(processed), 3, hp, wp))
            for b, im in enumerate(processed):
                batch[b, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return batch, sizes, out_targets

    @staticmethod
    def postprocess(
        detections: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Scale detection ``boxes`` from the resized ``image_sizes`` back to
        ``original_sizes`` (in place on the dicts, which are also returned)."""
        for det, (h, w), (oh, ow) in zip(detections, image_sizes, original_sizes):
            if (h, w) != (oh, ow):
                boxes = det["boxes"]
                scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=boxes.dtype)
                det["boxes"] = boxes * scale.to(boxes.device)
        return detections

    def extra_repr(self) -> str:
        return (
            f"min_size={self.min_size}, max_size={self.max_size}, "
            f"size_divisible={self.size_divisible}"
        )


class SSDTransform(DetectorTransform):
    """Normalise and warp every image to ``size x size`` (no aspect ratio kept, as SSD and
    darknet's training resize); boxes are scaled per axis. The pre-processing of the
    single-stage detectors (SSD, YOLOv3), kept outside the quantizable network;
    :meth:`postprocess` maps detections back to each original image size.

    Returns of ``transform(images, targets)``: ``Tensor[N, 3, size, size]``, ``[(size,
    size)] * N`` and the targets' boxes scaled by ``(size / W_i, size / H_i)``."""

    def __init__(
        self,
        size: int,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(None, None, image_mean, image_std, size_divisible=1)
        if size < 1:
            raise ValueError(f"image size must be >= 1, got {size}")
        self.size = int(size)

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        return self.size, self.size

    def extra_repr(self) -> str:
        return f"size={self.size}"
