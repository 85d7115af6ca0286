"""R-FCN (Dai, Li, He, Sun 2016) on a ResNet, the detector of the LBW-Net paper.

Structure (the R-FCN paper's ResNet setting): the RPN reads layer3 (``conv4``, stride 16); the
head reads layer4 (``conv5``) made stride 16 by dilation, applies a 1x1 "new" conv (1024
channels for ResNet-50/101), then 1x1 convs to ``(C + 1) k^2`` position-sensitive score maps
and ``4 k^2`` box maps (class-agnostic; ``4 (C + 1) k^2`` per-class), PSRoI pooling and
average voting. There is no fully connected layer, so every weight layer is a convolution
that LBW quantization covers.

Registered names:

* ``rfcn_resnet50``, ``rfcn_resnet101``: the paper's setting (VOC, ``k = 7``, 600 px images,
  300 proposals, OHEM, frozen BN + frozen stem and layer1 for ImageNet-initialised backbones).
* ``rfcn_resnet18``: CPU-sized (width 0.5, native image size, anchors 16-128 px,
  ``k = 3``, 128 RPN anchors and 128 RoIs per image (half foreground at most), 300/100
  proposals train/test). ``k = 3``
  rather than 7 because at stride 16 the digits devkit's objects (10-110 px) cover 1-7
  feature cells, so a 7x7 grid mostly repeats cells; the paper's configs keep 7.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from lowbit.detection.models.config import (
    CPU_TWO_STAGE_PRESET,
    PAPER_TWO_STAGE_PRESET,
    RFCNConfig,
    make_config,
)
from lowbit.detection.models.generalized_rcnn import TwoStageDetector, assemble_two_stage
from lowbit.detection.models.heads import RFCNHead, _rois
from lowbit.detection.protocol import DetectorSpec
from lowbit.detection.registry import register_model

__all__ = ["RFCN", "build_rfcn"]


class RFCN(TwoStageDetector):
    """R-FCN detector; see the module docstring. Build with :func:`build_rfcn` or
    :func:`lowbit.detection.create_model`.

    Detector protocol: R-FCN has no fully connected layer, so its trunk is the whole network
    (backbone, RPN head, the head's score maps) and is what ``lowbit export`` writes (kind
    ``"rfcn"``, any ``H, W``); PSRoI pooling, voting and decoding run in float afterwards.
    """

    detector_spec: ClassVar[DetectorSpec] = dataclasses.replace(
        TwoStageDetector.detector_spec,
        trunk_outputs=("objectness", "rpn_deltas", "cls_maps", "bbox_maps"),
        export_kind="rfcn",
        dynamic_hw=True,
        note="",
    )

    def forward_trunk(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The exportable network of a prepared ``Tensor[N, 3, H, W]`` batch:
        ``objectness [N, A, H/16, W/16]``, ``rpn_deltas [N, 4A, H/16, W/16]``, ``cls_maps
        [N, (C+1) k^2, H/16, W/16]``, ``bbox_maps [N, 4 G k^2, H/16, W/16]``."""
        feats = self.features(batch)
        objectness, rpn_deltas = self.rpn.head(feats[self.rpn_feature])
        cls_maps, bbox_maps = self.roi_heads.head.score_maps(feats[self.head_feature])
        return objectness, rpn_deltas, cls_maps, bbox_maps

    @torch.no_grad()
    def postprocess_trunk(
        self,
        outputs: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        batch_hw: tuple[int, int],
    ) -> list[dict[str, Tensor]]:
        """Float post-processing of :meth:`forward_trunk`'s four maps (e.g. from onnxruntime):
        anchors, proposal decoding + NMS (:meth:`RegionProposalNetwork.filter_proposals`),
        PSRoI pooling + voting (:meth:`RFCNHead.pool`), :meth:`postprocess`. ``image_sizes``
        per image ``(h, w)`` before padding; ``batch_hw`` unused (the maps carry the size).

        Returns:
            Per image ``boxes float32[D, 4]`` (batch pixels), ``labels int64[D]`` (0-based),
            ``scores float32[D]`` sorted decreasing.
        """
        objectness, rpn_deltas, cls_maps, bbox_maps = (o.float() for o in outputs)
        anchors = self.rpn.anchor_generator(objectness)
        proposals = self.rpn.filter_proposals(objectness, rpn_deltas, anchors, image_sizes)
        cls, box = self.roi_heads.head.pool(cls_maps, bbox_maps, _rois(proposals, cls_maps))
        return self.postprocess({"class_logits": cls, "box_deltas": box}, proposals,
                                image_sizes)


def build_rfcn(cfg: RFCNConfig) -> RFCN:
    """R-FCN from a resolved :class:`RFCNConfig`."""
    backbone = cfg.build_backbone(("layer3", "layer4"), dilate_layer4=cfg.dilate_layer4)
    c4 = backbone.out_channels["layer4"]
    s4 = backbone.strides["layer4"]
    reduce_dim = cfg.reduce_dim if cfg.reduce_dim is not None else max(1, c4 // 2)
    head = RFCNHead(c4, cfg.num_classes, cfg.k, reduce_dim, cfg.class_agnostic, 1.0 / s4)
    return assemble_two_stage(
        RFCN, cfg, backbone, head, arch="rfcn", rpn_feature="layer3", head_feature="layer4",
        ohem=cfg.ohem,
    )  # fmt: skip


PAPER_PRESET: dict[str, Any] = {**PAPER_TWO_STAGE_PRESET, "k": 7, "ohem": True}

CPU_PRESET: dict[str, Any] = {
    **CPU_TWO_STAGE_PRESET,
    "k": 3,
    "ohem": False,
}


@register_model("rfcn_resnet50")
def rfcn_resnet50(num_classes: int, **kwargs: Any) -> RFCN:
    """R-FCN + ResNet-50, the paper's setting (``k = 7``, OHEM, 600 px)."""
    preset = {**PAPER_PRESET, "backbone": "resnet50"}
    return build_rfcn(make_config(RFCNConfig, preset, num_classes, kwargs))


@register_model("rfcn_resnet101")
def rfcn_resnet101(num_classes: int, **kwargs: Any) -> RFCN:
    """R-FCN + ResNet-101, the paper's setting."""
    preset = {**PAPER_PRESET, "backbone": "resnet101"}
    return build_rfcn(make_config(RFCNConfig, preset, num_classes, kwargs))


@register_model("rfcn_resnet18")
def rfcn_resnet18(num_classes: int, **kwargs: Any) -> RFCN:
    """CPU-sized R-FCN: ResNet-18 at width 0.5, ``k = 3``, native image size."""
    return build_rfcn(make_config(RFCNConfig, CPU_PRESET, num_classes, kwargs))
