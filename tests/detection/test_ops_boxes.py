"""Box utilities and BoxCoder against loop oracles and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.detection.ops import (
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from tests.detection._oracles import iou_oracle


def random_boxes(n: int, gen: torch.Generator, span: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * span - 10
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40
    return torch.cat((xy, xy + wh), dim=1)


def test_box_area() -> None:
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [-1.0, -2.0, 1.5, 0.0]])
    assert box_area(b).tolist() == [6.0, 0.0, 5.0]


def test_box_iou_matches_loop_oracle() -> None:
    gen = torch.Generator().manual_seed(0)
    a = random_boxes(17, gen)
    b = random_boxes(11, gen)
    b[3] = a[5]  # identical pair -> 1
    b[4] = torch.tensor([500.0, 500.0, 510.0, 510.0], dtype=torch.float64)  # disjoint -> 0
    b[5] = torch.tensor([3.0, 3.0, 3.0, 3.0], dtype=torch.float64)  # degenerate
    got = box_iou(a, b)
    assert got.shape == (17, 11)
    for i in range(17):
        for j in range(11):
            assert got[i, j].item() == pytest.approx(iou_oracle(a[i].tolist(), b[j].tolist()))
    assert got[5, 3].item() == pytest.approx(1.0)


def test_box_iou_degenerate_pair_is_zero_not_nan() -> None:
    p = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(p, p).item() == 0.0


def test_box_iou_empty_and_noncontiguous() -> None:
    e = torch.zeros(0, 4)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_iou(e, b).shape == (0, 1)
    assert box_iou(b, e).shape == (1, 0)
    gen = torch.Generator().manual_seed(1)
    a = random_boxes(9, gen)
    nc = a.t().contiguous().t()  # same values, column-major strides
    assert not nc.is_contiguous()
    torch.testing.assert_close(box_iou(nc, nc[::2]), box_iou(a, a[::2].contiguous()))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_box_iou_properties(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = random_boxes(8, gen)
    b = random_boxes(6, gen)
    m = box_iou(a, b)
    assert torch.all((m >= 0) & (m <= 1 + 1e-12))
    torch.testing.assert_close(m.t(), box_iou(b, a))


def test_clip_boxes_to_image() -> None:
    b = torch.tensor([[-5.0, -1.0, 20.0, 7.0], [3.0, 4.0, 5.0, 6.0]])
    got = clip_boxes_to_image(b, (6, 10))  # (height, width)
    assert got.tolist() == [[0.0, 0.0, 10.0, 6.0], [3.0, 4.0, 5.0, 6.0]]
    assert clip_boxes_to_image(torch.zeros(0, 4), (6, 10)).shape == (0, 4)
    batched = torch.stack((b, b))
    assert clip_boxes_to_image(batched, (6, 10)).shape == (2, 2, 4)


def test_remove_small_boxes() -> None:
    b = torch.tensor(
        [[0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 5.0, 1.9], [1.0, 1.0, 4.0, 4.0]]
    )
    assert remove_small_boxes(b, 2.0).tolist() == [1, 3]
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).dtype == torch.int64


def test_box_coder_encode_by_hand() -> None:
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[2.0, 4.0, 22.0, 24.0]])
    # ref: w=10, h=20, c=(5, 10); gt: w=20, h=20, c=(12, 14)
    want = [10 * 7 / 10, 10 * 4 / 20, 5 * math.log(2.0), 5 * math.log(1.0)]
    assert coder.encode(gt, ref)[0].tolist() == pytest.approx(want)


box_st = st.tuples(
    st.floats(-500, 500), st.floats(-500, 500), st.floats(0.5, 400), st.floats(0.5, 400)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(box_st, box_st), min_size=1, max_size=8),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 5.0)]),
)
def test_box_coder_round_trip(pairs: list, weights: tuple) -> None:
    gt = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    ref = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    coder = BoxCoder(weights, bbox_xform_clip=math.log(1e4))
    codes = coder.encode(gt, ref)
    assert codes.shape == gt.shape
    back = coder.decode(codes, ref)
    torch.testing.assert_close(back, gt, rtol=1e-9, atol=1e-7)


def test_box_coder_decode_multiclass_layout_and_clip() -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    codes = torch.zeros(2, 12)
    codes[:, 4] = 0.5  # class 1 moves x by half a width
    codes[:, 10] = 100.0  # class 2 huge dw: clamped to log(1000/16)
    out = coder.decode(codes, ref)
    assert out.shape == (2, 12)
    torch.testing.assert_close(out[:, 0:4], ref)
    torch.testing.assert_close(out[0, 4:8], torch.tensor([2.0, 0.0, 6.0, 2.0]))
    w2 = (out[:, 10] - out[:, 8]) / (ref[:, 2] - ref[:, 0])
    torch.testing.assert_close(w2, torch.full((2,), 1000.0 / 16))
    assert coder.decode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_box_coder_noncontiguous_and_dtype() -> None:
    coder = BoxCoder()
    gen = torch.Generator().manual_seed(3)
    a = random_boxes(6, gen).float()
    b = a + 1.5
    nc = b.t().contiguous().t()
    codes = coder.encode(nc, a)
    assert codes.dtype == torch.float32
    torch.testing.assert_close(coder.decode(codes.t().contiguous().t(), a), b, atol=1e-4, rtol=0)
