"""The regex fast path of the VOC annotation parser (``lowbit.data.voc._fast_voc``).

Oracle: the ElementTree path (``_voc_from_root(parse_xml_bytes(...))``), which is the
parser of record: the fast path must give exactly its :class:`VOCAnnotation` -- or decline
(``None``) so that the ElementTree path answers, with its errors. Every test says which path
a file took.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lowbit.data.voc import (
    VOCAnnotation,
    _annotation_from_fast,
    _fast_voc,
    _rx,
    _to_entry,
    _voc_from_root,
    annotation_entries,
    parse_voc_xml,
    parse_xml_bytes,
    write_voc_xml,
)


def reference(data: bytes, path: Path, check_bounds: bool = True) -> VOCAnnotation | str:
    """The ElementTree path's annotation, or its error message."""
    try:
        return _voc_from_root(parse_xml_bytes(data, path), path, check_bounds)
    except ValueError as exc:
        return str(exc)


def outcome(path: Path, check_bounds: bool = True) -> VOCAnnotation | str:
    """What the public parser gives: the annotation or the error message."""
    try:
        return parse_voc_xml(path, check_bounds)
    except ValueError as exc:
        return str(exc)


def assert_fast_equals_reference(path: Path, check_bounds: bool = True) -> str:
    """Fast path taken and equal to the reference; returns which pattern matched."""
    data = path.read_bytes()
    ref = reference(data, path, check_bounds)
    assert isinstance(ref, VOCAnnotation), ref
    fast = _fast_voc(data, check_bounds)
    assert fast is not None, f"{path.name} fell back"
    assert _annotation_from_fast(fast, path) == ref
    assert parse_voc_xml(path, check_bounds) == ref
    text = data.decode("utf-8")
    return "canonical" if _rx("canonical").fullmatch(text) else "general"


# ----------------------------------------------------------------------------- real writers
def test_digits_devkit_every_file(tmp_path: Path) -> None:
    from lowbit.data.digits import generate_digits

    generate_digits(tmp_path / "digits", train=12, test=6, size=64, workers=1)
    files = sorted((tmp_path / "digits" / "Annotations").glob("*.xml"))
    assert len(files) == 18
    kinds = {assert_fast_equals_reference(f) for f in files}
    assert kinds == {"general"}  # digit_index extras: the general pattern
    assert sum(len(parse_voc_xml(f).objects) for f in files) > 0


def test_write_voc_xml_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    kinds = []
    for i in range(40):
        k = int(rng.integers(0, 5))
        w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        x1 = rng.integers(0, w - 5, k)
        y1 = rng.integers(0, h - 5, k)
        boxes = np.stack([x1, y1, x1 + rng.integers(1, 5, k), y1 + rng.integers(1, 5, k)], 1)
        extra = [{"occluded": str(j % 2), "note": "é ü ✓"} for j in range(k)] if i % 2 else None
        path = tmp_path / f"{i}.xml"
        write_voc_xml(
            path,
            f"{i}.jpg",
            w,
            h,
            [f"cls{j}" for j in range(k)],
            boxes,
            difficult=[j % 3 == 0 for j in range(k)],
            truncated=[j % 2 == 0 for j in range(k)],
            extra=extra,
        )
        kinds.append(assert_fast_equals_reference(path))
        ann = parse_voc_xml(path)
        np.testing.assert_array_equal(ann.boxes(), boxes.astype(float))  # independent oracle
        assert [o.difficult for o in ann.objects] == [j % 3 == 0 for j in range(k)]
    assert set(kinds) == {"canonical", "general"}
    assert kinds[0::2] == ["canonical"] * 20  # no extra fields: the one-findall pattern


VOC2007 = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>000005.jpg</filename>
\t<source>
\t\t<database>The VOC2007 Database</database>
\t\t<annotation>PASCAL VOC2007</annotation>
\t\t<image>flickr</image>
\t\t<flickrid>325991873</flickrid>
\t</source>
\t<owner>
\t\t<flickrid>archintent louisville</flickrid>
\t\t<name>?</name>
\t</owner>
\t<size>
\t\t<width>500</width>
\t\t<height>375</height>
\t\t<depth>3</depth>
\t</size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>chair</name>
\t\t<pose>Rear</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>263</xmin>
\t\t\t<ymin>211</ymin>
\t\t\t<xmax>324</xmax>
\t\t\t<ymax>339</ymax>
\t\t</bndbox>
\t</object>
\t<object>
\t\t<name>chair</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>1</truncated>
\t\t<difficult>1</difficult>
\t\t<bndbox>
\t\t\t<xmin>5</xmin>
\t\t\t<ymin>244</ymin>
\t\t\t<xmax>67</xmax>
\t\t\t<ymax>374</ymax>
\t\t</bndbox>
\t</object>
</annotation>
"""

VOC2012 = """<annotation>
\t<filename>2008_000008.jpg</filename>
\t<folder>VOC2012</folder>
\t<object>
\t\t<name>horse</name>
\t\t<bndbox>
\t\t\t<xmax>471</xmax>
\t\t\t<xmin>53</xmin>
\t\t\t<ymax>420</ymax>
\t\t\t<ymin>87</ymin>
\t\t</bndbox>
\t\t<difficult>0</difficult>
\t\t<occluded>1</occluded>
\t\t<pose>Left</pose>
\t\t<truncated>0</truncated>
\t</object>
\t<segmented>0</segmented>
\t<size>
\t\t<depth>3</depth>
\t\t<height>442</height>
\t\t<width>500</width>
\t</size>
</annotation>
"""


def test_devkit_layouts(tmp_path: Path) -> None:
    p07 = tmp_path / "000005.xml"
    p07.write_text(VOC2007)
    assert assert_fast_equals_reference(p07) == "canonical"
    ann = parse_voc_xml(p07)  # the values, read off the text above
    assert (ann.filename, ann.width, ann.height) == ("000005.jpg", 500, 375)
    assert [o.bbox for o in ann.objects] == [(263, 211, 324, 339), (5, 244, 67, 374)]
    assert [(o.difficult, o.truncated) for o in ann.objects] == [(False, False), (True, True)]
    assert [o.extra for o in ann.objects] == [{"pose": "Rear"}, {"pose": "Unspecified"}]
    p12 = tmp_path / "2008_000008.xml"
    p12.write_text(VOC2012)  # objects before <size>, fields in another order
    assert assert_fast_equals_reference(p12) == "general"
    obj = parse_voc_xml(p12).objects[0]
    assert obj.bbox == (53, 87, 471, 420) and obj.extra == {"occluded": "1", "pose": "Left"}
    for name, text in (
        ("crlf", VOC2007.replace("\n", "\r\n")),
        ("cr", VOC2012.replace("\n", "\r")),
        ("decl", '<?xml version="1.0" encoding="UTF-8"?>\n' + VOC2007),
    ):
        path = tmp_path / f"{name}.xml"
        path.write_bytes(text.encode())
        assert_fast_equals_reference(path)
    bom = tmp_path / "bom.xml"
    bom.write_bytes(b"\xef\xbb\xbf" + VOC2007.encode())
    assert_fast_equals_reference(bom)


def test_annotation_entries_equal_the_reference(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    (kit / "Annotations").mkdir(parents=True)
    (kit / "Annotations" / "a.xml").write_text(VOC2007)
    (kit / "Annotations" / "b.xml").write_text(VOC2012)
    (kit / "Annotations" / "c.xml").write_text(  # no <filename>: <stem>.jpg
        VOC2007.replace("\t<filename>000005.jpg</filename>\n", "")
    )
    (kit / "Annotations" / "d.xml").write_text(  # a comment: ElementTree's path
        VOC2007.replace("<segmented>", "<!-- x --><segmented>")
    )
    ids = ["a", "b", "c", "d"]
    got = annotation_entries(kit, ids, cache=False)
    for image_id, entry in zip(ids, got):
        path = kit / "Annotations" / f"{image_id}.xml"
        ref = reference(path.read_bytes(), path)
        assert isinstance(ref, VOCAnnotation)
        assert entry == _to_entry(ref, os.stat(path))
    assert got[2][2] == "c.jpg"
    cached = annotation_entries(kit, ids, cache_dir=tmp_path / "cache")  # written, then read
    assert annotation_entries(kit, ids, cache_dir=tmp_path / "cache") == cached == got


# ----------------------------------------------------------------------------- generated
_WS = st.text(alphabet=" \t\n\r", max_size=3)
#: character data: any XML character but markup ("<", "&"), with the awkward ones often
#: (characters XML forbids are inserted by test_mutated_documents_agree)
_CHARS = st.one_of(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<&\ufffe\uffff"),
    st.sampled_from(" \t\n\r>]'\"\u00a0\u2028\x85\ufeff"),
)
_TEXT = st.text(_CHARS, max_size=8)
_NAME = st.text(_CHARS, min_size=1, max_size=8)
_TAG = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,6}", fullmatch=True).filter(
    lambda t: (
        t not in {"object", "bndbox", "name", "difficult", "truncated", "size", "filename", "pose"}
    )
)
_FLAG = st.sampled_from(["0", "1", "true", "false", "False", " 1 ", "", "\n0\n", "yes"])


def _num(v: int) -> st.SearchStrategy[str]:
    """A number as text: plain, padded, with a fraction, or an exponent."""
    return st.sampled_from([str(v), f" {v} ", f"{v}.0", f"\n\t{v}.5", f"{v}e0", f"{v}_0"])


@st.composite
def voc_documents(draw: Any) -> tuple[bytes, bool]:
    """A VOC file of the fast grammar: random whitespace and order, optional fields, extra
    leaves, unicode text; boxes mostly inside the image. Returns (bytes, canonical layout):
    canonical = filename before size, objects last, their fields in VOC2007's order."""
    ws = lambda: draw(_WS)  # noqa: E731
    width, height = draw(st.integers(1, 600)), draw(st.integers(1, 600))

    def leaf(tag: str, text: str) -> str:
        return f"{ws()}<{tag}>{text}</{tag}>"

    objects = []
    canonical = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        x1 = draw(st.integers(0, width + 1))
        y1 = draw(st.integers(0, height + 1))
        x2 = draw(st.integers(x1, width + 1))
        y2 = draw(st.integers(y1, height + 1))
        coords = [
            leaf(t, draw(_num(v)))
            for t, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2))
        ]
        fields = {"name": leaf("name", draw(_NAME))}
        for tag in ("pose", "truncated", "difficult"):
            if draw(st.booleans()):
                fields[tag] = leaf(tag, draw(_TEXT if tag == "pose" else _FLAG))
        if not canonical:
            coords = draw(st.permutations(coords))
        bndbox = f"{ws()}<bndbox>{''.join(coords)}{ws()}</bndbox>"
        if canonical:
            children = [*fields.values(), bndbox]
        else:
            extra = draw(st.lists(_TAG, max_size=2, unique=True))
            children = [*fields.values(), bndbox, *(leaf(t, draw(_TEXT)) for t in extra)]
            children = draw(st.permutations(children))
        objects.append(f"{ws()}<object>{''.join(children)}{ws()}</object>")
    dims = leaf("width", draw(_num(width))) + leaf("height", draw(_num(height)))
    size = f"{ws()}<size>{dims}{leaf('depth', '3')}{ws()}</size>"
    top = [leaf("folder", draw(_TEXT)), size, leaf("segmented", "0")]
    filename = leaf("filename", draw(_TEXT))
    if canonical or draw(st.booleans()):
        top.append(filename)
    if draw(st.booleans()):
        source = leaf("database", draw(_TEXT)) + leaf("annotation", "VOC")
        top.append(f"{ws()}<source>{source}{ws()}</source>")
    top = draw(st.permutations(top))
    if canonical and top.index(filename) > top.index(size):  # canonical: filename first
        i, j = top.index(size), top.index(filename)
        top[i], top[j] = top[j], top[i]
    body = top + objects if canonical else draw(st.permutations(top + objects))
    decl = draw(
        st.sampled_from(
            [
                "",
                '<?xml version="1.0"?>',
                '<?xml version="1.0" encoding="utf-8"?>\n',
                "<?xml version='1.0' encoding='UTF-8' standalone='no' ?>",
            ]
        )
    )
    text = f"{decl}{ws()}<annotation>{''.join(body)}{ws()}</annotation>{ws()}"
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + text.encode("utf-8"), canonical


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(doc=voc_documents(), check_bounds=st.booleans())
def test_generated_documents_match_elementtree(
    tmp_path: Path, doc: tuple[bytes, bool], check_bounds: bool
) -> None:
    data, canonical = doc
    path = tmp_path / "gen.xml"
    path.write_bytes(data)
    ref = reference(data, path, check_bounds)
    fast = _fast_voc(data, check_bounds)
    event("ElementTree error" if isinstance(ref, str) else f"fast path, canonical={canonical}")
    if isinstance(ref, str):  # an error (box outside, blank name, bad number...)
        assert fast is None
        assert outcome(path, check_bounds) == ref  # the same message, naming the file
        assert "gen.xml" in ref
    else:
        assert fast is not None  # every valid document of the grammar: the fast path
        assert _annotation_from_fast(fast, path) == ref
        assert parse_voc_xml(path, check_bounds) == ref
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        if canonical:  # (a shuffled document may happen to be canonical too)
            assert _rx("canonical").fullmatch(text) is not None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.sampled_from([VOC2007, VOC2012]),
    pos=st.integers(0, 10_000),
    insert=st.text(st.sampled_from("<>/&;!?[]-x \n\x00\x0b\ufffeé"), max_size=6),
)
def test_mutated_documents_agree(tmp_path: Path, base: str, pos: int, insert: str) -> None:
    """Random insertions (broken tags, stray markup, forbidden characters): both paths give
    the same annotation or the same error."""
    pos %= len(base) + 1
    data = (base[:pos] + insert + base[pos:]).encode("utf-8")
    path = tmp_path / "mut.xml"
    path.write_bytes(data)
    ref = reference(data, path)
    fast = _fast_voc(data)
    if fast is None:
        assert outcome(path) == ref
    else:
        assert _annotation_from_fast(fast, path) == ref


# ----------------------------------------------------------------------------- fallbacks
_GOOD = VOC2007


@pytest.mark.parametrize(
    "name, text",
    [
        (
            "part",
            _GOOD.replace(
                "</bndbox>\n\t</object>",
                "</bndbox>\n\t\t<part><name>head</name>"
                "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
                "</bndbox></part>\n\t</object>",
                1,
            ),
        ),
        ("actions", _GOOD.replace("<pose>Rear</pose>", "<actions><jumping>1</jumping></actions>")),
        ("cdata", _GOOD.replace("<name>chair</name>", "<name><![CDATA[chair]]></name>", 1)),
        ("comment", _GOOD.replace("<segmented>", "<!-- note --><segmented>")),
        ("entity", _GOOD.replace("<pose>Rear</pose>", "<pose>R&amp;D &#65;</pose>")),
        ("attribute", _GOOD.replace("<annotation>", '<annotation verified="yes">')),
        ("selfclosing", _GOOD.replace("<segmented>0</segmented>", "<segmented/>")),
        ("pi", _GOOD.replace("<segmented>", "<?tool x?><segmented>")),
        ("namespace", _GOOD.replace("<folder>VOC2007</folder>", "<a:b xmlns:a='u'>1</a:b>")),
        ("space-in-tag", _GOOD.replace("</folder>", "</folder >")),
        ("nested-object", _GOOD.replace("<pose>Rear</pose>", "<pose><object>1</object></pose>")),
        (
            "nested-object-ok",
            _GOOD.replace(
                "<pose>Rear</pose>",
                "<pose><object><name>a</name>"
                "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
                "<ymax>2</ymax></bndbox></object></pose>",
            ),
        ),
        ("duplicate", _GOOD.replace("<pose>Rear</pose>", "<pose>Rear</pose><pose>Side</pose>")),
        ("latin1", '<?xml version="1.0" encoding="ISO-8859-1"?>' + _GOOD),
        ("version11", '<?xml version="1.1"?>' + _GOOD),
    ],
)
def test_fallback_gives_the_same_result(tmp_path: Path, name: str, text: str) -> None:
    data = text.encode("utf-8")
    assert _fast_voc(data) is None, f"{name}: took the fast path"
    path = tmp_path / f"{name}.xml"
    path.write_bytes(data)
    ref = reference(data, path)
    if name == "nested-object":  # root.iter("object") finds it: an object without <name>
        assert isinstance(ref, str) and "missing <name>" in ref
        assert outcome(path) == ref
        return
    assert isinstance(ref, VOCAnnotation), ref  # all valid: ElementTree reads them
    assert parse_voc_xml(path) == ref
    if name == "nested-object-ok":  # ... and this one is a third object
        assert [o.name for o in ref.objects] == ["chair", "a", "chair"]


def test_fallback_values(tmp_path: Path) -> None:
    """What ElementTree makes of the declined constructs (oracle: the XML spec)."""

    def parse(name: str, text: str) -> VOCAnnotation:
        path = tmp_path / f"{name}.xml"
        path.write_text(text)
        return parse_voc_xml(path)

    assert parse("e", _GOOD.replace("<pose>Rear</pose>", "<pose>R&amp;D &#65;</pose>")).objects[
        0
    ].extra == {"pose": "R&D A"}
    assert (
        parse("c", _GOOD.replace("<name>chair</name>", "<name><![CDATA[a<b]]></name>", 1))
        .objects[0]
        .name
        == "a<b"
    )
    dup = parse(
        "d",
        _GOOD.replace(
            "<difficult>0</difficult>", "<difficult>0</difficult><difficult>1</difficult>", 1
        ),
    )
    assert dup.objects[0].difficult is False  # the first <difficult> counts


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "doctype",
            '<?xml version="1.0"?><!DOCTYPE annotation>' + _GOOD,
            "unsafe XML refused: Entities, DTDs",
        ),
        (
            "bomb",
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx"><!ENTITY y "&x;&x;">]>'
            + _GOOD.replace("Rear", "&y;"),
            "unsafe XML refused: Entities, DTDs",
        ),
        (
            "external",
            '<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + _GOOD.replace("Rear", "&e;"),
            "unsafe XML refused: Entities, DTDs",
        ),
        ("undefined-entity", _GOOD.replace("Rear", "&e;"), "malformed XML"),
        ("mismatched", _GOOD.replace("</pose>", "</pos>", 1), "malformed XML"),
        ("truncated", _GOOD[: len(_GOOD) // 2], "malformed XML"),
        ("two-roots", _GOOD + "<annotation/>", "malformed XML"),
        ("cdata-end", _GOOD.replace("Rear", "a]]>b"), "malformed XML"),
        ("control", _GOOD.replace("Rear", "a\x01b"), "malformed XML"),
        ("fffe", _GOOD.replace("Rear", "a\ufffeb"), "malformed XML"),
        ("decl-late", "\n" + '<?xml version="1.0"?>' + _GOOD, "malformed XML"),
        ("root", _GOOD.replace("annotation>", "notation>"), "root element is <notation>"),
        ("outside", _GOOD.replace("<xmax>324</xmax>", "<xmax>501</xmax>"), "outside the 500x375"),
        ("zero", _GOOD.replace("<xmin>263</xmin>", "<xmin>0</xmin>"), "outside the 500x375"),
        ("noname", _GOOD.replace("<name>chair</name>", "<name> </name>", 1), "missing <name>"),
        ("nobox", _GOOD.replace("<xmin>263</xmin>", ""), "missing <xmin>"),
        ("nan", _GOOD.replace("<ymin>211</ymin>", "<ymin>nan</ymin>"), "not finite"),
        ("text", _GOOD.replace("<ymin>211</ymin>", "<ymin>1x</ymin>"), "<ymin> is '1x'"),
        (
            "nosize",
            _GOOD.replace("<size>", "<sizes>").replace("</size>", "</sizes>"),
            "missing <size>",
        ),
        (
            "leafsize",
            _GOOD.replace(_GOOD[_GOOD.index("<size>") : _GOOD.index("</size>")], "<size>4"),
            "missing <width>",
        ),
        (
            "nobndbox",
            _GOOD.replace("<bndbox>", "<box>", 1).replace("</bndbox>", "</box>", 1),
            "object 0 has no <bndbox>",
        ),
    ],
)
def test_errors_are_the_reference_errors(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    data = text.encode("utf-8")
    assert _fast_voc(data) is None, f"{name}: took the fast path"
    path = tmp_path / f"{name}.xml"
    path.write_bytes(data)
    ref = reference(data, path)
    assert isinstance(ref, str) and message in ref and f"{name}.xml" in ref, ref
    assert outcome(path) == ref
    (tmp_path / "Annotations").mkdir(exist_ok=True)
    (tmp_path / "Annotations" / f"{name}.xml").write_bytes(data)
    with pytest.raises(ValueError) as exc:  # the cache loop raises it too
        annotation_entries(tmp_path, [name], cache=False)
    assert str(exc.value) == ref.replace(str(path), str(tmp_path / "Annotations" / f"{name}.xml"))


def test_annotation_entries_read_errors(tmp_path: Path) -> None:
    (tmp_path / "Annotations" / "dir.xml").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing\.xml: annotation file not found"):
        annotation_entries(tmp_path, ["missing"], cache=False)
    with pytest.raises(ValueError, match=r"dir\.xml: annotation file is a folder"):
        annotation_entries(tmp_path, ["dir"], cache=False)


def test_check_bounds_false(tmp_path: Path) -> None:
    data = _GOOD.replace("<xmin>263</xmin>", "<xmin>0</xmin>").encode()
    assert _fast_voc(data, check_bounds=True) is None
    fast = _fast_voc(data, check_bounds=False)
    assert fast is not None and fast[3][0][1] == 0.0
    path = tmp_path / "z.xml"
    path.write_bytes(data)
    assert parse_voc_xml(path, check_bounds=False) == reference(data, path, False)


def test_plain_files_never_import_elementtree(tmp_path: Path) -> None:
    """The fast path is the whole parse of a plain devkit: ElementTree and expat are imported
    only for a file that falls back (checked in a fresh interpreter)."""
    import subprocess
    import sys

    kit = tmp_path / "kit"
    (kit / "Annotations").mkdir(parents=True)
    (kit / "Annotations" / "a.xml").write_text(VOC2007)
    (kit / "Annotations" / "b.xml").write_text(VOC2012)
    (kit / "Annotations" / "c.xml").write_text(VOC2007.replace("Rear", "R&amp;D"))
    code = (
        "import sys\n"
        "from lowbit.data.voc import annotation_entries\n"
        f"e = annotation_entries({str(kit)!r}, ['a', 'b'], cache=False)\n"
        "assert len(e) == 2 and 'xml.etree.ElementTree' not in sys.modules, sorted(sys.modules)\n"
        "assert 'xml.parsers.expat' not in sys.modules\n"
        f"e = annotation_entries({str(kit)!r}, ['c'], cache=False)\n"
        "assert 'xml.etree.ElementTree' in sys.modules and e[0][5][0][7] == {'pose': 'R&D'}\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
