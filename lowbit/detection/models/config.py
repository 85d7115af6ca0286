"""Typed, validated parameters of the two-stage detectors, and the shared builders.

Every keyword of :func:`lowbit.detection.create_model` is a field of :class:`RFCNConfig` or
:class:`FasterRCNNConfig`; registered names are presets of these fields (see
:mod:`lowbit.detection.models.rfcn` and :mod:`lowbit.detection.models.faster_rcnn`). A model
keeps its resolved config as ``model.config`` (a dict, JSON-ready) so checkpoints can rebuild
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from lowbit.detection.backbones import create_backbone
from lowbit.detection.models.postprocess import PostprocessParams
from lowbit.detection.models.rpn import RegionProposalNetwork, RPNHead
from lowbit.detection.models.transform import IMAGENET_MEAN, IMAGENET_STD, DetectorTransform
from lowbit.detection.ops import AnchorGenerator

__all__ = [
    "PAPER_TWO_STAGE_PRESET",
    "CPU_TWO_STAGE_PRESET",
    "FasterRCNNConfig",
    "RFCNConfig",
    "TwoStageConfig",
    "make_config",
]

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")

# The ImageNet-initialised setting shared by the R-FCN and Faster R-CNN papers' entries:
# frozen BN, frozen stem + layer1, 600 / 1000 px images, anchors 128-512 px at three ratios,
# a 512-channel RPN conv. Each model's ``PAPER_PRESET`` adds its own fields on top.
PAPER_TWO_STAGE_PRESET: dict[str, Any] = {
    "norm": "frozen_bn",
    "freeze_at": 2,
    "min_size": 600,
    "max_size": 1000,
    "anchor_sizes": (128, 256, 512),
    "aspect_ratios": (0.5, 1.0, 2.0),
    "rpn_channels": 512,
}

#: The CPU-sized digits setting shared by ``rfcn_resnet18`` and ``faster_rcnn_resnet18``:
#: ResNet-18 at width 0.5, native image size, anchors 16-128 px, 128 RPN anchors and 128 RoIs
#: per image (at most half foreground), 300/100 proposals train/test.
CPU_TWO_STAGE_PRESET: dict[str, Any] = {
    "backbone": "resnet18",
    "width": 0.5,
    "norm": "bn",
    "freeze_at": 0,
    "min_size": None,
    "max_size": None,
    "anchor_sizes": (16, 32, 64, 128),
    "aspect_ratios": (1.0, 2.0),
    "rpn_channels": None,
    "rpn_batch_size_per_image": 128,
    "rpn_pre_nms_top_n_train": 1000,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 600,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
    "box_positive_fraction": 0.5,
}


def _floats(v: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


@dataclass
class TwoStageConfig:
    """Fields shared by R-FCN and Faster R-CNN.

    Backbone: ``backbone`` (``resnet18/34/50/101``), ``width`` multiplier,
    ``backbone_weights`` (local torchvision-layout ImageNet state_dict file, loaded strictly;
    nothing is downloaded), ``norm`` (``"bn"`` / ``"frozen_bn"``), ``freeze_at``.

    Transform: ``min_size`` / ``max_size`` (``None``: keep native size), ``size_divisible``,
    ``image_mean`` / ``image_std``.

    RPN: ``anchor_sizes`` (pixels), ``aspect_ratios`` (h / w), ``rpn_channels`` (3x3 conv
    width; ``None`` = input channels), IoU thresholds, anchors sampled per image, proposals
    kept before / after NMS in training and testing, NMS IoU, ``rpn_min_size`` (pixels).

    RoI heads: ``box_batch_size_per_image`` RoIs sampled per image, positive fraction, IoU
    thresholds, and post-processing ``box_score_thresh``, ``box_nms_thresh``,
    ``box_detections_per_img``.
    """

    num_classes: int
    backbone: str = "resnet50"
    width: float = 1.0
    backbone_weights: str | None = None
    norm: str = "bn"
    freeze_at: int = 0
    min_size: int | None = 600
    max_size: int | None = 1000
    size_divisible: int = 32
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    anchor_sizes: tuple[float, ...] = (128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int | None = 512
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 6000
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1.0
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.3
    box_detections_per_img: int = 100

    def __post_init__(self) -> None:
        if int(self.num_classes) != self.num_classes or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if self.backbone not in _RESNETS:
            raise ValueError(f"backbone must be one of {_RESNETS}, got {self.backbone!r}")
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.norm not in ("bn", "frozen_bn"):
            raise ValueError(f"norm must be 'bn' or 'frozen_bn', got {self.norm!r}")
        for name in ("image_mean", "image_std", "anchor_sizes", "aspect_ratios"):
            setattr(self, name, _floats(getattr(self, name)))
        if not self.anchor_sizes or not self.aspect_ratios:
            raise ValueError("anchor_sizes and aspect_ratios must be non-empty")
        for name in ("rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "box_fg_iou_thresh",
                     "box_bg_iou_thresh", "rpn_positive_fraction", "box_positive_fraction",
                     "rpn_nms_thresh", "box_nms_thresh"):  # fmt: skip
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in ("rpn_batch_size_per_image", "box_batch_size_per_image",
                     "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                     "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
                     "box_detections_per_img"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
        }

    # ------------------------------------------------------------------ builders
    def build_backbone(self, return_layers: Sequence[str], dilate_layer4: bool) -> nn.Module:
        return create_backbone(
            self.backbone,
            width=self.width,
            weights=self.backbone_weights,
            return_layers=tuple(return_layers),
            norm=self.norm,
            freeze_at=self.freeze_at,
            dilate_layer4=dilate_layer4,
        )

    def build_transform(self) -> DetectorTransform:
        return DetectorTransform(
            self.min_size, self.max_size, self.image_mean, self.image_std, self.size_divisible
        )

    def build_rpn(self, in_channels: int, stride: int) -> RegionProposalNetwork:
        anchors = AnchorGenerator(self.anchor_sizes, self.aspect_ratios, stride)
        mid = None if self.rpn_channels is None else int(self.rpn_channels)
        head = RPNHead(in_channels, anchors.num_anchors_per_location, mid)
        return RegionProposalNetwork(
            anchors,
            head,
            fg_iou_thresh=self.rpn_fg_iou_thresh,
            bg_iou_thresh=self.rpn_bg_iou_thresh,
            batch_size_per_image=self.rpn_batch_size_per_image,
            positive_fraction=self.rpn_positive_fraction,
            pre_nms_top_n={
                "training": self.rpn_pre_nms_top_n_train,
                "testing": self.rpn_pre_nms_top_n_test,
            },
            post_nms_top_n={
                "training": self.rpn_post_nms_top_n_train,
                "testing": self.rpn_post_nms_top_n_test,
            },
            nms_thresh=self.rpn_nms_thresh,
            min_size=self.rpn_min_size,
        )

    def postprocess_params(self) -> PostprocessParams:
        return PostprocessParams(
            score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh,
            detections_per_img=self.box_detections_per_img,
        )


@dataclass
class RFCNConfig(TwoStageConfig):
    """R-FCN fields on top of :class:`TwoStageConfig`.

    ``k``: position-sensitive grid (7 in the paper); ``reduce_dim``: width of the 1x1 "new"
    conv (``None``: half of layer4's channels, 1024 for ResNet-50/101 as in the paper);
    ``class_agnostic``: ``4 k^2`` box maps instead of ``4 (C + 1) k^2``; ``ohem``: online
    hard example mining over all proposals (R-FCN's training); ``dilate_layer4``: keep layer4
    at stride 16 (the paper's setting).
    """

    k: int = 7
    reduce_dim: int | None = None
    class_agnostic: bool = True
    ohem: bool = True
    dilate_layer4: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.reduce_dim is not None and self.reduce_dim < 1:
            raise ValueError(f"reduce_dim must be >= 1, got {self.reduce_dim}")


@dataclass
class FasterRCNNConfig(TwoStageConfig):
    """Faster R-CNN fields on top of :class:`TwoStageConfig`.

    The head is RoIAlign (``pool_size``, ``sampling_ratio``) on layer3 (stride 16) followed by
    two fully connected layers ``fc6`` / ``fc7`` of ``representation_size`` and the predictor;
    ``class_agnostic`` regresses one box for all classes.
    """

    pool_size: int = 7
    sampling_ratio: int = 2
    representation_size: int = 1024
    class_agnostic: bool = False
    box_positive_fraction: float = 0.25
    box_batch_size_per_image: int = 512
    box_nms_thresh: float = 0.5
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_channels: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_size < 1 or self.representation_size < 1:
            raise ValueError(
                f"pool_size and representation_size must be >= 1, got {self.pool_size}, "
                f"{self.representation_size}"
            )


def make_config(
    cls: type[Any], preset: Mapping[str, Any], num_classes: int, kwargs: Mapping
) -> Any:
    """``cls(num_classes=..., **preset, **kwargs)`` for any config dataclass ``cls`` with a
    ``num_classes`` field; unknown keywords raise ``ValueError`` listing the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ValueError(
            f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
        )
    merged = {**preset, **kwargs, "num_classes": num_classes}
    return cls(**merged)

