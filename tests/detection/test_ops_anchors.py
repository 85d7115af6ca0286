"""AnchorGenerator against hand-computed anchors."""

from __future__ import annotations

import pytest
import torch

from lowbit.detection.ops import AnchorGenerator, make_base_anchors

# sizes (32,), ratios (0.5, 1, 2): w = 32 / sqrt(r), h = 32 * sqrt(r), halves rounded:
#   r=0.5: w/2 = 22.627 -> 23, h/2 = 11.314 -> 11;  r=1: 16, 16;  r=2: 11, 23
BASE_32 = [
    [-23.0, -11.0, 23.0, 11.0],
    [-16.0, -16.0, 16.0, 16.0],
    [-11.0, -23.0, 11.0, 23.0],
]


def test_base_anchors_by_hand() -> None:
    assert make_base_anchors((32,), (0.5, 1.0, 2.0)).tolist() == BASE_32
    # ratio-major, then size: r=1 with sizes 8, 45 (45/2 = 22.5 rounds half to even -> 22)
    got = make_base_anchors((8, 45), (1.0, 4.0))
    assert got.tolist() == [
        [-4.0, -4.0, 4.0, 4.0],
        [-22.0, -22.0, 22.0, 22.0],
        [-2.0, -8.0, 2.0, 8.0],  # r=4: w = 8 / 2 = 4, h = 16
        [-11.0, -45.0, 11.0, 45.0],  # w/2 = 11.25 -> 11, h/2 = 45
    ]


def test_grid_anchors_by_hand() -> None:
    gen = AnchorGenerator(sizes=(32,), aspect_ratios=(0.5, 1.0, 2.0), stride=16)
    assert gen.num_anchors_per_location == 3
    feat = torch.zeros(2, 7, 2, 3)  # H=2, W=3
    anchors = gen(feat)
    assert anchors.shape == (2 * 3 * 3, 4)
    expected = []
    for y in range(2):  # location-major: row, then column, then anchor
        for x in range(3):
            for b in BASE_32:
                expected.append([b[0] + 16 * x, b[1] + 16 * y, b[2] + 16 * x, b[3] + 16 * y])
    assert anchors.tolist() == expected
    # a few rows written out: cell (y=1, x=2), anchor 1 is row (1*3+2)*3+1 = 16
    assert anchors[16].tolist() == [16.0, 0.0, 48.0, 32.0]
    assert anchors[0].tolist() == [-23.0, -11.0, 23.0, 11.0]


def test_rectangular_stride_dtype_device() -> None:
    gen = AnchorGenerator(sizes=(10,), aspect_ratios=(1.0,), stride=(8, 4))
    a = gen(torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    assert a.dtype == torch.float64
    assert a.tolist() == [
        [-5.0, -5.0, 5.0, 5.0],
        [-1.0, -5.0, 9.0, 5.0],
        [-5.0, 3.0, 5.0, 13.0],
        [-1.0, 3.0, 9.0, 13.0],
    ]
    assert gen.grid_anchors((0, 5)).shape == (0, 4)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        AnchorGenerator(sizes=(), aspect_ratios=(1.0,))
    with pytest.raises(ValueError):
        AnchorGenerator(sizes=(16,), aspect_ratios=(0.0,))
    with pytest.raises(ValueError):
        AnchorGenerator(sizes=(16,), aspect_ratios=(1.0,), stride=0)
