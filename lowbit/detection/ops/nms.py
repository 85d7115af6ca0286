"""Non-maximum suppression, pure PyTorch.

Semantics (same as torchvision's ``nms``): boxes are visited in order of decreasing score; a
box is kept unless a box kept before it overlaps it with ``IoU > iou_threshold`` (strictly
greater). Equal scores are visited in index order (stable sort), so ties are deterministic.

Implementation (blocked greedy, vectorised): the score-sorted boxes are cut into blocks of
``_BLOCK``. For each block, the boxes not yet suppressed are compared with each other (one
``[c, c]`` IoU matrix, packed into one bitmask per box as in torchvision's CUDA kernel) and the
greedy pass inside the block runs over those bitmasks with Python integers; then the boxes
kept in the block suppress all later boxes in one vectorised ``[kept, N - end]`` IoU test.
IoU is thus only ever computed for rows of kept boxes (O(K·N), not O(N²)), and the Python
loop is over boxes of one block, never over matrix elements.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["batched_nms", "nms"]

_BLOCK = 256  # boxes per block; also bounds the later-box test to _BLOCK * N temporaries


@torch.no_grad()
def _suppress(rows: Tensor, cols: Tensor, iou_threshold: float) -> Tensor:
    """Bool ``[R, C]``: ``IoU(rows[r], cols[c]) > iou_threshold``, computed in place."""
    x1, y1, x2, y2 = cols.unbind(1)
    rx1, ry1, rx2, ry2 = (t[:, None] for t in rows.unbind(1))
    iw = torch.minimum(rx2, x2).sub_(torch.maximum(rx1, x1)).clamp_(min=0)
    ih = torch.minimum(ry2, y2).sub_(torch.maximum(ry1, y1)).clamp_(min=0)
    inter = iw.mul_(ih)
    union = ((rx2 - rx1) * (ry2 - ry1)) + ((x2 - x1) * (y2 - y1)) - inter
    # Zero union (two degenerate boxes): IoU is 0, never suppresses (torchvision gets NaN,
    # which compares False as well).
    return inter.div_(union) > iou_threshold


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``Tensor[N, 4]`` float ``(x1, y1, x2, y2)``.
        scores: ``Tensor[N]``.
        iou_threshold: a box is suppressed by a higher-scored kept box when their
            IoU is strictly greater than this.

    Returns:
        ``Tensor[K]`` int64 indices of the kept boxes, sorted by decreasing score (ties: lower
        index first). Empty input gives an empty int64 tensor on the boxes' device.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be Tensor[{boxes.shape[0]}], got {tuple(scores.shape)}")
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    sorted_boxes = boxes.detach()[order]
    if not sorted_boxes.is_floating_point():
        sorted_boxes = sorted_boxes.float()

    removed = torch.zeros(n, dtype=torch.bool, device=device)
    kept_blocks: list[Tensor] = []
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        cand = torch.nonzero(~removed[start:end]).flatten() + start
        c = cand.numel()
        if c == 0:
            continue
        cand_boxes = sorted_boxes[cand]
        masks = np.packbits(
            _suppress(cand_boxes, cand_boxes, iou_threshold).cpu().numpy(),
            axis=1,
            bitorder="little",
        )
        # Greedy pass inside the block: bit j of `local` = candidate j is suppressed.
        local = 0
        keep_local: list[int] = []
        for i in range(c):
            if (local >> i) & 1:
                continue
            keep_local.append(i)
            local |= int.from_bytes(masks[i].tobytes(), "little")
        kept = cand[torch.tensor(keep_local, dtype=torch.int64, device=device)]
        kept_blocks.append(kept)
        if end < n:
            hit = _suppress(sorted_boxes[kept], sorted_boxes[end:], iou_threshold).any(dim=0)
            removed[end:] |= hit
    return order[torch.cat(kept_blocks)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS performed independently per category, in one :func:`nms` call.

    Class-offset trick: every box is shifted by ``idx * (span + 1)`` where ``span`` is the
    coordinate range of all boxes, so boxes of different categories can never overlap. (The
    boxes are first translated so the smallest coordinate is 0, which also keeps the trick
    correct for negative coordinates.) With very many categories and large coordinates the
    shift costs float precision: at 1e5 the float32 spacing is ~0.008 px.

    Args:
        boxes: ``Tensor[N, 4]``.
        scores: ``Tensor[N]``.
        idxs: ``Tensor[N]`` integer category (or image) of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        ``Tensor[K]`` int64 indices of kept boxes, sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.detach()
    if not boxes.is_floating_point():
        boxes = boxes.float()
    lo = boxes.min()
    span = boxes.max() - lo
    offsets = idxs.to(boxes.dtype) * (span + 1)
    return nms(boxes - lo + offsets[:, None], scores, iou_threshold)
