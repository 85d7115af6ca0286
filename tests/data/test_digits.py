"""The built-in digits devkit generator."""

from __future__ import annotations

import json
import xml.etree.ElementTree as StdET
from pathlib import Path

import numpy as np
import pytest

from lowbit.data.digits import DIGIT_CLASSES, DigitsSource, generate_digits, render_scene
from lowbit.data.voc import VOCDetection, parse_voc_xml, read_image_set


def test_layout_and_files(tiny_digits: Path) -> None:
    trainval = read_image_set(tiny_digits, "trainval")
    test = read_image_set(tiny_digits, "test")
    assert len(trainval) == 12 and len(test) == 8 and not set(trainval) & set(test)
    assert (tiny_digits / "classes.txt").read_text().split() == list(DIGIT_CLASSES)
    for i in trainval + test:
        assert (tiny_digits / "JPEGImages" / f"{i}.jpg").is_file()
        assert (tiny_digits / "Annotations" / f"{i}.xml").is_file()
    for split in ("trainval", "test"):
        assert (tiny_digits / "annotations" / f"instances_{split}.json").is_file()


def test_xml_is_voc_with_in_range_one_based_boxes(tiny_digits: Path) -> None:
    n_obj = 0
    for xml in sorted((tiny_digits / "Annotations").glob("*.xml")):
        root = StdET.parse(xml).getroot()  # plain VOC XML, readable by any parser
        assert root.find("size/width").text == "80" and root.find("size/height").text == "80"
        objs = root.findall("object")
        assert 1 <= len(objs) <= 6
        for o in objs:
            assert o.find("name").text in DIGIT_CLASSES
            assert o.find("difficult").text in ("0", "1")
            assert o.find("truncated").text in ("0", "1")
            b = [int(o.find(f"bndbox/{t}").text) for t in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= b[0] <= b[2] <= 80 and 1 <= b[1] <= b[3] <= 80
            n_obj += 1
        parse_voc_xml(xml)  # and our strict parser accepts it
    assert n_obj >= 20


def test_digit_pools_are_disjoint_and_labels_true(tiny_digits: Path) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    meta = json.loads((tiny_digits / "digits.json").read_text())
    pools = {k: set(v) for k, v in meta["digit_pools"].items()}
    assert not pools["trainval"] & pools["test"]
    assert len(pools["trainval"]) + len(pools["test"]) == len(target)
    used: dict[str, set[int]] = {}
    for split in ("trainval", "test"):
        used[split] = set()
        for i in read_image_set(tiny_digits, split):
            for o in parse_voc_xml(tiny_digits / "Annotations" / f"{i}.xml").objects:
                di = int(o.extra["digit_index"])
                assert di in pools[split]
                assert DIGIT_CLASSES[target[di]] == o.name
                used[split].add(di)
    assert used["trainval"] and used["test"] and not used["trainval"] & used["test"]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_deterministic_for_a_seed_and_worker_count(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_digits(a, train=4, test=3, size=64, seed=11, workers=1)
    generate_digits(b, train=4, test=3, size=64, seed=11, workers=2)
    generate_digits(c, train=4, test=3, size=64, seed=12, workers=1)
    assert _tree_bytes(a) == _tree_bytes(b)
    assert _tree_bytes(a) != _tree_bytes(c)


def test_difficult_and_truncated_follow_visibility() -> None:
    src = DigitsSource(seed=0)
    pool = src.pools["trainval"]
    objs = []
    for i in range(60):
        image, o = render_scene(np.random.default_rng([5, i]), src, pool, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        objs.extend(o)
    small = 96 * 12 / 256
    sizes = []
    for o in objs:
        longer = max(o.box[2] - o.box[0], o.box[3] - o.box[1])
        sizes.append(longer)
        assert o.difficult == (longer < small or o.visible < 0.5)
        assert o.truncated == (o.visible < 0.85)
        assert 0 < o.visible <= 1 and 0 <= o.box[0] < o.box[2] <= 96
    assert any(o.difficult for o in objs) and any(o.truncated for o in objs)
    assert not all(o.difficult for o in objs)
    assert min(sizes) < 10 and max(sizes) > 40  # small to large
    assert len({o.label for o in objs}) == 10


def test_loads_as_voc_dataset(tiny_digits: Path) -> None:
    ds = VOCDetection(tiny_digits, "test")
    assert ds.classes == DIGIT_CLASSES and len(ds) == 8
    image, target = ds[0]
    assert image.shape == (3, 80, 80) and 0 <= image.min() and image.max() <= 1


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        generate_digits(tmp_path, train=1, test=1, size=8)
    with pytest.raises(ValueError, match="train"):
        generate_digits(tmp_path, train=0, test=0)
