"""SSD (Liu et al. 2016) on VGG-16: the single-shot detector of Quantization Networks (003).

Network (the part :func:`lowbit.nn.prepare` quantizes)::

    batch Tensor[N, 3, S, S] ──backbone.features[:conv4_3]──> conv4_3 ──l2norm──> source 0
        ──features[pool4:] (pool5 = 3x3/1)──> conv6 (3x3, dilation 6) ──> conv7 (1x1) ──> source 1
        ──extras[k] (1x1 then 3x3)──> sources 2 ... ──head.loc[k], head.conf[k] (3x3)──>
    bbox_regression Tensor[N, P, 4], cls_logits Tensor[N, P, C + 1]

and, outside it, in float: :class:`~lowbit.detection.models.transform.SSDTransform` (normalise +
warp to ``S x S``) before, and :meth:`SSD.postprocess` (softmax, decode,
:func:`~lowbit.detection.ops.multiclass_nms`) after.

The transform, default boxes, ``cxcywh_to_xyxy`` and the multi-class NMS are shared with YOLOv3
and live in :mod:`lowbit.detection.models.transform` and :mod:`lowbit.detection.ops`; they
stay importable from this module (same objects).

VGG part: ``backbone.features`` is torchvision's ``vgg16().features`` (``features.0`` ...
``features.28``, or ``vgg16_bn``'s layout with ``batch_norm=True``) so a local torchvision
ImageNet state_dict loads strictly (``backbone_weights=``; ``classifier.*`` is skipped). Two
layers are changed in place, as in the SSD reference: pool3 uses ``ceil_mode=True`` (300 → 38
maps) and pool5 is ``3x3, stride 1, padding 1``. ``conv6``/``conv7`` replace fc6/fc7 (freshly
initialised; the reference sub-samples fc6/fc7, which needs the full-size ``classifier``).

Default boxes (ssd.pytorch / Caffe convention;
:class:`~lowbit.detection.ops.DefaultBoxGenerator`, whose module
:mod:`lowbit.detection.ops.anchors` gives the formula and order): map ``k`` of ``m`` has scale
``s_k = min_sizes[k] / S`` and an extra box ``s'_k = sqrt(s_k * max_sizes[k] / S)``; with the
defaults (:func:`~lowbit.detection.ops.ssd_box_sizes`) ``s_1 = min_ratio / 2`` and ``s_2 ...
s_m`` step linearly (in whole percent, Caffe's ``floor``) from ``min_ratio = 0.2`` towards
``max_ratio = 0.9``, ``max_sizes[k] = min_sizes[k + 1]``; for 300 px this gives the familiar
``30, 60, 111, 162, 213, 264`` / ``60, 111, 162, 213, 264, 315``. Regression uses
:class:`~lowbit.detection.ops.BoxCoder` with weights ``(10, 10, 5, 5)``, i.e. the SSD variances
``(0.1, 0.2)``.

Training (:func:`ssd_loss`): every default box with IoU >= 0.5 with a ground truth is positive,
and each ground truth also gets its best default box (the reference's forced match); hard
negative mining keeps the ``3 x positives`` negatives with the highest background loss per
image; ``loss_classifier`` (cross-entropy over positives + mined negatives) and
``loss_box_reg`` (smooth-L1, beta 1, over positives) are both sums divided by the number of
positives in the batch. The ``loc``/``conf`` predictors start from N(0, 0.01) weights (the
reference uses Xavier), so every class starts near ``1 / (C + 1)``.

Registered names:

* ``ssd300_vgg16``: the paper's SSD300 (VGG-16, 300 px, 6 maps 38-19-10-5-3-1, 8732 boxes).
* ``ssd_lite_vgg``: CPU-sized for the digits devkit: VGG-16 layout with batch norm at width
  0.125 (8-16-32-64-64 VGG channels, 128 in conv6/7), 256 px, maps 32-16-8-4-2-1 (every
  extra 3x3 conv stride 2), scales 0.05 ... 0.5 of the image (digits are 6-140 px), aspect
  ratios ``{1, 2, 1/2}`` on every map (4 boxes per location, 5460 boxes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.detection.backbones import load_backbone_weights, vgg16
from lowbit.detection.models.config import make_config
from lowbit.detection.models.transform import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SSDTransform,
    check_inputs,
    to_internal_targets,
)
from lowbit.detection.ops import (
    BoxCoder,
    DefaultBoxGenerator,
    box_iou,
    check_postprocess_caps,
    clip_boxes_to_image,
    cxcywh_to_xyxy,
    multiclass_nms,
    ssd_box_sizes,
)
from lowbit.detection.protocol import DetectorSpec
from lowbit.detection.registry import register_model

__all__ = [
    "SSD",
    "SSDConfig",
    "SSDHead",
    "SSDTransform",
    "SSDVGGBackbone",
    "DefaultBoxGenerator",
    "L2Norm",
    "build_ssd",
    "check_postprocess_caps",
    "cxcywh_to_xyxy",
    "multiclass_nms",
    "ssd_box_sizes",
    "ssd_loss",
    "ssd_match",
]

Target = dict[str, Any]
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


# ---------------------------------------------------------------------------- network
class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (``weight``, init
    ``scale``, 20 in SSD): ``y = weight * x / max(||x||_2, eps)`` over dim 1."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)


def _vgg_features(
    width: float, batch_norm: bool, weights: str | None
) -> nn.Sequential:
    """torchvision's ``vgg16().features`` (or ``vgg16_bn().features``) at ``width``."""
    if not batch_norm:
        return vgg16(width=width, weights=weights).features
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out_ch = max(1, round(int(v) * width))
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
    features = nn.Sequential(*layers)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if weights is not None:
        holder = nn.Module()
        holder.features = features
        holder.head_prefixes = ("classifier.",)  # type: ignore[assignment]
        load_backbone_weights(holder, weights, strict=True)
    return features


class SSDVGGBackbone(nn.Module):
    """VGG-16 trunk with SSD's changes, ``conv6``/``conv7``, L2Norm and the extra layers.

    Args:
        width: channel multiplier of every layer (VGG, conv6/7 = ``1024 width``, extras).
        batch_norm: torchvision ``vgg16_bn`` layout (batch norm after every VGG conv, and in
            conv6/conv7/extras); needed to train from scratch.
        weights: local torchvision-layout ImageNet state_dict file for the VGG part.
        extras: per extra block ``(mid_channels, out_channels, stride, padding)`` at width 1:
            a 1x1 conv to ``mid`` then a 3x3 conv with that stride / padding.

    Attributes:
        out_channels: channels of each source map (conv4_3, conv7, extras...).
    """

    def __init__(
        self,
        width: float = 1.0,
        batch_norm: bool = False,
        weights: str | None = None,
        extras: Sequence[Sequence[int]] = ((256, 512, 2, 1), (128, 256, 2, 1),
                                           (128, 256, 1, 0), (128, 256, 1, 0)),  # fmt: skip
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.features = _vgg_features(width, batch_norm, weights)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self.features[pools[2]].ceil_mode = True  # pool3: 75 -> 38 at 300 px
        self.features[pools[4]] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)  # pool5
        self._conv4_3_end = pools[3]  # features[:end] ends with conv4_3's ReLU
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        c4, c5 = convs[9].out_channels, convs[12].out_channels

        def ch(c: int) -> int:
            return max(1, round(c * width))

        def block(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, dil: int = 1):
            conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dil, bias=not batch_norm)
            mods: list[nn.Module] = [conv]
            if batch_norm:
                mods.append(nn.BatchNorm2d(cout))
            mods.append(nn.ReLU(inplace=True))
            return nn.Sequential(*mods)

        c67 = ch(1024)
        self.l2norm = L2Norm(c4, 20.0)
        self.conv6 = block(c5, c67, 3, pad=6, dil=6)
        self.conv7 = block(c67, c67, 1)
        self.extras = nn.ModuleList()
        self.out_channels = [c4, c67]
        cin = c67
        for spec in extras:
            if len(spec) != 4:
                raise ValueError(f"extras entries are (mid, out, stride, padding), got {spec}")
            mid, out, stride, pad = (int(v) for v in spec)
            self.extras.append(
                nn.Sequential(block(cin, ch(mid), 1), block(ch(mid), ch(out), 3, stride, pad))
            )
            self.out_channels.append(ch(out))
            cin = ch(out)
        for m in [self.conv6, self.conv7, self.extras]:
            for mm in m.modules():
                if isinstance(mm, nn.Conv2d):
                    nn.init.xavier_uniform_(mm.weight)
                    if mm.bias is not None:
                        nn.init.zeros_(mm.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[N, 3, S, S]`` → source maps ``[conv4_3 (L2-normed), conv7, extras...]``."""
        end = self._conv4_3_end
        for layer in self.features[:end]:
            x = layer(x)
        sources = [self.l2norm(x)]
        for layer in self.features[end:]:
            x = layer(x)
        x = self.conv7(self.conv6(x))
        sources.append(x)
        for extra in self.extras:
            x = extra(x)
            sources.append(x)
        return sources


class SSDHead(nn.Module):
    """3x3 conv predictors per source map: ``loc.k`` (``4 A_k`` channels) and ``conf.k``
    (``(C + 1) A_k``; column 0 is background), ssd.pytorch's names.

    ``forward(sources)`` returns ``(bbox_regression Tensor[N, P, 4], cls_logits Tensor[N, P,
    C + 1])`` with rows location-major then box, matching :class:`DefaultBoxGenerator`.
    """

    def __init__(
        self, in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        if len(in_channels) != len(boxes_per_location):
            raise ValueError("one boxes_per_location entry per source map is needed")
        self.num_columns = num_classes + 1
        self.loc = nn.ModuleList(
            nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, boxes_per_location)
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, a * self.num_columns, 3, padding=1)
            for c, a in zip(in_channels, boxes_per_location)
        )
        # N(0, 0.01) rather than the reference's Xavier: logits start near 0 (every class at
        # 1 / (C + 1)) instead of tens of nats of loss from L2Norm's x20 conv4_3 features.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, sources: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        locs, confs = [], []
        for x, loc, conf in zip(sources, self.loc, self.conf):
            n = x.shape[0]
            locs.append(loc(x).permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(conf(x).permute(0, 2, 3, 1).reshape(n, -1, self.num_columns))
        return torch.cat(locs, 1), torch.cat(confs, 1)


# ---------------------------------------------------------------------------- loss
def ssd_match(gt_boxes: Tensor, default_boxes: Tensor, iou_thresh: float = 0.5) -> Tensor:
    """SSD matching: ``Tensor[P]`` int64 ground-truth index per default box, -1 background.

    A default box is matched to its best ground truth when their IoU is ``>= iou_thresh``;
    in addition every ground truth claims its own best default box (ties: lowest index),
    later ground truths winning a default box two of them claim (the reference's loop).
    """
    p = default_boxes.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((p,), -1, dtype=torch.int64, device=default_boxes.device)
    iou = box_iou(gt_boxes, default_boxes)  # [M, P]
    best_iou, best_gt = iou.max(dim=0)
    best_prior = iou.argmax(dim=1)  # [M]
    best_iou[best_prior] = 2.0
    for j, prior in enumerate(best_prior.tolist()):  # in order: a later claim wins
        best_gt[prior] = j
    return torch.where(best_iou >= iou_thresh, best_gt, torch.full_like(best_gt, -1))


def ssd_loss(
    bbox_regression: Tensor,
    cls_logits: Tensor,
    default_boxes: Tensor,
    targets: Sequence[Target],
    coder: BoxCoder,
    iou_thresh: float = 0.5,
    neg_pos_ratio: float = 3.0,
) -> dict[str, Tensor]:
    """SSD's multibox loss with hard negative mining.

    Args:
        bbox_regression: ``Tensor[N, P, 4]`` predicted deltas.
        cls_logits: ``Tensor[N, P, C + 1]``, column 0 background.
        default_boxes: ``Tensor[P, 4]`` xyxy pixels.
        targets: per image ``boxes`` ``Tensor[K, 4]`` (pixels of the network input) and
            ``labels`` ``int64[K]`` *internal* (1-based, background 0).
        coder: encodes the matched boxes (weights ``(10, 10, 5, 5)``).

    Returns:
        ``{"loss_classifier", "loss_box_reg"}``: sums over positives (and for the classifier the
        ``neg_pos_ratio x positives`` highest-loss negatives per image), divided by the number
        of positives in the batch (at least 1).
    """
    n = cls_logits.shape[0]
    cls_t, reg_t, pos = [], [], []
    for i in range(n):
        gt = targets[i]["boxes"].to(default_boxes)
        idx = ssd_match(gt, default_boxes, iou_thresh)
        matched = idx >= 0
        labels = torch.zeros_like(idx)
        reg = torch.zeros_like(default_boxes)
        if matched.any():
            labels[matched] = targets[i]["labels"].to(idx.device)[idx[matched]]
            reg[matched] = coder.encode(gt[idx[matched]], default_boxes[matched])
        cls_t.append(labels)
        reg_t.append(reg)
        pos.append(matched)
    cls_t_all = torch.stack(cls_t)
    reg_t_all = torch.stack(reg_t)
    pos_all = torch.stack(pos)  # [N, P]
    num_pos = pos_all.sum(dim=1, keepdim=True)  # [N, 1]
    denom = num_pos.sum().clamp(min=1).to(cls_logits.dtype)

    loss_box = F.smooth_l1_loss(
        bbox_regression[pos_all].float(), reg_t_all[pos_all].float(), reduction="sum", beta=1.0
    )
    ce = F.cross_entropy(
        cls_logits.reshape(-1, cls_logits.shape[-1]).float(), cls_t_all.reshape(-1),
        reduction="none",
    ).view(n, -1)  # fmt: skip
    # Hard negatives: rank the background losses of the negatives, keep the top 3 x positives.
    neg_loss = ce.detach().clone()
    neg_loss[pos_all] = -math.inf
    order = neg_loss.sort(dim=1, descending=True).indices
    rank = order.argsort(dim=1)
    neg = rank < (neg_pos_ratio * num_pos)
    neg &= ~pos_all
    loss_cls = ce[pos_all | neg].sum()
    return {"loss_classifier": loss_cls / denom, "loss_box_reg": loss_box / denom}


# ---------------------------------------------------------------------------- config + model
def _seq(v: Any) -> tuple:
    return tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in v)


@dataclass
class SSDConfig:
    """Every keyword of :func:`lowbit.detection.create_model` for the SSD entries.

    Backbone: ``width``, ``batch_norm`` (vgg16_bn layout), ``backbone_weights`` (local
    torchvision VGG-16 state_dict file; nothing is downloaded), ``extras`` (see
    :class:`SSDVGGBackbone`). Input: ``image_size`` (the warp side ``S``), ``image_mean`` /
    ``image_std``. Default boxes: ``min_sizes`` / ``max_sizes`` in pixels (``None``: from
    :func:`ssd_box_sizes` with ``min_ratio`` / ``max_ratio``), ``aspect_ratios`` per map,
    ``steps`` per map (``None``: the maps' own sizes), ``clip``. Loss: ``iou_thresh``,
    ``neg_pos_ratio``. Post-processing (:func:`multiclass_nms`): ``score_thresh`` (pre-NMS,
    on the softmax probability), ``topk_candidates`` (per class, before NMS),
    ``pre_nms_top_n`` (per image over all classes, before NMS; ``None``: no cap; mmdetection's
    ``nms_pre``), ``nms_thresh``, ``detections_per_img`` (after NMS).
    """

    num_classes: int
    width: float = 1.0
    batch_norm: bool = False
    backbone_weights: str | None = None
    extras: tuple = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
    image_size: int = 300
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    min_sizes: tuple[float, ...] | None = None
    max_sizes: tuple[float, ...] | None = None
    min_ratio: float = 0.2
    max_ratio: float = 0.9
    aspect_ratios: tuple = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
    steps: tuple[float, ...] | None = (8, 16, 32, 64, 100, 300)
    clip: bool = True
    iou_thresh: float = 0.5
    neg_pos_ratio: float = 3.0
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    topk_candidates: int = 200
    detections_per_img: int = 200
    pre_nms_top_n: int | None = 1000
    box_coder_weights: tuple[float, ...] = field(default=(10.0, 10.0, 5.0, 5.0))

    def __post_init__(self) -> None:
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        self.extras = _seq(self.extras)
        self.aspect_ratios = _seq(self.aspect_ratios)
        for name in ("image_mean", "image_std", "box_coder_weights", "min_sizes", "max_sizes",
                     "steps"):  # fmt: skip
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, tuple(float(x) for x in v))
        m = 2 + len(self.extras)
        if len(self.aspect_ratios) != m:
            raise ValueError(
                f"aspect_ratios needs one entry per source map ({m}: conv4_3, conv7 and "
                f"{len(self.extras)} extras), got {len(self.aspect_ratios)}"
            )
        for name in ("min_sizes", "max_sizes", "steps"):
            v = getattr(self, name)
            if v is not None and len(v) != m:
                raise ValueError(f"{name} needs {m} entries (one per source map), got {len(v)}")
        for name in ("iou_thresh", "nms_thresh"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        if self.neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {self.neg_pos_ratio}")
        check_postprocess_caps(self.topk_candidates, self.detections_per_img, self.pre_nms_top_n)

    def box_sizes(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(min_sizes, max_sizes)`` in pixels, given or from :func:`ssd_box_sizes`."""
        m = 2 + len(self.extras)
        lo, hi = ssd_box_sizes(self.image_size, m, self.min_ratio, self.max_ratio)
        return (
            self.min_sizes if self.min_sizes is not None else tuple(lo),
            self.max_sizes if self.max_sizes is not None else tuple(hi),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""

        def conv(v: Any) -> Any:
            return [conv(x) for x in v] if isinstance(v, tuple) else v

        return {k: conv(v) for k, v in dataclasses.asdict(self).items()}


class SSD(nn.Module):
    """Single Shot MultiBox Detector; see the module docstring. Build with :func:`build_ssd`
    or :func:`lowbit.detection.create_model`.

    Attributes: ``transform`` (:class:`SSDTransform`), ``backbone``
    (:class:`SSDVGGBackbone`), ``head`` (:class:`SSDHead`), ``default_boxes``
    (:class:`DefaultBoxGenerator`), ``config`` (resolved dict).

    Detector protocol (:mod:`lowbit.detection.protocol`): ``forward_raw(batch)`` only; no
    traceable trunk and not exportable yet.
    """

    detector_spec: ClassVar[DetectorSpec] = DetectorSpec(
        raw_outputs=("bbox_regression", "cls_logits"),
        raw_geometry=("default_boxes",),
        note="SSD export is not wired yet (its default boxes need the source map sizes, which "
             "concatenated outputs do not carry); export rfcn_* or yolov3_* detectors",
    )

    def __init__(self, cfg: SSDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = int(cfg.num_classes)
        self.transform = SSDTransform(cfg.image_size, cfg.image_mean, cfg.image_std)
        self.backbone = SSDVGGBackbone(
            cfg.width, cfg.batch_norm, cfg.backbone_weights, cfg.extras
        )
        min_sizes, max_sizes = cfg.box_sizes()
        self.default_boxes = DefaultBoxGenerator(
            min_sizes, max_sizes, cfg.aspect_ratios, cfg.steps, cfg.image_size, cfg.clip
        )
        self.head = SSDHead(
            self.backbone.out_channels, self.default_boxes.num_boxes_per_location, cfg.num_classes
        )
        self.box_coder = BoxCoder(cfg.box_coder_weights)
        self.config = {"arch": "ssd", **cfg.to_dict()}

    def forward_raw(self, batch: Tensor) -> dict[str, Tensor]:
        """Raw outputs of a prepared ``Tensor[N, 3, S, S]`` batch (normalised, warped).

        Returns:
            ``bbox_regression`` ``[N, P, 4]``, ``cls_logits`` ``[N, P, C + 1]`` and
            ``default_boxes`` ``[P, 4]`` (xyxy pixels of the batch; a pure function of the map
            sizes, recomputable with ``model.default_boxes(sizes, (H, W))``).
        """
        sources = self.backbone(batch)
        reg, logits = self.head(sources)
        sizes = [(int(s.shape[-2]), int(s.shape[-1])) for s in sources]
        anchors = self.default_boxes(
            sizes, (int(batch.shape[-2]), int(batch.shape[-1])), torch.float32, batch.device
        )
        return {"bbox_regression": reg, "cls_logits": logits, "default_boxes": anchors}

    @torch.no_grad()
    def postprocess(
        self, raw_outputs: dict[str, Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Float post-processing of :meth:`forward_raw` outputs: softmax, decode, clip to
        ``image_sizes`` (``(h, w)`` per image in the batch's pixels), then
        :func:`multiclass_nms`: ``score_thresh``, per-class top-``topk_candidates``, per-image
        top-``pre_nms_top_n``, NMS, top ``detections_per_img``.

        Returns:
            Per image ``boxes float32[D, 4]`` (batch pixels), ``labels int64[D]`` (0-based
            foreground), ``scores float32[D]`` (softmax probability) sorted decreasing.
        """
        cfg = self.cfg
        reg = raw_outputs["bbox_regression"].float()
        scores = torch.softmax(raw_outputs["cls_logits"].float(), dim=-1)[..., 1:]
        anchors = raw_outputs["default_boxes"].float()
        out = []
        for i, size in enumerate(image_sizes):
            boxes = clip_boxes_to_image(self.box_coder.decode(reg[i], anchors), size)
            out.append(
                multiclass_nms(
                    boxes, scores[i], cfg.score_thresh, cfg.nms_thresh, cfg.topk_candidates,
                    cfg.detections_per_img, cfg.pre_nms_top_n,
                )  # fmt: skip
            )
        return out

    def forward_trunk(self, batch: Tensor) -> tuple[Tensor, ...]:
        """SSD has no traceable trunk yet: ``ValueError`` naming the class."""
        raise ValueError(f"{type(self).__name__}: {self.detector_spec.note}")

    def postprocess_trunk(
        self,
        outputs: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        batch_hw: tuple[int, int],
    ) -> list[dict[str, Tensor]]:
        """SSD has no traceable trunk yet: ``ValueError`` naming the class."""
        raise ValueError(f"{type(self).__name__}: {self.detector_spec.note}")

    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[Target] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """torchvision's API.

        Args:
            images: list of ``Tensor[3, H_i, W_i]`` RGB in ``[0, 1]`` (or ``Tensor[N, 3, H,
                W]``).
            targets: training only; per image ``boxes`` float ``Tensor[K, 4]`` (0-based
                continuous xyxy, original pixels) and ``labels`` int64 ``Tensor[K]`` (0-based
                foreground classes). Invalid targets raise ``ValueError`` naming the image.

        Returns:
            Train mode: ``{"loss_classifier", "loss_box_reg"}``. Eval mode: per image
            ``boxes float32[D, 4]`` (original pixels), ``labels int64[D]`` (0-based),
            ``scores float32[D]`` in ``(score_thresh, 1]`` sorted decreasing.
        """
        ims, original = check_inputs(images, targets, self.num_classes, self.training)
        if self.training:
            targets = to_internal_targets(targets)
        batch, sizes, targets = self.transform(ims, targets)
        raw = self.forward_raw(batch)
        if self.training:
            assert targets is not None
            return ssd_loss(
                raw["bbox_regression"], raw["cls_logits"], raw["default_boxes"], targets,
                self.box_coder, self.cfg.iou_thresh, self.cfg.neg_pos_ratio,
            )  # fmt: skip
        dets = self.postprocess(raw, sizes)
        return self.transform.postprocess(dets, sizes, original)


def build_ssd(cfg: SSDConfig) -> SSD:
    """SSD from a resolved :class:`SSDConfig`."""
    return SSD(cfg)


SSD300_PRESET: dict[str, Any] = {}

SSD_LITE_PRESET: dict[str, Any] = {
    "width": 0.125,
    "batch_norm": True,
    "image_size": 256,
    "extras": ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1), (128, 256, 2, 1)),
    "steps": (8, 16, 32, 64, 128, 256),
    "min_ratio": 0.1,
    "max_ratio": 0.5,
    "aspect_ratios": ((2.0,),) * 6,
    "topk_candidates": 100,
    "detections_per_img": 100,
}


@register_model("ssd300_vgg16", size_option="image_size")
def ssd300_vgg16(num_classes: int, **kwargs: Any) -> SSD:
    """SSD300 on VGG-16 (the paper's VOC setting; pass ``backbone_weights=`` for ImageNet)."""
    return build_ssd(make_config(SSDConfig, SSD300_PRESET, num_classes, kwargs))  # type: ignore[arg-type]


@register_model("ssd_lite_vgg", size_option="image_size")
def ssd_lite_vgg(num_classes: int, **kwargs: Any) -> SSD:
    """CPU-sized SSD: VGG-16-BN layout at width 0.125, 256 px, 6 maps 32 ... 1, 4 boxes each."""
    return build_ssd(make_config(SSDConfig, SSD_LITE_PRESET, num_classes, kwargs))  # type: ignore[arg-type]
