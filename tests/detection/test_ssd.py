"""SSD: default boxes against hand-computed values, matching and hard negative mining against
loop oracles, shapes / score ranges, target errors, VGG weight layout, training (float and
4-bit LBW) on a tiny synthetic devkit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from lowbit.detection.backbones import vgg16
from lowbit.detection.models.ssd import (
    DefaultBoxGenerator,
    ssd300_vgg16,
    ssd_box_sizes,
    ssd_lite_vgg,
    ssd_loss,
    ssd_match,
)
from lowbit.detection.ops import BoxCoder, box_iou
from lowbit.detection.registry import create_model, list_models
from tests.detection._synthetic import NUM_CLASSES, check_lbw_4bit_trains, tiny_ssd, train_steps
from tests.detection._synthetic import TINY_SSD as TINY

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- default boxes
def test_box_sizes_match_ssd300_reference():
    lo, hi = ssd_box_sizes(300, 6)
    assert lo == [30, 60, 111, 162, 213, 264]
    assert hi == [60, 111, 162, 213, 264, 315]


def test_default_boxes_hand_computed_2x2_map():
    # One 2x2 map of a 64 px input, step 32: centres 16 and 48 px; s = 16 px, s' = sqrt(16 * 32).
    gen = DefaultBoxGenerator([16], [32], [[2.0]], steps=[32], image_size=64, clip=False)
    boxes = gen([(2, 2)], (64, 64))
    assert boxes.shape == (2 * 2 * 4, 4)
    s2 = math.sqrt(16 * 32)  # 22.627
    r = math.sqrt(2.0)
    cell00 = torch.tensor(
        [
            [16 - 8, 16 - 8, 16 + 8, 16 + 8],
            [16 - s2 / 2, 16 - s2 / 2, 16 + s2 / 2, 16 + s2 / 2],
            [16 - 8 * r, 16 - 8 / r, 16 + 8 * r, 16 + 8 / r],  # wide: w = s sqrt(2)
            [16 - 8 / r, 16 - 8 * r, 16 + 8 / r, 16 + 8 * r],  # tall
        ]
    )
    torch.testing.assert_close(boxes[:4], cell00)
    # location-major order: (row 0, col 1) next, shifted by 32 px in x only
    torch.testing.assert_close(boxes[4:8], cell00 + torch.tensor([32.0, 0, 32, 0]))
    torch.testing.assert_close(boxes[8:12], cell00 + torch.tensor([0.0, 32, 0, 32]))


def test_default_boxes_ssd300_count_and_clip():
    model = ssd300_vgg16(20)
    sizes = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert model.default_boxes.num_boxes_per_location == [4, 6, 6, 6, 4, 4]
    norm = model.default_boxes.cxcywh(sizes)
    assert norm.shape == (8732, 4)
    assert norm.min() >= 0 and norm.max() <= 1
    # first box: centre (0.5 / 37.5), scale 30 / 300 (ssd.pytorch's f_k = 300 / 8)
    torch.testing.assert_close(norm[0], torch.tensor([0.5 / 37.5, 0.5 / 37.5, 0.1, 0.1]))
    # last box of the 1x1 map: centred, aspect 1/2 of s = 264 / 300
    s = 264 / 300
    torch.testing.assert_close(
        norm[-1], torch.tensor([0.5, 0.5, s / math.sqrt(2), min(1.0, s * math.sqrt(2))])
    )


# ----------------------------------------------------------------------------- matching + loss
def test_match_threshold_and_forced_best():
    priors = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 12], [20, 20, 30, 30], [50, 50, 60, 60]], dtype=torch.float
    )
    gt = torch.tensor([[0, 0, 10, 11], [21, 21, 40, 40]], dtype=torch.float)
    idx = ssd_match(gt, priors, 0.5)
    # priors 0 and 1 overlap gt 0 with IoU > 0.5; prior 2 only has IoU 81/461 with gt 1 but is
    # its best prior, so it is forced; prior 3 is background.
    assert idx.tolist() == [0, 0, 1, -1]
    assert ssd_match(torch.zeros((0, 4)), priors).tolist() == [-1] * 4


def test_loss_hard_negative_mining_matches_oracle():
    torch.manual_seed(0)
    priors = torch.tensor(
        [[0, 0, 10, 10], [30, 30, 40, 40], [0, 30, 10, 40], [30, 0, 40, 10],
         [15, 15, 25, 25], [0, 15, 10, 25], [15, 0, 25, 10], [40, 40, 50, 50]],
        dtype=torch.float,
    )  # fmt: skip
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[30.0, 30, 40, 40], [15, 15, 25, 25]]),
            "labels": torch.tensor([1, 1]),
        },
    ]
    logits = torch.randn(2, 8, 3)
    reg = torch.randn(2, 8, 4)
    coder = BoxCoder((10, 10, 5, 5))
    out = ssd_loss(reg, logits, priors, targets, coder, 0.5, 3.0)
    # loop oracle
    cls_sum, box_sum, npos = 0.0, 0.0, 0
    for i, t in enumerate(targets):
        iou = box_iou(t["boxes"], priors)
        pos = [p for p in range(8) if iou[:, p].max() >= 0.5]
        npos += len(pos)
        neg_losses = []
        for p in range(8):
            j = int(iou[:, p].argmax())
            label = int(t["labels"][j]) if p in pos else 0
            ce = float(F.cross_entropy(logits[i, p][None], torch.tensor([label])))
            if p in pos:
                cls_sum += ce
                d = coder.encode(t["boxes"][j][None], priors[p][None])[0]
                box_sum += float(F.smooth_l1_loss(reg[i, p], d, reduction="sum"))
            else:
                neg_losses.append(ce)
        cls_sum += sum(sorted(neg_losses, reverse=True)[: 3 * len(pos)])
    assert npos == 3
    assert out["loss_classifier"].item() == pytest.approx(cls_sum / npos, rel=1e-5)
    assert out["loss_box_reg"].item() == pytest.approx(box_sum / npos, rel=1e-5)


# ----------------------------------------------------------------------------- model API
def test_registry_and_shapes():
    assert {"ssd300_vgg16", "ssd_lite_vgg"} <= set(list_models())
    model = create_model("ssd_lite_vgg", num_classes=NUM_CLASSES, **TINY).eval()
    batch = torch.rand(2, 3, 64, 64)
    raw = model.forward_raw(batch)
    p = raw["default_boxes"].shape[0]
    assert raw["bbox_regression"].shape == (2, p, 4)
    assert raw["cls_logits"].shape == (2, p, NUM_CLASSES + 1)
    # 6 maps at 64 px: 8, 4, 2, 1, 1, 1 with 4 boxes per location
    assert p == 4 * (64 + 16 + 4 + 1 + 1 + 1)


def test_eval_outputs_ranges_and_original_size():
    model = tiny_ssd().eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2
    for det, im in zip(dets, images):
        h, w = im.shape[-2:]
        d = det["boxes"].shape[0]
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape == (d, 4)
        assert det["labels"].dtype == torch.int64 and det["scores"].shape == (d,)
        assert d <= model.cfg.detections_per_img
        if d:
            assert det["labels"].min() >= 0 and det["labels"].max() < NUM_CLASSES
            assert det["scores"].min() > model.cfg.score_thresh and det["scores"].max() <= 1
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
            assert det["boxes"][:, 0::2].min() >= 0 and det["boxes"][:, 0::2].max() <= w + 1e-4
            assert det["boxes"][:, 1::2].min() >= 0 and det["boxes"][:, 1::2].max() <= h + 1e-4


def test_postprocess_is_separate_from_network():
    model = tiny_ssd().eval()
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        batch, sizes, _ = model.transform(images)
        dets = model.postprocess(model.forward_raw(batch), sizes)
        ref = model(images)
    torch.testing.assert_close(dets[0]["boxes"], ref[0]["boxes"])
    torch.testing.assert_close(dets[0]["scores"], ref[0]["scores"])


@pytest.mark.parametrize(
    "target, message",
    [
        ({"boxes": torch.tensor([[5.0, 5, 5, 20]]), "labels": torch.tensor([0])}, "degenerate"),
        ({"boxes": torch.tensor([[5.0, 5, 20, 20]]), "labels": torch.tensor([3])}, "outside"),
        ({"boxes": torch.tensor([[5.0, 5, 20]]), "labels": torch.tensor([0])}, "Tensor"),
    ],
)
def test_invalid_targets_name_the_image(target, message):
    model = tiny_ssd().train()
    good = {"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([1])}
    target = {**target, "image_id": "img_007"}
    with pytest.raises(ValueError, match=f"img_007.*{message}|{message}.*img_007"):
        model([torch.rand(3, 64, 64)] * 2, [good, target])


def test_vgg_part_loads_torchvision_layout(tmp_path):
    torch.manual_seed(1)
    src = vgg16(width=0.0625, num_classes=10)  # torchvision layout incl. classifier.*
    path = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = ssd_lite_vgg(NUM_CLASSES, **{**TINY, "batch_norm": False}, backbone_weights=str(path))
    feats = model.backbone.features
    for k, v in src.features.state_dict().items():
        torch.testing.assert_close(feats.state_dict()[k], v)
    # same names as torchvision: conv4_3 is features.28's predecessor block, conv1_1 features.0
    assert {"0.weight", "28.weight"} <= set(feats.state_dict())
    assert feats[16].ceil_mode and isinstance(feats[30], nn.MaxPool2d) and feats[30].stride == 1


# ----------------------------------------------------------------------------- training
def test_few_iterations_lower_the_loss():
    first, last = train_steps(tiny_ssd(), 12, 0.01)
    assert last < 0.8 * first


def test_lbw_4bit_prepare_still_trains():
    model = tiny_ssd()
    check_lbw_4bit_trains(model)
    model.eval()
    with torch.no_grad():
        dets = model([torch.rand(3, 64, 64)])
    assert dets[0]["boxes"].shape[1] == 4
