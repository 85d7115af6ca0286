"""SSD / YOLOv3 post-processing caps: an untrained model (flat scores, every box a candidate)
feeds NMS a bounded number of boxes, and the capped result equals a slow loop oracle (threshold,
greedy per-class NMS, no caps) whenever the caps are not below the candidate counts."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lowbit.detection.models.ssd import SSD, multiclass_nms
from lowbit.detection.models.yolov3 import yolo_decode
from lowbit.detection.ops import clip_boxes_to_image
from tests.detection._oracles import iou_oracle
from tests.detection._synthetic import NUM_CLASSES, tiny_ssd, tiny_yolo

pytestmark = pytest.mark.usefixtures("one_thread")
# the module, not the function `lowbit.detection.ops.nms` that shadows it on the package
nms_module = importlib.import_module("lowbit.detection.ops.nms")

BUILDERS = pytest.mark.parametrize("build", [tiny_ssd, tiny_yolo], ids=["ssd", "yolov3"])


def _images(n: int = 3) -> list[Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, 64, 48 + 16 * i, generator=g) for i in range(n)]


def _decoded(model: nn.Module, raw: dict[str, Any], sizes: list[tuple[int, int]]) -> tuple[
    Tensor, Tensor
]:
    """Per image class scores ``[N, P, C]`` and clipped boxes ``[N, P, 4]`` from raw outputs."""
    if isinstance(model, SSD):
        scores = torch.softmax(raw["cls_logits"].float(), -1)[..., 1:]
        boxes = torch.stack([
            clip_boxes_to_image(model.box_coder.decode(raw["bbox_regression"][i],
                                                       raw["default_boxes"]), size)
            for i, size in enumerate(sizes)
        ])  # fmt: skip
        return scores, boxes
    a = model.head.anchors_per_scale
    bl, sl = [], []
    for lvl, (out, stride) in enumerate(zip(raw["outputs"], raw["strides"])):
        b, obj, cls = yolo_decode(out, model.anchors[lvl * a : (lvl + 1) * a], stride)
        bl.append(b)
        sl.append(obj.sigmoid()[..., None] * cls.sigmoid())
    boxes = torch.cat(bl, 1)
    boxes = torch.stack([clip_boxes_to_image(boxes[i], s) for i, s in enumerate(sizes)])
    return torch.cat(sl, 1), boxes


def _oracle(
    boxes: Tensor, scores: Tensor, thresh: float, iou_thresh: float, top_n: int | None = None
) -> list[tuple[float, int, list[float]]]:
    """Loop oracle: candidates ``score > thresh`` (optionally only the ``top_n`` best), greedy
    NMS per class in score order (ties: class, then box index), ``(score, label, box)`` list."""
    cands = [
        (float(scores[p, c]), c, p) for p, c in torch.nonzero(scores > thresh).tolist()
    ]
    cands.sort(key=lambda t: (-t[0], t[1], t[2]))
    cands = cands[:top_n] if top_n is not None else cands
    kept: list[tuple[float, int, list[float]]] = []
    for s, c, p in cands:
        box = boxes[p].double().tolist()
        if all(kc != c or iou_oracle(kb, box) <= iou_thresh for _, kc, kb in kept):
            kept.append((s, c, box))
    return kept


def _assert_matches(det: dict[str, Tensor], expect: list[tuple[float, int, list[float]]]):
    assert det["labels"].tolist() == [c for _, c, _ in expect]
    torch.testing.assert_close(det["scores"], torch.tensor([s for s, _, _ in expect]))
    boxes = torch.tensor([b for _, _, b in expect], dtype=torch.float32).reshape(-1, 4)
    torch.testing.assert_close(det["boxes"], boxes)


def _record_nms(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Tensor, Tensor]]:
    """Wrap the ``batched_nms`` that :func:`multiclass_nms` calls (in its module,
    :mod:`lowbit.detection.ops.nms`); record ``(scores, idxs)``."""
    calls: list[tuple[Tensor, Tensor]] = []
    real: Callable[..., Tensor] = nms_module.batched_nms

    def spy(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
        calls.append((scores.clone(), idxs.clone()))
        return real(boxes, scores, idxs, iou_threshold)

    monkeypatch.setattr(nms_module, "batched_nms", spy)
    return calls


@BUILDERS
def test_untrained_model_feeds_nms_a_bounded_number_of_boxes(build, monkeypatch):
    calls = _record_nms(monkeypatch)
    # score_thresh 0: every (box, class) of the untrained model is a candidate
    model = build(score_thresh=0.0, topk_candidates=50, pre_nms_top_n=120,
                  detections_per_img=30).eval()  # fmt: skip
    images = _images()
    with torch.no_grad():
        batch, sizes, _ = model.transform(images)
        raw = model.forward_raw(batch)
        scores, _ = _decoded(model, raw, sizes)
        dets = model.postprocess(raw, sizes)
    num_boxes = scores.shape[1]
    assert num_boxes * NUM_CLASSES > NUM_CLASSES * 50 > 120  # every cap binds
    assert [s.numel() for s, _ in calls] == [120] * len(images)
    for i, (s, idxs) in enumerate(calls):
        assert idxs.bincount(minlength=NUM_CLASSES).max() <= 50
        # the per-image cap keeps the best scores of the per-class top 50s
        per_class_top = scores[i].topk(50, dim=0).values.flatten()
        torch.testing.assert_close(s.sort().values, per_class_top.sort().values[-120:])
    assert all(0 < d["boxes"].shape[0] <= 30 for d in dets)

    calls.clear()
    model.cfg.pre_nms_top_n = None  # per-class cap only: C x 50
    with torch.no_grad():
        model.postprocess(raw, sizes)
    assert [s.numel() for s, _ in calls] == [NUM_CLASSES * 50] * len(images)


@BUILDERS
def test_caps_not_below_the_candidate_counts_equal_the_uncapped_oracle(build):
    model = build().eval()
    images = _images(2)
    with torch.no_grad():
        batch, sizes, _ = model.transform(images)
        raw = model.forward_raw(batch)
        scores, boxes = _decoded(model, raw, sizes)
    # a threshold leaving about 80 candidates per image (untrained scores are flat)
    thresh = float(scores.flatten().kthvalue(scores.numel() - 160).values)
    cand = scores > thresh
    per_class = int(cand.sum(dim=1).max())
    per_image = int(cand.flatten(1).sum(dim=1).max())
    assert 0 < per_class < per_image
    cfg = model.cfg
    cfg.score_thresh = thresh
    # caps exactly at the largest counts: no cap may drop anything
    cfg.topk_candidates, cfg.pre_nms_top_n, cfg.detections_per_img = (
        per_class, per_image, per_image,
    )  # fmt: skip
    dets = model.postprocess(raw, sizes)
    for i in range(len(images)):
        expect = _oracle(boxes[i], scores[i], thresh, cfg.nms_thresh)
        assert len(expect) > 1
        _assert_matches(dets[i], expect)
    # a binding per-image cap equals the oracle run on the best `top_n` candidates only
    cfg.pre_nms_top_n = per_image // 2
    dets = model.postprocess(raw, sizes)
    for i in range(len(images)):
        expect = _oracle(boxes[i], scores[i], thresh, cfg.nms_thresh, top_n=per_image // 2)
        _assert_matches(dets[i], expect)


def test_multiclass_nms_rejects_bad_caps():
    boxes, scores = torch.rand(4, 4), torch.rand(4, 2)
    with pytest.raises(ValueError, match="pre_nms_top_n must be an int >= 1 or None"):
        multiclass_nms(boxes, scores, 0.1, 0.5, 10, 10, pre_nms_top_n=0)
    with pytest.raises(ValueError, match="topk_candidates must be an int >= 1"):
        multiclass_nms(boxes, scores, 0.1, 0.5, 0, 10)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        tiny_ssd(pre_nms_top_n=-1)
    with pytest.raises(ValueError, match="detections_per_img"):
        tiny_yolo(detections_per_img=0)
