"""PASCAL VOC devkits: annotation XML read/write, image sets, and :class:`VOCDetection`.

Box conventions (the only place in lowbit where VOC pixel coordinates are converted):

* VOC files store 1-based *inclusive* pixel indices ``xmin, ymin, xmax, ymax``: the box covers
  pixels ``xmin..xmax`` (1-based), so ``1 <= xmin <= xmax <= width``.
* lowbit uses float ``(x1, y1, x2, y2)``, 0-based, *continuous*: pixel ``i`` (0-based) is the
  interval ``[i, i + 1)``. Hence ``x1 = xmin - 1``, ``y1 = ymin - 1``, ``x2 = xmax``,
  ``y2 = ymax`` (see :func:`voc_to_internal` / :func:`internal_to_voc`). Under this mapping the
  VOC metric's "+1 pixel" areas of converted boxes equal the continuous areas of internal boxes.

A *devkit folder* holds ``Annotations/*.xml``, ``JPEGImages/*.jpg`` and
``ImageSets/Main/<split>.txt``; a *devkit root* holds several such folders (``VOC2007``,
``VOC2012``); the built-in digits set (:mod:`lowbit.data.digits`) is one folder with a
``classes.txt``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # only for *writing*; parsing goes through defusedxml
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from PIL import Image
from torch import Tensor

__all__ = [
    "VOC_CLASSES",
    "VOCObject",
    "VOCAnnotation",
    "VOCDetection",
    "voc_to_internal",
    "internal_to_voc",
    "parse_voc_xml",
    "write_voc_xml",
    "read_image_set",
    "read_classes",
    "resolve_voc_folders",
    "load_image",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


# ----------------------------------------------------------------------------- conversion
def voc_to_internal(boxes: np.ndarray | Tensor) -> np.ndarray:
    """VOC 1-based inclusive ``[K, 4]`` -> internal 0-based continuous xyxy ``float64[K, 4]``."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    b[:, :2] -= 1.0
    return b


def internal_to_voc(boxes: np.ndarray | Tensor) -> np.ndarray:
    """Internal 0-based continuous xyxy ``[K, 4]`` -> VOC 1-based inclusive ``float64[K, 4]``.

    Not rounded: detections keep their sub-pixel values, as in VOC results files.
    """
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().to("cpu", torch.float64).numpy()
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    b[:, :2] += 1.0
    return b


# ----------------------------------------------------------------------------- XML
@dataclass
class VOCObject:
    """One annotated object. ``bbox`` is as in the file: VOC 1-based inclusive pixels."""

    name: str
    bbox: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class VOCAnnotation:
    """Parsed annotation file: image size and objects in file (1-based) coordinates."""

    path: Path
    filename: str
    width: int
    height: int
    objects: list[VOCObject]

    def voc_boxes(self) -> np.ndarray:
        """``float64[K, 4]`` VOC 1-based inclusive boxes, as written in the file."""
        return np.array([o.bbox for o in self.objects], dtype=np.float64).reshape(-1, 4)

    def boxes(self) -> np.ndarray:
        """``float64[K, 4]`` internal 0-based continuous xyxy boxes."""
        return voc_to_internal(self.voc_boxes())


def _text(node: Any, tag: str, path: Path, default: str | None = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise ValueError(f"{path}: malformed VOC annotation: missing <{tag}>")
    return child.text.strip()


def _number(text: str, tag: str, path: Path) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: malformed VOC annotation: <{tag}> is {text!r}") from None


def parse_voc_xml(path: str | Path, check_bounds: bool = True) -> VOCAnnotation:
    """Parse one VOC annotation file with defusedxml.

    Raises ``FileNotFoundError`` if missing and ``ValueError`` (naming the file) for malformed
    XML, missing fields, or -- with ``check_bounds`` -- a box not inside
    ``1 <= xmin <= xmax <= width``, ``1 <= ymin <= ymax <= height``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        root = SafeET.parse(str(path)).getroot()
    except SafeET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML: {exc}") from None
    except DefusedXmlException as exc:
        raise ValueError(f"{path}: unsafe XML refused: {exc!r}") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: malformed VOC annotation: root element is <{root.tag}>")
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: malformed VOC annotation: missing <size>")
    width = int(_number(_text(size, "width", path), "width", path))
    height = int(_number(_text(size, "height", path), "height", path))
    objects: list[VOCObject] = []
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", path)
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: malformed VOC annotation: object {k} has no <bndbox>")
        box = tuple(_number(_text(bb, t, path), t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1, x2, y2 = box
        if check_bounds and not (1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height):
            raise ValueError(
                f"{path}: object {k} ({name}) box {box} is outside the {width}x{height} image "
                "(VOC boxes are 1-based inclusive: need 1 <= xmin <= xmax <= width)"
            )
        difficult = _text(obj, "difficult", path, default="0") not in ("0", "false", "False")
        truncated = _text(obj, "truncated", path, default="0") not in ("0", "false", "False")
        known = {"name", "bndbox", "difficult", "truncated"}
        extra = {c.tag: (c.text or "").strip() for c in obj if c.tag not in known and len(c) == 0}
        objects.append(VOCObject(name, box, difficult, truncated, extra))  # type: ignore[arg-type]
    filename = _text(root, "filename", path, default=path.stem + ".jpg")
    return VOCAnnotation(path, filename, width, height, objects)


def write_voc_xml(
    path: str | Path,
    filename: str,
    width: int,
    height: int,
    names: Sequence[str],
    boxes: np.ndarray | Tensor,
    difficult: Sequence[bool] | None = None,
    truncated: Sequence[bool] | None = None,
    extra: Sequence[dict[str, str]] | None = None,
    folder: str = "VOC",
    depth: int = 3,
) -> None:
    """Write a VOC annotation file.

    ``boxes`` are internal ``[K, 4]`` 0-based continuous xyxy; they are rounded to whole pixels
    and written 1-based inclusive (``xmin = round(x1) + 1``, ``xmax = round(x2)``), so integer
    boxes round-trip exactly through :func:`parse_voc_xml`.
    """
    vb = np.rint(internal_to_voc(boxes)).astype(np.int64)
    k = len(names)
    if vb.shape[0] != k:
        raise ValueError(f"{path}: {k} names but {vb.shape[0]} boxes")
    difficult = list(difficult) if difficult is not None else [False] * k
    truncated = list(truncated) if truncated is not None else [False] * k
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(width))
    ET.SubElement(size, "height").text = str(int(height))
    ET.SubElement(size, "depth").text = str(int(depth))
    ET.SubElement(root, "segmented").text = "0"
    for i in range(k):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(names[i])
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(bool(truncated[i])))
        ET.SubElement(obj, "difficult").text = str(int(bool(difficult[i])))
        for key, val in (extra[i] if extra is not None else {}).items():
            ET.SubElement(obj, key).text = str(val)
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), vb[i]):
            ET.SubElement(bb, tag).text = str(int(v))
    ET.indent(root)
    Path(path).write_bytes(ET.tostring(root, encoding="utf-8") + b"\n")


# ----------------------------------------------------------------------------- devkit files
def read_image_set(folder: str | Path, split: str) -> list[str]:
    """Image ids listed in ``folder/ImageSets/Main/<split>.txt`` (first token of each line)."""
    path = Path(folder) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image set not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return ids


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names from a ``classes.txt`` (one per line, blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classes file not found")
    names = tuple(s.strip() for s in path.read_text().splitlines() if s.strip())
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}: class list is empty or has duplicates")
    return names


def _is_voc_folder(p: Path) -> bool:
    return (p / "Annotations").is_dir() and (p / "ImageSets" / "Main").is_dir()


def resolve_voc_folders(
    root: str | Path | Sequence[str | Path], years: Sequence[str | int] | None = None
) -> list[Path]:
    """Devkit folders for ``root``.

    ``root`` is a devkit folder, a list of them, or a devkit root with ``years``
    (``("2007", "2012")`` gives ``root/VOC2007`` and ``root/VOC2012``: the 07+12 union).
    """
    roots = [Path(r) for r in ([root] if isinstance(root, str | Path) else root)]
    if years is not None:
        if len(roots) != 1:
            raise ValueError("years= needs a single devkit root")
        roots = [roots[0] / f"VOC{y}" for y in years]
    for r in roots:
        if not _is_voc_folder(r):
            hint = ""
            subs = sorted(p.name for p in r.glob("VOC*") if _is_voc_folder(p)) if r.is_dir() else []
            if subs:
                hint = f" (it holds {', '.join(subs)}: pass years=...)"
            raise FileNotFoundError(
                f"{r}: not a VOC devkit folder (needs Annotations/ and ImageSets/Main/){hint}"
            )
    return roots


def load_image(path: str | Path) -> Tensor:
    """Decode an image with PIL into ``float32[3, H, W]`` RGB in ``[0, 1]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# ----------------------------------------------------------------------------- dataset
Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]


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
    """

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
        image = load_image(path)
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
