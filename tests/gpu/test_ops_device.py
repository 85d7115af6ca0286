"""Every op of lowbit.detection.ops on the device against the same call on the CPU: integer
results (NMS keep lists, matches, sampled counts) equal, float results within float32
rounding (the device may fuse or reorder a few float32 operations)."""

from __future__ import annotations

import pytest
import torch

from lowbit.detection.ops import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    PSRoIPool,
    RoIAlign,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes_to_image,
    convert_to_roi_format,
    make_base_anchors,
    nms,
    ps_roi_pool,
    remove_small_boxes,
    roi_align,
)

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    """``Tensor[n, 4]`` float32 xyxy boxes inside ``size x size``, widths in [2, 40]."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size - 40)
    wh = 2 + torch.rand(n, 2, generator=g) * 38
    return torch.cat([xy, xy + wh], 1)


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype in (torch.float16, torch.bfloat16):
        tol = 1e-2
    torch.testing.assert_close(a.cpu(), b, rtol=tol, atol=tol, msg=what)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: str(d).removeprefix("torch."))
def test_box_ops(device: torch.device, dtype: torch.dtype) -> None:
    a, b = _boxes(50, 0).to(dtype), _boxes(30, 1).to(dtype)
    _close(box_area(a.to(device)), box_area(a), "box_area")
    _close(box_iou(a.to(device), b.to(device)), box_iou(a, b), "box_iou")
    big = a * 2 - 20
    _close(clip_boxes_to_image(big.to(device), (90, 120)), clip_boxes_to_image(big, (90, 120)),
           "clip")
    keep = remove_small_boxes(a.to(device), 10.0)
    assert torch.equal(keep.cpu(), remove_small_boxes(a, 10.0))
    assert 0 < keep.numel() < len(a)  # not vacuous


def test_integer_box_area(device: torch.device) -> None:
    a = torch.tensor([[0, 0, 100, 100], [5, 5, 7, 9]], dtype=torch.int64)
    assert torch.equal(box_area(a.to(device)).cpu(), box_area(a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_coder(device: torch.device, dtype: torch.dtype) -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref, gt = _boxes(40, 2).to(dtype), _boxes(40, 3).to(dtype)
    codes = coder.encode(gt, ref)
    _close(coder.encode(gt.to(device), ref.to(device)), codes, "encode")
    _close(coder.decode(codes.to(device), ref.to(device)), coder.decode(codes, ref), "decode")
    wild = codes.clone()
    wild[:, 2:] = 50.0  # clamped before exp on both devices
    _close(coder.decode(wild.to(device), ref.to(device)), coder.decode(wild, ref), "clamp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_nms_and_batched_nms(device: torch.device, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    boxes = _boxes(300, 4).to(dtype)
    # distinct scores (no tie order to depend on), many overlaps
    scores = torch.randperm(300, generator=g).to(dtype) / 300
    idxs = torch.randint(0, 4, (300,), generator=g)
    for thr in (0.3, 0.5, 0.7):
        keep = nms(boxes, scores, thr)
        assert torch.equal(nms(boxes.to(device), scores.to(device), thr).cpu(), keep)
        assert 0 < keep.numel() < 300
        kb = batched_nms(boxes, scores, idxs, thr)
        got = batched_nms(boxes.to(device), scores.to(device), idxs.to(device), thr)
        assert torch.equal(got.cpu(), kb)


def test_matcher_and_sampler(device: torch.device) -> None:
    iou = box_iou(_boxes(5, 5), _boxes(400, 6))
    for allow in (False, True):
        m = Matcher(0.5, 0.3, allow_low_quality_matches=allow)
        ref = m(iou)
        assert torch.equal(m(iou.to(device)).cpu(), ref)
    labels = [(ref >= 0).long() - (ref == -2).long(), torch.zeros(50, dtype=torch.long)]
    labels[1][:3] = 1
    s = BalancedPositiveNegativeSampler(64, 0.25)
    torch.manual_seed(7)
    pos_c, neg_c = s(labels)
    torch.manual_seed(7)  # permutations come from the CPU generator: same draws
    pos_d, neg_d = s([lab.to(device) for lab in labels])
    for a, b in zip(pos_c + neg_c, pos_d + neg_d):
        assert b.device.type == device.type and torch.equal(b.cpu(), a)
    assert int(pos_c[0].sum()) + int(neg_c[0].sum()) == 64


def test_anchors(device: torch.device) -> None:
    base = make_base_anchors((32.0, 64.0), (0.5, 1.0, 2.0))
    _close(make_base_anchors((32.0, 64.0), (0.5, 1.0, 2.0), device=device), base, "base")
    gen = AnchorGenerator((32.0, 64.0), (0.5, 1.0, 2.0), stride=16)
    feat = torch.zeros(2, 8, 5, 7)
    ref = gen(feat)
    got = gen.to(device)(feat.to(device))
    assert got.device.type == device.type
    _close(got, ref, "anchors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align(device: torch.device, dtype: torch.dtype, aligned: bool) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 4, 20, 24, generator=g).to(dtype)
    rois = [_boxes(6, 9, 90).to(dtype), _boxes(4, 10, 90).to(dtype)]
    for sr in (-1, 2):
        ref = roi_align(x, rois, (5, 4), 0.25, sr, aligned)
        got = roi_align(x.to(device), [r.to(device) for r in rois], (5, 4), 0.25, sr, aligned)
        _close(got, ref, f"roi_align sr={sr}")
    flat = convert_to_roi_format(rois)
    assert torch.equal(convert_to_roi_format([r.to(device) for r in rois]).cpu(), flat)
    mod = RoIAlign((3, 3), 0.25, 2, aligned)
    _close(mod(x.to(device), flat.to(device)), mod(x, flat), "RoIAlign module")
    # a NaN coordinate gives the same defined result on both devices (no index error)
    bad = flat.clone()
    bad[0, 1] = float("nan")
    ref_bad = roi_align(x, bad, 2, 0.25, 2)
    got_bad = roi_align(x.to(device), bad.to(device), 2, 0.25, 2).cpu()
    assert torch.equal(torch.isnan(got_bad), torch.isnan(ref_bad))
    fin = torch.isfinite(ref_bad)
    _close(got_bad[fin], ref_bad[fin], "roi_align nan roi")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_ps_roi_pool(device: torch.device, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(11)
    k, c = 3, 4
    x = torch.randn(2, c * k * k, 12, 16, generator=g).to(dtype)
    rois = [_boxes(5, 12, 180).to(dtype), _boxes(3, 13, 180).to(dtype)]
    ref = ps_roi_pool(x, rois, k, 1 / 16)
    got = ps_roi_pool(x.to(device), [r.to(device) for r in rois], k, 1 / 16)
    assert ref.shape == (8, c, k, k)
    _close(got, ref, "ps_roi_pool")
    mod = PSRoIPool(k, 1 / 16)
    flat = convert_to_roi_format(rois)
    _close(mod(x.to(device), flat.to(device)), mod(x, flat), "PSRoIPool module")
