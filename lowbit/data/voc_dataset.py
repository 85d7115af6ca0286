"""`VOCDetection`: a VOC-format devkit as a torch Dataset (see :mod:`lowbit.data.voc` for the file
formats and box conventions; it re-exports this class lazily so its parsers stay torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lowbit.data.voc import (
    VOC_CLASSES,
    Transform,
    VOCAnnotation,
    load_image_uint8,
    parse_voc_xml,
    read_classes,
    read_image_set,
    resolve_voc_folders,
)

__all__ = ["VOCDetection"]


class VOCDetection(torch.utils.data.Dataset):
    """A VOC-format detection set (one folder, or a union such as VOC 07+12 trainval).

    ``dataset[i]`` is ``(image, target)``: ``image`` ``float32[3, H, W]`` in ``[0, 1]``;
    ``target`` holds ``boxes`` ``float32[K, 4]`` (0-based continuous xyxy), ``labels``
    ``int64[K]`` (0-based index into :attr:`classes`), ``difficult`` ``bool[K]``,
    ``truncated`` ``bool[K]``, ``image_id`` (str), ``orig_size`` ``(H, W)``, ``size``
    ``(H, W)`` after transforms. Difficult objects are dropped unless ``keep_difficult``;
    :meth:`eval_targets` always keeps them (the VOC metric needs them).

    Args:
        root: devkit folder, list of folders, or devkit root with ``years``.
        split: image set name (``trainval``, ``test``...), or one per folder.
        classes: class names; default ``classes.txt`` of the first folder if present, else the
            20 VOC names. With explicit classes, objects of other classes are skipped; with
            inferred ones an unknown name is an error.
        years: e.g. ``("2007", "2012")`` with a devkit root.

    Setting :attr:`cache_images` keeps every decoded image in memory as ``uint8`` (3 bytes a
    pixel; the images returned are the same), for a set read many times, such as a test set
    scored after each of several training phases.
    """

    #: keep decoded images in memory (see the class docstring)
    cache_images: bool = False

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        split: str | Sequence[str],
        classes: Sequence[str] | None = None,
        keep_difficult: bool = False,
        transforms: Transform | None = None,
        years: Sequence[str | int] | None = None,
    ) -> None:
        self.folders = resolve_voc_folders(root, years)
        splits = [split] * len(self.folders) if isinstance(split, str) else list(split)
        if len(splits) != len(self.folders):
            raise ValueError(f"{len(splits)} splits for {len(self.folders)} devkit folders")
        self.split = split if isinstance(split, str) else "+".join(splits)
        self.strict_classes = classes is None
        if classes is None:
            cfile = self.folders[0] / "classes.txt"
            classes = read_classes(cfile) if cfile.is_file() else VOC_CLASSES
        self.classes: tuple[str, ...] = tuple(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.keep_difficult = keep_difficult
        self.transforms = transforms
        self.items: list[tuple[Path, str]] = []
        for folder, sp in zip(self.folders, splits):
            self.items.extend((folder, i) for i in read_image_set(folder, sp))
        self._cache: list[dict[str, Any] | None] = [None] * len(self.items)
        self._images: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def image_ids(self) -> list[str]:
        """Image ids in dataset order (as in the image set files)."""
        return [i for _, i in self.items]

    def annotation(self, index: int) -> VOCAnnotation:
        """Parsed annotation of item ``index`` (file coordinates)."""
        folder, image_id = self.items[index]
        return parse_voc_xml(folder / "Annotations" / f"{image_id}.xml")

    def _record(self, index: int) -> dict[str, Any]:
        rec = self._cache[index]
        if rec is None:
            ann = self.annotation(index)
            keep, labels = [], []
            for k, o in enumerate(ann.objects):
                label = self.class_to_idx.get(o.name)
                if label is None:
                    if self.strict_classes:
                        raise ValueError(
                            f"{ann.path}: object {k} has unknown class {o.name!r} "
                            f"(classes: {', '.join(self.classes)})"
                        )
                    continue
                keep.append(k)
                labels.append(label)
            objs = [ann.objects[k] for k in keep]
            rec = {
                "boxes": ann.boxes()[keep].astype(np.float32),
                "labels": np.array(labels, dtype=np.int64),
                "difficult": np.array([o.difficult for o in objs], dtype=bool),
                "truncated": np.array([o.truncated for o in objs], dtype=bool),
                "size": (ann.height, ann.width),
                "path": ann.path,
            }
            self._cache[index] = rec
        return rec

    def get_target(self, index: int, keep_difficult: bool | None = None) -> dict[str, Any]:
        """Target of item ``index`` without decoding the image (see class docstring)."""
        rec = self._record(index)
        kd = self.keep_difficult if keep_difficult is None else keep_difficult
        m = np.ones(len(rec["labels"]), dtype=bool) if kd else ~rec["difficult"]
        return {
            "boxes": torch.from_numpy(rec["boxes"][m].reshape(-1, 4)),
            "labels": torch.from_numpy(rec["labels"][m]),
            "difficult": torch.from_numpy(rec["difficult"][m]),
            "truncated": torch.from_numpy(rec["truncated"][m]),
            "image_id": self.items[index][1],
            "orig_size": rec["size"],
            "size": rec["size"],
        }

    def eval_targets(self) -> list[dict[str, Any]]:
        """Targets of every item with difficult objects kept, for :mod:`lowbit.eval.voc`."""
        return [self.get_target(i, keep_difficult=True) for i in range(len(self))]

    def image_path(self, index: int) -> Path:
        folder, image_id = self.items[index]
        return folder / "JPEGImages" / f"{image_id}.jpg"

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        target = self.get_target(index)
        path = self.image_path(index)
        u8 = self._images.get(index)
        if u8 is None:
            u8 = load_image_uint8(path)
            if self.cache_images:
                self._images[index] = u8
        image = u8.float().div_(255.0)
        h, w = image.shape[-2:]
        if (h, w) != tuple(target["orig_size"]):
            raise ValueError(
                f"{path}: image is {w}x{h} but its annotation says "
                f"{target['orig_size'][1]}x{target['orig_size'][0]}"
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            target["size"] = tuple(image.shape[-2:])
        return image, target

    def __repr__(self) -> str:
        return (
            f"VOCDetection({[str(f) for f in self.folders]}, split={self.split!r}, "
            f"n={len(self)}, classes={len(self.classes)}, keep_difficult={self.keep_difficult})"
        )
