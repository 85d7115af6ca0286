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
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: `lowbit voc-eval` never loads it
    import xml.etree.ElementTree as ET

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
    "load_image_uint8",
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

    import xml.parsers.expat

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
    import xml.etree.ElementTree as ET  # imported here: plain VOC files never need it
    import xml.parsers.expat

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
    from lowbit._files import read_input_bytes

    path = Path(path)
    data = read_input_bytes(path, "annotation file")
    fast = _fast_voc(data, check_bounds)  # plain VOC files; None: anything else
    if fast is not None:
        return _annotation_from_fast(fast, path)
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


def _stat(spath: str) -> os.stat_result:
    """``os.stat`` of an annotation file, errors naming it as the cache loop reports them."""
    try:
        return os.stat(spath)
    except FileNotFoundError:
        raise FileNotFoundError(f"{spath}: annotation file not found") from None
    except OSError as exc:
        raise ValueError(f"{spath}: cannot read annotation: {exc.strerror or exc}") from None


def _parse_entry(spath: str) -> list[Any]:
    """The cache entry of the annotation file ``spath`` (a ``str``: no pathlib in the hot loop),
    parsed with ``check_bounds``: one ``open`` + ``fstat`` + ``read`` and :func:`_fast_voc`;
    a file it cannot read in one go or outside the fast grammar goes through :func:`_stat` and
    :func:`parse_voc_xml` (the same errors, with the same messages)."""
    try:
        fd = os.open(spath, os.O_RDONLY)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            st = os.fstat(fd)
            data = os.read(fd, st.st_size + 1)  # + 1: a file that grew is read the slow way
        except OSError:  # a folder, an I/O error: reported below
            data = None
        finally:
            os.close(fd)
        if data is not None and len(data) == st.st_size:
            fast = _fast_voc(data)
            if fast is not None:
                filename, width, height, objs = fast
                if filename is None:
                    filename = Path(spath).stem + ".jpg"
                return [st.st_size, st.st_mtime_ns, filename, width, height, objs]
            path = Path(spath)
            return _to_entry(_voc_from_root(parse_xml_bytes(data, path), path, True), st)
    st = _stat(spath)
    return _to_entry(parse_voc_xml(spath), st)


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


# ----------------------------------------------------------------------------- fast path
# Plain VOC files (what the VOC devkit and labelling tools write) are parsed by compiled
# regular expressions on the decoded text instead of ElementTree + a Python tree walk. The
# grammar accepted is deliberately narrow, and every document outside it -- or inside it but
# with anything the ElementTree path would refuse (a missing or non-numeric field, a box out
# of bounds, duplicated child tags) -- goes to that path, which gives the answer or the error.
# Inside the grammar the result is exactly the ElementTree path's (tests/data/test_voc_fast.py).
#
#   document  := BOM? xmldecl? S "<annotation>" (text top)* text "</annotation>" S
#   xmldecl   := '<?xml version="1.0"' (encoding="utf-8", any case)? (standalone=yes|no)? '?>'
#   top       := leaf | container | object        container := <t> (text leaf)+ text </t>
#   object    := "<object>" (text (leaf | bndbox))* text "</object>"
#   bndbox    := "<bndbox>" (text leaf)* text "</bndbox>"
#   leaf      := <t> text </t>
#
# Tags are ASCII names without attributes (``<t>``, ``</t>``: nothing else inside the
# brackets); ``text`` is character data without ``<`` or ``&`` -- so no entity or character
# reference, comment, CDATA section, processing instruction or DOCTYPE can occur -- and
# without the characters XML forbids; a ``]]>`` anywhere sends the file to ElementTree. No
# tag below the root is named ``object`` except the top-level objects, and none inside an
# object is named ``bndbox`` except its box, so ``root.iter("object")`` is exactly the
# top-level objects. Line ends are normalised first (``\r\n`` and ``\r`` -> ``\n``), as XML
# processors do.
#
# Two patterns: the *canonical* one (``<filename>`` before ``<size>``, which holds ``width,
# height, depth?``; objects after every other top-level element, each ``name, pose?,
# truncated?, difficult?, bndbox(xmin, ymin, xmax, ymax)`` in this order, as the VOC2007
# devkit and write_voc_xml without ``extra`` write them) captures filename and size in its
# one match and lets one ``findall`` capture every object's fields; any other document of the
# grammar takes the general one (one ``findall`` per object part).
_S = r"[ \t\n]*+"
_TXT = r"[^<]*+"  # the forbidden characters (and "&") are refused before: see _fast_voc
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*+"
_DECL = (
    r"<\?xml[ \t\n]++version[ \t\n]*+=[ \t\n]*+(?:\"1\.0\"|'1\.0')"
    r"(?:[ \t\n]++encoding[ \t\n]*+=[ \t\n]*+(?:\"[Uu][Tt][Ff]-8\"|'[Uu][Tt][Ff]-8'))?"
    r"(?:[ \t\n]++standalone[ \t\n]*+=[ \t\n]*+(?:\"(?:yes|no)\"|'(?:yes|no)'))?"
    r"[ \t\n]*+\?>"
)
# (Python 3.11's re raises SystemError on possessive repeats of groups holding atomic
# alternatives: groups repeat greedily; every element is atomic, so failing is linear.)


def _leaf(group: str, not_named: str) -> str:
    """Regex of one leaf element ``<t>text</t>`` whose tag is none of ``not_named`` (``|``)."""
    return rf"<(?P<{group}>(?!(?:{not_named})>){_NAME})>{_TXT}</(?P={group})>"


def _top(suffix: str, not_named: str, objects: bool = True) -> str:
    """Regex of one child of the root: a leaf, a container of leaves or (``objects``) an
    object; leaves and containers are named neither ``object`` nor any of ``not_named``."""
    avoid = f"object|{not_named}" if not_named else "object"
    cont = (
        rf"<(?P<c{suffix}>(?!(?:{avoid})>){_NAME})>"
        rf"(?:{_TXT}{_leaf('k' + suffix, 'object')})+{_TXT}</(?P=c{suffix})>"
    )
    if not objects:
        return rf"(?>{_leaf('t' + suffix, avoid)}|{cont})"
    bndbox = rf"<bndbox>(?:{_TXT}{_leaf('b' + suffix, 'object|bndbox')})*{_TXT}</bndbox>"
    obj = (
        rf"<object>(?:{_TXT}(?>{_leaf('o' + suffix, 'object|bndbox')}|{bndbox}))*"
        rf"{_TXT}</object>"
    )
    return rf"(?>{_leaf('t' + suffix, avoid)}|{cont}|{obj})"


def _canonical_object(capture: bool) -> str:
    """Regex of one canonical object; ``capture``: groups name, pose + ``</pose>`` (never
    empty when present), truncated, difficult, xmin, ymin, xmax, ymax."""
    g = f"({_TXT})" if capture else _TXT
    pose = f"({_TXT}</pose>)" if capture else f"{_TXT}</pose>"
    return (
        rf"<object>{_TXT}<name>{g}</name>{_TXT}(?:<pose>{pose}{_TXT})?"
        rf"(?:<truncated>{g}</truncated>{_TXT})?(?:<difficult>{g}</difficult>{_TXT})?"
        rf"<bndbox>{_TXT}<xmin>{g}</xmin>{_TXT}<ymin>{g}</ymin>{_TXT}<xmax>{g}</xmax>{_TXT}"
        rf"<ymax>{g}</ymax>{_TXT}</bndbox>{_TXT}</object>"
    )


_PROLOG = rf"\ufeff?+(?:{_DECL})?{_S}<annotation>"
#: ``size``: the first top-level ``<size>``, which must be a container of leaves.
_SIZE = rf"<size>(?P<size>(?:{_TXT}{_leaf('s', 'object')})+{_TXT})</size>"
_SOURCES: dict[str, str] = {
    # the first top-level <filename> (a leaf) before the first <size> (width, height, depth?)
    "canonical": (
        rf"{_PROLOG}(?:{_TXT}{_top('1', 'filename|size', False)})*{_TXT}"
        rf"<filename>(?P<f>{_TXT})</filename>(?:{_TXT}{_top('2', 'size', False)})*{_TXT}"
        rf"<size>{_TXT}<width>(?P<w>{_TXT})</width>{_TXT}<height>(?P<h>{_TXT})</height>{_TXT}"
        rf"(?:<depth>{_TXT}</depth>{_TXT})?</size>(?:{_TXT}{_top('3', '', False)})*"
        rf"(?P<objs>(?:{_TXT}{_canonical_object(False)})*){_TXT}</annotation>{_S}"
    ),
    "general": (
        rf"{_PROLOG}(?P<pre>(?:{_TXT}{_top('1', 'size')})*{_TXT}){_SIZE}"
        rf"(?:{_TXT}{_top('2', '')})*{_TXT}</annotation>{_S}"
    ),
    # from the start of the root's content: the first top-level <filename>, a leaf
    "filename": rf"(?:{_TXT}{_top('3', 'filename')})*{_TXT}<filename>(?P<f>{_TXT})</filename>",
    "objects": _canonical_object(True),
    "leaf": rf"<({_NAME})>({_TXT})</\1>",
}
_COMPILED: dict[str, re.Pattern[str]] = {}


def _rx(name: str) -> re.Pattern[str]:
    """The fast-path pattern ``name``, compiled on first use (a run that only reads the
    annotation cache never pays for it)."""
    rx = _COMPILED.get(name)
    if rx is None:
        rx = _COMPILED[name] = re.compile(_SOURCES[name])
    return rx


#: Bytes XML forbids in a document (``\r`` is normalised before), deleted by ``translate``.
_FORBIDDEN = bytes(range(0x09)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20))
_SPECIAL = _FORBIDDEN + b"\r&]"  # one C pass: most files hold none of these bytes
_FALSE = ("0", "false", "False")
_FLAGS = {"0": False, "1": True, "": False}  # the usual texts of <difficult>, <truncated>

#: ``(filename or None, width, height, objects)``, objects as cache entries
#: ``[name, xmin, ymin, xmax, ymax, difficult, truncated, extra]``.
FastVOC = tuple[str | None, int, int, list[list[Any]]]


def _fast_voc(data: bytes, check_bounds: bool = True) -> FastVOC | None:
    """Parse a plain VOC file (the grammar above) without building a tree.

    Returns ``(filename, width, height, objects)`` -- ``filename`` ``None`` when the file has
    none (the caller substitutes ``<stem>.jpg``), ``objects`` as cache entries -- exactly what
    :func:`_voc_from_root` gives after :func:`parse_xml_bytes`, or ``None`` when ``data`` is
    outside the grammar or would be an error there: the caller then takes that path, which
    raises the error (unsafe XML, malformed XML or VOC content, a box out of bounds).
    """
    if len(data.translate(None, _SPECIAL)) != len(data):
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"&" in data or b"]]>" in data or len(data.translate(None, _FORBIDDEN)) != len(data):
            return None
    if not data.isascii() and (b"\xef\xbf\xbe" in data or b"\xef\xbf\xbf" in data):
        return None  # U+FFFE, U+FFFF: not XML characters
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    doc = _rx("canonical").fullmatch(text)
    general = doc is None
    if not general:
        filename: str | None = doc["f"].strip() or None
        wh: tuple[str | None, str | None] = (doc["w"], doc["h"])
    else:
        doc = _rx("general").fullmatch(text)
        if doc is None:
            return None
        sizes = _rx("leaf").findall(doc["size"])
        size = dict(sizes)
        if len(size) != len(sizes):  # duplicated tags: ElementTree's path takes the first
            return None
        wh = (size.get("width"), size.get("height"))
        filename = None
        if "<filename>" in text:
            fm = _rx("filename").match(text, doc.start("pre"))
            if fm is None:  # <filename> nested only, or a container: ElementTree's path
                return None
            filename = fm["f"].strip() or None
    try:
        w, h = float(wh[0]), float(wh[1])  # type: ignore[arg-type]
    except (TypeError, ValueError):  # missing (None) or not a number
        return None
    if not (math.isfinite(w) and math.isfinite(h)):
        return None
    width, height = int(w), int(h)
    if general:
        objects = _general_objects(text.split("<object>")[1:], width, height, check_bounds)
    else:
        objects = _canonical_objects(text, doc.start("objs"), doc.end("objs"), width, height,
                                     check_bounds)  # fmt: skip
    return None if objects is None else (filename, width, height, objects)


def _box_ok(
    box: tuple[float, float, float, float], width: int, height: int, check_bounds: bool
) -> bool:
    """The ElementTree path's box checks: inside the image, or (no bounds) finite."""
    x1, y1, x2, y2 = box
    if check_bounds:
        return 1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height
    return all(map(math.isfinite, box))


def _canonical_objects(
    text: str, start: int, end: int, width: int, height: int, check_bounds: bool
) -> list[list[Any]] | None:
    """The objects of a document matched by ``_rx("canonical")`` (``text[start:end]`` holds
    them all), or ``None`` if ElementTree's path must decide."""
    flags = _FLAGS
    objects: list[list[Any]] = []
    for name, pose, trunc, diff, a, b, c, d in _rx("objects").findall(text, start, end):
        name = name.strip()
        try:
            x1, y1, x2, y2 = float(a), float(b), float(c), float(d)
        except ValueError:
            return None
        if not name:
            return None
        if check_bounds:
            if not (1 <= x1 <= x2 <= width and 1 <= y1 <= y2 <= height):
                return None
        elif not _box_ok((x1, y1, x2, y2), width, height, False):
            return None
        difficult = flags.get(diff)
        if difficult is None:
            difficult = (diff.strip() or "0") not in _FALSE
        truncated = flags.get(trunc)
        if truncated is None:
            truncated = (trunc.strip() or "0") not in _FALSE
        extra = {"pose": pose[:-7].strip()} if pose else {}
        objects.append([name, x1, y1, x2, y2, difficult, truncated, extra])
    return objects


def _general_objects(
    bodies: list[str], width: int, height: int, check_bounds: bool
) -> list[list[Any]] | None:
    """The objects of a document matched by ``_rx("general")``: ``bodies`` are the texts
    after each ``<object>`` (each runs to its ``</object>``); ``None`` if ElementTree's path
    must decide (no or two ``<bndbox>``, duplicated tags, a missing or bad field)."""
    leaf = _rx("leaf")
    objects: list[list[Any]] = []
    for body in bodies:
        i = body.find("<bndbox>")
        if i < 0:
            return None
        j = body.find("</bndbox>", i)
        end = body.find("</object>", j)
        if body.find("<bndbox>", j, end) >= 0:
            return None
        leaves = leaf.findall(body, 0, i)
        leaves += leaf.findall(body, j + 9, end)
        fields = dict(leaves)
        corners = leaf.findall(body, i + 8, j)
        coords = dict(corners)
        if len(fields) != len(leaves) or len(coords) != len(corners):
            return None
        name = (fields.get("name") or "").strip()
        try:
            box = tuple(float(coords[t]) for t in _BOX_TAGS)
        except (KeyError, ValueError):
            return None
        if not name or not _box_ok(box, width, height, check_bounds):  # type: ignore[arg-type]
            return None
        difficult = ((fields.get("difficult") or "").strip() or "0") not in _FALSE
        truncated = ((fields.get("truncated") or "").strip() or "0") not in _FALSE
        extra = {k: v.strip() for k, v in leaves if k not in _KNOWN}
        objects.append([name, *box, difficult, truncated, extra])
    return objects


def _annotation_from_fast(fast: FastVOC, path: Path) -> VOCAnnotation:
    """The :class:`VOCAnnotation` of a :func:`_fast_voc` result for the file ``path``."""
    filename, width, height, objs = fast
    objects = [VOCObject(o[0], (o[1], o[2], o[3], o[4]), o[5], o[6], o[7]) for o in objs]
    return VOCAnnotation(path, filename or path.stem + ".jpg", width, height, objects)


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
    import xml.etree.ElementTree as ET

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
    one must fall back to ``cache=False``.

    Python's cyclic garbage collector is paused meanwhile (the entries are tens of thousands
    of new lists and dicts, none cyclic: each collection would only re-walk them)."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return _annotation_entries(Path(folder), image_ids, cache, cache_dir)
    finally:
        if enabled:
            gc.enable()


def _annotation_entries(
    folder: Path, image_ids: Sequence[str], cache: bool, cache_dir: str | Path | None
) -> list[list[Any]]:
    """:func:`annotation_entries` (with the garbage collector paused)."""
    import json

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
        spath = f"{ann_str}/{image_id}.xml"  # str, not Path: 5,000 files per run
        entry = old.get(image_id) if old else None
        if entry is not None:
            st = _stat(spath)
            if (
                type(entry) is list and len(entry) == 6 and entry[0] == st.st_size
                and entry[1] == st.st_mtime_ns and type(entry[5]) is list
            ):  # fmt: skip
                out.append(entry)
                continue
        entry = _parse_entry(spath)  # new, changed or malformed entry: parse the file
        fresh[image_id] = entry
        out.append(entry)
    if cpath is not None and fresh:
        text = json.dumps(
            {"format": _CACHE_FORMAT, "folder": str(folder.resolve()), "entries": {**old, **fresh}},
            check_circular=False, separators=(",", ":"),  # plain lists and dicts: no cycles
        )  # fmt: skip
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
    """Decode an image with PIL into ``float32[3, H, W]`` RGB in ``[0, 1]`` (the ``uint8`` of
    :func:`load_image_uint8` divided by 255).

    Raises ``FileNotFoundError`` if missing and ``ValueError`` naming the file for anything PIL
    cannot decode, including decompression bombs (more than twice PIL's
    ``Image.MAX_IMAGE_PIXELS``, e.g. a 40000x40000 PNG saved as ``.jpg``).
    """
    return load_image_uint8(path).float().div_(255.0)


def load_image_uint8(path: str | Path) -> Tensor:
    """Decode an image with PIL into ``uint8[3, H, W]`` RGB; errors as :func:`load_image`."""
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
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------- dataset
Transform = Callable[["Tensor", dict[str, Any]], tuple["Tensor", dict[str, Any]]]


def __getattr__(name: str) -> Any:
    # VOCDetection subclasses torch's Dataset: imported on first use so that the parsing half
    # of this module (and `lowbit voc-eval`) never loads torch.
    if name == "VOCDetection":
        from lowbit.data.voc_dataset import VOCDetection

        return VOCDetection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
