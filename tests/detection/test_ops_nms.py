"""NMS against a greedy loop oracle."""

from __future__ import annotations

import pytest
import torch

from lowbit.detection.ops import batched_nms, nms
from tests.detection._oracles import iou_oracle


def nms_oracle(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Textbook greedy NMS: highest score first (ties: lower index), drop IoU > thr."""
    bl = boxes.tolist()
    sl = scores.tolist()
    order = sorted(range(len(bl)), key=lambda i: (-sl[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou_oracle(bl[i], bl[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def clustered_boxes(n: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    centres = torch.rand(max(n // 6, 1), 2, generator=gen, dtype=dtype) * 200
    pick = torch.randint(0, centres.shape[0], (n,), generator=gen)
    c = centres[pick] + torch.randn(n, 2, generator=gen, dtype=dtype) * 6
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 30 + 5
    return torch.cat((c - wh / 2, c + wh / 2), dim=1)


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("n", [1, 5, 60, 700])
def test_nms_matches_greedy_oracle(n: int, thr: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + int(thr * 10))
    boxes = clustered_boxes(n, gen)
    # quantised scores give many exact ties
    scores = torch.randint(0, max(n // 3, 2), (n,), generator=gen).double() / 7
    got = nms(boxes, scores, thr)
    assert got.dtype == torch.int64
    assert got.tolist() == nms_oracle(boxes, scores, thr)


def test_nms_float32_integer_boxes() -> None:
    gen = torch.Generator().manual_seed(5)
    boxes = clustered_boxes(300, gen).round().float()
    scores = torch.rand(300, generator=gen)
    assert nms(boxes, scores, 0.5).tolist() == nms_oracle(boxes, scores, 0.5)


def test_nms_threshold_is_strict_and_ties_are_stable() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    same = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)
    assert nms(same, torch.ones(4), 0.5).tolist() == [0]
    assert nms(same, torch.tensor([0.1, 0.5, 0.5, 0.2]), 0.5).tolist() == [1]


def test_nms_sorted_by_score() -> None:
    gen = torch.Generator().manual_seed(9)
    boxes = clustered_boxes(400, gen)
    scores = torch.rand(400, generator=gen, dtype=torch.float64)
    keep = nms(boxes, scores, 0.6)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


def test_nms_empty_and_noncontiguous() -> None:
    e = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert e.shape == (0,) and e.dtype == torch.int64
    e = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert e.shape == (0,) and e.dtype == torch.int64
    gen = torch.Generator().manual_seed(2)
    boxes = clustered_boxes(120, gen)
    scores = torch.rand(240, generator=gen, dtype=torch.float64)[::2]
    nc = boxes.t().contiguous().t()
    assert not nc.is_contiguous() and not scores.is_contiguous()
    assert nms(nc, scores, 0.5).tolist() == nms_oracle(boxes, scores, 0.5)


def batched_oracle(boxes, scores, idxs, thr) -> list[int]:
    keep: list[int] = []
    for c in sorted(set(idxs.tolist())):
        members = [i for i, v in enumerate(idxs.tolist()) if v == c]
        sub = nms_oracle(boxes[members], scores[members], thr)
        keep.extend(members[i] for i in sub)
    sl = scores.tolist()
    return sorted(keep, key=lambda i: (-sl[i], i))


@pytest.mark.parametrize("shift", [0.0, -300.0])
def test_batched_nms_matches_per_class_oracle(shift: float) -> None:
    gen = torch.Generator().manual_seed(11)
    boxes = clustered_boxes(400, gen) + shift  # negative coordinates too
    scores = torch.rand(400, generator=gen, dtype=torch.float64)
    idxs = torch.randint(0, 5, (400,), generator=gen)
    got = batched_nms(boxes, scores, idxs, 0.5)
    assert got.tolist() == batched_oracle(boxes, scores, idxs, 0.5)


def test_batched_nms_never_suppresses_across_classes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
