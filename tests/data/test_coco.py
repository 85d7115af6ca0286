"""COCO loader and COCO export of the digits set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowbit.data.coco import COCODetection, load_coco_json
from lowbit.data.voc import VOCDetection


def tiny_coco(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "a.jpg")
    Image.new("RGB", (20, 20)).save(tmp_path / "img" / "b.jpg")
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 9, "file_name": "b.jpg", "width": 20, "height": 20}],
        "categories": [{"id": 12, "name": "zebra"}, {"id": 3, "name": "ant"},
                       {"id": 5, "name": "bee"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 12, "bbox": [1.5, 2.0, 10.0, 5.0],
             "iscrowd": 0, "area": 50.0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1,
             "area": 1200.0},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [35, 25, 10, 10], "iscrowd": 0,
             "area": 100.0},  # sticks out: clipped
            {"id": 4, "image_id": 9, "category_id": 5, "bbox": [3, 3, 0, 4], "iscrowd": 0,
             "area": 0.0},  # empty: dropped
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_loader_maps_categories_and_boxes(tmp_path: Path) -> None:
    ds = COCODetection(tmp_path / "img", tiny_coco(tmp_path))
    assert ds.classes == ("ant", "bee", "zebra") and ds.cat_ids == [3, 5, 12]
    assert len(ds) == 2 and ds.image_ids == [7, 9]
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and t["image_id"] == 7 and t["orig_size"] == (30, 40)
    torch.testing.assert_close(t["boxes"], torch.tensor([[1.5, 2.0, 11.5, 7.0],
                                                         [35.0, 25.0, 40.0, 30.0]]))
    assert t["labels"].tolist() == [2, 1] and t["labels"].dtype == torch.int64
    assert not t["iscrowd"].any()
    assert len(ds[1][1]["boxes"]) == 0
    crowd = COCODetection(tmp_path / "img", tmp_path / "instances.json", keep_crowd=True)[0][1]
    assert crowd["iscrowd"].tolist() == [False, True, False]
    ev = ds.eval_targets()[0]
    assert ev["difficult"].tolist() == [False, True, False]  # crowd is ignored by VOC eval
    assert len(COCODetection(tmp_path / "img", tmp_path / "instances.json",
                             remove_empty=True)) == 1


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        COCODetection(tmp_path, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json: malformed JSON"):
        load_coco_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json: not a COCO"):
        load_coco_json(tmp_path / "list.json")
    data = json.loads(tiny_coco(tmp_path).read_text())
    data["annotations"][0]["image_id"] = 99
    (tmp_path / "orphan.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="orphan.json: annotation 0 refers to unknown image 99"):
        COCODetection(tmp_path / "img", tmp_path / "orphan.json")
    data["annotations"][0]["image_id"] = 7
    data["annotations"][0]["category_id"] = 4
    (tmp_path / "cat.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="cat.json: annotation 0 has unknown category 4"):
        COCODetection(tmp_path / "img", tmp_path / "cat.json")


def test_digits_coco_export_matches_voc(tiny_digits: Path) -> None:
    for split in ("trainval", "test"):
        voc = VOCDetection(tiny_digits, split, keep_difficult=True)
        coco = COCODetection(tiny_digits / "JPEGImages",
                             tiny_digits / "annotations" / f"instances_{split}.json",
                             keep_difficult=True)
        assert coco.classes == voc.classes and len(coco) == len(voc)
        for i in range(len(voc)):
            tv, tc = voc.get_target(i), coco.get_target(i)
            torch.testing.assert_close(tc["boxes"], tv["boxes"])
            assert tc["labels"].tolist() == tv["labels"].tolist()
            assert tc["difficult"].tolist() == tv["difficult"].tolist()
            assert coco.images[i]["file_name"] == f"{tv['image_id']}.jpg"
        image, _ = coco[0]
        torch.testing.assert_close(image, voc[0][0])
        data = json.loads((tiny_digits / "annotations" / f"instances_{split}.json").read_text())
        for a in data["annotations"]:
            assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
        n_diff = sum(a["difficult"] for a in data["annotations"])
        plain = COCODetection(tiny_digits / "JPEGImages",
                              tiny_digits / "annotations" / f"instances_{split}.json")
        assert sum(len(t["labels"]) for t in map(plain.get_target, range(len(plain)))) == \
            len(data["annotations"]) - n_diff
        assert np.all([a["iscrowd"] == 0 for a in data["annotations"]])
