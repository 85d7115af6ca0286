"""Parsers never crash: the VOC XML parser, the COCO JSON loader and the VOC results reader
either load an input completely or raise ``ValueError`` naming the file (and the line where
there is one) -- never another exception, never a partial load. Fuzzed with hypothesis;
the reproducers of issue 18 (``inf`` sizes, a decompression bomb) are regression tests."""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.data.coco import COCODetection, load_coco_json
from lowbit.data.voc import load_image, parse_voc_xml
from lowbit.eval.voc import read_voc_results

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

GOOD_XML = (
    "<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height>"
    "<depth>3</depth></size><object><name>cat</name><difficult>0</difficult><bndbox>"
    "<xmin>3</xmin><ymin>4</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
)


# ----------------------------------------------------------------------------- VOC XML
@pytest.mark.parametrize("tag,value", [
    ("width", "inf"), ("height", "1e400"), ("width", "nan"), ("height", "-inf"),
    ("xmin", "1e400"), ("ymax", "nan"),
])  # fmt: skip
def test_non_finite_numbers_name_the_file(tmp_path: Path, tag: str, value: str) -> None:
    """Issue 18: <width>inf</width> and <height>1e400</height> were an OverflowError."""
    path = tmp_path / "x.xml"
    path.write_text(re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", GOOD_XML,
                           count=1))
    assert f"<{tag}>{value}</{tag}>" in path.read_text()
    for check_bounds in (True, False):
        with pytest.raises(ValueError, match=rf"x\.xml: .*<{tag}> is '{value}'"):
            parse_voc_xml(path, check_bounds=check_bounds)


THREATS = {
    "doctype": '<?xml version="1.0"?><!DOCTYPE annotation><annotation/>',
    "internal_entity": '<!DOCTYPE a [<!ENTITY x "1">]><annotation>&x;</annotation>',
    "billion_laughs": ('<!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;">'
                       '<!ENTITY z "&y;&y;&y;&y;&y;">]><annotation>&z;</annotation>'),
    "xxe_file": '<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;'
                "</annotation>",
    "xxe_url": '<!DOCTYPE a [<!ENTITY e SYSTEM "http://127.0.0.1:1/x">]><annotation>&e;'
               "</annotation>",
    "external_dtd": '<!DOCTYPE annotation SYSTEM "http://127.0.0.1:1/a.dtd"><annotation/>',
    "parameter_entity": ('<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                         "<annotation/>"),
}


@pytest.mark.parametrize("name", sorted(THREATS))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1"])
def test_dtds_entities_and_external_references_refused(tmp_path: Path, name: str,
                                                       encoding: str) -> None:
    """Refused in every encoding expat reads (UTF-16 and a declared latin-1 take the checked
    path; plain UTF-8 goes straight to the C parser only when no '<!' occurs at all)."""
    doc = THREATS[name]
    if encoding == "latin-1":
        doc = doc.replace('<?xml version="1.0"?>', "")
        doc = '<?xml version="1.0" encoding="ISO-8859-1"?>' + doc
    path = tmp_path / f"{name}.xml"
    path.write_bytes(doc.encode(encoding))
    with pytest.raises(ValueError, match=rf"{name}\.xml: unsafe XML refused: Entities, DTDs"):
        parse_voc_xml(path)


def test_comments_cdata_and_other_encodings_still_parse(tmp_path: Path) -> None:
    """Markup that is harmless takes the checked path and parses like the plain file."""
    plain = tmp_path / "plain.xml"
    plain.write_text(GOOD_XML)
    ref = parse_voc_xml(plain)
    variants = {
        "comment.xml": GOOD_XML.replace("<size>", "<!-- a comment --><size>").encode(),
        "cdata.xml": GOOD_XML.replace("<name>cat</name>", "<name><![CDATA[cat]]></name>")
        .encode(),
        "utf16.xml": GOOD_XML.encode("utf-16"),
        "latin1.xml": ('<?xml version="1.0" encoding="ISO-8859-1"?>' + GOOD_XML).encode(
            "latin-1"),
        "bom.xml": b"\xef\xbb\xbf" + GOOD_XML.encode(),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        got = parse_voc_xml(tmp_path / name)
        assert (got.width, got.height, got.objects) == (ref.width, ref.height, ref.objects), name


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header of ``width x height`` 1-bit pixels with a tiny (short) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_names_the_file(tmp_path: Path) -> None:
    """Issue 18: a 40000 x 40000 PNG saved as .jpg was a raw DecompressionBombError."""
    path = tmp_path / "huge.jpg"
    path.write_bytes(_bomb_png(40000, 40000))
    with pytest.raises(ValueError, match=r"huge\.jpg: image refused as too large"):
        load_image(path)
    path.write_bytes(_bomb_png(64, 48))  # same construction, small: a decode error, named
    with pytest.raises(ValueError, match=r"huge\.jpg: cannot decode image"):
        load_image(path)


def _xml_mutations() -> st.SearchStrategy[bytes]:
    tags = ["annotation", "size", "width", "height", "object", "name", "bndbox", "xmin",
            "ymin", "xmax", "ymax", "difficult", "filename"]
    values = st.sampled_from(["", "0", "1", "-1", "3.5", "1e400", "inf", "nan", "64", "x",
                              "&amp;", "&x;", "<", "]]>", "\x00", "é", "9" * 400])
    replace_value = st.tuples(st.sampled_from(tags), values).map(
        lambda tv: GOOD_XML.replace(f"<{tv[0]}>", f"<{tv[0]}>{tv[1]}", 1).encode("utf-8",
                                                                             "surrogatepass"))
    drop_tag = st.sampled_from(tags).map(
        lambda t: GOOD_XML.replace(f"<{t}>", "", 1).encode())
    truncate = st.integers(0, len(GOOD_XML)).map(lambda n: GOOD_XML[:n].encode())
    splice = st.tuples(st.integers(0, len(GOOD_XML)), st.binary(max_size=40)).map(
        lambda nb: GOOD_XML.encode()[: nb[0]] + nb[1] + GOOD_XML.encode()[nb[0]:])
    return st.one_of(st.binary(max_size=300), replace_value, drop_tag, truncate, splice,
                     st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=_xml_mutations(), check_bounds=st.booleans())
def test_fuzzed_voc_xml_loads_or_names_the_file(tmp_path: Path, data: bytes,
                                                check_bounds: bool) -> None:
    path = tmp_path / "fuzz.xml"
    path.write_bytes(data)
    try:
        ann = parse_voc_xml(path, check_bounds=check_bounds)
    except ValueError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    # loaded: completely, with finite numbers only
    assert ann.width == int(ann.width) and ann.height == int(ann.height)
    assert data.count(b"<object") >= len(ann.objects)
    for o in ann.objects:
        assert all(math.isfinite(v) for v in o.bbox)
        if check_bounds:
            assert 1 <= o.bbox[0] <= o.bbox[2] <= ann.width


# ----------------------------------------------------------------------------- results file
def _results_lines() -> st.SearchStrategy[str]:
    num = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-10**400, 10**400).map(str),
                    st.sampled_from(["nan", "inf", "1e400", "x", "", "1_0", "0x1", "１"]))
    good = st.tuples(st.sampled_from(["000001", "a", "0"]), num, num, num, num, num).map(
        " ".join)
    return st.lists(st.one_of(good, st.text(max_size=40), st.just(""),
                              st.lists(num, max_size=8).map(" ".join)), max_size=8).map(
        lambda ls: "\n".join(ls))


@FUZZ
@given(text=_results_lines(), crlf=st.booleans())
def test_fuzzed_results_file_loads_completely_or_names_file_and_line(
        tmp_path: Path, text: str, crlf: bool) -> None:
    path = tmp_path / "comp4_det_test_cat.txt"
    path.write_bytes(text.replace("\n", "\r\n" if crlf else "\n").encode("utf-8",
                                                                        "surrogatepass"))
    # independent oracle: universal newlines, whitespace fields, Python float, finite
    try:
        norm = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        norm = None
    expect = None
    if norm is not None:
        lines = norm.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        rows = [ln.split() for ln in lines]
        try:
            vals = [[float(v) for v in r[1:]] for r in rows if r]
            ok = all(len(r) == 6 for r in rows if r) and all(
                math.isfinite(v) for r in vals for v in r)
        except ValueError:
            ok = False
        if ok:
            expect = ([r[0] for r in rows if r], vals)
    try:
        ids, scores, boxes = read_voc_results(path)
    except ValueError as exc:
        assert expect is None, exc
        assert str(exc).startswith(f"{path}: line ")
        return
    assert expect is not None
    assert ids == expect[0]  # every line, in order: never a partial load
    got = np.concatenate([scores[:, None], boxes], 1).reshape(-1, 5)
    assert got.tolist() == [r for r in expect[1]]


def test_results_file_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("a 0.5 1 2 3 4\n\n\nb 0.5 1 2 3\n")
    with pytest.raises(ValueError, match=r"r\.txt: line 4: expected"):
        read_voc_results(path)
    path.write_text("a 0.5 1 2 3 4\r\n\r\nb inf 1 2 3 4\r\n")
    with pytest.raises(ValueError, match=r"r\.txt: line 3: not a finite number: 'inf'"):
        read_voc_results(path)
    path.write_bytes(b"a 0.5 1 2 3 4\nb 0.5 1 2 3 \xff\n")
    with pytest.raises(ValueError, match=r"r\.txt: line 2: not UTF-8"):
        read_voc_results(path)


# ----------------------------------------------------------------------------- COCO JSON
def _coco_base() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.jpg", "width": 20, "height": 20}],
        "categories": [{"id": 3, "name": "ant"}, {"id": 5, "name": "bee"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.5, 2.0, 10.0, 5.0],
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 4, 4], "iscrowd": 1},
        ],
    }


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)


@st.composite
def _coco_mutations(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["field", "entry", "top", "text", "raw"]))
    data = _coco_base()
    if kind == "field":
        section = draw(st.sampled_from(["images", "categories", "annotations"]))
        item = draw(st.sampled_from(data[section]))
        key = draw(st.sampled_from(sorted(item) + ["difficult", "iscrowd", "bbox"]))
        value = draw(JSON_VALUES | st.sampled_from([1e308, -1.0, 0, 2**63, 3.0, True, "0"]))
        item[key] = value
    elif kind == "entry":
        section = draw(st.sampled_from(["images", "categories", "annotations"]))
        data[section].append(draw(JSON_VALUES))
    elif kind == "top":
        data[draw(st.sampled_from(["images", "categories", "annotations"]))] = draw(JSON_VALUES)
    text = json.dumps(data)
    if kind == "text":
        n = draw(st.integers(0, len(text)))
        text = text[:n] + draw(st.sampled_from(["", "NaN", "Infinity", "-1e400", "[" * 50000,
                                               "}", "\x00", "1e400"])) + text[n:]
    if kind == "raw":
        return draw(st.binary(max_size=200))
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(data=_coco_mutations())
def test_fuzzed_coco_json_loads_completely_or_names_the_file(tmp_path: Path,
                                                             data: bytes) -> None:
    path = tmp_path / "instances.json"
    path.write_bytes(data)
    try:
        ds = COCODetection(tmp_path, path, keep_crowd=True, keep_difficult=True)
        targets = [ds.get_target(i, keep_all=True) for i in range(len(ds))]
    except ValueError as exc:
        assert str(exc).startswith(f"{path}: "), exc
        return
    raw = json.loads(data)
    assert len(ds) == len(raw["images"])  # every image, none silently dropped
    n_anns = sum(len(t["labels"]) for t in targets)
    assert n_anns <= len(raw["annotations"])
    for t in targets:
        assert bool(np.isfinite(t["boxes"].numpy()).all())


def test_coco_json_reproducers(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    cases = {
        '{"images": [], "annotations": [],\n "categories": [{"id": NaN}]}': "NaN.*line 2 column 24",
        "[" * 100000: "nested too deeply",
        '{"images": [{"id": 1, "file_name": "a", "width": 1e400, "height": 2}], '
        '"annotations": [], "categories": []}': r"images\[0\]\.width",
    }
    for text, msg in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"c\.json: .*{msg}"):
            COCODetection(tmp_path, path)
    base = _coco_base()
    base["annotations"][0]["iscrowd"] = "0"  # would read as crowd
    path.write_text(json.dumps(base))
    with pytest.raises(ValueError, match=r"c\.json: annotations\[0\]\.iscrowd is '0'"):
        COCODetection(tmp_path, path)
    base = _coco_base()
    base["images"].append(dict(base["images"][0]))
    path.write_text(json.dumps(base))
    with pytest.raises(ValueError, match=r"c\.json: images\[2\] repeats image id 1"):
        COCODetection(tmp_path, path)
    path.write_bytes(b'{"images": [\xff]}')
    with pytest.raises(ValueError, match=r"c\.json: malformed JSON: not UTF-8"):
        load_coco_json(path)
