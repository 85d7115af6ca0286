"""Two-stage detector skeleton (torchvision's ``GeneralizedRCNN``): transform → backbone → RPN →
RoI heads → post-processing.

The split that quantization and export rely on::

    images (list, [0, 1])  ──transform──>  batch Tensor[N, 3, H, W] (normalised, padded)
    batch ──backbone──> features ──rpn.head──> objectness, rpn_deltas        (network)
    objectness, rpn_deltas ──rpn.filter_proposals──> proposals                (float)
    features, proposals ──roi_heads.head──> class_logits, box_deltas          (network)
    class_logits, box_deltas, proposals ──postprocess──> detections           (float)

:meth:`TwoStageDetector.forward_raw` runs the network parts (and the proposal filter between
them) on an already prepared batch and returns the raw tensors; :meth:`postprocess` turns those
into detections. ``forward`` is the torchvision API: train mode ``model(images, targets)`` →
dict of losses, eval mode ``model(images)`` → list of ``dict(boxes, labels, scores)`` in the
original image sizes, ``labels`` 0-based foreground classes (the dataset's convention; inside
the detector background is 0 and class ``c`` is ``c + 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from lowbit.detection.models.config import TwoStageConfig
from lowbit.detection.models.postprocess import postprocess_detections
from lowbit.detection.models.roi_heads import RoIHeads
from lowbit.detection.models.rpn import RegionProposalNetwork
from lowbit.detection.models.transform import (
    DetectorTransform,
    check_inputs,
    to_internal_targets,
)
from lowbit.detection.protocol import DetectorSpec

__all__ = ["TwoStageDetector", "assemble_two_stage"]

DetectorT = TypeVar("DetectorT", bound="TwoStageDetector")


class TwoStageDetector(nn.Module):
    """Backbone + RPN + RoI heads, with the pre/post-processing kept outside the network.

    Args:
        backbone: a :class:`~lowbit.detection.backbones.ResNet`-like module whose
            ``forward_features`` returns a dict of feature maps.
        rpn: region proposal network, run on ``features[rpn_feature]``.
        roi_heads: second stage, run on ``features[head_feature]``.
        transform: pre-processing (normalise, resize, batch).
        num_classes: foreground classes ``C``.
        rpn_feature, head_feature: names of the feature maps the two stages read.

    Detector protocol (:mod:`lowbit.detection.protocol`): ``forward_raw(batch, image_sizes,
    proposals)`` (both pinnable); the trunk is backbone + RPN head + the second stage's
    feature map (``objectness, rpn_deltas, features``), so latency can be measured, but the
    second stage runs per RoI after pooling and a generic two-stage detector is not exported
    (:class:`~lowbit.detection.models.rfcn.RFCN` is).
    """

    detector_spec: ClassVar[DetectorSpec] = DetectorSpec(
        raw_outputs=("objectness", "rpn_deltas", "class_logits", "box_deltas"),
        raw_geometry=("anchors", "proposals", "image_sizes"),
        raw_kwargs=("image_sizes", "proposals"),
        trunk_outputs=("objectness", "rpn_deltas", "features"),
        note="only R-FCN among two-stage detectors is exportable (Faster R-CNN's fc6/fc7 run "
             "on pooled RoIs, outside a single image -> maps graph)",
    )

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: DetectorTransform,
        num_classes: int,
        rpn_feature: str = "layer3",
        head_feature: str = "layer3",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = int(num_classes)
        self.rpn_feature = rpn_feature
        self.head_feature = head_feature

    def features(self, batch: Tensor) -> dict[str, Tensor]:
        """Backbone feature maps of a prepared ``Tensor[N, 3, H, W]`` batch."""
        return self.backbone.forward_features(batch)

    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Any]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """torchvision's API.

        Args:
            images: list of ``Tensor[3, H_i, W_i]`` RGB in ``[0, 1]`` (or ``Tensor[N, 3, H,
                W]``).
            targets: training only; per image ``boxes`` float ``Tensor[K, 4]`` (0-based
                continuous xyxy, original image pixels) and ``labels`` int64 ``Tensor[K]``
                (0-based foreground classes). Invalid targets raise ``ValueError`` naming the
                image (its ``image_id`` if present).

        Returns:
            Train mode: ``{"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
            "loss_box_reg"}`` scalar tensors. Eval mode: per image ``boxes`` ``float32[D,
            4]``, ``labels`` ``int64[D]`` (0-based), ``scores`` ``float32[D]`` sorted
            decreasing, in the original image's pixels.
        """
        ims, original_sizes = check_inputs(images, targets, self.num_classes, self.training)
        if self.training:
            targets = to_internal_targets(targets)
        batch, image_sizes, targets = self.transform(ims, targets)
        feats = self.features(batch)
        proposals, rpn_losses = self.rpn(feats[self.rpn_feature], image_sizes, targets)
        head_feature = feats[self.head_feature]
        if self.training:
            _, head_losses = self.roi_heads(head_feature, proposals, image_sizes, targets)
            return {**rpn_losses, **head_losses}
        dets, _ = self.roi_heads(head_feature, proposals, image_sizes)
        return self.transform.postprocess(dets, image_sizes, original_sizes)

    def forward_raw(
        self,
        batch: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        proposals: Sequence[Tensor] | None = None,
    ) -> dict[str, Any]:
        """Raw network outputs for a prepared batch (no losses, no final post-processing).

        Args:
            batch: ``Tensor[N, 3, H, W]`` already normalised and padded (the first output of
                :attr:`transform`).
            image_sizes: ``(h, w)`` per image before padding (second output of
                :attr:`transform`); default: every image fills the batch.
            proposals: per image ``Tensor[P_i, 4]``; default: the RPN's own (float filter
                :meth:`RegionProposalNetwork.filter_proposals`, in eval-mode sizes when the
                model is in eval mode).

        Returns:
            ``objectness`` ``[N, A, H', W']``, ``rpn_deltas`` ``[N, 4A, H', W']``,
            ``anchors`` ``[H'W'A, 4]``, ``proposals`` (list), ``class_logits``
            ``[R, C + 1]``, ``box_deltas`` ``[R, 4]`` or ``[R, 4 (C + 1)]``, ``image_sizes``.
        """
        if image_sizes is None:
            image_sizes = [(int(batch.shape[-2]), int(batch.shape[-1]))] * batch.shape[0]
        feats = self.features(batch)
        f_rpn = feats[self.rpn_feature]
        objectness, rpn_deltas = self.rpn.head(f_rpn)
        anchors = self.rpn.anchor_generator(f_rpn)
        if proposals is None:
            proposals = self.rpn.filter_proposals(objectness, rpn_deltas, anchors, image_sizes)
        class_logits, box_deltas = self.roi_heads.head(feats[self.head_feature], list(proposals))
        return {
            "objectness": objectness,
            "rpn_deltas": rpn_deltas,
            "anchors": anchors,
            "proposals": list(proposals),
            "class_logits": class_logits,
            "box_deltas": box_deltas,
            "image_sizes": list(image_sizes),
        }

    def forward_trunk(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The convolutional trunk of a prepared ``Tensor[N, 3, H, W]`` batch: RPN
        ``objectness [N, A, H', W']``, ``rpn_deltas [N, 4A, H', W']`` and the second stage's
        feature map ``features[head_feature]`` (the per-RoI head is not part of it)."""
        feats = self.features(batch)
        objectness, rpn_deltas = self.rpn.head(feats[self.rpn_feature])
        return objectness, rpn_deltas, feats[self.head_feature]

    def postprocess_trunk(
        self,
        outputs: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        batch_hw: tuple[int, int],
    ) -> list[dict[str, Tensor]]:
        """Detections from :meth:`forward_trunk` outputs; a generic two-stage detector's trunk
        does not carry its second stage, so this raises ``ValueError`` naming the class
        (:class:`~lowbit.detection.models.rfcn.RFCN` overrides it)."""
        raise ValueError(f"{type(self).__name__}: {self.detector_spec.note}")

    @torch.no_grad()
    def postprocess(
        self,
        head_outputs: dict[str, Any],
        proposals: Sequence[Tensor] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections from :meth:`forward_raw` outputs (decode, clip, threshold, NMS, top-k).

        Args:
            head_outputs: dict with ``class_logits`` and ``box_deltas`` (and ``proposals`` /
                ``image_sizes`` when those arguments are not given), e.g. from
                :meth:`forward_raw`.
            proposals: per image ``Tensor[P_i, 4]``.
            image_sizes: ``(h, w)`` per image; boxes are clipped to it.

        Returns:
            As eval-mode ``forward`` but in the prepared batch's pixel frame.
        """
        props = list(head_outputs["proposals"] if proposals is None else proposals)
        if image_sizes is None:
            image_sizes = head_outputs["image_sizes"]
        return postprocess_detections(
            head_outputs["class_logits"],
            head_outputs["box_deltas"],
            props,
            image_sizes,
            self.roi_heads.postprocess_params,
        )


def assemble_two_stage(
    detector_cls: type[DetectorT],
    cfg: TwoStageConfig,
    backbone: nn.Module,
    head: nn.Module,
    *,
    arch: str,
    rpn_feature: str,
    head_feature: str,
    ohem: bool = False,
) -> DetectorT:
    """The part of every two-stage builder after its backbone and head: the RPN on
    ``backbone``'s ``rpn_feature`` map, :class:`RoIHeads` around ``head`` (sampling IoUs,
    batch size, positive fraction and post-processing from ``cfg``; ``ohem`` as
    :class:`RoIHeads`), the transform, and ``model.config = {"arch": arch, **cfg.to_dict()}``.

    The RPN is built after the head (the order of random initialisation of the builders this
    replaced, so a seeded build gives the same weights).

    Args:
        detector_cls: the :class:`TwoStageDetector` subclass to build.
        cfg: the resolved config.
        backbone: a backbone with ``out_channels`` / ``strides`` dicts naming ``rpn_feature``.
        head: the second-stage network head ``(feature, proposals) -> (logits, deltas)``.
        arch: the ``"arch"`` entry of ``model.config`` (how checkpoints rebuild the model).
        rpn_feature, head_feature: feature maps the RPN and the head read.
        ohem: online hard example mining in :class:`RoIHeads`.
    """
    roi_heads = RoIHeads(
        head,
        fg_iou_thresh=cfg.box_fg_iou_thresh,
        bg_iou_thresh=cfg.box_bg_iou_thresh,
        batch_size_per_image=cfg.box_batch_size_per_image,
        positive_fraction=cfg.box_positive_fraction,
        postprocess=cfg.postprocess_params(),
        ohem=ohem,
    )
    rpn = cfg.build_rpn(backbone.out_channels[rpn_feature], backbone.strides[rpn_feature])
    model = detector_cls(
        backbone,
        rpn,
        roi_heads,
        cfg.build_transform(),
        cfg.num_classes,
        rpn_feature=rpn_feature,
        head_feature=head_feature,
    )
    model.config = {"arch": arch, **cfg.to_dict()}
    return model
