"""COCO instances JSON: :class:`COCODetection` and export of a VOC-format set (:func:`voc_to_coco`).

COCO ``bbox`` is ``[x, y, w, h]`` in 0-based continuous pixels, so the internal box is simply
``[x, y, x + w, y + h]`` (clipped to the image). Category ids (arbitrary integers) map to
contiguous 0-based labels in increasing id order: :attr:`COCODetection.cat_ids` ``[label]`` is
the id.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lowbit._files import read_input_bytes
from lowbit.data.voc import Transform, VOCDetection, load_image

__all__ = ["COCODetection", "load_coco_json", "voc_to_coco"]


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check an instances JSON (``images``, ``annotations``, ``categories``).

    Raises ``FileNotFoundError`` if missing and ``ValueError`` naming the file (and the line
    and column of a JSON syntax error) for anything else: not UTF-8, not JSON, ``NaN`` /
    ``Infinity`` literals, nesting too deep, or a top level without the three lists. The
    entries themselves are checked by :class:`COCODetection`.
    """
    path = Path(path)
    raw = read_input_bytes(path, "COCO annotation file")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: malformed JSON: not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # carries "line L column C"
        raise ValueError(f"{path}: malformed JSON: {exc}") from None
    except ValueError as exc:  # NaN / Infinity: find where, outside strings
        blank = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: " " * len(m.group()), text)
        m = re.search(r"-?(?:NaN|Infinity)", blank)
        where = ""
        if m:
            at = text[: m.start()]
            where = f": line {at.count(chr(10)) + 1} column {m.start() - at.rfind(chr(10))}"
        raise ValueError(f"{path}: malformed JSON: {exc}{where}") from None
    except RecursionError:
        raise ValueError(f"{path}: malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO instances file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO instances file (no '{key}' list)")
    return data


def _int(value: Any, what: str, path: Path) -> int:
    """A JSON integer (an integral float such as ``3.0`` is accepted; bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: {what} is {str(value)[:40]!r}, not an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{path}: {what} is {value!r}, not an integer")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{path}: {what} is {str(value)[:40]}, outside the 64-bit range")
    return int(value)


def _flag(value: Any, what: str, path: Path) -> bool:
    """``iscrowd`` / ``difficult``: 0, 1, false or true (a string such as "0" is refused: it
    would read as true)."""
    if value in (0, 1) and isinstance(value, int | bool):
        return bool(value)
    raise ValueError(f"{path}: {what} is {str(value)[:40]!r}, not 0 or 1")


def _entry(item: Any, what: str, path: Path) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{path}: {what} is not an object")
    return item


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
        path = self.ann_file
        data = load_coco_json(path)
        cats = [_entry(c, f"categories[{k}]", path) for k, c in enumerate(data["categories"])]
        ids = [_int(c.get("id"), f"categories[{k}].id", path) for k, c in enumerate(cats)]
        order = sorted(range(len(cats)), key=ids.__getitem__)
        self.cat_ids: list[int] = [ids[k] for k in order]
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise ValueError(f"{path}: duplicate category ids")
        self.classes: tuple[str, ...] = tuple(str(cats[k].get("name", ids[k])) for k in order)
        self.cat_id_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.keep_crowd = keep_crowd
        self.keep_difficult = keep_difficult
        self.transforms = transforms
        self.images: list[dict[str, Any]] = []
        by_id: dict[int, dict[str, Any]] = {}
        for k, im in enumerate(data["images"]):
            im = _entry(im, f"images[{k}]", path)
            img_id = _int(im.get("id"), f"images[{k}].id", path)
            if img_id in by_id:
                raise ValueError(f"{path}: images[{k}] repeats image id {img_id}")
            for key in ("width", "height"):
                if not 1 <= _int(im.get(key), f"images[{k}].{key}", path) < 2**31:
                    raise ValueError(
                        f"{path}: images[{k}].{key} is {im[key]!r}, not in 1 .. 2**31 - 1"
                    )
            if not isinstance(im.get("file_name"), str):
                raise ValueError(f"{path}: images[{k}].file_name is not a string")
            by_id[img_id] = im
            self.images.append(im)
        anns: dict[int, list[dict[str, Any]]] = {i: [] for i in by_id}
        for k, a in enumerate(data["annotations"]):
            a = _entry(a, f"annotations[{k}]", path)
            img_id = _int(a.get("image_id"), f"annotations[{k}].image_id", path)
            if img_id not in by_id:
                raise ValueError(f"{path}: annotation {k} refers to unknown image {img_id}")
            cid = _int(a.get("category_id"), f"annotations[{k}].category_id", path)
            if cid not in self.cat_id_to_label:
                raise ValueError(f"{path}: annotation {k} has unknown category {cid}")
            bbox = a.get("bbox")
            if (
                not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
                or not all(math.isfinite(v) for v in bbox)
            ):  # fmt: skip
                raise ValueError(
                    f"{path}: annotation {k} bbox is not [x, y, w, h] of finite numbers"
                )
            for key in ("iscrowd", "difficult"):
                if key in a:
                    _flag(a[key], f"annotations[{k}].{key}", path)
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
