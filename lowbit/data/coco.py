"""COCO instances JSON: :class:`COCODetection` and export of a VOC-format set (:func:`voc_to_coco`).

COCO ``bbox`` is ``[x, y, w, h]`` in 0-based continuous pixels, so the internal box is simply
``[x, y, x + w, y + h]`` (clipped to the image). Category ids (arbitrary integers) map to
contiguous 0-based labels in increasing id order: :attr:`COCODetection.cat_ids` ``[label]`` is
the id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lowbit.data.voc import Transform, VOCDetection, load_image

__all__ = ["COCODetection", "load_coco_json", "voc_to_coco"]


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check an instances JSON (``images``, ``annotations``, ``categories``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO annotation file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO instances file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


class COCODetection(torch.utils.data.Dataset):
    """A COCO-format detection set.

    ``dataset[i]`` is ``(image, target)`` like :class:`lowbit.data.voc.VOCDetection`:
    ``boxes`` ``float32[K, 4]`` 0-based continuous xyxy, ``labels`` ``int64[K]`` 0-based
    contiguous, ``iscrowd`` ``bool[K]``, ``difficult`` ``bool[K]`` (crowd, or a ``difficult``
    field as written by :func:`voc_to_coco`), ``image_id`` (the COCO ``int`` id),
    ``orig_size``/``size`` ``(H, W)``. Crowd and difficult objects are dropped unless
    ``keep_crowd`` / ``keep_difficult``; :meth:`eval_targets` keeps both.

    Args:
        image_root: folder the images' ``file_name`` are relative to.
        ann_file: instances JSON.
        remove_empty: drop images without any (kept) annotation, as for training.
    """

    def __init__(
        self,
        image_root: str | Path,
        ann_file: str | Path,
        transforms: Transform | None = None,
        keep_crowd: bool = False,
        keep_difficult: bool = False,
        remove_empty: bool = False,
    ) -> None:
        self.image_root = Path(image_root)
        self.ann_file = Path(ann_file)
        data = load_coco_json(self.ann_file)
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise ValueError(f"{self.ann_file}: duplicate category ids")
        self.classes: tuple[str, ...] = tuple(str(c.get("name", c["id"])) for c in cats)
        self.cat_id_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.keep_crowd = keep_crowd
        self.keep_difficult = keep_difficult
        self.transforms = transforms
        self.images: list[dict[str, Any]] = list(data["images"])
        by_id = {int(im["id"]): im for im in self.images}
        anns: dict[int, list[dict[str, Any]]] = {i: [] for i in by_id}
        for k, a in enumerate(data["annotations"]):
            img_id = int(a.get("image_id", -1))
            if img_id not in by_id:
                raise ValueError(
                    f"{self.ann_file}: annotation {k} refers to unknown image {img_id}"
                )
            if int(a.get("category_id", -1)) not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.ann_file}: annotation {k} has unknown category {a.get('category_id')}"
                )
            bbox = a.get("bbox")
            if not isinstance(bbox, list | tuple) or len(bbox) != 4:
                raise ValueError(f"{self.ann_file}: annotation {k} bbox is not [x, y, w, h]")
            anns[img_id].append(a)
        self._anns = anns
        if remove_empty:
            keep = [i for i in range(len(self.images)) if len(self.get_target(i)["labels"])]
            self.images = [self.images[i] for i in keep]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids in dataset order."""
        return [int(im["id"]) for im in self.images]

    def _select(self, img_id: int, keep_all: bool) -> list[dict[str, Any]]:
        out = []
        for a in self._anns[img_id]:
            crowd = bool(a.get("iscrowd", 0))
            diff = bool(a.get("difficult", 0))
            drop = (crowd and not self.keep_crowd) or (diff and not self.keep_difficult)
            if drop and not keep_all:
                continue
            out.append(a)
        return out

    def get_target(self, index: int, keep_all: bool = False) -> dict[str, Any]:
        """Target of item ``index`` without decoding the image (see class docstring)."""
        im = self.images[index]
        img_id = int(im["id"])
        h, w = int(im["height"]), int(im["width"])
        anns = self._select(img_id, keep_all)
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # drop empty boxes
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        diff = np.array([bool(a.get("difficult", 0)) for a in anns], dtype=bool) | crowd
        labels = np.array([self.cat_id_to_label[int(a["category_id"])] for a in anns], np.int64)
        return {
            "boxes": torch.from_numpy(boxes[keep].astype(np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(labels[keep]),
            "iscrowd": torch.from_numpy(crowd[keep]),
            "difficult": torch.from_numpy(diff[keep]),
            "image_id": img_id,
            "orig_size": (h, w),
            "size": (h, w),
        }

    def eval_targets(self) -> list[dict[str, Any]]:
        """Targets with crowd/difficult kept (as ``difficult``), for :mod:`lowbit.eval.voc`."""
        return [self.get_target(i, keep_all=True) for i in range(len(self))]

    def image_path(self, index: int) -> Path:
        return self.image_root / str(self.images[index]["file_name"])

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        target = self.get_target(index)
        path = self.image_path(index)
        image = load_image(path)
        if tuple(image.shape[-2:]) != target["orig_size"]:
            raise ValueError(
                f"{path}: image is {image.shape[-1]}x{image.shape[-2]} but {self.ann_file} says "
                f"{target['orig_size'][1]}x{target['orig_size'][0]}"
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            target["size"] = tuple(image.shape[-2:])
        return image, target


def voc_to_coco(
    root: str | Path | Sequence[str | Path],
    split: str,
    out: str | Path,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a VOC-format image set as a COCO instances JSON and return the dict.

    Image ids are ``1..N`` in image-set order, ``file_name`` is ``<voc id>.jpg`` (relative to
    ``JPEGImages/``), category ids are ``1..C`` in class order. Difficult objects keep
    ``iscrowd = 0`` and get an extra ``difficult = 1`` field (COCO has no such notion; the COCO
    metric counts them, :class:`COCODetection` drops them for training like VOC does).
    """
    ds = VOCDetection(root, split, classes=classes, keep_difficult=True)
    images, annotations = [], []
    for i in range(len(ds)):
        t = ds.get_target(i)
        h, w = t["orig_size"]
        images.append({"id": i + 1, "file_name": f"{t['image_id']}.jpg", "width": w, "height": h})
        b = t["boxes"].double().numpy()
        for k in range(b.shape[0]):
            x1, y1, x2, y2 = (float(v) for v in b[k])
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": int(t["labels"][k]) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
                "difficult": int(t["difficult"][k]),
            })  # fmt: skip
    data = {
        "info": {"description": f"{split} of {', '.join(str(f) for f in ds.folders)}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(ds.classes)],
    }
    Path(out).write_text(json.dumps(data))
    return data
