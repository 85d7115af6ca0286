"""COCO metric wrapper (optional backends)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lowbit.eval.coco import coco_backend, coco_results, evaluate_coco, evaluate_coco_files


def test_coco_results_conversion() -> None:
    preds = [{"boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.5])},
             {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "scores": torch.zeros(0)}]
    res = coco_results(preds, [7, 9], [3, 12])
    assert res == [{"image_id": 7, "category_id": 12, "bbox": [1.0, 2.0, 10.0, 5.0],
                    "score": 0.5}]
    with pytest.raises(ValueError, match="label"):
        coco_results(preds, [7, 9], [3])
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        coco_results(preds, [7], [3, 12])


def test_missing_backend_message(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("faster_coco_eval", "pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        coco_backend()


def test_perfect_and_shifted_predictions(tmp_path: Path) -> None:
    try:
        coco_backend()
    except ImportError:
        pytest.skip("neither faster-coco-eval nor pycocotools is installed")
    from lowbit.data.coco import COCODetection
    from lowbit.data.digits import generate_digits

    generate_digits(tmp_path, train=1, test=6, size=64, seed=4, coco=True, workers=1)
    ds = COCODetection(tmp_path / "JPEGImages", tmp_path / "annotations/instances_test.json",
                       keep_difficult=True)
    targets = ds.eval_targets()
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in targets]
    r = evaluate_coco(perfect, ds)
    assert r["mAP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0)
    assert r["backend"] in ("faster-coco-eval", "pycocotools") and len(r["AP"]) == 10
    shifted = [dict(p, boxes=p["boxes"] + 3.0) for p in perfect]
    assert evaluate_coco(shifted, ds)["mAP"] < 0.9
    path = tmp_path / "res.json"
    path.write_text(json.dumps(coco_results(perfect, ds.image_ids, ds.cat_ids)))
    assert evaluate_coco_files(ds.ann_file, path)["mAP"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        evaluate_coco_files(ds.ann_file, tmp_path / "nothere.json")
