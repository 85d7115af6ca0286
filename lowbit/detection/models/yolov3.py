"""YOLOv3 (Redmon & Farhadi 2018) on Darknet-53: the detector of the clipping-based 8-bit paper.

Network (the part :func:`lowbit.nn.prepare` quantizes)::

    batch Tensor[N, 3, S, S] ──backbone (Darknet)──> layer3 (s8), layer4 (s16), layer5 (s32)
    layer5 ──neck.block5 (5 convs)──> x5 ──head.branches.2──> out5 [N, 3 (5 + C), S/32, S/32]
    x5 ──neck.lateral5 (1x1) + 2x nearest upsample, concat layer4──neck.block4──> x4 ──> out4
    x4 ──neck.lateral4 + upsample, concat layer3──neck.block3──> x3 ──head.branches.0──> out3

Each branch is a 3x3 conv (batch norm, LeakyReLU 0.1) and a 1x1 conv with bias. Channels
follow the backbone: ``block_l`` works at half of ``layer_l``'s channels (512 / 256 / 128 for
Darknet-53, the paper's numbers). Outside the network, in float:
:class:`~lowbit.detection.models.transform.SSDTransform`
(warp to ``S x S``; YOLO input is RGB in ``[0, 1]``, no mean/std by default) before and
:meth:`YOLOv3.postprocess` after.

Output layout: channel ``a (5 + C) + k`` of a scale is, for anchor ``a`` of that scale,
``k = 0..3``: ``tx, ty, tw, th``, ``k = 4``: objectness logit, ``k = 5..``: class logits
(darknet's order). Decoding (:func:`yolo_decode`)::

    cx = (sigmoid(tx) + j) * stride_x,  cy = (sigmoid(ty) + i) * stride_y
    w  = anchor_w * exp(tw),            h  = anchor_h * exp(th)        (pixels of the input)
    score(class c) = sigmoid(objectness) * sigmoid(class logit c)

with ``stride = input side / grid side`` and ``tw, th`` clamped at ``log(1000 / 16)``.
Anchors: nine ``(w, h)`` in input pixels sorted by area, three per scale, smallest on stride 8;
the real config uses the nine COCO anchors for 416 px, the digits variant nine anchors for
digits at 256 px (tall boxes, 9 x 15 ... 80 x 132).

Training (:func:`yolov3_loss`): each ground truth goes to the one anchor (of nine) with the
best *shape* IoU (both boxes centred), at that anchor's scale, in the cell holding its centre;
targets ``tx* = cx / stride - j`` (in ``[0, 1)``), ``tw* = log(w / anchor_w)``. Losses (the
original YOLOv3's, as darknet's gradients): box = ``(2 - w h / (W H)) x [BCE(tx, tx*) +
BCE(ty, ty*) + 0.5 (tw - tw*)^2 + 0.5 (th - th*)^2]`` on positives; objectness BCE with target
1 on positives and 0 on the other anchors, except negatives whose decoded box has IoU > 0.5
(``ignore_thresh``) with some ground truth (ignored); class BCE (one-hot, independent
sigmoids) on positives. Each is summed and divided by the batch size. The objectness bias
starts at ``logit(0.01)`` so the 4,000-10,000 negatives do not swamp the first steps.
``extra_anchor_iou`` (off by default) also makes every other anchor with a shape IoU above it
a positive of the ground truth (ultralytics' ``iou_t``): more positives per image, which helps
short from-scratch runs.

Registered names:

* ``yolov3_darknet53``: YOLOv3-416 on Darknet-53 (VOC/COCO setting).
* ``yolov3_tiny_darknet``: CPU-sized, :func:`~lowbit.detection.backbones.darknet_tiny`
  (width 0.25, depths 1-1-2-2-1) at 256 px with digit-shaped anchors and
  ``extra_anchor_iou=0.4`` (0.150 vs 0.116 VOC07 mAP after 3 digits epochs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.detection.backbones import create_backbone
from lowbit.detection.backbones.darknet import ConvBNAct
from lowbit.detection.models.config import make_config
from lowbit.detection.models.transform import SSDTransform, check_inputs
from lowbit.detection.ops import (
    box_iou,
    check_postprocess_caps,
    clip_boxes_to_image,
    cxcywh_to_xyxy,
    multiclass_nms,
)
from lowbit.detection.protocol import DetectorSpec
from lowbit.detection.registry import register_model

__all__ = [
    "COCO_ANCHORS",
    "DIGITS_ANCHORS",
    "YOLOv3",
    "YOLOv3Config",
    "YOLOv3Head",
    "YOLOv3Neck",
    "best_anchors",
    "build_yolov3",
    "yolo_decode",
    "yolov3_loss",
]

Target = dict[str, Any]
COCO_ANCHORS: tuple[tuple[float, float], ...] = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326),
)  # fmt: skip
DIGITS_ANCHORS: tuple[tuple[float, float], ...] = (
    (9, 15), (12, 20), (16, 26), (21, 34), (27, 45), (36, 59), (47, 77), (61, 101), (80, 132),
)  # fmt: skip
LEVELS = ("layer3", "layer4", "layer5")
_WH_CLIP = math.log(1000.0 / 16)


def _five(cin: int, mid: int) -> nn.Sequential:
    """YOLOv3's five-conv block: 1x1 mid, 3x3 2mid, 1x1 mid, 3x3 2mid, 1x1 mid."""
    return nn.Sequential(
        ConvBNAct(cin, mid, 1),
        ConvBNAct(mid, 2 * mid, 3),
        ConvBNAct(2 * mid, mid, 1),
        ConvBNAct(mid, 2 * mid, 3),
        ConvBNAct(2 * mid, mid, 1),
    )


class YOLOv3Neck(nn.Module):
    """Top-down path of YOLOv3 (see the module docstring).

    Args:
        in_channels: channels of ``layer3, layer4, layer5``.

    ``forward([c3, c4, c5])`` returns ``[x3, x4, x5]`` with ``in_channels[l] // 2`` channels.
    """

    def __init__(self, in_channels: Sequence[int]) -> None:
        super().__init__()
        c3, c4, c5 = (int(c) for c in in_channels)
        m3, m4, m5 = max(1, c3 // 2), max(1, c4 // 2), max(1, c5 // 2)
        self.out_channels = [m3, m4, m5]
        self.block5 = _five(c5, m5)
        self.lateral5 = ConvBNAct(m5, m4, 1)
        self.block4 = _five(c4 + m4, m4)
        self.lateral4 = ConvBNAct(m4, m3, 1)
        self.block3 = _five(c3 + m3, m3)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        x5 = self.block5(c5)
        up = F.interpolate(self.lateral5(x5), size=c4.shape[-2:], mode="nearest")
        x4 = self.block4(torch.cat((up, c4), 1))
        up = F.interpolate(self.lateral4(x4), size=c3.shape[-2:], mode="nearest")
        x3 = self.block3(torch.cat((up, c3), 1))
        return [x3, x4, x5]


class YOLOv3Head(nn.Module):
    """Per scale ``branches.l``: 3x3 conv to ``2 in_channels[l]`` then 1x1 conv (with bias)
    to ``anchors_per_scale (5 + C)`` raw outputs (layout in the module docstring)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        anchors_per_scale: int = 3,
        objectness_prior: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_outputs = 5 + num_classes
        self.anchors_per_scale = anchors_per_scale
        self.branches = nn.ModuleList()
        for c in in_channels:
            pred = nn.Conv2d(2 * c, anchors_per_scale * self.num_outputs, 1)
            nn.init.normal_(pred.weight, std=0.01)
            bias = torch.zeros(anchors_per_scale, self.num_outputs)
            bias[:, 4] = math.log(objectness_prior / (1 - objectness_prior))
            with torch.no_grad():
                pred.bias.copy_(bias.flatten())
            self.branches.append(nn.Sequential(ConvBNAct(c, 2 * c, 3), pred))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [branch(x) for branch, x in zip(self.branches, feats)]


def _split(output: Tensor, num_anchors: int) -> Tensor:
    """``[N, A (5 + C), H, W]`` → ``[N, A, H, W, 5 + C]``."""
    n, ch, h, w = output.shape
    return output.view(n, num_anchors, ch // num_anchors, h, w).permute(0, 1, 3, 4, 2)


def _strides(outputs: Sequence[Tensor], batch_hw: tuple[int, int]) -> list[tuple[float, float]]:
    """Per scale ``(stride_y, stride_x)`` = input side / grid side."""
    h, w = batch_hw
    return [(h / o.shape[-2], w / o.shape[-1]) for o in outputs]


def yolo_decode(
    output: Tensor, anchors: Tensor, stride: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor]:
    """Decode one scale.

    Args:
        output: ``Tensor[N, A (5 + C), H, W]`` raw head output.
        anchors: ``Tensor[A, 2]`` ``(w, h)`` in input pixels.
        stride: ``(stride_y, stride_x)`` in input pixels.

    Returns:
        ``boxes`` ``[N, A H W, 4]`` xyxy input pixels, ``objectness`` logits ``[N, A H W]``,
        ``class_logits`` ``[N, A H W, C]``; rows anchor-major, then row ``i``, column ``j``.
    """
    p = _split(output, anchors.shape[0])
    n, a, h, w, _ = p.shape
    sy, sx = stride
    gy, gx = torch.meshgrid(
        torch.arange(h, device=p.device, dtype=p.dtype),
        torch.arange(w, device=p.device, dtype=p.dtype),
        indexing="ij",
    )
    anc = anchors.to(p).view(1, a, 1, 1, 2)
    cx = (p[..., 0].sigmoid() + gx) * sx
    cy = (p[..., 1].sigmoid() + gy) * sy
    wh = p[..., 2:4].clamp(max=_WH_CLIP).exp() * anc
    boxes = cxcywh_to_xyxy(torch.stack((cx, cy, wh[..., 0], wh[..., 1]), -1))
    return boxes.reshape(n, -1, 4), p[..., 4].reshape(n, -1), p[..., 5:].reshape(n, a * h * w, -1)


def best_anchors(wh: Tensor, anchors: Tensor) -> Tensor:
    """Index of the anchor with the best shape IoU for each ground truth.

    Args:
        wh: ``Tensor[K, 2]`` ground-truth ``(w, h)``.
        anchors: ``Tensor[L A, 2]`` anchor ``(w, h)``, same units.

    Returns:
        ``int64[K]``: both boxes centred at the origin, ``IoU = min(w) min(h) / (w h + w_a h_a -
        min(w) min(h))``; ties go to the lower index. Scale ``l`` of index ``k`` is ``k // A``.
    """
    if wh.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=wh.device)
    inter = torch.minimum(wh[:, None], anchors[None]).prod(-1)
    iou = inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)
    return iou.argmax(dim=1)


def yolov3_loss(
    outputs: Sequence[Tensor],
    strides: Sequence[tuple[float, float]],
    anchors: Tensor,
    targets: Sequence[Target],
    input_size: tuple[int, int],
    ignore_thresh: float = 0.5,
    extra_anchor_iou: float | None = None,
) -> dict[str, Tensor]:
    """YOLOv3 losses (see the module docstring).

    Args:
        outputs: per scale ``Tensor[N, A (5 + C), H_l, W_l]``, scales in anchor order.
        strides: per scale ``(stride_y, stride_x)``.
        anchors: ``Tensor[L A, 2]`` ``(w, h)`` pixels; scale ``l`` uses rows ``l A ... l A +
            A - 1``.
        targets: per image ``boxes`` ``Tensor[K, 4]`` (input pixels) and ``labels`` ``int64[K]``
            0-based classes.
        input_size: ``(H, W)`` of the network input (for the box-loss weight).
        ignore_thresh: negatives whose decoded box has a larger IoU with a ground truth are
            left out of the objectness loss.
        extra_anchor_iou: ``None`` (YOLOv3): one anchor per ground truth. A float also makes
            every other anchor with a larger shape IoU a positive for it (ultralytics'
            ``iou_t``; more positives, faster from-scratch training).

    Returns:
        ``{"loss_box", "loss_obj", "loss_cls"}``, each a sum divided by the batch size.
    """
    num_levels = len(outputs)
    a = anchors.shape[0] // num_levels
    n = outputs[0].shape[0]
    device = outputs[0].device
    anchors = anchors.to(device=device, dtype=torch.float32)
    gt = [t["boxes"].to(device=device, dtype=torch.float32) for t in targets]
    gl = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]
    counts = [g.shape[0] for g in gt]
    boxes = torch.cat(gt) if gt else torch.zeros((0, 4), device=device)
    labels = torch.cat(gl) if gl else torch.zeros(0, dtype=torch.int64, device=device)
    bidx = torch.repeat_interleave(
        torch.arange(n, device=device), torch.tensor(counts, device=device)
    )
    wh = boxes[:, 2:] - boxes[:, :2]
    ctr = boxes[:, :2] + 0.5 * wh
    # (ground truth, anchor) pairs: the best-shape anchor of each ground truth, plus with
    # ``extra_anchor_iou`` every other anchor whose shape IoU exceeds it
    pair_gt = torch.arange(wh.shape[0], device=device)
    pair_anchor = best_anchors(wh, anchors)
    if extra_anchor_iou is not None and wh.shape[0]:
        inter = torch.minimum(wh[:, None], anchors[None]).prod(-1)
        iou = inter / (wh.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)
        extra = iou > extra_anchor_iou
        extra[pair_gt, pair_anchor] = False
        eg, ea = torch.nonzero(extra, as_tuple=True)
        pair_gt, pair_anchor = torch.cat((pair_gt, eg)), torch.cat((pair_anchor, ea))
    img_h, img_w = input_size
    box_scale = 2.0 - wh.prod(-1) / float(img_h * img_w)

    zero = outputs[0].sum() * 0.0
    loss_box, loss_obj, loss_cls = zero, zero, zero
    for lvl, (out, (sy, sx)) in enumerate(zip(outputs, strides)):
        p = _split(out, a).float()  # [N, A, H, W, 5 + C]
        _, _, h, w, k = p.shape
        lvl_anchors = anchors[lvl * a : (lvl + 1) * a]
        with torch.no_grad():
            pred_boxes, _, _ = yolo_decode(out.detach().float(), lvl_anchors, (sy, sx))
            ignore = torch.zeros(n, a * h * w, dtype=torch.bool, device=device)
            for i, g in enumerate(gt):
                if g.numel():
                    ignore[i] = box_iou(pred_boxes[i], g).max(dim=1).values > ignore_thresh
            obj_t = torch.zeros(n, a, h, w, device=device)
            weight = (~ignore).view(n, a, h, w).float()
        on_level = torch.nonzero((pair_anchor // a) == lvl).flatten()
        if on_level.numel():
            sel = pair_gt[on_level]
            an = pair_anchor[on_level] % a
            b = bidx[sel]
            gx, gy = ctr[sel, 0] / sx, ctr[sel, 1] / sy
            gi = gx.floor().long().clamp(0, w - 1)
            gj = gy.floor().long().clamp(0, h - 1)
            obj_t[b, an, gj, gi] = 1.0
            weight[b, an, gj, gi] = 1.0
            ps = p[b, an, gj, gi]  # [S, 5 + C]
            txy_t = torch.stack((gx - gi, gy - gj), 1).clamp(0.0, 1.0)
            twh_t = torch.log(wh[sel] / lvl_anchors[an])
            lb = F.binary_cross_entropy_with_logits(ps[:, :2], txy_t, reduction="none").sum(1)
            lb = lb + 0.5 * ((ps[:, 2:4] - twh_t) ** 2).sum(1)
            loss_box = loss_box + (box_scale[sel] * lb).sum()
            cls_t = F.one_hot(labels[sel], k - 5).float()
            loss_cls = loss_cls + F.binary_cross_entropy_with_logits(
                ps[:, 5:], cls_t, reduction="sum"
            )
        loss_obj = loss_obj + (
            F.binary_cross_entropy_with_logits(p[..., 4], obj_t, reduction="none") * weight
        ).sum()
    return {"loss_box": loss_box / n, "loss_obj": loss_obj / n, "loss_cls": loss_cls / n}


@dataclass
class YOLOv3Config:
    """Every keyword of :func:`lowbit.detection.create_model` for the YOLOv3 entries.

    Backbone: ``backbone`` (``darknet53`` / ``darknet_tiny``), ``width``, ``depths``
    (``None``: the backbone's), ``backbone_weights`` (local state_dict file in lowbit's
    Darknet layout), ``norm``, ``freeze_at``. Input: ``image_size`` (warp side),
    ``image_mean`` / ``image_std`` (YOLO: none). ``anchors``: nine ``(w, h)`` input pixels,
    sorted by area. Loss: ``ignore_thresh``, ``extra_anchor_iou`` (see :func:`yolov3_loss`),
    ``objectness_prior``. Post-processing (:func:`~lowbit.detection.ops.multiclass_nms`):
    ``score_thresh`` (pre-NMS, on ``objectness x class``), ``topk_candidates`` (per class,
    before NMS), ``pre_nms_top_n`` (per image over all classes, before NMS; ``None``: no cap;
    mmdetection's ``nms_pre``), ``nms_thresh``, ``detections_per_img`` (after NMS).
    """

    num_classes: int
    backbone: str = "darknet53"
    width: float = 1.0
    depths: tuple[int, ...] | None = None
    backbone_weights: str | None = None
    norm: str = "bn"
    freeze_at: int = 0
    image_size: int = 416
    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    anchors: tuple = COCO_ANCHORS
    ignore_thresh: float = 0.5
    extra_anchor_iou: float | None = None
    objectness_prior: float = 0.01
    score_thresh: float = 0.005
    nms_thresh: float = 0.45
    topk_candidates: int = 400
    detections_per_img: int = 100
    pre_nms_top_n: int | None = 1000

    def __post_init__(self) -> None:
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if self.backbone not in ("darknet53", "darknet_tiny"):
            raise ValueError(f"backbone must be darknet53 or darknet_tiny, got {self.backbone!r}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        self.anchors = tuple((float(w), float(h)) for w, h in self.anchors)
        if len(self.anchors) != 9 or any(w <= 0 or h <= 0 for w, h in self.anchors):
            raise ValueError(f"anchors must be nine positive (w, h) pairs, got {self.anchors}")
        areas = [w * h for w, h in self.anchors]
        if areas != sorted(areas):
            raise ValueError(f"anchors must be sorted by area (smallest first): {self.anchors}")
        if self.depths is not None:
            self.depths = tuple(int(d) for d in self.depths)
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        for name in ("ignore_thresh", "nms_thresh"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.extra_anchor_iou is not None and not 0.0 < self.extra_anchor_iou < 1.0:
            raise ValueError(
                f"extra_anchor_iou must be in (0, 1) or None, got {self.extra_anchor_iou}"
            )
        if not 0.0 < self.objectness_prior < 1.0:
            raise ValueError(f"objectness_prior must be in (0, 1), got {self.objectness_prior}")
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        check_postprocess_caps(self.topk_candidates, self.detections_per_img, self.pre_nms_top_n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""

        def conv(v: Any) -> Any:
            return [conv(x) for x in v] if isinstance(v, tuple) else v

        return {k: conv(v) for k, v in dataclasses.asdict(self).items()}


class YOLOv3(nn.Module):
    """YOLOv3; see the module docstring. Build with :func:`build_yolov3` or
    :func:`lowbit.detection.create_model`.

    Attributes: ``transform``, ``backbone`` (:class:`~lowbit.detection.backbones.Darknet`),
    ``neck`` (:class:`YOLOv3Neck`), ``head`` (:class:`YOLOv3Head`), ``anchors`` (buffer
    ``[9, 2]``), ``config`` (resolved dict).

    Detector protocol (:mod:`lowbit.detection.protocol`): the trunk (backbone, neck, head) is
    the whole network and what ``lowbit export`` writes (kind ``"yolov3"``, fixed ``S x S``);
    its int8 export keeps the 3-input-channel stem conv in float
    (``float_below_channels=4``: 0.44-0.57x FP32 latency instead of 0.67-0.83x at 1 thread),
    with its weight stored int8 behind a DequantizeLinear (``float_conv_weights="int8"``), so
    that onnxruntime runs it as a plain NCHW conv rather than NCHWc-blocked with a
    ``ReorderOutput`` (see :class:`lowbit.export.onnx.Int8Config`).
    """

    detector_spec: ClassVar[DetectorSpec] = DetectorSpec(
        raw_outputs=("outputs",),
        raw_geometry=("strides",),
        trunk_outputs=("out_s8", "out_s16", "out_s32"),
        export_kind="yolov3",
        dynamic_hw=False,
        int8={"float_below_channels": 4, "float_conv_weights": "int8"},
    )

    def __init__(self, cfg: YOLOv3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = int(cfg.num_classes)
        self.transform = SSDTransform(cfg.image_size, cfg.image_mean, cfg.image_std)
        kw: dict[str, Any] = {"return_layers": LEVELS, "norm": cfg.norm, "freeze_at": cfg.freeze_at}
        if cfg.depths is not None:
            kw["depths"] = cfg.depths
        self.backbone = create_backbone(
            cfg.backbone, width=cfg.width, weights=cfg.backbone_weights, **kw
        )
        chans = [self.backbone.out_channels[s] for s in LEVELS]
        self.neck = YOLOv3Neck(chans)
        self.head = YOLOv3Head(self.neck.out_channels, cfg.num_classes, 3, cfg.objectness_prior)
        self.register_buffer("anchors", torch.tensor(cfg.anchors), persistent=False)
        self.config = {"arch": "yolov3", **cfg.to_dict()}

    def forward_raw(self, batch: Tensor) -> dict[str, Any]:
        """Raw outputs of a prepared ``Tensor[N, 3, S, S]`` batch.

        Returns:
            ``outputs``: list of ``Tensor[N, 3 (5 + C), S / s, S / s]`` for ``s = 8, 16, 32``;
            ``strides``: list of ``(stride_y, stride_x)`` (input side / grid side).
        """
        outs = list(self.forward_trunk(batch))
        return {"outputs": outs, "strides": _strides(outs, (int(batch.shape[-2]),
                                                             int(batch.shape[-1])))}

    def forward_trunk(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The exportable network of a prepared ``Tensor[N, 3, S, S]`` batch: ``out_s8,
        out_s16, out_s32`` ``[N, 3 (5 + C), S / s, S / s]``."""
        feats = self.backbone.forward_features(batch)
        return tuple(self.head(self.neck([feats[s] for s in LEVELS])))

    @torch.no_grad()
    def postprocess_trunk(
        self,
        outputs: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        batch_hw: tuple[int, int],
    ) -> list[dict[str, Tensor]]:
        """:meth:`postprocess` of :meth:`forward_trunk`'s three maps (e.g. from onnxruntime),
        strides from ``batch_hw`` ``(H, W)`` of the prepared batch."""
        outs = [o.float() for o in outputs]
        return self.postprocess({"outputs": outs, "strides": _strides(outs, batch_hw)},
                                image_sizes)

    @torch.no_grad()
    def postprocess(
        self, raw_outputs: dict[str, Any], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Float post-processing of :meth:`forward_raw` outputs: decode, clip to
        ``image_sizes`` (batch pixels), scores ``sigmoid(obj) x sigmoid(cls)`` per class above
        ``score_thresh``, per-class top-``topk_candidates``, per-image top-``pre_nms_top_n``,
        NMS, top ``detections_per_img`` (:func:`~lowbit.detection.ops.multiclass_nms`).

        Returns:
            Per image ``boxes float32[D, 4]``, ``labels int64[D]`` (0-based), ``scores
            float32[D]`` in ``(score_thresh, 1)`` sorted decreasing.
        """
        cfg = self.cfg
        a = self.head.anchors_per_scale
        anchors = self.anchors.float()
        boxes_l, scores_l = [], []
        for lvl, (out, stride) in enumerate(zip(raw_outputs["outputs"], raw_outputs["strides"])):
            b, obj, cls = yolo_decode(out.float(), anchors[lvl * a : (lvl + 1) * a], stride)
            boxes_l.append(b)
            scores_l.append(obj.sigmoid()[..., None] * cls.sigmoid())
        boxes = torch.cat(boxes_l, 1)
        scores = torch.cat(scores_l, 1)
        results = []
        for i, size in enumerate(image_sizes):
            keep = torch.nonzero(scores[i].max(dim=1).values > cfg.score_thresh).flatten()
            bx = clip_boxes_to_image(boxes[i, keep], size)
            results.append(
                multiclass_nms(
                    bx, scores[i, keep], cfg.score_thresh, cfg.nms_thresh, cfg.topk_candidates,
                    cfg.detections_per_img, cfg.pre_nms_top_n,
                )  # fmt: skip
            )
        return results

    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[Target] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """torchvision's API (as :meth:`lowbit.detection.models.ssd.SSD.forward`).

        Returns:
            Train mode: ``{"loss_box", "loss_obj", "loss_cls"}``. Eval mode: per image
            ``boxes float32[D, 4]`` (original pixels), ``labels int64[D]`` (0-based),
            ``scores float32[D]`` sorted decreasing.
        """
        ims, original = check_inputs(images, targets, self.num_classes, self.training)
        batch, sizes, targets = self.transform(ims, targets)
        raw = self.forward_raw(batch)
        if self.training:
            assert targets is not None
            return yolov3_loss(
                raw["outputs"], raw["strides"], self.anchors, targets,
                (int(batch.shape[-2]), int(batch.shape[-1])), self.cfg.ignore_thresh,
                self.cfg.extra_anchor_iou,
            )  # fmt: skip
        dets = self.postprocess(raw, sizes)
        return self.transform.postprocess(dets, sizes, original)


def build_yolov3(cfg: YOLOv3Config) -> YOLOv3:
    """YOLOv3 from a resolved :class:`YOLOv3Config`."""
    return YOLOv3(cfg)


YOLOV3_PRESET: dict[str, Any] = {}

YOLOV3_TINY_PRESET: dict[str, Any] = {
    "backbone": "darknet_tiny",
    "width": 0.25,
    "image_size": 256,
    "anchors": DIGITS_ANCHORS,
    "extra_anchor_iou": 0.4,
}


@register_model("yolov3_darknet53", size_option="image_size")
def yolov3_darknet53(num_classes: int, **kwargs: Any) -> YOLOv3:
    """YOLOv3-416 on Darknet-53 with the COCO anchors."""
    return build_yolov3(make_config(YOLOv3Config, YOLOV3_PRESET, num_classes, kwargs))  # type: ignore[arg-type]


@register_model("yolov3_tiny_darknet", size_option="image_size")
def yolov3_tiny_darknet(num_classes: int, **kwargs: Any) -> YOLOv3:
    """CPU-sized YOLOv3: Darknet width 0.25, depths 1-1-2-2-1, 256 px, digit anchors, extra
    positives for anchors with shape IoU > 0.4."""
    return build_yolov3(make_config(YOLOv3Config, YOLOV3_TINY_PRESET, num_classes, kwargs))  # type: ignore[arg-type]
