"""PSRoIPool against a per-bin loop oracle of R-FCN's Caffe PSROIPoolingLayer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.detection.ops import PSRoIPool, ps_roi_pool


def c_round(v: float) -> float:
    """C's round(): half away from zero (Python's round() is half to even)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def ps_roi_pool_oracle(feat: torch.Tensor, rois: torch.Tensor, k: int, scale: float):
    """Loops over RoIs, output channels and bins, arithmetic in the feature's precision."""
    T = np.float64 if feat.dtype == torch.float64 else np.float32
    x = feat.detach().numpy()
    _, c, h, w = x.shape
    c_out = c // (k * k)
    out = np.zeros((rois.shape[0], c_out, k, k), dtype=x.dtype)
    for r_i, r in enumerate(rois.tolist()):
        b = int(r[0])
        r = [float(T(v)) for v in r]
        start_w = T(c_round(r[1])) * T(scale)
        start_h = T(c_round(r[2])) * T(scale)
        end_w = T(c_round(r[3]) + 1.0) * T(scale)
        end_h = T(c_round(r[4]) + 1.0) * T(scale)
        roi_w = max(end_w - start_w, T(0.1))
        roi_h = max(end_h - start_h, T(0.1))
        bin_h = roi_h / T(k)
        bin_w = roi_w / T(k)
        for co in range(c_out):
            for i in range(k):
                for j in range(k):
                    hs = math.floor(T(i) * bin_h + start_h)
                    ws = math.floor(T(j) * bin_w + start_w)
                    he = math.ceil(T(i + 1) * bin_h + start_h)
                    we = math.ceil(T(j + 1) * bin_w + start_w)
                    hs, he = min(max(hs, 0), h), min(max(he, 0), h)
                    ws, we = min(max(ws, 0), w), min(max(we, 0), w)
                    if he <= hs or we <= ws:
                        continue  # empty bin -> 0
                    ch = (co * k + i) * k + j
                    total = 0.0
                    for yy in range(hs, he):
                        for xx in range(ws, we):
                            total += float(x[b, ch, yy, xx])
                    out[r_i, co, i, j] = total / ((he - hs) * (we - ws))
    return torch.from_numpy(out)


def make_rois(gen: torch.Generator, n_rois: int, n: int, img_h: float, img_w: float):
    x1 = torch.rand(n_rois, generator=gen, dtype=torch.float64) * (img_w + 30) - 20
    y1 = torch.rand(n_rois, generator=gen, dtype=torch.float64) * (img_h + 30) - 20
    bw = torch.rand(n_rois, generator=gen, dtype=torch.float64) * img_w * 0.7
    bh = torch.rand(n_rois, generator=gen, dtype=torch.float64) * img_h * 0.7
    bw[::4] *= 0.02
    idx = torch.randint(0, n, (n_rois,), generator=gen).double()
    return torch.stack((idx, x1, y1, x1 + bw, y1 + bh), dim=1)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 16])
def test_ps_roi_pool_matches_oracle_float64(k: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(k * 10 + int(1 / scale))
    feat = torch.randn(2, 2 * k * k, 9, 12, generator=gen, dtype=torch.float64)
    rois = make_rois(gen, 10, 2, 9 / scale, 12 / scale)
    got = ps_roi_pool(feat, rois, k, scale)
    assert got.shape == (10, 2, k, k) and got.dtype == torch.float64
    torch.testing.assert_close(got, ps_roi_pool_oracle(feat, rois, k, scale))


def test_ps_roi_pool_matches_oracle_float32() -> None:
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn(1, 3 * 9, 20, 16, generator=gen)
    rois = make_rois(gen, 20, 1, 20 * 16, 16 * 16).float()
    got = ps_roi_pool(feat, rois, 3, 1 / 16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ps_roi_pool_oracle(feat, rois, 3, 1 / 16))


def test_ps_roi_pool_channel_mapping_and_rounding() -> None:
    k, c_out = 3, 2
    # channel c is the constant c, so every non-empty bin reads its channel index
    feat = torch.arange(c_out * k * k, dtype=torch.float64)[None, :, None, None].expand(1, -1, 6, 6)
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 5.0]], dtype=torch.float64)
    out = ps_roi_pool(feat, rois, k, 1.0)
    want = torch.tensor(
        [[[(co * k + i) * k + j for j in range(k)] for i in range(k)] for co in range(c_out)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(out[0], want)
    # round half away from zero: x1 = 0.5 -> 1, x2 = 2.5 -> 3, roi covers columns 1..3;
    # a bin (1 bin, k=1) averages columns 1, 2, 3 of the ramp 0..5 -> 2
    ramp = torch.arange(6, dtype=torch.float64).repeat(1, 1, 4, 1)
    out = ps_roi_pool(ramp, torch.tensor([[0, 0.5, 0.0, 2.5, 3.0]]).double(), 1, 1.0)
    assert out.item() == pytest.approx(2.0)
    # half-to-even would give x1 = 0, x2 = 2 -> columns 0..2 -> 1; make sure we are not that
    out = ps_roi_pool(ramp, torch.tensor([[0, -0.5, 0.0, 1.5, 3.0]]).double(), 1, 1.0)
    # x1 -> -1 (clipped to 0), x2 -> 2: columns 0..2 -> mean 1
    assert out.item() == pytest.approx(1.0)


def test_ps_roi_pool_empty_bins_are_zero() -> None:
    feat = torch.ones(1, 4, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 100.0, 100.0, 120.0, 130.0], [0, -40.0, -40.0, -30.0, -30.0]])
    assert torch.all(ps_roi_pool(feat, rois.double(), 2, 1.0) == 0)


def test_ps_roi_pool_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 2 * 4, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.6, 4.1, 3.2], [1, -1.0, 2.0, 7.5, 6.9], [0, 2.2, 1.1, 2.9, 1.6]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda f: ps_roi_pool(f, rois, 2, 1.0), (feat,))
    assert torch.autograd.gradcheck(lambda f: ps_roi_pool(f, rois, 2, 0.5), (feat,))


def test_ps_roi_pool_empty_noncontiguous_module() -> None:
    feat = torch.randn(1, 18, 4, 4, requires_grad=True)
    out = ps_roi_pool(feat, torch.zeros(0, 5), 3, 1.0)
    assert out.shape == (0, 2, 3, 3)
    out.sum().backward()
    assert torch.all(feat.grad == 0)
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(2, 7, 9, 8, generator=gen, dtype=torch.float64)
    nc = base.permute(0, 3, 1, 2)  # [2, 8, 7, 9]
    rois = make_rois(gen, 6, 2, 14, 18)
    wide = torch.cat((rois, rois), dim=1)[:, :5]
    assert not nc.is_contiguous() and not wide.is_contiguous()
    want = ps_roi_pool_oracle(nc.contiguous(), rois, 2, 0.5)
    torch.testing.assert_close(ps_roi_pool(nc, wide, 2, 0.5), want)
    torch.testing.assert_close(PSRoIPool(2, 0.5)(nc, wide), want)
    with pytest.raises(ValueError):
        ps_roi_pool(torch.zeros(1, 5, 3, 3), rois, 2)
