"""Every detection op in every dtype it accepts, against float64 loop oracles written here.

Dtypes: float16, bfloat16, float32, float64 and integer boxes. The oracles read the values the
tensors actually hold (``tensor.double().tolist()``), so the casts are not what is tested; the
ops' own arithmetic (done in float32 for half types, see their docstrings) is. Where a float32
computation can flip a discontinuous decision (an IoU right at the NMS threshold, a sample
point right at a map edge), the example is skipped with ``assume`` rather than loosened.

The regression tests at the top are the reproducers of issue 18 (torchvision's own cases).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lowbit.detection.ops import (
    BoxCoder,
    Matcher,
    batched_nms,
    box_area,
    box_iou,
    nms,
    ps_roi_pool,
    roi_align,
)

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALL = FLOATS + [torch.int32, torch.int64]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- float64 oracles


def iou64(a: list[float], b: list[float]) -> float:
    """IoU in Python floats; 0 for an empty union or any non-finite coordinate (the contract)."""
    if not all(math.isfinite(v) for v in a + b):
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def order64(scores: list[float]) -> list[int]:
    """Decreasing score, NaN first (torch.sort's descending order), ties by index."""
    return sorted(range(len(scores)), key=lambda i: (not math.isnan(scores[i]), -scores[i], i))


def nms64(boxes: list[list[float]], scores: list[float], thr: float, cls=None) -> list[int]:
    keep: list[int] = []
    for i in order64(scores):
        same = [j for j in keep if cls is None or cls[j] == cls[i]]
        if all(iou64(boxes[i], boxes[j]) <= thr for j in same):
            keep.append(i)
    return keep


def near_threshold(boxes: list[list[float]], thr: float, tol: float) -> bool:
    return any(abs(iou64(a, b) - thr) < tol for i, a in enumerate(boxes) for b in boxes[i + 1 :])


# ---------------------------------------------------------------- strategies


@st.composite
def boxes_of(draw, dtype: torch.dtype, n_max: int = 7, non_finite: bool = True):
    """Boxes ``Tensor[N, 4]`` of ``dtype``: clustered so that overlaps are common, some
    degenerate, and (float dtypes) sometimes a NaN / inf coordinate."""
    n = draw(st.integers(0, n_max))
    big = draw(st.sampled_from([10.0, 300.0, 1200.0]))
    rows = []
    for _ in range(n):
        x = draw(st.floats(0, big))
        y = draw(st.floats(0, big))
        w = draw(st.floats(0, big / 2))
        h = draw(st.floats(0, big / 2))
        rows.append([x, y, x + w, y + h])
    t = torch.tensor(rows, dtype=torch.float64).reshape(n, 4)
    if not dtype.is_floating_point:
        return t.round().to(dtype)
    t = t.to(dtype)
    if non_finite and n and draw(st.booleans()) and draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        j = draw(st.integers(0, 3))
        t[i, j] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return t


def wide(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype if dtype.is_floating_point else torch.int64


# ---------------------------------------------------------------- regression: issue 18


def test_box_iou_float16_is_not_zero() -> None:
    # torchvision test_iou_half: areas of these boxes overflow float16
    b = torch.tensor(
        [[285.3538, 185.5758, 1193.5110, 851.4551], [285.1472, 188.7374, 1192.4984, 851.0669]],
        dtype=torch.float16,
    )
    got = box_iou(b, b)
    bl = b.double().tolist()
    want = torch.tensor([[iou64(p, q) for q in bl] for p in bl])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got[0, 1] > 0.99


def test_nms_float16_keeps_one() -> None:
    # torchvision test_nms_float16
    boxes = torch.tensor(
        [
            [285.3538, 185.5758, 1193.5110, 851.4551],
            [285.1472, 188.7374, 1192.4984, 851.0669],
            [279.2440, 197.9812, 1189.4746, 849.2019],
        ]
    )
    scores = torch.tensor([0.6370, 0.7569, 0.3966])
    want = nms64(boxes.half().double().tolist(), scores.half().double().tolist(), 0.2)
    assert want == [1]
    assert nms(boxes.half(), scores.half(), 0.2).tolist() == want
    assert nms(boxes.bfloat16(), scores.bfloat16(), 0.2).tolist() == [1]


def test_box_area_int8_does_not_wrap() -> None:
    got = box_area(torch.tensor([[0, 0, 100, 100]], dtype=torch.int8))
    assert got.dtype == torch.int64 and got.tolist() == [100 * 100]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_non_finite_roi_is_zero_not_index_error(bad: float, sampling_ratio: int) -> None:
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    for col in range(1, 5):
        rois = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0], [0, 0.0, 0.0, 2.0, 2.0]])
        rois[1, col] = bad
        out = roi_align(x, rois, 2, sampling_ratio=sampling_ratio)
        assert torch.isfinite(out).all()
        assert torch.all(out[1] == 0)
        assert torch.all(out[0] > 0)  # the finite RoI is untouched
        ps = ps_roi_pool(x.expand(1, 4, 4, 4), rois, 2)
        assert torch.all(ps[1] == 0) and torch.all(ps[0] > 0)


def test_roi_and_ps_pool_bad_batch_index_is_value_error() -> None:
    x = torch.zeros(2, 4, 5, 5)
    for b in (2.0, -1.0, 0.5, math.nan):
        rois = torch.tensor([[b, 0.0, 0.0, 2.0, 2.0]])
        with pytest.raises(ValueError, match=r"roi_align: rois\[0, 0\]"):
            roi_align(x, rois, 2)
        with pytest.raises(ValueError, match=r"ps_roi_pool: rois\[0, 0\]"):
            ps_roi_pool(x, rois, 2)


def test_ps_roi_pool_rounds_like_c_round() -> None:
    # 0.49999997 is the float32 just below 0.5: C round() gives 0 (R-FCN's kernel: roi covers
    # columns 0..1, rows 0..1 of arange(16) 4x4 -> (0 + 1 + 4 + 5) / 4 = 2.5)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    v = torch.tensor(0.49999997, dtype=torch.float32)
    assert v.item() < 0.5
    out = ps_roi_pool(x, torch.stack((torch.tensor(0.0), v, *torch.tensor([0.0, 1, 1])))[None], 1)
    assert out.item() == 2.5
    assert c_round(Fraction(v.item())) == 0


def test_nms_threshold_compared_as_double() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    below = 0.49999999999  # rounds to 0.5 in float32; the IoU 0.5 is above it
    assert torch.tensor(below, dtype=torch.float32).item() == 0.5
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert nms(boxes.to(dt), scores, below).tolist() == [0], dt
        assert nms(boxes.to(dt), scores, 0.5).tolist() == [0, 1], dt
        assert nms(boxes.to(dt), scores, 0.5 + 1e-12).tolist() == [0, 1], dt
    for bad in (math.nan, -0.1):
        with pytest.raises(ValueError, match="iou_threshold must be a number >= 0"):
            nms(boxes, scores, bad)
        with pytest.raises(ValueError, match="iou_threshold must be a number >= 0"):
            batched_nms(boxes, scores, torch.tensor([0, 1]), bad)


def test_matcher_bfloat16_threshold_and_nan() -> None:
    q = torch.tensor([[0.69921875, math.nan, 0.2]], dtype=torch.bfloat16)
    m = Matcher(0.7, 0.3)
    # 0.699 < 0.7 (bf16(0.7) == 0.699 would call it a match); NaN never matches
    assert m(q).tolist() == [Matcher.BETWEEN_THRESHOLDS, -1, -1]
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(q).tolist() == [0, -1, -1]


# ---------------------------------------------------------------- properties


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(ALL))
def test_box_area_property(data, dtype: torch.dtype) -> None:
    b = data.draw(boxes_of(dtype))
    got = box_area(b)
    assert got.dtype == wide(dtype) and got.shape == (b.shape[0],)
    for v, r in zip(got.double().tolist(), b.double().tolist()):
        want = (r[2] - r[0]) * (r[3] - r[1])
        if math.isnan(want):
            assert math.isnan(v)
        elif dtype.is_floating_point:
            assert v == pytest.approx(want, rel=1e-6 if dtype != torch.float64 else 1e-15)
        else:
            assert v == want


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(ALL))
def test_box_iou_property(data, dtype: torch.dtype) -> None:
    a = data.draw(boxes_of(dtype))
    b = data.draw(boxes_of(dtype))
    got = box_iou(a, b)
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert got.dtype == want_dtype and got.shape == (a.shape[0], b.shape[0])
    assert not got.isnan().any()
    al, bl = a.double().tolist(), b.double().tolist()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for i, p in enumerate(al):
        for j, q in enumerate(bl):
            assert got[i, j].item() == pytest.approx(iou64(p, q), abs=tol), (p, q)


@SETTINGS
@given(
    data=st.data(),
    dtype=st.sampled_from(ALL),
    thr=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    batched=st.booleans(),
)
def test_nms_and_batched_nms_property(data, dtype: torch.dtype, thr: float, batched) -> None:
    b = data.draw(boxes_of(dtype, n_max=12))
    n = b.shape[0]
    sdtype = dtype if dtype.is_floating_point else torch.float32
    levels = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    scores = torch.tensor(levels, dtype=torch.float64).div(5).to(sdtype)  # many ties
    if dtype.is_floating_point and n and data.draw(st.booleans()):
        scores[data.draw(st.integers(0, n - 1))] = math.nan
    bl, sl = b.double().tolist(), scores.double().tolist()
    if dtype != torch.float64:
        assume(not near_threshold(bl, thr, 1e-5))
    if batched:
        cls = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        got = batched_nms(b, scores, torch.tensor(cls, dtype=torch.int64), thr)
        want = nms64(bl, sl, thr, cls)
    else:
        got = nms(b, scores, thr)
        want = nms64(bl, sl, thr)
    assert got.dtype == torch.int64
    assert got.tolist() == want


def roi_align64(
    feat: torch.Tensor,
    rois: list[list[float]],
    p: int,
    q: int,
    scale: float,
    sr: int,
    aligned: bool,
) -> tuple[torch.Tensor, bool]:
    """torchvision's RoIAlign in float64 loops; also says whether some sample point lies within
    1e-4 of a discontinuity (the map's -1 / H edge, an adaptive grid count's integer step),
    where a float32 implementation may legitimately land on the other side."""
    f = feat.double()
    _, c, h, w = f.shape
    out = torch.zeros(len(rois), c, p, q, dtype=torch.float64)
    edgy = False
    for k, r in enumerate(rois):
        if not all(math.isfinite(v) for v in r[1:]):
            continue
        bi = int(r[0])
        off = 0.5 if aligned else 0.0
        sx, sy = r[1] * scale - off, r[2] * scale - off
        rw, rh = r[3] * scale - off - sx, r[4] * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / p, rw / q
        if sr > 0:
            gh = gw = sr
        else:
            gh, gw = max(math.ceil(rh / p), 0), max(math.ceil(rw / q), 0)
            for v in (rh / p, rw / q):
                edgy |= abs(v - round(v)) < 1e-4
        cnt = max(gh * gw, 1)
        for i in range(p):
            for j in range(q):
                acc = torch.zeros(c, dtype=torch.float64)
                for iy in range(gh):
                    y = sy + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + j * bw + (ix + 0.5) * bw / gw
                        for v, lim in ((y, h), (x, w)):
                            edgy |= abs(v + 1) < 1e-4 or abs(v - lim) < 1e-4
                        if y < -1 or y > h or x < -1 or x > w:
                            continue
                        yy, xx = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
                        y0, x0 = int(math.floor(yy)), int(math.floor(xx))
                        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                        ly, lx = yy - y0, xx - x0
                        acc += (
                            (1 - ly) * (1 - lx) * f[bi, :, y0, x0]
                            + (1 - ly) * lx * f[bi, :, y0, x1]
                            + ly * (1 - lx) * f[bi, :, y1, x0]
                            + ly * lx * f[bi, :, y1, x1]
                        )
                out[k, :, i, j] = acc / cnt
    return out, edgy


EPS = {
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
    torch.float32: 2.0**-23,
    torch.float64: 2.0**-52,
}


@st.composite
def rois_of(draw, n_img: int, h: int, w: int, dtype: torch.dtype, span: float):
    k = draw(st.integers(0, 4))
    rows = []
    for _ in range(k):
        x1 = draw(st.floats(-2, w * span))
        y1 = draw(st.floats(-2, h * span))
        rows.append(
            [
                float(draw(st.integers(0, n_img - 1))),
                x1,
                y1,
                x1 + draw(st.floats(0, w * span)),
                y1 + draw(st.floats(0, h * span)),
            ]
        )
    t = torch.tensor(rows, dtype=torch.float64).reshape(k, 5)
    if not dtype.is_floating_point:
        return t.round().to(dtype)
    t = t.to(dtype)
    if k and draw(st.booleans()) and draw(st.booleans()):
        t[draw(st.integers(0, k - 1)), draw(st.integers(1, 4))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    return t


@SETTINGS
@given(
    data=st.data(),
    fdtype=st.sampled_from(FLOATS),
    rdtype=st.sampled_from(ALL),
    out=st.sampled_from([(1, 1), (2, 2), (2, 3)]),
    scale=st.sampled_from([1.0, 0.5]),
    sr=st.sampled_from([-1, 1, 2]),
    aligned=st.booleans(),
)
def test_roi_align_property(data, fdtype, rdtype, out, scale, sr, aligned) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    feat = torch.rand(2, 2, 5, 6, generator=gen, dtype=torch.float64).mul(2).sub(1).to(fdtype)
    rois = data.draw(rois_of(2, 5, 6, rdtype, 1 / scale))
    got = roi_align(feat, rois, out, scale, sr, aligned)
    assert got.dtype == fdtype and got.shape == (rois.shape[0], 2, *out)
    want, edgy = roi_align64(feat, rois.double().tolist(), *out, scale, sr, aligned)
    assume(fdtype == torch.float64 or not edgy)
    assert torch.isfinite(got).all()
    tol = 8 * EPS[fdtype] if fdtype != torch.float64 else 1e-12
    torch.testing.assert_close(got.double(), want, rtol=0, atol=max(tol, 1e-6))


def c_round(x: Fraction) -> int:
    """C's round() in exact arithmetic: halves away from zero."""
    a = abs(x)
    r = math.floor(a + Fraction(1, 2))
    return r if x >= 0 else -r


def ps_roi_pool64(feat: torch.Tensor, rois: list[list[float]], k: int, scale: float):
    """R-FCN's PSROIPoolingLayer forward in exact / float64 arithmetic."""
    f = feat.double()
    _, c, h, w = f.shape
    c_out = c // (k * k)
    out = torch.zeros(len(rois), c_out, k, k, dtype=torch.float64)
    for n, r in enumerate(rois):
        if not all(math.isfinite(v) for v in r[1:]):
            continue
        b = int(r[0])
        sx = c_round(Fraction(r[1])) * scale
        sy = c_round(Fraction(r[2])) * scale
        ex = (c_round(Fraction(r[3])) + 1) * scale
        ey = (c_round(Fraction(r[4])) + 1) * scale
        rw, rh = max(ex - sx, 0.1), max(ey - sy, 0.1)
        bw, bh = rw / k, rh / k
        for i in range(k):
            for j in range(k):
                hs = min(max(math.floor(i * bh + sy), 0), h)
                he = min(max(math.ceil((i + 1) * bh + sy), 0), h)
                ws = min(max(math.floor(j * bw + sx), 0), w)
                we = min(max(math.ceil((j + 1) * bw + sx), 0), w)
                for co in range(c_out):
                    ch = (co * k + i) * k + j
                    if he > hs and we > ws:
                        out[n, co, i, j] = f[b, ch, hs:he, ws:we].mean()
    return out


@SETTINGS
@given(
    data=st.data(),
    fdtype=st.sampled_from(FLOATS),
    rdtype=st.sampled_from(ALL),
    k=st.sampled_from([1, 2, 4]),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
)
def test_ps_roi_pool_property(data, fdtype, rdtype, k, scale) -> None:
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    feat = torch.rand(2, 2 * k * k, 5, 6, generator=gen, dtype=torch.float64).to(fdtype)
    rois = data.draw(rois_of(2, 5, 6, rdtype, 1 / scale))
    got = ps_roi_pool(feat, rois, k, scale)
    assert got.dtype == fdtype and got.shape == (rois.shape[0], 2, k, k)
    want = ps_roi_pool64(feat, rois.double().tolist(), k, scale)
    tol = 2 * EPS[fdtype] if fdtype != torch.float64 else 1e-12
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)


def encode64(g: list[float], r: list[float], wts) -> list[float]:
    wx, wy, ww, wh = wts
    rw, rh = r[2] - r[0], r[3] - r[1]
    gw, gh = g[2] - g[0], g[3] - g[1]
    rcx, rcy = r[0] + rw / 2, r[1] + rh / 2
    gcx, gcy = g[0] + gw / 2, g[1] + gh / 2
    return [
        wx * (gcx - rcx) / rw,
        wy * (gcy - rcy) / rh,
        ww * math.log(gw / rw),
        wh * math.log(gh / rh),
    ]


def decode64(d: list[float], r: list[float], wts, clip: float) -> list[float]:
    wx, wy, ww, wh = wts
    rw, rh = r[2] - r[0], r[3] - r[1]
    cx, cy = r[0] + rw / 2 + d[0] / wx * rw, r[1] + rh / 2 + d[1] / wy * rh
    pw, ph = math.exp(min(d[2] / ww, clip)) * rw, math.exp(min(d[3] / wh, clip)) * rh
    return [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]


@st.composite
def proper_boxes(draw, n: int, dtype: torch.dtype):
    rows = []
    for _ in range(n):
        x, y = draw(st.floats(0, 500)), draw(st.floats(0, 500))
        rows.append([x, y, x + draw(st.floats(4, 200)), y + draw(st.floats(4, 200))])
    t = torch.tensor(rows, dtype=torch.float64).reshape(n, 4)
    return t.round().to(dtype) if not dtype.is_floating_point else t.to(dtype)


@SETTINGS
@given(
    data=st.data(),
    dtype=st.sampled_from(ALL),
    weights=st.sampled_from([(10, 10, 5, 5), (1, 1, 1, 1)]),
)
def test_box_coder_property(data, dtype: torch.dtype, weights) -> None:
    n = data.draw(st.integers(1, 5))
    g = data.draw(proper_boxes(n, dtype))
    r = data.draw(proper_boxes(n, dtype))
    coder = BoxCoder(weights)
    bad = -1
    if dtype.is_floating_point and data.draw(st.booleans()):
        bad = data.draw(st.integers(0, n - 1))
        g[bad, data.draw(st.integers(0, 3))] = data.draw(st.sampled_from([math.nan, math.inf]))
    codes = coder.encode(g, r)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert codes.dtype == cdt
    gl, rl = g.double().tolist(), r.double().tolist()
    # float32: cancellation in (gx - rx) costs up to |coords| * eps / width
    atol = 1e-9 if dtype == torch.float64 else 4e-4
    for i in range(n):
        if i == bad:
            assert not torch.isfinite(codes[i]).all()
            continue
        want = encode64(gl[i], rl[i], weights)
        assert codes[i].tolist() == pytest.approx(want, abs=atol, rel=1e-5)
    if not dtype.is_floating_point:
        return
    deltas = (
        torch.tensor(
            data.draw(st.lists(st.floats(-3, 3), min_size=4 * n, max_size=4 * n)),
            dtype=torch.float64,
        )
        .reshape(n, 4)
        .to(dtype)
    )
    boxes = coder.decode(deltas, r)
    assert boxes.dtype == dtype
    dl = deltas.double().tolist()
    for i in range(n):
        want = decode64(dl[i], rl[i], weights, coder.bbox_xform_clip)
        rel = (
            1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 4 * EPS[dtype]
        )
        assert boxes[i].double().tolist() == pytest.approx(want, rel=rel, abs=rel * 1000)


@SETTINGS
@given(
    data=st.data(),
    dtype=st.sampled_from(FLOATS),
    low_q=st.booleans(),
    thresholds=st.sampled_from([(0.7, 0.3), (0.5, 0.5), (0.5, 0.4)]),
)
def test_matcher_property(data, dtype: torch.dtype, low_q: bool, thresholds) -> None:
    m = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(0, 6))
    vals = data.draw(
        st.lists(
            st.sampled_from([0.0, 0.2, 0.3, 0.4, 0.5, 0.69921875, 0.7, 0.9, 1.0, math.nan]),
            min_size=m * n,
            max_size=m * n,
        )
    )
    q = torch.tensor(vals, dtype=torch.float64).reshape(m, n).to(dtype)
    hi, lo = thresholds
    got = Matcher(hi, lo, allow_low_quality_matches=low_q)(q)
    if dtype != torch.float64:  # the contract: thresholds rounded to float32, as torchvision
        hi, lo = float(np.float32(hi)), float(np.float32(lo))
    assert got.dtype == torch.int64 and got.shape == (n,)
    ql = [[(-math.inf if math.isnan(v) else v) for v in row] for row in q.double().tolist()]
    want = []
    argmax = []
    for j in range(n):
        col = [ql[i][j] for i in range(m)]
        best = max(col)
        arg = col.index(best)
        argmax.append(arg)
        want.append(arg if best >= hi else -2 if best >= lo else -1)
    if low_q:
        for i in range(m):
            best = max(ql[i]) if n else -math.inf
            if best > 0:
                for j in range(n):
                    if ql[i][j] == best:
                        want[j] = argmax[j]
    assert got.tolist() == want


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_batched_nms_per_class_path_for_many_boxes(dtype: torch.dtype) -> None:
    # above 1000 boxes batched_nms runs one nms per category: same contract, same order
    gen = torch.Generator().manual_seed(3)
    n = 1300
    centres = torch.rand(40, 2, generator=gen, dtype=torch.float64) * 300
    c = centres[torch.randint(0, 40, (n,), generator=gen)] + torch.randn(n, 2, generator=gen) * 5
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 30 + 4
    boxes = torch.cat((c - wh / 2, c + wh / 2), dim=1).to(dtype)
    boxes[7, 2] = math.nan
    boxes[8, 0] = -math.inf
    scores = torch.randint(0, 50, (n,), generator=gen).double().div(50).to(dtype)  # ties
    scores[9] = math.nan
    cls = torch.randint(-2, 4, (n,), generator=gen)  # negative categories too
    bl, sl, cl = boxes.double().tolist(), scores.double().tolist(), cls.tolist()
    if dtype != torch.float64:
        for k in set(cl):
            members = [bl[i] for i in range(n) if cl[i] == k]
            assert not near_threshold(members, 0.5, 1e-5)  # this seed has no edge case
    got = batched_nms(boxes, scores, cls, 0.5)
    assert got.tolist() == nms64(bl, sl, 0.5, cl)
    assert {7, 8, 9} <= set(got.tolist())  # non-finite boxes / NaN score are kept
