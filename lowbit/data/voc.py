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

import math
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit._files import read_input_bytes

if TYPE_CHECKING:  # torch is imported lazily: `lowbit voc-eval` never loads it
    from torch import Tensor

    from lowbit.data.voc_dataset import VOCDetection

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
    "load_voc_annotations",
    "annotation_entries",
    "annotation_cache_path",
    "parse_xml_bytes",
    "Transform",
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
    if hasattr(boxes, "detach"):  # a torch.Tensor (torch is not imported here)
        boxes = boxes.detach().cpu().double().numpy()
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


def _number(text: str, tag: str, path: Path) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{path}: malformed VOC annotation: <{tag}> is {text!r}") from None
    if not math.isfinite(v):  # inf / 1e400 / nan: refused here, never an OverflowError later
        raise ValueError(f"{path}: malformed VOC annotation: <{tag}> is {text!r} (not finite)")
    return v


class _Unsafe(Exception):
    """Raised from inside expat when a document declares a DTD, an entity or an external
    reference."""


_XML_DECL = re.compile(rb"<\?xml[^>]*>")
_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_PLAIN_ENCODINGS = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii"})


def _markup_declarations_impossible(data: bytes) -> bool:
    """True when ``data`` provably holds no ``<!...>`` markup (no DOCTYPE, ENTITY, comment or
    CDATA): an ASCII-compatible encoding (UTF-8 / ASCII, no NUL, no UTF-16 BOM, no other
    declared encoding) in which the two bytes ``<!`` never occur."""
    if b"<!" in data or b"\x00" in data or data.startswith((b"\xfe\xff", b"\xff\xfe")):
        return False
    m = _XML_DECL.match(data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
    if m is None:
        return True
    enc = _DECL_ENCODING.search(m.group())
    return enc is None or enc.group(1).lower() in _PLAIN_ENCODINGS


def _refuse_declarations(data: bytes) -> None:
    """One expat pass that raises :class:`_Unsafe` at the first DOCTYPE, entity declaration or
    external reference (before anything is expanded) and ``ExpatError`` if malformed."""

    def refuse(what: str) -> Callable[..., None]:
        def handler(*args: Any) -> None:
            raise _Unsafe(f"{what} {args[0]!r}" if args and isinstance(args[0], str) else what)

        return handler

    p = xml.parsers.expat.ParserCreate()
    p.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    p.StartDoctypeDeclHandler = refuse("DTD <!DOCTYPE>")
    p.EntityDeclHandler = refuse("entity declaration")
    p.UnparsedEntityDeclHandler = refuse("unparsed entity declaration")
    p.ExternalEntityRefHandler = refuse("external entity reference")
    p.NotationDeclHandler = refuse("notation declaration")
    p.Parse(data, True)


def parse_xml_bytes(data: bytes, path: str | Path) -> ET.Element:
    """Securely parse an XML document into an ElementTree element.

    Entities, DTDs (any ``<!DOCTYPE``) and external references are refused with
    ``ValueError("<path>: unsafe XML refused: Entities, DTDs and external references are
    forbidden ...")``; malformed XML gives ``ValueError("<path>: malformed XML: ... line L,
    column C")``. Speed: documents without any ``<!`` markup in a UTF-8/ASCII encoding (all
    VOC annotations) go straight to the C parser of :mod:`xml.etree.ElementTree`, which cannot
    meet an entity or DTD there; anything else is first checked by one expat pass with
    handlers that refuse declarations before they take effect. (defusedxml's tree builder runs
    in Python: 3-4x slower on VOC files.)
    """
    try:
        if not _markup_declarations_impossible(data):
            _refuse_declarations(data)
        return ET.fromstring(data)
    except _Unsafe as exc:
        raise ValueError(
            f"{path}: unsafe XML refused: Entities, DTDs and external references are "
            f"forbidden (found {exc})"
        ) from None
    except (ET.ParseError, xml.parsers.expat.ExpatError) as exc:
        raise ValueError(f"{path}: malformed XML: {exc}") from None
    except (RecursionError, MemoryError):
        raise ValueError(f"{path}: malformed XML: nested too deeply or too large") from None


def parse_voc_xml(path: str | Path, check_bounds: bool = True) -> VOCAnnotation:
    """Parse one VOC annotation file securely (see :func:`parse_xml_bytes`).

    Raises ``FileNotFoundError`` if missing and ``ValueError`` (naming the file) for unsafe or
    malformed XML, missing or non-finite fields, or -- with ``check_bounds`` -- a box not
    inside ``1 <= xmin <= xmax <= width``, ``1 <= ymin <= ymax <= height``.
    """
    path = Path(path)
    data = read_input_bytes(path, "annotation file")
    return _voc_from_root(parse_xml_bytes(data, path), path, check_bounds)


def _children(node: ET.Element) -> dict[str, ET.Element]:
    """First child of each tag (what ``node.find(tag)`` returns), in one pass."""
    out: dict[str, ET.Element] = {}
    for c in node:
        out.setdefault(c.tag, c)
    return out


def _field(ch: dict[str, ET.Element], tag: str, path: Path, default: str | None = None) -> str:
    """Stripped text of the first ``<tag>`` child (see :func:`_text`)."""
    child = ch.get(tag)
    text = None if child is None else child.text
    if text is None or not text.strip():
        if default is not None:
            return default
        raise ValueError(f"{path}: malformed VOC annotation: missing <{tag}>")
    return text.strip()


_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
_KNOWN = frozenset({"name", "bndbox", "difficult", "truncated"})


def _parse_voc_file(spath: str) -> VOCAnnotation:
    """:func:`parse_voc_xml` with ``check_bounds`` for a ``str`` path that was just stat-ed
    (the cache's hot loop: no pathlib until an error or the result needs it)."""
    try:
        with open(spath, "rb") as f:
            data = f.read()
    except OSError:
        return parse_voc_xml(spath)  # the same errors, with the same messages
    path = Path(spath)
    return _voc_from_root(parse_xml_bytes(data, path), path, True)


def _voc_from_root(root: ET.Element, path: Path, check_bounds: bool) -> VOCAnnotation:
    if root.tag != "annotation":
        raise ValueError(f"{path}: malformed VOC annotation: root element is <{root.tag}>")
    top = _children(root)
    size = top.get("size")
    if size is None:
        raise ValueError(f"{path}: malformed VOC annotation: missing <size>")
    sch = _children(size)
    width = int(_number(_field(sch, "width", path), "width", path))
    height = int(_number(_field(sch, "height", path), "height", path))
    objects: list[VOCObject] = []
    for k, obj in enumerate(root.iter("object")):
        och = _children(obj)
        name = _field(och, "name", path)
        bb = och.get("bndbox")
        if bb is None:
            raise ValueError(f"{path}: malformed VOC annotation: object {k} has no <bndbox>")
        bch = _children(bb)
        box = tuple(_number(_field(bch, t, path), t, path) for t in _BOX_TAGS)
        x1, y1, x2, y2 = box
        if check_bounds and not (1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height):
            raise ValueError(
                f"{path}: object {k} ({name}) box {box} is outside the {width}x{height} image "
                "(VOC boxes are 1-based inclusive: need 1 <= xmin <= xmax <= width)"
            )
        difficult = _field(och, "difficult", path, default="0") not in ("0", "false", "False")
        truncated = _field(och, "truncated", path, default="0") not in ("0", "false", "False")
        extra = {c.tag: (c.text or "").strip() for c in obj if c.tag not in _KNOWN and len(c) == 0}
        objects.append(VOCObject(name, box, difficult, truncated, extra))  # type: ignore[arg-type]
    filename = _field(top, "filename", path, default=path.stem + ".jpg")
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
    ids = [line.split()[0] for line in _read_text(path).splitlines() if line.strip()]
    return ids


def _read_text(path: Path) -> str:
    """UTF-8 text of a devkit list file; ``ValueError`` naming the file if it is not text."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a file") from None


def read_classes(path: str | Path) -> tuple[str, ...]:
    """Class names from a ``classes.txt`` (one per line, blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classes file not found")
    names = tuple(s.strip() for s in _read_text(path).splitlines() if s.strip())
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


# ----------------------------------------------------------------------------- annotation cache
#: Bump when parsing semantics change: every cache written before is then ignored.
_CACHE_FORMAT = "lowbit-voc-annotations-1"


def annotation_cache_path(folder: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the annotation cache of a devkit folder lives.

    ``cache_dir`` or ``$LOWBIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/lowbit`` or
    ``~/.cache/lowbit``, file ``voc-annotations-<16 hex of sha256(absolute folder)>.json``:
    one file per devkit folder (all splits), never inside the (possibly read-only) devkit.
    """
    import hashlib
    import os

    if cache_dir is None:
        env = os.environ.get("LOWBIT_CACHE_DIR")
        xdg = os.environ.get("XDG_CACHE_HOME")
        if env:
            cache_dir = Path(env)
        else:
            cache_dir = (Path(xdg) if xdg else Path.home() / ".cache") / "lowbit"
    key = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8", "surrogatepass"))
    return Path(cache_dir) / f"voc-annotations-{key.hexdigest()[:16]}.json"


def _to_entry(ann: VOCAnnotation, st: Any) -> list[Any]:
    objs = [[o.name, *o.bbox, o.difficult, o.truncated, o.extra] for o in ann.objects]
    return [st.st_size, st.st_mtime_ns, ann.filename, ann.width, ann.height, objs]


def _from_entry(entry: Any, path: Path) -> VOCAnnotation:
    """Rebuild an annotation from a cache entry; raises TypeError/ValueError if malformed."""
    _, _, filename, width, height, objs = entry
    objects = []
    for name, x1, y1, x2, y2, difficult, truncated, extra in objs:
        box = (float(x1), float(y1), float(x2), float(y2))
        if not (isinstance(name, str) and isinstance(extra, dict) and all(map(math.isfinite, box))):
            raise ValueError("malformed cache entry")
        objects.append(VOCObject(name, box, bool(difficult), bool(truncated), dict(extra)))
    if not (isinstance(filename, str) and type(width) is int and type(height) is int):
        raise ValueError("malformed cache entry")
    return VOCAnnotation(path, filename, width, height, objects)


def load_voc_annotations(
    folder: str | Path,
    image_ids: Sequence[str],
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> list[VOCAnnotation]:
    """Parse ``folder/Annotations/<id>.xml`` for every id (``check_bounds=True``), through a
    JSON cache.

    Cache (see :func:`annotation_cache_path` for where): one entry per image id holding the
    parsed annotation and the XML file's ``st_size`` and ``st_mtime_ns``. An entry is used only
    when both still match the file (a file edited in place with the same size within the same
    filesystem timestamp tick would be missed, as with ``make``); anything else -- a changed,
    new or malformed entry, a cache of another format version, a corrupt cache file -- is
    parsed again. The file is rewritten (temp file + rename, so readers never see half a file)
    only when something was parsed; an unwritable cache folder just means no cache. Errors are
    those of :func:`parse_voc_xml`, never cached. Results equal an uncached parse exactly
    (floats round-trip through JSON).
    """
    folder = Path(folder)
    entries = annotation_entries(folder, image_ids, cache, cache_dir)
    out = []
    for image_id, entry in zip(image_ids, entries):
        path = folder / "Annotations" / f"{image_id}.xml"
        try:
            out.append(_from_entry(entry, path))
        except (TypeError, ValueError):  # a hand-edited cache: parse the file itself
            out.append(parse_voc_xml(path))
    return out


def annotation_entries(
    folder: str | Path,
    image_ids: Sequence[str],
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> list[list[Any]]:
    """The raw cache entries behind :func:`load_voc_annotations` (fast path of the VOC metric):
    ``[size, mtime_ns, filename, width, height, objects]`` per id with ``objects`` a list of
    ``[name, xmin, ymin, xmax, ymax, difficult, truncated, extra]`` (VOC 1-based pixels).
    Entries read from the cache file are only shape-checked: a consumer that meets a malformed
    one must fall back to ``cache=False``."""
    import json
    import os

    folder = Path(folder)
    ann_dir = folder / "Annotations"
    cpath = None
    if cache:
        try:
            cpath = annotation_cache_path(folder, cache_dir)
        except (RuntimeError, OSError):  # no home folder: no cache
            cpath = None
    old: dict[str, Any] = {}
    if cpath is not None:
        try:
            data = json.loads(cpath.read_bytes())
            if isinstance(data, dict) and data.get("format") == _CACHE_FORMAT:
                if isinstance(data.get("entries"), dict):
                    old = data["entries"]
        except (OSError, ValueError, RecursionError):
            old = {}
    out: list[list[Any]] = []
    fresh: dict[str, Any] = {}
    ann_str = str(ann_dir)
    for image_id in image_ids:
        spath = f"{ann_str}/{image_id}.xml"  # str, not Path: 5,000 stats per run
        try:
            st = os.stat(spath)
        except FileNotFoundError:
            raise FileNotFoundError(f"{spath}: annotation file not found") from None
        except OSError as exc:
            raise ValueError(f"{spath}: cannot read annotation: {exc.strerror or exc}") from None
        entry = old.get(image_id)
        if not (
            type(entry) is list and len(entry) == 6 and entry[0] == st.st_size
            and entry[1] == st.st_mtime_ns and type(entry[5]) is list
        ):  # fmt: skip
            entry = _to_entry(_parse_voc_file(spath), st)
            fresh[image_id] = entry
        out.append(entry)
    if cpath is not None and fresh:
        text = json.dumps({"format": _CACHE_FORMAT, "folder": str(folder.resolve()),
                           "entries": {**old, **fresh}})  # fmt: skip
        tmp = cpath.with_name(f"{cpath.name}.{os.getpid()}.tmp")
        try:
            cpath.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, cpath)
        except OSError:  # read-only home, full disk...: work without a cache
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return out


def load_image(path: str | Path) -> Tensor:
    """Decode an image with PIL into ``float32[3, H, W]`` RGB in ``[0, 1]``.

    Raises ``FileNotFoundError`` if missing and ``ValueError`` naming the file for anything PIL
    cannot decode, including decompression bombs (more than twice PIL's
    ``Image.MAX_IMAGE_PIXELS``, e.g. a 40000x40000 PNG saved as ``.jpg``).
    """
    import torch
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: image refused as too large: {exc}") from None
    except (OSError, ValueError, EOFError, SyntaxError, MemoryError) as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# ----------------------------------------------------------------------------- dataset
Transform = Callable[["Tensor", dict[str, Any]], tuple["Tensor", dict[str, Any]]]


def __getattr__(name: str) -> Any:
    # VOCDetection subclasses torch's Dataset: imported on first use so that the parsing half
    # of this module (and `lowbit voc-eval`) never loads torch.
    if name == "VOCDetection":
        from lowbit.data.voc_dataset import VOCDetection

        return VOCDetection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
