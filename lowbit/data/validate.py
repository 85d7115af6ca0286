"""Check a detection data set before training: every annotation parsed, every image header read.

:func:`validate_dataset` walks a data set that has ``get_target(i)`` and ``image_path(i)``
(:class:`lowbit.data.voc.VOCDetection`, :class:`lowbit.data.coco.COCODetection`): it parses the
annotation of every item (their own parsers: class names, box bounds, sizes) and opens every
image with PIL *without decoding it* (``Image.open`` reads the header only), checking that the
file exists, is an image PIL knows, is not a decompression bomb, and has the size its
annotation states. Other data sets (tensors in memory) have nothing to check: ``[]``.

:func:`drop_items` returns the same data set without the bad items (``--skip-bad``).
A truncated image body is not seen here (the header is intact); it fails when decoded.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset, Subset

__all__ = ["BadItem", "validate_dataset", "drop_items", "summarize_bad"]

# what a broken file can raise from the parsers and PIL's header reader
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OSError, OverflowError, SyntaxError, EOFError, KeyError, TypeError,
    IndexError, Image.DecompressionBombError,
)


@dataclass(frozen=True)
class BadItem:
    """One item that failed validation: its index in the data set and the one-line reason
    (naming the file)."""

    index: int
    reason: str


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the image header; ValueError naming the file."""
    if not path.is_file():
        raise ValueError(f"{path}: image not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombWarning as exc:
        raise ValueError(f"{path}: image too large ({exc})") from None
    except _DATA_ERRORS as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return int(h), int(w)


def _check_item(ds: Any, i: int) -> None:
    target = ds.get_target(i)
    path = Path(ds.image_path(i))
    h, w = _image_size(path)
    want = tuple(int(v) for v in target["orig_size"])
    if (h, w) != want:
        raise ValueError(f"{path}: image is {w}x{h} but its annotation says {want[1]}x{want[0]}")


#: validate_dataset results of this process by :func:`_memo_key` (a VOC set whose files are
#: unchanged since: same paths, sizes, mtimes and inodes is not parsed again)
_MEMO: dict[bytes, list[BadItem]] = {}


def _memo_key(ds: Any) -> bytes | None:
    """A key for a VOC-layout set (``items`` of ``(folder, image_id)``, ``classes``): every
    annotation and image file's path and ``stat`` (size, mtime, inode) plus what the parser
    depends on; None for other sets or when a file is missing (then nothing is memoised)."""
    items = getattr(ds, "items", None)
    if not (isinstance(items, list) and hasattr(ds, "annotation")):
        return None
    parts: list[Any] = [type(ds).__qualname__, tuple(getattr(ds, "classes", ())),
                        getattr(ds, "strict_classes", None), getattr(ds, "keep_difficult", None)]
    try:
        for i, (folder, image_id) in enumerate(items):
            for path in (Path(folder) / "Annotations" / f"{image_id}.xml",
                         Path(ds.image_path(i))):
                st = os.stat(path)
                parts.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino))
    except (OSError, TypeError, ValueError):
        return None
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).digest()


def validate_dataset(ds: Dataset) -> list[BadItem]:
    """Every bad item of ``ds`` (see the module docstring); ``[]`` when all are good or when
    ``ds`` has no ``get_target`` / ``image_path`` to check. A VOC-layout set whose files are
    all unchanged (paths, sizes, mtimes, inodes) since this process validated it is not
    parsed again: its earlier result is returned (the demo trains six phases on one devkit)."""
    if not (callable(getattr(ds, "get_target", None)) and callable(getattr(ds, "image_path",
                                                                           None))):
        return []
    key = _memo_key(ds)
    if key is not None and key in _MEMO:
        return list(_MEMO[key])
    bad = []
    for i in range(len(ds)):  # type: ignore[arg-type]
        try:
            _check_item(ds, i)
        except _DATA_ERRORS as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            text = str(msg).splitlines()[0] if str(msg) else type(exc).__name__
            bad.append(BadItem(i, text))
    if key is not None:
        _MEMO[key] = list(bad)
    return bad


def summarize_bad(bad: list[BadItem], name: str, total: int, shown: int = 3) -> str:
    """One line: ``"train: 2 of 100 items are bad: <reason>; <reason>"``."""
    reasons = "; ".join(b.reason for b in bad[:shown])
    more = f"; ... ({len(bad) - shown} more)" if len(bad) > shown else ""
    return f"{name}: {len(bad)} of {total} items are bad: {reasons}{more}"


def drop_items(ds: Dataset, bad: list[BadItem]) -> Dataset:
    """``ds`` without the items in ``bad``: a shallow copy of a VOC / COCO data set with the
    kept entries (so ``eval_targets`` and ``classes`` still work), else a ``Subset``."""
    drop = {b.index for b in bad}
    if not drop:
        return ds
    keep = [i for i in range(len(ds)) if i not in drop]  # type: ignore[arg-type]
    items = getattr(ds, "items", None)
    cache = getattr(ds, "_cache", None)
    if isinstance(items, list) and isinstance(cache, list) and len(cache) == len(items):
        out = copy.copy(ds)
        out.items = [items[i] for i in keep]  # type: ignore[attr-defined]
        out._cache = [cache[i] for i in keep]  # type: ignore[attr-defined]
        return out
    images = getattr(ds, "images", None)
    if isinstance(images, list) and len(images) == len(ds):  # type: ignore[arg-type]
        out = copy.copy(ds)
        out.images = [images[i] for i in keep]  # type: ignore[attr-defined]
        return out
    return Subset(ds, keep)
