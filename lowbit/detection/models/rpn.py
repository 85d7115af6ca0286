"""Region proposal network (Faster R-CNN's RPN) on one feature map.

Split as everywhere in :mod:`lowbit.detection.models`:

* :class:`RPNHead` is the network part (convolutions, quantizable): feature → objectness
  logits ``Tensor[N, A, H, W]`` and deltas ``Tensor[N, 4A, H, W]``.
* :class:`RegionProposalNetwork` adds the float parts: anchors, decoding, top-k, clipping and
  NMS of proposals (:meth:`RegionProposalNetwork.filter_proposals`), and in training the anchor
  matching, sampling and the two losses.

Losses (torchvision's): binary cross-entropy on the sampled anchors and smooth-L1
(``beta = 1/9``) on the sampled positives, both divided by the number of sampled anchors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.detection.ops import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    box_iou,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)

__all__ = ["RPNHead", "RegionProposalNetwork"]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for objectness and box deltas.

    Args:
        in_channels: channels of the feature map.
        num_anchors: anchors per location ``A``.
        mid_channels: channels of the 3x3 conv (default ``in_channels``; 512 in the R-FCN
            paper's ResNet-101).

    Module names: ``conv``, ``cls_logits``, ``bbox_pred`` (torchvision's).
    """

    def __init__(self, in_channels: int, num_anchors: int, mid_channels: int | None = None):
        super().__init__()
        mid = in_channels if mid_channels is None else int(mid_channels)
        self.conv = nn.Conv2d(in_channels, mid, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.cls_logits = nn.Conv2d(mid, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(mid, 4 * num_anchors, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``Tensor[N, C, H, W]`` → objectness ``[N, A, H, W]``, deltas ``[N, 4A, H, W]``."""
        t = self.relu(self.conv(feature))
        return self.cls_logits(t), self.bbox_pred(t)


def flatten_rpn_outputs(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, A, H, W]``, ``[N, 4A, H, W]`` → ``[N, H*W*A]``, ``[N, H*W*A, 4]``, in the anchor
    order of :class:`~lowbit.detection.ops.AnchorGenerator` (location-major, then anchor)."""
    n, a, h, w = objectness.shape
    obj = objectness.permute(0, 2, 3, 1).reshape(n, -1)
    dl = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    return obj, dl


class RegionProposalNetwork(nn.Module):
    """RPN with proposal filtering and training losses.

    Args:
        anchor_generator: anchors of the feature map (sizes in input-image pixels).
        head: :class:`RPNHead` with ``A = anchor_generator.num_anchors_per_location``.
        fg_iou_thresh, bg_iou_thresh: anchor IoU for positive (``>=``) / negative (``<``).
        batch_size_per_image, positive_fraction: sampled anchors per image for the loss.
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}`` proposals kept per
            image before / after NMS.
        nms_thresh: IoU of the proposal NMS.
        min_size: proposals narrower or lower than this (pixels) are dropped.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: dict[str, int] | None = None,
        post_nms_top_n: dict[str, int] | None = None,
        nms_thresh: float = 0.7,
        min_size: float = 1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    @torch.no_grad()
    def filter_proposals(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Tensor]:
        """Float post-processing of the raw RPN outputs into proposals.

        Args:
            objectness: ``Tensor[N, A, H, W]`` logits (raw head output).
            deltas: ``Tensor[N, 4A, H, W]``.
            anchors: ``Tensor[H*W*A, 4]``.
            image_sizes: ``(h, w)`` of each image (before padding).

        Returns:
            Per image ``Tensor[P_i, 4]`` proposals (``P_i <= post_nms_top_n``), by decreasing
            objectness, clipped to the image.
        """
        obj, dl = flatten_rpn_outputs(objectness.detach(), deltas.detach())
        n, total = obj.shape
        pre = min(self.pre_nms_top_n[self._mode()], total)
        post = self.post_nms_top_n[self._mode()]
        top_obj, top_idx = obj.topk(pre, dim=1)
        out = []
        for i in range(n):
            idx = top_idx[i]
            boxes = self.box_coder.decode(dl[i, idx], anchors[idx]).float()
            boxes = clip_boxes_to_image(boxes, image_sizes[i])
            scores = top_obj[i].float()
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = nms(boxes, scores, self.nms_thresh)[:post]
            out.append(boxes[keep])
        return out

    def assign_targets(
        self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels ``float[T]`` (1 fg, 0 bg, -1 ignored) and matched ground
        truth boxes ``[T, 4]`` (zeros where unmatched)."""
        labels, matched = [], []
        for t in targets:
            gt = t["boxes"].to(anchors)
            if gt.numel() == 0:
                labels.append(torch.zeros(anchors.shape[0], device=anchors.device))
                matched.append(torch.zeros_like(anchors))
                continue
            idx = self.matcher(box_iou(gt, anchors))
            lab = (idx >= 0).to(anchors.dtype)
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            matched.append(gt[idx.clamp(min=0)])
        return labels, matched

    def compute_loss(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``loss_objectness`` and ``loss_rpn_box_reg`` for raw head outputs."""
        obj, dl = flatten_rpn_outputs(objectness, deltas)
        labels, matched = self.assign_targets(anchors, targets)
        pos_masks, neg_masks = self.sampler(labels)
        pos = torch.cat(pos_masks)
        sampled = pos | torch.cat(neg_masks)
        labels_all = torch.cat(labels)
        obj = obj.reshape(-1)
        dl = dl.reshape(-1, 4)
        anchors_all = anchors.repeat(len(targets), 1)
        reg_targets = self.box_coder.encode(torch.cat(matched)[pos], anchors_all[pos])
        denom = max(int(sampled.sum()), 1)
        box_loss = F.smooth_l1_loss(dl[pos], reg_targets, beta=1.0 / 9, reduction="sum") / denom
        obj_loss = F.binary_cross_entropy_with_logits(obj[sampled], labels_all[sampled])
        if not sampled.any():
            obj_loss = obj.sum() * 0.0
        return {"loss_objectness": obj_loss, "loss_rpn_box_reg": box_loss}

    def forward(
        self,
        feature: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals for every image, and the losses in training.

        Args:
            feature: ``Tensor[N, C, H, W]`` feature map.
            image_sizes: ``(h, w)`` of each image in the padded batch.
            targets: training targets with ``boxes`` (in the batch's pixel frame).

        Returns:
            ``(proposals, losses)``: per image ``Tensor[P_i, 4]``; ``losses`` is empty in eval.
        """
        objectness, deltas = self.head(feature)
        anchors = self.anchor_generator(feature)
        proposals = self.filter_proposals(objectness, deltas, anchors, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self.compute_loss(objectness, deltas, anchors, targets)
        return proposals, losses
