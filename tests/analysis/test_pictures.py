"""Detection pictures: a valid PNG of the expected size, boxes drawn where they should be."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lowbit.analysis.pictures import draw_detections, side_by_side


def _det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels), "scores": torch.tensor(scores)}


def test_side_by_side_png(tmp_path) -> None:
    imgs = [torch.zeros(3, 40, 50), torch.ones(3, 30, 50) * 0.5]
    dets = {
        "FP32": [_det([[5, 5, 20, 20]], [1], [0.9]), _det([[1, 1, 10, 10]], [0], [0.4])],
        "6-bit LBW": [_det([[6, 5, 20, 21]], [1], [0.8]), _det([], [], [])],
    }
    dets["6-bit LBW"][1]["boxes"] = torch.zeros(0, 4)
    path = tmp_path / "fig.png"
    w, h = side_by_side(imgs, dets, ["a", "b"], path, scale=2, gap=6)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (w, h) == (2 * 100 + 6, 16 + 80 + 60 + 6)


def test_threshold_controls_what_is_drawn() -> None:
    img = torch.zeros(3, 30, 30)
    shown = draw_detections(img, _det([[2, 2, 20, 20]], [0], [0.6]), ["x"], 0.5, scale=1)
    hidden = draw_detections(img, _det([[2, 2, 20, 20]], [0], [0.4]), ["x"], 0.5, scale=1)
    assert shown.getpixel((2, 15)) != (0, 0, 0)  # left edge of the box is coloured
    assert hidden.getpixel((2, 15)) == (0, 0, 0)


def test_mismatched_lengths_raise(tmp_path) -> None:
    with pytest.raises(ValueError, match="results for"):
        side_by_side([torch.zeros(3, 8, 8)], {"m": []}, ["a"], tmp_path / "x.png")
