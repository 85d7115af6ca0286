"""RoIAlign against a per-sample-point loop oracle (torchvision / detectron2 numerics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.detection.ops import RoIAlign, roi_align


def bilinear_oracle(f: np.ndarray, y, x, h: int, w: int, T) -> np.ndarray:
    """``f``: [C, H, W]. torchvision's bilinear_interpolate, one point, all channels."""
    if y < T(-1.0) or y > T(h) or x < T(-1.0) or x > T(w):
        return np.zeros(f.shape[0], dtype=f.dtype)
    y = max(y, T(0.0))
    x = max(x, T(0.0))
    y_low = int(y)
    x_low = int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = T(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = T(x_low)
    else:
        x_high = x_low + 1
    ly = y - T(y_low)
    lx = x - T(x_low)
    hy = T(1.0) - ly
    hx = T(1.0) - lx
    return (
        hy * hx * f[:, y_low, x_low]
        + hy * lx * f[:, y_low, x_high]
        + ly * hx * f[:, y_high, x_low]
        + ly * lx * f[:, y_high, x_high]
    )


def roi_align_oracle(
    feat: torch.Tensor, rois: torch.Tensor, out_hw, scale: float, sr: int, aligned: bool
) -> torch.Tensor:
    """Loops over RoIs, bins and sample points; arithmetic in the feature's precision."""
    T = np.float64 if feat.dtype == torch.float64 else np.float32
    x = feat.detach().numpy()
    _, c, h, w = x.shape
    ph_n, pw_n = out_hw
    out = np.zeros((rois.shape[0], c, ph_n, pw_n), dtype=x.dtype)
    for k, r in enumerate(rois.tolist()):
        b = int(r[0])
        off = T(0.5) if aligned else T(0.0)
        sw = T(r[1]) * T(scale) - off
        sh = T(r[2]) * T(scale) - off
        ew = T(r[3]) * T(scale) - off
        eh = T(r[4]) * T(scale) - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, T(1.0)), max(rh, T(1.0))
        bh, bw = rh / T(ph_n), rw / T(pw_n)
        gh = sr if sr > 0 else math.ceil(rh / T(ph_n))
        gw = sr if sr > 0 else math.ceil(rw / T(pw_n))
        count = max(gh * gw, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = np.zeros(c, dtype=x.dtype)
                for iy in range(gh):
                    yy = sh + T(ph) * bh + T(iy + 0.5) * bh / T(gh)
                    for ix in range(gw):
                        xx = sw + T(pw) * bw + T(ix + 0.5) * bw / T(gw)
                        acc += bilinear_oracle(x[b], yy, xx, h, w, T)
                out[k, :, ph, pw] = acc / T(count)
    return torch.from_numpy(out)


def make_rois(gen: torch.Generator, k: int, n: int, img_h: float, img_w: float) -> torch.Tensor:
    """Random RoIs in image pixels, many partly (or wholly) outside the image, some tiny."""
    x1 = torch.rand(k, generator=gen, dtype=torch.float64) * (img_w + 40) - 30
    y1 = torch.rand(k, generator=gen, dtype=torch.float64) * (img_h + 40) - 30
    bw = torch.rand(k, generator=gen, dtype=torch.float64) * img_w * 0.8
    bh = torch.rand(k, generator=gen, dtype=torch.float64) * img_h * 0.8
    bw[::5] *= 0.01  # tiny
    idx = torch.randint(0, n, (k,), generator=gen).double()
    return torch.stack((idx, x1, y1, x1 + bw, y1 + bh), dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3, 0, -1])
@pytest.mark.parametrize("out_hw", [(2, 2), (3, 4)])
def test_roi_align_matches_oracle_float64(aligned: bool, sampling_ratio: int, out_hw) -> None:
    gen = torch.Generator().manual_seed(sampling_ratio + 7 * out_hw[1] + int(aligned))
    feat = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    scale = 0.25
    rois = make_rois(gen, 12, 2, 9 / scale, 11 / scale)
    got = roi_align(feat, rois, out_hw, scale, sampling_ratio, aligned)
    want = roi_align_oracle(feat, rois, out_hw, scale, sampling_ratio, aligned)
    assert got.shape == (12, 3, *out_hw) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_oracle_float32(aligned: bool) -> None:
    gen = torch.Generator().manual_seed(42)
    feat = torch.randn(1, 4, 12, 10, generator=gen)
    rois = make_rois(gen, 15, 1, 24, 20)
    for sr in (2, -1):
        got = roi_align(feat, rois.float(), 3, 0.5, sr, aligned)
        want = roi_align_oracle(feat, rois.float(), (3, 3), 0.5, sr, aligned)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_roi_align_constant_map_and_known_values() -> None:
    feat = torch.full((1, 2, 8, 8), 3.0, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]], dtype=torch.float64)
    out = roi_align(feat, rois, 2, 1.0, 2, aligned=True)
    torch.testing.assert_close(out, torch.full((1, 2, 2, 2), 3.0, dtype=torch.float64))
    # a ramp along x: aligned=True samples at continuous x - 0.5, i.e. pixel centres
    ramp = torch.arange(8, dtype=torch.float64).repeat(1, 1, 8, 1)
    out = roi_align(ramp, torch.tensor([[0, 2.0, 0.0, 6.0, 8.0]]).double(), (1, 2), 1.0, 1, True)
    # bins [2,4) and [4,6) sampled at x = 3 and 5, minus 0.5 -> 2.5 and 4.5
    assert out.flatten().tolist() == pytest.approx([2.5, 4.5])


def test_roi_align_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.6, 4.1, 3.2], [1, -1.0, 2.0, 7.5, 6.9], [0, 2.2, 1.1, 2.9, 1.6]],
        dtype=torch.float64,
    )
    for sr, aligned in ((2, False), (-1, True), (1, True)):
        assert torch.autograd.gradcheck(
            lambda f, s=sr, a=aligned: roi_align(f, rois, (2, 3), 1.0, s, a), (feat,)
        )


def test_roi_align_empty_rois() -> None:
    feat = torch.randn(1, 3, 5, 5, requires_grad=True)
    out = roi_align(feat, torch.zeros(0, 5), (2, 3), 1.0, 2)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert feat.grad is not None and torch.all(feat.grad == 0)
    assert roi_align(feat, [torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


def test_roi_align_noncontiguous_and_list_format() -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 7, 4, generator=gen, dtype=torch.float64)
    feat = base.permute(0, 3, 1, 2)  # [2, 4, 6, 7], channels-last strides
    assert not feat.is_contiguous()
    rois = make_rois(gen, 8, 2, 12, 14)
    wide = torch.cat((rois, torch.zeros_like(rois)), dim=1)[:, :5]  # non-contiguous view
    assert not wide.is_contiguous()
    got = roi_align(feat, wide, 2, 0.5, 2, True)
    want = roi_align_oracle(feat.contiguous(), rois, (2, 2), 0.5, 2, True)
    torch.testing.assert_close(got, want)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(rois[:, 0], stable=True)
    torch.testing.assert_close(roi_align(feat, boxes, 2, 0.5, 2, True), want[order])
    mod = RoIAlign((2, 2), 0.5, 2, True)
    torch.testing.assert_close(mod(feat, wide), want)
    assert "aligned=True" in repr(mod)
