"""Detectors: registry, training on a fixed synthetic batch, eval output, target checks,
post-processing against hand-computed boxes, the raw/post-processing split."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.detection import create_model, list_models
from lowbit.detection.models import (
    DetectorTransform,
    PostprocessParams,
    RFCNHead,
    postprocess_detections,
)
from lowbit.detection.registry import register_model

TINY = {
    "width": 0.125,
    "anchor_sizes": (16, 32),
    "aspect_ratios": (1.0,),
    "rpn_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 30,
    "box_batch_size_per_image": 32,
}
RFCN_TINY = {**TINY, "k": 3, "reduce_dim": 16}
FRCNN_TINY = {**TINY, "representation_size": 32}
NUM_CLASSES = 3
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]])


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_batch(seed: int = 0, sizes=((64, 96), (96, 64), (80, 80))):
    """Images of noise with solid rectangles; the class is the rectangle's colour."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, (h, w) in enumerate(sizes):
        im = torch.rand(3, h, w, generator=g) * 0.3
        boxes, labels = [], []
        for _ in range(2):
            bw = int(torch.randint(16, 33, (1,), generator=g))
            bh = int(torch.randint(16, 33, (1,), generator=g))
            x1 = int(torch.randint(0, w - bw, (1,), generator=g))
            y1 = int(torch.randint(0, h - bh, (1,), generator=g))
            c = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
            im[:, y1 : y1 + bh, x1 : x1 + bw] = COLOURS[c][:, None, None]
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(c)
        images.append(im)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "image_id": f"syn{i}",
            }
        )
    return images, targets


def tiny(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    base = RFCN_TINY if name.startswith("rfcn") else FRCNN_TINY
    return create_model(name, NUM_CLASSES, **{**base, **kw})


def train_steps(model: nn.Module, steps: int, lr: float = 0.02) -> list[float]:
    images, targets = synthetic_batch()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(images, targets)
        assert set(out) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                            "loss_box_reg"}  # fmt: skip
        loss = sum(out.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def check_detections(dets, images, max_dets: int) -> None:
    assert isinstance(dets, list) and len(dets) == len(images)
    for d, im in zip(dets, images):
        h, w = im.shape[-2:]
        boxes, labels, scores = d["boxes"], d["labels"], d["scores"]
        n = boxes.shape[0]
        assert boxes.shape == (n, 4) and labels.shape == (n,) and scores.shape == (n,)
        assert n <= max_dets
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((labels >= 0) & (labels < NUM_CLASSES)).all()
        assert ((scores >= 0) & (scores <= 1)).all()
        assert (scores[:-1] >= scores[1:]).all()


# ----------------------------------------------------------------------------- registry
def test_registry_names():
    names = list_models()
    for n in ("rfcn_resnet18", "rfcn_resnet50", "rfcn_resnet101", "faster_rcnn_resnet18",
              "faster_rcnn_resnet50"):  # fmt: skip
        assert n in names
    assert names == sorted(names)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown detection model 'nope'"):
        create_model("nope", 3)
    with pytest.raises(ValueError, match="unknown model option.*bogus"):
        create_model("rfcn_resnet18", 3, bogus=1)
    with pytest.raises(ValueError, match="already registered"):
        register_model("rfcn_resnet18")(lambda num_classes: nn.Identity())
    with pytest.raises(ValueError, match="num_classes"):
        create_model("rfcn_resnet18", 0)


def test_paper_models_build_with_the_paper_structure():
    m = create_model("rfcn_resnet50", 20)
    head = m.roi_heads.head
    assert isinstance(head, RFCNHead) and head.k == 7 and head.class_agnostic
    assert head.conv_new.out_channels == 1024
    assert head.rfcn_cls.out_channels == 21 * 49 and head.rfcn_bbox.out_channels == 4 * 49
    assert m.backbone.strides["layer4"] == 16 and m.roi_heads.ohem
    assert not any(isinstance(x, nn.Linear) for x in m.modules())  # no FC layer in R-FCN
    f = create_model("faster_rcnn_resnet50", 20)
    assert isinstance(f.roi_heads.head.box_head.fc6, nn.Linear)
    assert f.roi_heads.head.box_head.fc6.in_features == 1024 * 7 * 7
    assert isinstance(f.roi_heads.head.box_head.fc7, nn.Linear)


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("rfcn_resnet18", {}),
        ("rfcn_resnet18", {"ohem": True, "class_agnostic": False}),
        ("faster_rcnn_resnet18", {}),
    ],
)
def test_loss_decreases_on_a_fixed_batch(name, kw):
    losses = train_steps(tiny(name, **kw), steps=12)
    assert min(losses[-3:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", ["rfcn_resnet18", "faster_rcnn_resnet18"])
def test_eval_output_is_well_formed(name):
    model = tiny(name, box_score_thresh=0.0, box_detections_per_img=7)
    train_steps(model, steps=3)
    model.eval()
    images, _ = synthetic_batch(seed=1)
    with torch.no_grad():
        dets = model(images)
    check_detections(dets, images, max_dets=7)
    assert sum(d["boxes"].shape[0] for d in dets) > 0


def test_eval_rescales_to_original_size():
    model = tiny("rfcn_resnet18", min_size=48, max_size=64, box_score_thresh=0.0)
    model.eval()
    images, _ = synthetic_batch(seed=2)
    with torch.no_grad():
        dets = model(images)
        batch, sizes, _ = model.transform(images)
        manual = model.postprocess(model.forward_raw(batch, sizes))
    assert sizes == [(43, 64), (64, 43), (48, 48)]
    check_detections(dets, images, max_dets=100)
    for d, m, (h, w), im in zip(dets, manual, sizes, images):
        oh, ow = im.shape[-2:]
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
        assert torch.allclose(d["boxes"], m["boxes"] * scale, atol=1e-4)
        assert torch.equal(d["labels"], m["labels"])


def test_images_without_objects_train():
    model = tiny("faster_rcnn_resnet18")
    images, targets = synthetic_batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    model.train()
    out = model(images, targets)
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values())


# ----------------------------------------------------------------------------- target checks
@pytest.mark.parametrize(
    ("boxes", "labels", "match"),
    [
        ([[10.0, 10.0, 10.0, 30.0]], [0], "degenerate target box 0"),
        ([[10.0, 30.0, 20.0, 20.0]], [1], "degenerate target box 0"),
        ([[10.0, 10.0, 20.0, 20.0]], [NUM_CLASSES], "label 3 of box 0 is outside 0..2"),
        ([[10.0, 10.0, 20.0, 20.0]], [-1], "label -1"),
        ([[10.0, 10.0, float("nan"), 20.0]], [0], "NaN"),
    ],
)
def test_invalid_targets_raise_naming_the_image(boxes, labels, match):
    model = tiny("rfcn_resnet18")
    images, targets = synthetic_batch()
    targets[2] = {
        "boxes": torch.tensor(boxes),
        "labels": torch.tensor(labels),
        "image_id": "bad_one",
    }
    with pytest.raises(ValueError, match=match) as info:
        model(images, targets)
    assert "'bad_one'" in str(info.value)


def test_invalid_target_without_id_names_the_index():
    model = tiny("faster_rcnn_resnet18")
    images, targets = synthetic_batch()
    targets[1] = {"boxes": torch.tensor([[5.0, 5.0, 2.0, 9.0]]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match="batch index 1"):
        model(images, targets)
    with pytest.raises(ValueError, match="targets are required"):
        model(images)


# ----------------------------------------------------------------------------- post-processing
def test_postprocess_oracle_by_hand():
    # Two proposals in image 0, one in image 1; 2 foreground classes (columns 1, 2).
    proposals = [
        torch.tensor([[10.0, 10.0, 30.0, 50.0], [12.0, 10.0, 32.0, 50.0]]),
        torch.tensor([[0.0, 0.0, 40.0, 40.0]]),
    ]
    big = 10.0
    logits = torch.tensor([[0.0, big, 0.0], [0.0, big - 1, 0.0], [0.0, 0.0, big]])
    deltas = torch.zeros(3, 4)
    # proposal 2: move the centre by +0.25 width in x (dx = 10 * 0.25) and double the height
    # (dh = 5 * log 2): centre (20, 20) -> (30, 20), size 40 x 80 -> box (10, -20, 50, 60),
    # clipped to the 48 x 64 image -> (10, 0, 50, 48).
    deltas[2] = torch.tensor([2.5, 0.0, 0.0, 5 * math.log(2.0)])
    dets = postprocess_detections(
        logits, deltas, proposals, [(100, 100), (48, 64)], PostprocessParams(score_thresh=0.5)
    )
    e = math.exp(big)
    p0 = e / (e + 2)
    # image 0: the two boxes overlap with IoU 36/44 > 0.5 -> NMS keeps the higher one only
    assert torch.allclose(dets[0]["boxes"], torch.tensor([[10.0, 10.0, 30.0, 50.0]]))
    assert dets[0]["labels"].tolist() == [0]  # column 1 -> label 0
    assert torch.allclose(dets[0]["scores"], torch.tensor([p0]))
    assert torch.allclose(dets[1]["boxes"], torch.tensor([[10.0, 0.0, 50.0, 48.0]]), atol=1e-4)
    assert dets[1]["labels"].tolist() == [1]
    # per-class deltas: the group of the predicted column is the one used
    deltas_pc = torch.zeros(3, 12)
    deltas_pc[2, 8:12] = deltas[2]
    deltas_pc[2, 4:8] = torch.tensor([-100.0, 0, 0, 0])  # class 1's group: would move far left
    dets_pc = postprocess_detections(
        logits, deltas_pc, proposals, [(100, 100), (48, 64)], PostprocessParams(score_thresh=0.5)
    )
    assert torch.allclose(dets_pc[1]["boxes"], dets[1]["boxes"], atol=1e-4)
    # low threshold: both classes of the agnostic box survive, sorted by score, top-k applies
    dets_all = postprocess_detections(
        logits, deltas, proposals, [(100, 100), (48, 64)],
        PostprocessParams(score_thresh=0.0, detections_per_img=1),
    )  # fmt: skip
    assert [d["boxes"].shape[0] for d in dets_all] == [1, 1]


@pytest.mark.parametrize("cols", [4, 12])
def test_postprocess_image_without_proposals_gets_empty_detections(cols):
    # image 0 has no proposals (e.g. every RPN box filtered), image 1 has one confident box
    proposals = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 20.0, 20.0]])]
    logits = torch.tensor([[0.0, 10.0, 0.0]])
    dets = postprocess_detections(
        logits, torch.zeros(1, cols), proposals, [(32, 32), (32, 32)],
        PostprocessParams(score_thresh=0.5),
    )  # fmt: skip
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["labels"].numel() == 0
    assert dets[1]["labels"].tolist() == [0]
    assert torch.allclose(dets[1]["boxes"], proposals[1])


def test_postprocess_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="proposals"):
        postprocess_detections(torch.zeros(2, 3), torch.zeros(2, 4), [torch.zeros(3, 4)], [(9, 9)])
    with pytest.raises(ValueError, match="columns"):
        postprocess_detections(torch.zeros(1, 3), torch.zeros(1, 8), [torch.zeros(1, 4)], [(9, 9)])


@pytest.mark.parametrize("name", ["rfcn_resnet18", "faster_rcnn_resnet18"])
def test_forward_raw_then_postprocess_equals_eval_forward(name):
    model = tiny(name, box_score_thresh=0.0)
    model.eval()
    images, _ = synthetic_batch(seed=3, sizes=((64, 64), (64, 64)))
    with torch.no_grad():
        dets = model(images)
        batch, sizes, _ = model.transform(images)
        raw = model.forward_raw(batch, sizes)
        again = model.postprocess(raw)
    a = raw["objectness"].shape[1]
    assert raw["rpn_deltas"].shape[1] == 4 * a
    assert raw["class_logits"].shape == (sum(len(p) for p in raw["proposals"]), NUM_CLASSES + 1)
    for d, e in zip(dets, again):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(d[key], e[key])


# ----------------------------------------------------------------------------- pieces
def test_transform_pads_to_32_and_scales_boxes():
    t = DetectorTransform(min_size=40, max_size=70)
    images = [torch.rand(3, 20, 30), torch.rand(3, 50, 20)]
    targets = [{"boxes": torch.tensor([[2.0, 4.0, 10.0, 20.0]])}, {"boxes": torch.zeros(0, 4)}]
    batch, sizes, out = t(images, targets)
    assert sizes == [(40, 60), (70, 28)]
    assert batch.shape == (2, 3, 96, 64)
    assert torch.allclose(out[0]["boxes"], torch.tensor([[4.0, 8.0, 20.0, 40.0]]))
    assert torch.equal(targets[0]["boxes"], torch.tensor([[2.0, 4.0, 10.0, 20.0]]))  # untouched
    assert batch[0, :, 40:].abs().sum() == 0 and batch[1, :, :, 28:].abs().sum() == 0
    native = DetectorTransform()
    b2, s2, _ = native([torch.rand(3, 64, 70)])
    assert s2 == [(64, 70)] and b2.shape == (1, 3, 64, 96)


def test_rfcn_voting_averages_position_sensitive_bins():
    k, c = 3, 2
    head = RFCNHead(in_channels=4, num_classes=c, k=k, reduce_dim=4, spatial_scale=1.0)
    feature = torch.rand(1, 4, 12, 12)
    proposals = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [3.0, 2.0, 11.0, 11.0]])]
    logits, deltas = head(feature, proposals)
    assert logits.shape == (2, c + 1) and deltas.shape == (2, 4)
    cls_maps, _ = head.score_maps(feature)
    # oracle: class j, bin (i, l) reads channel (j * k + i) * k + l over its cell block
    # box 0 is (0, 0, 8, 8): Caffe bins are (8 + 1) / 3 = 3 px wide, bin (i, l) covers rows
    # 3i..3i+2 and columns 3l..3l+2
    expect = torch.zeros(c + 1)
    for j in range(c + 1):
        for i in range(k):
            for l in range(k):
                ch = (j * k + i) * k + l
                expect[j] += cls_maps[0, ch, 3 * i : 3 * i + 3, 3 * l : 3 * l + 3].mean()
    assert torch.allclose(logits[0], expect / (k * k), atol=1e-6)
    logits.sum().backward()
    assert head.rfcn_cls.weight.grad.abs().sum() > 0


class _FixedHead(nn.Module):
    """A second-stage head whose outputs are parameters: one row per RoI, in order."""

    def __init__(self, num_rois: int, num_classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.logits = nn.Parameter(torch.randn(num_rois, num_classes + 1, generator=g))
        self.deltas = nn.Parameter(torch.randn(num_rois, 4, generator=g) * 0.3)

    def forward(self, feature, proposals):
        assert sum(p.shape[0] for p in proposals) == self.logits.shape[0]
        return self.logits * 1.0, self.deltas * 1.0


def test_ohem_backpropagates_the_top_b_rois_by_loss_per_image():
    """R-FCN's OHEM (Dai et al. 2016, sec. 2): the loss of every RoI (proposals + ground
    truth) is computed, and per image the B RoIs with the highest cls + box loss are the only
    ones back-propagated; the losses are averaged over them. Loop oracle below."""
    from lowbit.detection.models import RoIHeads
    from lowbit.detection.ops import BoxCoder, box_iou

    g = torch.Generator().manual_seed(0)
    gts = [torch.tensor([[10.0, 10, 30, 34], [36, 8, 60, 30]]), torch.tensor([[20.0, 20, 50, 44]])]
    gt_labels = [torch.tensor([1, 3]), torch.tensor([2])]  # internal labels, 0 = background
    proposals = []
    for gt, n in zip(gts, (14, 11)):
        jitter = gt[torch.arange(n) % gt.shape[0]] + torch.randn(n, 4, generator=g) * 4
        rand = torch.rand(n, 2, generator=g) * 40
        rand = torch.cat((rand, rand + 8 + torch.rand(n, 2, generator=g) * 16), 1)
        use_jitter = torch.arange(n)[:, None] % 2 == 0  # half near a ground truth
        proposals.append(torch.where(use_jitter, jitter, rand).clamp(0, 64))
    b = 6
    num_rois = sum(p.shape[0] + t.shape[0] for p, t in zip(proposals, gts))
    head = _FixedHead(num_rois, NUM_CLASSES)
    roi_heads = RoIHeads(head, 0.5, 0.5, batch_size_per_image=b, ohem=True).train()
    targets = [{"boxes": t, "labels": lab} for t, lab in zip(gts, gt_labels)]
    _, losses = roi_heads(torch.zeros(2, 1, 4, 4), proposals, [(64, 64)] * 2, targets)

    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    row, chosen, cls_sum, box_sum, num_fg = 0, [], 0.0, 0.0, 0
    for props, gt, lab in zip(proposals, gts, gt_labels):
        rois = torch.cat((props, gt))
        per_roi = []
        for r in range(rois.shape[0]):
            iou = box_iou(gt, rois[r : r + 1])[:, 0]
            fg = bool(iou.max() >= 0.5)
            label = int(lab[iou.argmax()]) if fg else 0
            logit = head.logits[row + r].detach()
            ce = float(torch.logsumexp(logit, 0) - logit[label])
            box = 0.0
            if fg:
                t = coder.encode(gt[iou.argmax()][None], rois[r : r + 1])[0]
                d = (head.deltas[row + r].detach() - t).abs()
                box = float(torch.where(d < 1 / 9, 0.5 * d**2 * 9, d - 0.5 / 9).sum())
            per_roi.append((ce + box, ce, box, row + r, fg))
        num_fg += sum(p[4] for p in per_roi)
        top = sorted(per_roi, key=lambda p: -p[0])[:b]
        chosen += [p[3] for p in top]
        cls_sum += sum(p[1] for p in top)
        box_sum += sum(p[2] for p in top)
        row += rois.shape[0]
    assert num_fg >= 4 and num_rois > 2 * b  # positives exist and the selection binds
    assert losses["loss_classifier"].item() == pytest.approx(cls_sum / (2 * b), rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(box_sum / (2 * b), rel=1e-5)
    (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
    with_grad = torch.nonzero(head.logits.grad.abs().sum(1) > 0).flatten().tolist()
    assert sorted(with_grad) == sorted(chosen)


def test_prepare_lbw_exact_4bit_still_trains():
    nnq = pytest.importorskip("lowbit.nn")
    if not hasattr(nnq, "prepare"):
        pytest.skip("lowbit.nn.prepare not available yet")
    model = tiny("rfcn_resnet18")
    model = nnq.prepare(model, {"method": "lbw-exact", "bits": 4}) or model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    quant = [m for m in model.modules() if isinstance(m, nnq.QuantConv2d)]
    assert len(quant) == len(convs) > 20  # every conv, backbone and heads, is quantized
    w = model.roi_heads.head.rfcn_cls.weight.detach().clone()
    losses = train_steps(model, steps=2)
    assert all(math.isfinite(v) for v in losses)
    assert not torch.equal(w, model.roi_heads.head.rfcn_cls.weight)  # float shadow moved
    model.eval()
    images, _ = synthetic_batch(seed=4)
    with torch.no_grad():
        check_detections(model(images), images, max_dets=100)
