"""Float post-processing of the second stage: decode, clip, threshold, per-class NMS, top-k.

Kept apart from the network on purpose: quantization (:func:`lowbit.nn.prepare`) and export
only touch the convolutions / linear layers that produce the raw outputs; this module turns
raw outputs into detections and stays in float. It is usable on its own, e.g. on outputs of
an exported network::

    dets = postprocess_detections(class_logits, box_deltas, proposals, image_sizes)

Conventions: ``class_logits`` has ``C + 1`` columns, column 0 background; ``box_deltas``
has 4 columns (class-agnostic) or ``4 (C + 1)`` (one group per column of ``class_logits``),
encoded with :class:`~lowbit.detection.ops.BoxCoder` weights ``(10, 10, 5, 5)`` by default.
Output ``labels`` are 0-based foreground classes (column ``c`` of the logits gives label
``c - 1``), the dataset's convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lowbit.detection.ops import BoxCoder, batched_nms, clip_boxes_to_image, remove_small_boxes

__all__ = ["PostprocessParams", "postprocess_detections"]


@dataclass
class PostprocessParams:
    """Parameters of :func:`postprocess_detections`.

    Attributes:
        score_thresh: keep class scores strictly above this.
        nms_thresh: IoU of the per-class NMS.
        detections_per_img: at most this many detections per image (highest scores).
        min_size: drop boxes narrower or lower than this (pixels) after clipping.
        box_coder_weights: weights of the box coder that encoded the deltas.
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    min_size: float = 1e-2
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        if self.detections_per_img < 1:
            raise ValueError(f"detections_per_img must be >= 1, got {self.detections_per_img}")
        self.box_coder_weights = tuple(float(w) for w in self.box_coder_weights)  # type: ignore


@torch.no_grad()
def postprocess_detections(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    params: PostprocessParams | None = None,
) -> list[dict[str, Tensor]]:
    """Turn raw second-stage outputs into detections.

    Args:
        class_logits: ``Tensor[R, C + 1]``, the proposals of all images concatenated in order.
        box_deltas: ``Tensor[R, 4]`` (class-agnostic) or ``Tensor[R, 4 (C + 1)]``.
        proposals: per image ``Tensor[R_i, 4]`` boxes the deltas refer to (``sum R_i = R``).
        image_sizes: ``(h, w)`` per image; boxes are clipped to it.
        params: thresholds (default :class:`PostprocessParams`).

    Returns:
        One dict per image: ``boxes`` ``float32[D, 4]`` (0-based continuous xyxy inside the
        image), ``labels`` ``int64[D]`` (0-based foreground class), ``scores`` ``float32[D]``
        (softmax probability, in ``(score_thresh, 1]``), sorted by decreasing score,
        ``D <= detections_per_img``.
    """
    p = params or PostprocessParams()
    counts = [int(b.shape[0]) for b in proposals]
    if class_logits.shape[0] != sum(counts) or box_deltas.shape[0] != sum(counts):
        raise ValueError(
            f"postprocess: {class_logits.shape[0]} logits / {box_deltas.shape[0]} deltas for "
            f"{sum(counts)} proposals"
        )
    num_cols = class_logits.shape[1]
    if box_deltas.shape[1] not in (4, 4 * num_cols):
        raise ValueError(
            f"postprocess: box_deltas must have 4 or 4*{num_cols} columns, "
            f"got {box_deltas.shape[1]}"
        )
    coder = BoxCoder(weights=p.box_coder_weights)
    scores_all = torch.softmax(class_logits.float(), dim=-1)
    ref = torch.cat(list(proposals)).float() if proposals else box_deltas.new_zeros((0, 4))
    boxes_all = coder.decode(box_deltas.float(), ref)
    results = []
    for scores, boxes, size in zip(
        scores_all.split(counts), boxes_all.split(counts), image_sizes
    ):
        r = scores.shape[0]
        boxes = clip_boxes_to_image(boxes, size).view(r, box_deltas.shape[1] // 4, 4)  # r may be 0
        if boxes.shape[1] == 1:
            boxes = boxes.expand(r, num_cols - 1, 4)
        else:
            boxes = boxes[:, 1:]
        scores = scores[:, 1:]
        labels = torch.arange(num_cols - 1, device=scores.device).expand(r, -1)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = torch.nonzero(scores > p.score_thresh).flatten()
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, p.min_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, p.nms_thresh)[: p.detections_per_img]
        results.append(
            {"boxes": boxes[keep].contiguous(), "labels": labels[keep], "scores": scores[keep]}
        )
    return results
