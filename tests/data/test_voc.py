"""VOC annotation I/O, box convention, devkit folders, the 07+12 union, VOCDetection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lowbit.data.voc import (
    VOC_CLASSES,
    VOCDetection,
    internal_to_voc,
    parse_voc_xml,
    read_classes,
    voc_to_internal,
    write_voc_xml,
)


def make_folder(
    folder: Path,
    split: str,
    items: dict[str, list[tuple[str, tuple[int, int, int, int], bool]]],
    size: tuple[int, int] = (48, 64),
    classes: list[str] | None = None,
) -> None:
    """A devkit folder; boxes given internal 0-based (x1, y1, x2, y2) ints."""
    h, w = size
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objs in items.items():
        Image.new("RGB", (w, h), (90, 120, 200)).save(folder / "JPEGImages" / f"{image_id}.jpg")
        write_voc_xml(
            folder / "Annotations" / f"{image_id}.xml", f"{image_id}.jpg", w, h,
            [o[0] for o in objs], np.array([o[1] for o in objs], float).reshape(-1, 4),
            difficult=[o[2] for o in objs],
        )  # fmt: skip
    (folder / "ImageSets/Main" / f"{split}.txt").write_text("".join(i + "\n" for i in items))
    if classes is not None:
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")


def test_conversion_convention() -> None:
    voc = np.array([[1.0, 1.0, 10.0, 20.0]])  # pixels 1..10 x 1..20 (1-based, inclusive)
    internal = voc_to_internal(voc)
    np.testing.assert_array_equal(internal, [[0.0, 0.0, 10.0, 20.0]])  # 10 x 20 continuous
    np.testing.assert_array_equal(internal_to_voc(torch.tensor(internal)), voc)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 62), st.integers(0, 46), st.integers(1, 64),
                          st.integers(1, 48)), min_size=0, max_size=5))
def test_xml_round_trip(boxes: list[tuple[int, int, int, int]]) -> None:
    import tempfile

    b = np.array([[min(x1, x2 - 1), min(y1, y2 - 1), x2, y2] for x1, y1, x2, y2 in boxes],
                 dtype=float).reshape(-1, 4)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.xml"
        names = ["dog"] * len(b)
        diff = [i % 2 == 0 for i in range(len(b))]
        write_voc_xml(path, "a.jpg", 64, 48, names, b, difficult=diff, truncated=diff[::-1])
        ann = parse_voc_xml(path)
    np.testing.assert_array_equal(ann.boxes(), b)
    np.testing.assert_array_equal(ann.voc_boxes(), internal_to_voc(b))
    assert [o.difficult for o in ann.objects] == diff
    assert [o.truncated for o in ann.objects] == diff[::-1]
    assert (ann.width, ann.height, ann.filename) == (64, 48, "a.jpg")


def test_written_values_are_one_based(tmp_path: Path) -> None:
    write_voc_xml(tmp_path / "a.xml", "a.jpg", 64, 48, ["cat"], np.array([[0.0, 0, 64, 48]]))
    text = (tmp_path / "a.xml").read_text()
    for tag, v in (("xmin", 1), ("ymin", 1), ("xmax", 64), ("ymax", 48)):
        assert f"<{tag}>{v}</{tag}>" in text


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


ANN = ("<annotation><filename>a.jpg</filename><size><width>50</width><height>40</height>"
       "</size><object><name>cat</name><difficult>0</difficult><bndbox>{}</bndbox></object>"
       "</annotation>")


def test_bad_xml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        parse_voc_xml(tmp_path / "nope.xml")
    p = _write(tmp_path / "broken.xml", "<annotation><size>")
    with pytest.raises(ValueError, match=r"broken.xml: malformed XML"):
        parse_voc_xml(p)
    box = "<xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>"
    p = _write(tmp_path / "outside.xml", ANN.format(box.format(1, 1, 51, 40)))
    with pytest.raises(ValueError, match=r"outside.xml: object 0 \(cat\).*outside the 50x40"):
        parse_voc_xml(p)
    p = _write(tmp_path / "zero.xml", ANN.format(box.format(0, 1, 10, 10)))  # 0 is not 1-based
    with pytest.raises(ValueError, match="zero.xml"):
        parse_voc_xml(p)
    assert parse_voc_xml(p, check_bounds=False).objects[0].bbox == (0, 1, 10, 10)
    p = _write(tmp_path / "flipped.xml", ANN.format(box.format(10, 1, 5, 10)))
    with pytest.raises(ValueError, match="flipped.xml"):
        parse_voc_xml(p)
    p = _write(tmp_path / "nobox.xml", ANN.format("<xmin>1</xmin>"))
    with pytest.raises(ValueError, match=r"nobox.xml: .*missing <ymin>"):
        parse_voc_xml(p)
    p = _write(tmp_path / "text.xml", ANN.format(box.format("a", 1, 5, 10)))
    with pytest.raises(ValueError, match=r"text.xml: .*<xmin> is 'a'"):
        parse_voc_xml(p)
    p = _write(tmp_path / "root.xml", "<foo/>")
    with pytest.raises(ValueError, match="root.xml"):
        parse_voc_xml(p)


def test_xml_entity_attack_rejected(tmp_path: Path) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">'
            '<!ENTITY y "&x;&x;&x;&x;">]><annotation>&y;</annotation>')
    with pytest.raises(ValueError, match=r"bomb.xml: unsafe XML refused: Entities"):
        parse_voc_xml(_write(tmp_path / "bomb.xml", bomb))


def test_dataset_items_and_difficult(tmp_path: Path) -> None:
    make_folder(tmp_path, "trainval", {
        "a": [("cat", (0, 0, 10, 20), False), ("dog", (5, 5, 64, 48), True)],
        "b": [("person", (3, 4, 30, 40), False)],
    })  # fmt: skip
    ds = VOCDetection(tmp_path, "trainval")
    assert ds.classes == VOC_CLASSES and len(ds) == 2 and ds.image_ids == ["a", "b"]
    image, t = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
    assert t["labels"].tolist() == [VOC_CLASSES.index("cat")]
    assert t["difficult"].tolist() == [False] and t["image_id"] == "a"
    assert t["orig_size"] == (48, 64) and t["size"] == (48, 64)
    kept = VOCDetection(tmp_path, "trainval", keep_difficult=True)[0][1]
    assert kept["difficult"].tolist() == [False, True]
    torch.testing.assert_close(kept["boxes"][1], torch.tensor([5.0, 5.0, 64.0, 48.0]))
    assert [len(t["labels"]) for t in ds.eval_targets()] == [2, 1]  # eval keeps difficult


def test_union_07_12(tmp_path: Path) -> None:
    make_folder(tmp_path / "VOC2007", "trainval", {
        "000001": [("cat", (0, 0, 10, 10), False)],
        "000002": [("dog", (1, 1, 9, 9), False)],
    })  # fmt: skip
    make_folder(tmp_path / "VOC2012", "trainval", {
        "2008_000001": [("bus", (2, 2, 20, 20), False), ("car", (3, 3, 30, 30), False)],
    })  # fmt: skip
    u = VOCDetection(tmp_path, "trainval", years=("2007", "2012"))
    assert len(u) == 3 and u.image_ids == ["000001", "000002", "2008_000001"]
    assert u[2][1]["labels"].tolist() == [VOC_CLASSES.index("bus"), VOC_CLASSES.index("car")]
    u2 = VOCDetection([tmp_path / "VOC2007", tmp_path / "VOC2012"], "trainval")
    assert u2.image_ids == u.image_ids
    with pytest.raises(FileNotFoundError, match=r"VOC2007, VOC2012: pass years="):
        VOCDetection(tmp_path, "trainval")
    with pytest.raises(FileNotFoundError, match="VOC2010"):
        VOCDetection(tmp_path, "trainval", years=("2010",))
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test.txt"):
        VOCDetection(tmp_path, "test", years=("2007",))


def test_classes_txt(tmp_path: Path) -> None:
    make_folder(tmp_path, "test", {"x": [("beta", (0, 0, 5, 5), False)]},
                classes=["alpha", "beta"])
    ds = VOCDetection(tmp_path, "test")
    assert ds.classes == ("alpha", "beta") and ds[0][1]["labels"].tolist() == [1]
    assert read_classes(tmp_path / "classes.txt") == ("alpha", "beta")
    (tmp_path / "dup.txt").write_text("a\na\n")
    with pytest.raises(ValueError, match="dup.txt"):
        read_classes(tmp_path / "dup.txt")


def test_unknown_class(tmp_path: Path) -> None:
    make_folder(tmp_path, "test", {"x": [("cat", (0, 0, 5, 5), False),
                                         ("unicorn", (1, 1, 5, 5), False)]})
    with pytest.raises(ValueError, match=r"x.xml: object 1 has unknown class 'unicorn'"):
        VOCDetection(tmp_path, "test")[0]
    sub = VOCDetection(tmp_path, "test", classes=["unicorn"])  # explicit: others skipped
    assert sub[0][1]["labels"].tolist() == [0]


def test_image_errors_name_the_file(tmp_path: Path) -> None:
    make_folder(tmp_path, "test", {"x": [("cat", (0, 0, 5, 5), False)]})
    Image.new("RGB", (10, 10)).save(tmp_path / "JPEGImages" / "x.jpg")
    with pytest.raises(ValueError, match=r"x.jpg: image is 10x10 but its annotation says 64x48"):
        VOCDetection(tmp_path, "test")[0]
    (tmp_path / "JPEGImages" / "x.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="x.jpg"):
        VOCDetection(tmp_path, "test")[0]
    (tmp_path / "JPEGImages" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="x.jpg: cannot decode"):
        VOCDetection(tmp_path, "test")[0]


def test_transforms_are_applied(tmp_path: Path) -> None:
    from lowbit.data.transforms import Resize

    make_folder(tmp_path, "test", {"x": [("cat", (0, 0, 32, 24), False)]})
    image, t = VOCDetection(tmp_path, "test", transforms=Resize(24))[0]
    assert image.shape == (3, 24, 32) and t["size"] == (24, 32) and t["orig_size"] == (48, 64)
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0.0, 16.0, 12.0]]))
