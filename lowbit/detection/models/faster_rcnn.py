"""Faster R-CNN (Ren et al. 2015) on a ResNet's layer3 with a two fully connected box head.

Structure: backbone up to layer3 (stride 16; layer4 is not built into the forward pass and is
removed after the optional ImageNet weights are loaded), RPN on layer3, RoIAlign ``7 x 7``
(``aligned=True``, 2 samples per bin side) on layer3, ``fc6`` → ``fc7`` (the layers that
SVD compression targets), ``cls_score`` and per-class ``bbox_pred``.

Registered names:

* ``faster_rcnn_resnet50``: ImageNet-style setting (600 px, anchors 128-512, frozen BN, 1024-d
  ``fc6``/``fc7`` on 1024 x 7 x 7 RoI features).
* ``faster_rcnn_resnet18``: CPU-sized (width 0.5, native image size, anchors 16-128 px, 256-d
  ``fc6``/``fc7``, RoIAlign with 1 sample per bin, 128 RPN anchors and 128 RoIs per image
  (half foreground at most), 300/100 proposals train/test).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from lowbit.detection.models.config import (
    CPU_TWO_STAGE_PRESET,
    PAPER_TWO_STAGE_PRESET,
    FasterRCNNConfig,
    make_config,
)
from lowbit.detection.models.generalized_rcnn import TwoStageDetector, assemble_two_stage
from lowbit.detection.models.heads import FasterRCNNHead
from lowbit.detection.protocol import DetectorSpec
from lowbit.detection.registry import register_model

__all__ = ["FasterRCNN", "build_faster_rcnn"]


class FasterRCNN(TwoStageDetector):
    """Faster R-CNN detector; see the module docstring. Build with :func:`build_faster_rcnn`
    or :func:`lowbit.detection.create_model`.

    Detector protocol: the two-stage one (:class:`TwoStageDetector`): a trunk (backbone, RPN
    head, the RoI feature map) for latency, not exportable (fc6 / fc7 run on pooled RoIs)."""

    detector_spec: ClassVar[DetectorSpec] = TwoStageDetector.detector_spec


def build_faster_rcnn(cfg: FasterRCNNConfig) -> FasterRCNN:
    """Faster R-CNN from a resolved :class:`FasterRCNNConfig`."""
    backbone = cfg.build_backbone(("layer3",), dilate_layer4=False)
    backbone.layer4 = nn.Identity()  # unused: the box head replaces it
    c3 = backbone.out_channels["layer3"]
    s3 = backbone.strides["layer3"]
    head = FasterRCNNHead(
        c3,
        cfg.num_classes,
        pool_size=cfg.pool_size,
        spatial_scale=1.0 / s3,
        sampling_ratio=cfg.sampling_ratio,
        representation_size=cfg.representation_size,
        class_agnostic=cfg.class_agnostic,
    )
    return assemble_two_stage(
        FasterRCNN, cfg, backbone, head, arch="faster_rcnn", rpn_feature="layer3",
        head_feature="layer3",
    )  # fmt: skip


PAPER_PRESET: dict[str, Any] = {
    **PAPER_TWO_STAGE_PRESET,
    "rpn_pre_nms_top_n_test": 6000,
    "rpn_post_nms_top_n_test": 300,
    "representation_size": 1024,
}

CPU_PRESET: dict[str, Any] = {
    **CPU_TWO_STAGE_PRESET,
    "representation_size": 256,
    "sampling_ratio": 1,  # one RoIAlign point per bin: bins are < 1 cell here; 1.6x faster
}


@register_model("faster_rcnn_resnet50")
def faster_rcnn_resnet50(num_classes: int, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN + ResNet-50 layer3 + two FC layers (1024-d), 600 px."""
    preset = {**PAPER_PRESET, "backbone": "resnet50"}
    return build_faster_rcnn(make_config(FasterRCNNConfig, preset, num_classes, kwargs))


@register_model("faster_rcnn_resnet18")
def faster_rcnn_resnet18(num_classes: int, **kwargs: Any) -> FasterRCNN:
    """CPU-sized Faster R-CNN: ResNet-18 at width 0.5, 256-d fc6/fc7, native image size."""
    return build_faster_rcnn(make_config(FasterRCNNConfig, CPU_PRESET, num_classes, kwargs))
