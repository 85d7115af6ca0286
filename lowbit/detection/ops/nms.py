"""Non-maximum suppression in PyTorch (with an optional C kernel for float32 CPU boxes).

Semantics (same as torchvision's ``nms``): boxes are visited in order of decreasing score; a
box is kept unless a box kept before it overlaps it with ``IoU > iou_threshold`` (strictly
greater). Equal scores are visited in index order (stable sort), so ties are deterministic.

Implementation (blocked greedy, vectorised): the score-sorted boxes are cut into blocks of
``_BLOCK``. For each block, the boxes not yet suppressed are compared with each other (one
``[c, c]`` IoU matrix, packed into one bitmask per box as in torchvision's CUDA kernel) and the
greedy pass inside the block runs over those bitmasks with Python integers; then the boxes
kept in the block suppress all later boxes in one vectorised ``[kept, N - end]`` IoU test.
IoU is thus only ever computed for rows of kept boxes (O(K·N), not O(N²)), and the Python
loop is over boxes of one block, never over matrix elements. Float32 CPU boxes take the same
greedy pass as one C loop instead when the kernel of :mod:`._nms_native` is built (the same
float32 operations in the same order, so the same boxes are kept; about 10× faster on the
RPN's few hundred proposals); ``LOWBIT_NATIVE=0`` keeps the torch path.

Dtypes and the threshold: IoU is computed in float32 for float16 / bfloat16 boxes (their
areas overflow float16: torchvision's CPU kernel accumulates half in float too) and in float64
for integer boxes (exact for coordinates below 2**26); float32 / float64 boxes as they are.
The comparison ``IoU > iou_threshold`` uses the threshold as the Python float (a double) it
was given, like torchvision's CPU kernel (``ovr > iou_threshold`` with a ``double``), not
the threshold rounded to float32 (torchvision's CUDA kernel): a float32 IoU ``x`` is compared
as ``x > t`` in exact arithmetic, implemented as ``x > t32`` with ``t32`` the largest float32
not above ``t`` (for float32 ``x`` the two tests are equivalent).

Non-finite input (a defined result, never an error, so a diverging detector reaches the
trainer's loss check): a box with a NaN or infinite coordinate has IoU 0 with every box (as
in :func:`~lowbit.detection.ops.box_iou`), so it never suppresses and is never suppressed;
NaN scores are ordered as ``torch.sort(descending=True)`` orders them (first, like
torchvision), ``±inf`` scores as numbers. A NaN or negative ``iou_threshold`` raises
``ValueError`` (below 0, IoU 0 would suppress disjoint boxes).

:func:`multiclass_nms` is the single-stage detectors' (SSD, YOLOv3) per-image post-processing
around :func:`batched_nms`: score threshold, per-class and per-image caps, NMS, final top-k.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lowbit.detection.ops import _nms_native

__all__ = ["batched_nms", "check_postprocess_caps", "multiclass_nms", "nms"]

_BLOCK = 256  # boxes per block; also bounds the later-box test to _BLOCK * N temporaries
_PER_CLASS_ABOVE = 1000  # batched_nms: one pass with a category test up to here, then per class


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32 if dtype.is_floating_point else torch.float64


def _threshold_for(dtype: torch.dtype, iou_threshold: float) -> float:
    """The threshold ``t'`` in ``dtype`` such that ``x > t'`` iff ``x > iou_threshold`` exactly
    for every ``x`` of ``dtype``: the largest value of ``dtype`` not above the double."""
    t = float(iou_threshold)
    if dtype != torch.float32 or math.isinf(t):
        return t
    t32 = np.float32(t)
    if float(t32) > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return float(t32)


@torch.no_grad()
def _suppress(
    rows: Tensor,
    cols: Tensor,
    iou_threshold: float,
    row_idx: Tensor | None = None,
    col_idx: Tensor | None = None,
) -> Tensor:
    """Bool ``[R, C]``: ``IoU(rows[r], cols[c]) > iou_threshold`` (and the same category when
    ``row_idx`` / ``col_idx`` are given), computed in place. ``iou_threshold`` is already the
    dtype-exact threshold of :func:`_threshold_for`. Boxes are finite here (see :func:`_nms`)."""
    x1, y1, x2, y2 = cols.unbind(1)
    rx1, ry1, rx2, ry2 = (t[:, None] for t in rows.unbind(1))
    iw = torch.minimum(rx2, x2).sub_(torch.maximum(rx1, x1)).clamp_(min=0)
    ih = torch.minimum(ry2, y2).sub_(torch.maximum(ry1, y1)).clamp_(min=0)
    inter = iw.mul_(ih)
    union = ((rx2 - rx1) * (ry2 - ry1)) + ((x2 - x1) * (y2 - y1)) - inter
    # Zero union (two degenerate boxes): IoU is 0, never suppresses (torchvision gets NaN,
    # which compares False as well).
    hit = inter.div_(union) > iou_threshold
    if row_idx is not None and col_idx is not None:
        hit &= row_idx[:, None] == col_idx[None, :]
    return hit


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``Tensor[N, 4]`` ``(x1, y1, x2, y2)``, any real dtype (see the module docstring
            for the dtype IoU is computed in).
        scores: ``Tensor[N]``.
        iou_threshold: a box is suppressed by a higher-scored kept box when their
            IoU is strictly greater than this (compared as a double).

    Returns:
        ``Tensor[K]`` int64 indices of the kept boxes, sorted by decreasing score (ties: lower
        index first). Empty input gives an empty int64 tensor on the boxes' device.

    Raises:
        ValueError: wrong shapes, or a NaN or negative ``iou_threshold``.
    """
    return _nms(boxes, scores, iou_threshold, None)


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None) -> Tensor:
    t = float(iou_threshold)
    if math.isnan(t) or t < 0:
        raise ValueError(f"nms: iou_threshold must be a number >= 0, got {iou_threshold}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be Tensor[{boxes.shape[0]}], got {tuple(scores.shape)}")
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(f"idxs must be Tensor[{boxes.shape[0]}], got {tuple(idxs.shape)}")
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    sorted_boxes = boxes.detach()[order]
    sorted_boxes = sorted_boxes.to(_work_dtype(sorted_boxes.dtype))
    thr = _threshold_for(sorted_boxes.dtype, iou_threshold)
    sorted_idx = None if idxs is None else idxs.detach().to(device)[order]
    if sorted_boxes.is_floating_point():
        finite = torch.isfinite(sorted_boxes).all(dim=1)
        if not bool(finite.all()):
            # A non-finite box becomes the empty box (0, 0, 0, 0): its IoU with any box is 0
            # or 0/0, never above a threshold >= 0, so it neither suppresses nor is
            # suppressed. (One isfinite pass here instead of a mask in every IoU block.)
            sorted_boxes = torch.where(finite[:, None], sorted_boxes, 0.0)

    pos = _nms_native.greedy(sorted_boxes, thr, sorted_idx)  # the same pass in C, when built
    if pos is not None:
        return order[pos]

    def cls(sel: Tensor | slice) -> Tensor | None:
        return None if sorted_idx is None else sorted_idx[sel]

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
            _suppress(cand_boxes, cand_boxes, thr, cls(cand), cls(cand)).cpu().numpy(),
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
            hit = _suppress(
                sorted_boxes[kept], sorted_boxes[end:], thr, cls(kept), cls(slice(end, None))
            ).any(dim=0)
            removed[end:] |= hit
    return order[torch.cat(kept_blocks)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS performed independently per category, in one pass.

    Same result as running :func:`nms` on each category and merging the kept indices by
    decreasing score (ties: lower index first). Implemented without torchvision's
    coordinate-offset trick, so no coordinate is shifted and no float precision is lost,
    whatever the number of categories or the size of the coordinates: up to 1000 boxes one
    pass whose suppression test requires equal categories, above that one :func:`nms` per
    category (as torchvision's CPU path does for large inputs). Dtypes, threshold and
    non-finite boxes as :func:`nms`.

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
    if boxes.shape[0] <= _PER_CLASS_ABOVE:
        return _nms(boxes, scores, iou_threshold, idxs)
    # Many boxes: one nms per category costs sum_c K_c * N_c IoUs instead of K * N.
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(f"idxs must be Tensor[{boxes.shape[0]}], got {tuple(idxs.shape)}")
    idxs = idxs.to(boxes.device)
    kept = []
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c).flatten()
        kept.append(members[_nms(boxes[members], scores[members], iou_threshold, None)])
    keep = torch.sort(torch.cat(kept)).values  # index order, so that the stable sort below
    order = torch.sort(scores.detach()[keep], descending=True, stable=True).indices
    return keep[order]  # breaks score ties by index, as nms does


def check_postprocess_caps(
    topk_candidates: int, detections_per_img: int, pre_nms_top_n: int | None
) -> None:
    """Raise ``ValueError`` naming the option unless the caps of :func:`multiclass_nms` are
    whole numbers ``>= 1`` (``pre_nms_top_n`` may be ``None``)."""
    caps = {
        "topk_candidates": topk_candidates,
        "detections_per_img": detections_per_img,
        "pre_nms_top_n": pre_nms_top_n,
    }
    for name, v in caps.items():
        if v is None and name == "pre_nms_top_n":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            extra = " or None" if name == "pre_nms_top_n" else ""
            raise ValueError(f"{name} must be an int >= 1{extra}, got {v!r}")


@torch.no_grad()
def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    score_thresh: float,
    nms_thresh: float,
    topk_candidates: int,
    detections_per_img: int,
    pre_nms_top_n: int | None = None,
) -> dict[str, Tensor]:
    """Pre-NMS threshold and caps, per-class NMS and final top-k for one image.

    Order: keep scores strictly above ``score_thresh``; per class keep the
    ``topk_candidates`` highest; over all classes keep the ``pre_nms_top_n`` highest
    (``None``: no per-image cap); per-class NMS; the ``detections_per_img`` highest survivors.
    So NMS never sees more than ``min(C topk_candidates, pre_nms_top_n)`` boxes, however flat
    the scores of an untrained model are. Ties at a cap: ``torch.topk``'s choice.

    Args:
        boxes: ``Tensor[P, 4]`` xyxy (shared by all classes) or ``Tensor[P, C, 4]``.
        scores: ``Tensor[P, C]`` per foreground class (column ``c`` is label ``c``).
        score_thresh: pre-NMS score threshold (strict).
        nms_thresh: IoU above which a lower-scored box of the same class is suppressed.
        topk_candidates: per-class cap before NMS (``>= 1``).
        detections_per_img: cap on the output (``>= 1``).
        pre_nms_top_n: per-image cap before NMS, over all classes (``>= 1`` or ``None``).

    Returns:
        ``boxes float32[D, 4]``, ``labels int64[D]`` (0-based), ``scores float32[D]`` sorted
        decreasing, ``D <= detections_per_img``; scores strictly above ``score_thresh``.
    """
    check_postprocess_caps(topk_candidates, detections_per_img, pre_nms_top_n)
    c = scores.shape[1]
    all_boxes, all_scores, all_labels = [], [], []
    for k in range(c):
        s = scores[:, k]
        keep = torch.nonzero(s > score_thresh).flatten()
        if keep.numel() > topk_candidates:
            keep = keep[s[keep].topk(topk_candidates).indices]
        b = boxes[keep] if boxes.dim() == 2 else boxes[keep, k]
        all_boxes.append(b)
        all_scores.append(s[keep])
        all_labels.append(torch.full_like(keep, k))
    b = torch.cat(all_boxes).float()
    s = torch.cat(all_scores).float()
    lab = torch.cat(all_labels)
    if pre_nms_top_n is not None and s.numel() > pre_nms_top_n:
        top = s.topk(pre_nms_top_n).indices
        b, s, lab = b[top], s[top], lab[top]
    keep = batched_nms(b, s, lab, nms_thresh)[:detections_per_img]
    return {"boxes": b[keep].contiguous(), "labels": lab[keep], "scores": s[keep]}
