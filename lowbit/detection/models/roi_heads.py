"""Second stage: proposal sampling, the head, losses, and post-processing.

:class:`RoIHeads` wraps a network head (:mod:`lowbit.detection.models.heads`, attribute
``head``) with the float parts around it:

* training: ground-truth boxes are appended to the proposals, proposals are matched to the
  ground truth (IoU ``>= fg_iou_thresh`` foreground, ``< bg_iou_thresh`` background), a
  balanced minibatch is sampled (or, with OHEM, the hardest RoIs are selected after a forward
  pass over all of them), and the losses are cross-entropy plus smooth-L1 (``beta = 1/9``)
  summed over foreground RoIs and divided by the number of RoIs (torchvision's);
* inference: :func:`~lowbit.detection.models.postprocess.postprocess_detections`.

Labels inside are ``0`` background, ``c + 1`` foreground class ``c``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.detection.models.postprocess import PostprocessParams, postprocess_detections
from lowbit.detection.ops import BalancedPositiveNegativeSampler, BoxCoder, Matcher, box_iou

__all__ = ["RoIHeads", "fast_rcnn_loss"]


def _pick_deltas(box_deltas: Tensor, labels: Tensor) -> Tensor:
    """``[R, 4]`` deltas of each RoI's own class (class-agnostic deltas pass through)."""
    if box_deltas.shape[1] == 4:
        return box_deltas
    r = box_deltas.shape[0]
    return box_deltas.view(r, -1, 4)[torch.arange(r, device=labels.device), labels]


def fast_rcnn_loss(
    class_logits: Tensor, box_deltas: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """Cross-entropy over all RoIs; smooth-L1 (beta 1/9) on foreground RoIs / number of RoIs.

    Args:
        class_logits: ``Tensor[R, C + 1]``.
        box_deltas: ``Tensor[R, 4]`` or ``Tensor[R, 4 (C + 1)]``.
        labels: ``int64[R]`` internal labels (0 background).
        regression_targets: ``Tensor[R, 4]`` encoded targets (used where ``labels > 0``).
    """
    cls_loss = F.cross_entropy(class_logits, labels)
    pos = torch.nonzero(labels > 0).flatten()
    d = _pick_deltas(box_deltas[pos], labels[pos])
    box_loss = F.smooth_l1_loss(d, regression_targets[pos], beta=1.0 / 9, reduction="sum")
    return {"loss_classifier": cls_loss, "loss_box_reg": box_loss / max(labels.numel(), 1)}


class RoIHeads(nn.Module):
    """Second stage around a network ``head``.

    Args:
        head: module ``(feature, proposals) -> (class_logits, box_deltas)``.
        fg_iou_thresh, bg_iou_thresh: RoI IoU for foreground (``>=``) / background (``<``).
        batch_size_per_image: RoIs per image for the loss.
        positive_fraction: at most this fraction of them foreground (ignored with OHEM).
        bbox_reg_weights: box coder weights of the regression targets.
        postprocess: inference thresholds.
        ohem: online hard example mining (R-FCN): the head runs on every proposal (cheap for
            R-FCN, whose per-RoI cost is pooling only), and the ``batch_size_per_image`` RoIs
            of each image with the largest loss are the ones back-propagated. The reference
            also runs an NMS (0.7) over the RoIs before ranking; that step is left out.
    """

    def __init__(
        self,
        head: nn.Module,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        postprocess: PostprocessParams | None = None,
        ohem: bool = False,
    ) -> None:
        super().__init__()
        self.head = head
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.batch_size_per_image = int(batch_size_per_image)
        self.box_coder = BoxCoder(weights=bbox_reg_weights)
        self.postprocess_params = postprocess or PostprocessParams(
            box_coder_weights=tuple(bbox_reg_weights)  # type: ignore[arg-type]
        )
        self.ohem = bool(ohem)

    @torch.no_grad()
    def label_proposals(
        self, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Append ground truth to the proposals and label them.

        Returns:
            Per image: proposals ``Tensor[P_i + K_i, 4]``, internal labels ``int64`` (0
            background, -1 ignored), regression targets ``Tensor[P_i + K_i, 4]``.
        """
        all_props, all_labels, all_targets = [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props)
            props = torch.cat((props, gt))
            if gt.numel() == 0:
                labels = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                matched = torch.zeros_like(props)
            else:
                idx = self.matcher(box_iou(gt, props))
                labels = t["labels"].to(props.device)[idx.clamp(min=0)]
                labels[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[idx == Matcher.BETWEEN_THRESHOLDS] = -1
                matched = gt[idx.clamp(min=0)]
            fg = labels > 0
            reg = torch.zeros_like(props)
            if fg.any():
                reg[fg] = self.box_coder.encode(matched[fg], props[fg])
            all_props.append(props)
            all_labels.append(labels)
            all_targets.append(reg)
        return all_props, all_labels, all_targets

    def sample(
        self, proposals: list[Tensor], labels: list[Tensor], reg_targets: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Balanced minibatch per image (``batch_size_per_image``, ``positive_fraction``)."""
        pos_masks, neg_masks = self.sampler(labels)
        out_p, out_l, out_t = [], [], []
        for p, lab, t, pm, nm in zip(proposals, labels, reg_targets, pos_masks, neg_masks):
            keep = torch.nonzero(pm | nm).flatten()
            out_p.append(p[keep])
            out_l.append(lab[keep])
            out_t.append(t[keep])
        return out_p, out_l, out_t

    def _ohem_loss(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        labels: list[Tensor],
        reg_targets: list[Tensor],
    ) -> dict[str, Tensor]:
        lab = torch.cat(labels)
        tgt = torch.cat(reg_targets)
        valid = lab >= 0
        safe = lab.clamp(min=0)
        cls = F.cross_entropy(class_logits, safe, reduction="none")
        d = _pick_deltas(box_deltas, safe)
        box = F.smooth_l1_loss(d, tgt, beta=1.0 / 9, reduction="none").sum(dim=1)
        box = box * (lab > 0).to(box.dtype)
        total = (cls + box).detach().masked_fill(~valid, -1.0)
        chosen = []
        start = 0
        for lab_i in labels:
            n = lab_i.numel()
            seg = total[start : start + n]
            top = seg.topk(min(self.batch_size_per_image, int((lab_i >= 0).sum()))).indices
            chosen.append(top + start)
            start += n
        sel = torch.cat(chosen)
        denom = max(sel.numel(), 1)
        return {"loss_classifier": cls[sel].sum() / denom, "loss_box_reg": box[sel].sum() / denom}

    def forward(
        self,
        feature: Tensor,
        proposals: list[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Losses in training (``([], losses)``), detections in eval (``(dets, {})``).

        ``targets`` have internal labels (background 0) and boxes in the batch's pixel frame.
        """
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets in training mode")
            props, labels, reg = self.label_proposals(proposals, targets)
            if self.ohem:
                logits, deltas = self.head(feature, props)
                return [], self._ohem_loss(logits, deltas, labels, reg)
            props, labels, reg = self.sample(props, labels, reg)
            logits, deltas = self.head(feature, props)
            return [], fast_rcnn_loss(logits, deltas, torch.cat(labels), torch.cat(reg))
        logits, deltas = self.head(feature, proposals)
        params = self.postprocess_params
        return postprocess_detections(logits, deltas, proposals, image_sizes, params), {}
