"""YOLOv3 / Darknet: layout, anchor assignment and decoding against hand-computed values, the
ignore rule of the objectness loss, shapes / score ranges, training (float and 4-bit LBW)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.detection.backbones import create_backbone, darknet53
from lowbit.detection.models.yolov3 import (
    COCO_ANCHORS,
    best_anchors,
    yolo_decode,
    yolov3_darknet53,
    yolov3_loss,
)
from lowbit.detection.registry import create_model, list_models
from tests.detection._synthetic import NUM_CLASSES, check_lbw_4bit_trains, tiny_yolo, train_steps
from tests.detection._synthetic import TINY_YOLO as TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_darknet53_layout():
    m = darknet53()
    assert sum(p.numel() for p in m.parameters()) == 40_584_928  # 52 convs + BN, no fc
    convs = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 52 and convs[0] == "conv1.conv" and convs[-1] == "layer5.4.conv2.conv"
    assert m.strides == {"conv1": 1, "layer1": 2, "layer2": 4, "layer3": 8, "layer4": 16,
                         "layer5": 32}  # fmt: skip
    tiny = create_backbone("darknet_tiny", width=0.125)
    feats = tiny.forward_features(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer3": (1, 32, 8, 8), "layer4": (1, 64, 4, 4), "layer5": (1, 128, 2, 2),
    }  # fmt: skip


def test_best_anchor_by_shape_hand_computed():
    anchors = torch.tensor(COCO_ANCHORS, dtype=torch.float)
    wh = torch.tensor([[30.0, 61], [62, 45], [12, 14], [300, 300], [40, 100]])
    # exact matches; (12, 14): IoU 130/168 with (10, 13) vs 168/480 with (16, 30);
    # (40, 100): IoU 3481/(4000 + 7021 - 3481) with (59, 119) beats 1830/4000 with (30, 61)
    assert best_anchors(wh, anchors).tolist() == [3, 4, 0, 8, 5]
    assert best_anchors(torch.zeros((0, 2)), anchors).shape == (0,)


def test_decode_zero_output_is_cell_centre_and_anchor():
    anchors = torch.tensor([[10.0, 20], [30, 40], [50, 60]])
    out = torch.zeros(1, 3 * (5 + 2), 2, 3)  # H = 2, W = 3, stride 16
    boxes, obj, cls = yolo_decode(out, anchors, (16.0, 16.0))
    assert boxes.shape == (1, 3 * 2 * 3, 4) and obj.shape == (1, 18) and cls.shape == (1, 18, 2)
    # anchor 1, row 1, col 2 -> row index 1 * 6 + 1 * 3 + 2; centre (2.5 * 16, 1.5 * 16)
    torch.testing.assert_close(boxes[0, 11], torch.tensor([40 - 15, 24 - 20, 40 + 15, 24 + 20.0]))
    out[0, 7 + 0, 1, 2] = 100.0  # anchor 1, tx -> sigmoid 1: centre moves half a cell right
    out[0, 7 + 2, 1, 2] = math.log(2.0)  # tw: twice the anchor width
    boxes, _, _ = yolo_decode(out, anchors, (16.0, 16.0))
    torch.testing.assert_close(boxes[0, 11], torch.tensor([48 - 30, 4, 48 + 30, 44.0]))


def test_objectness_ignore_rule_hand_counted():
    # Zero logits everywhere: every anchor's objectness BCE is log 2. A ground truth equal to
    # COCO anchor 4 (62 x 45) centred on a stride-16 cell centre is a positive of anchor 4; the
    # same anchor one cell left/right has IoU 2070 / 3510 = 0.59 > 0.5 (ignored), one cell up /
    # down 0.475 (kept), every other anchor < 0.5. So the loss counts all anchors but 2.
    size = 128
    outs = [torch.zeros(1, 3 * (5 + 2), size // s, size // s) for s in (8, 16, 32)]
    strides = [(8.0, 8.0), (16.0, 16.0), (32.0, 32.0)]
    cx, cy = 3.5 * 16, 4.5 * 16
    box = torch.tensor([[cx - 31, cy - 22.5, cx + 31, cy + 22.5]])
    t = [{"boxes": box, "labels": torch.tensor([1])}]
    anchors = torch.tensor(COCO_ANCHORS, dtype=torch.float)
    total = 3 * sum((size // s) ** 2 for s in (8, 16, 32))
    loss = yolov3_loss(outs, strides, anchors, t, (size, size), ignore_thresh=0.5)
    assert loss["loss_obj"].item() == pytest.approx((total - 2) * math.log(2), rel=1e-5)
    loss1 = yolov3_loss(outs, strides, anchors, t, (size, size), ignore_thresh=1.0)
    assert loss1["loss_obj"].item() == pytest.approx(total * math.log(2), rel=1e-5)
    # box: BCE(0, 0.5) twice (the centre is mid-cell) + 0 for tw/th; class: 2 x log 2
    scale = 2 - 62 * 45 / size**2
    assert loss["loss_box"].item() == pytest.approx(scale * 2 * math.log(2), rel=1e-5)
    assert loss["loss_cls"].item() == pytest.approx(2 * math.log(2), rel=1e-5)


def test_registry_and_shapes():
    assert {"yolov3_darknet53", "yolov3_tiny_darknet"} <= set(list_models())
    model = create_model("yolov3_tiny_darknet", num_classes=NUM_CLASSES, **TINY).eval()
    raw = model.forward_raw(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in raw["outputs"]] == [
        (2, 3 * (5 + NUM_CLASSES), 8, 8), (2, 24, 4, 4), (2, 24, 2, 2),
    ]  # fmt: skip
    assert raw["strides"] == [(8.0, 8.0), (16.0, 16.0), (32.0, 32.0)]


def test_full_size_model_builds():
    m = yolov3_darknet53(20)
    assert m.cfg.image_size == 416 and m.anchors.shape == (9, 2)
    assert [b[1].out_channels for b in m.head.branches] == [75, 75, 75]
    assert [b[0].conv.out_channels for b in m.head.branches] == [256, 512, 1024]


def test_eval_outputs_ranges_and_original_size():
    # untrained scores are about prior 0.01 x sigmoid(0) = 0.005: use a lower threshold
    model = tiny_yolo(score_thresh=0.001).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 96)]
    with torch.no_grad():
        dets = model(images)
    for det, im in zip(dets, images):
        h, w = im.shape[-2:]
        d = det["boxes"].shape[0]
        assert 0 < d <= model.cfg.detections_per_img
        assert det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES
        assert det["scores"].min() > 0.001 and det["scores"].max() < 1
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert det["boxes"][:, 0::2].min() >= 0 and det["boxes"][:, 0::2].max() <= w + 1e-4
        assert det["boxes"][:, 1::2].min() >= 0 and det["boxes"][:, 1::2].max() <= h + 1e-4


def test_invalid_targets_name_the_image():
    model = tiny_yolo().train()
    bad = {"boxes": torch.tensor([[5.0, 5, 20, 20]]), "labels": torch.tensor([7]), "image_id": "x9"}
    with pytest.raises(ValueError, match="x9.*outside"):
        model([torch.rand(3, 64, 64)], [bad])


def test_few_iterations_lower_the_loss():
    first, last = train_steps(tiny_yolo(), 12, 0.01)
    assert last < 0.8 * first


def test_lbw_4bit_prepare_still_trains():
    check_lbw_4bit_trains(tiny_yolo())


def test_extra_anchor_positives():
    # GT (30, 61) = COCO anchor 3; anchor 4 (62, 45) has shape IoU 1350 / 3270 = 0.41, the
    # others < 0.4: with extra_anchor_iou=0.4 the class loss (2 log 2 per positive at zero
    # logits) doubles; anchors 3 and 4 are both on the stride-16 scale.
    size = 128
    outs = [torch.zeros(1, 3 * (5 + 2), size // s, size // s) for s in (8, 16, 32)]
    strides = [(8.0, 8.0), (16.0, 16.0), (32.0, 32.0)]
    t = [{"boxes": torch.tensor([[40.0, 40, 70, 101]]), "labels": torch.tensor([0])}]
    anchors = torch.tensor(COCO_ANCHORS, dtype=torch.float)
    one = yolov3_loss(outs, strides, anchors, t, (size, size))
    two = yolov3_loss(outs, strides, anchors, t, (size, size), extra_anchor_iou=0.4)
    assert one["loss_cls"].item() == pytest.approx(2 * math.log(2), rel=1e-5)
    assert two["loss_cls"].item() == pytest.approx(4 * math.log(2), rel=1e-5)
