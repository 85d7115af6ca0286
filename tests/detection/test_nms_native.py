"""The C kernel of NMS keeps exactly the boxes the torch path keeps, and a plain loop too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.detection.ops import _nms_native as native
from lowbit.detection.ops import batched_nms, nms

needs_native = pytest.mark.skipif(native.lib() is None,
                                  reason=f"C kernel not available: {native.status()}")


@pytest.fixture
def torch_path(monkeypatch: pytest.MonkeyPatch):
    """Run the block below with the kernel unloaded (the torch path)."""
    def off():
        monkeypatch.setitem(native._state, "lib", None)
        monkeypatch.setitem(native._state, "tried", True)
    return off


def _loop_nms(boxes: np.ndarray, scores: np.ndarray, thr: float,
              cls: np.ndarray | None = None) -> list[int]:
    """Oracle: the textbook greedy loop, IoU in float32 one operation at a time, compared
    with the threshold as a double."""
    b = boxes.astype(np.float32)
    order = sorted(range(len(b)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            if cls is not None and cls[i] != cls[j]:
                continue
            iw = max(np.float32(min(b[j, 2], b[i, 2]) - max(b[j, 0], b[i, 0])), np.float32(0))
            ih = max(np.float32(min(b[j, 3], b[i, 3]) - max(b[j, 1], b[i, 1])), np.float32(0))
            inter = np.float32(iw * ih)
            aj = np.float32((b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]))
            ai = np.float32((b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]))
            union = np.float32(np.float32(aj + ai) - inter)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.float32(inter / union)
            if float(iou) > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def _boxes(rng: np.random.Generator, n: int, grid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random boxes; on a coarse grid (many equal boxes, IoUs exactly at round thresholds,
    equal scores) or continuous."""
    if grid:
        xy = rng.integers(0, 8, (n, 2)) * 4.0
        wh = rng.integers(0, 5, (n, 2)) * 4.0  # some zero-width boxes
        scores = rng.integers(0, 5, n).astype(np.float32)
    else:
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(0.5, 80, (n, 2))
        scores = rng.random(n).astype(np.float32)
    b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return torch.from_numpy(b), torch.from_numpy(scores)


@needs_native
@pytest.mark.parametrize("grid", [True, False], ids=["grid", "continuous"])
def test_kernel_equals_torch_path_and_loop(grid: bool, torch_path) -> None:
    rng = np.random.default_rng(7)
    cases = []
    for n in (0, 1, 2, 7, 60, 300, 700):
        for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
            b, s = _boxes(rng, n, grid)
            c = torch.from_numpy(rng.integers(0, 3, n))
            cases.append((b, s, thr, c, nms(b, s, thr), batched_nms(b, s, c, thr)))
    torch_path()
    for b, s, thr, c, k_native, kb_native in cases:
        assert torch.equal(k_native, nms(b, s, thr)), (len(b), thr)
        assert torch.equal(kb_native, batched_nms(b, s, c, thr)), (len(b), thr)
        if len(b) <= 60:
            assert k_native.tolist() == _loop_nms(b.numpy(), s.numpy(), thr)
            assert sorted(kb_native.tolist()) == sorted(
                _loop_nms(b.numpy(), s.numpy(), thr, c.numpy()))


@needs_native
def test_kernel_on_rpn_like_proposals_and_odd_values(torch_path) -> None:
    """Clusters of near-duplicate proposals (what an RPN emits), non-finite boxes, huge
    coordinates whose areas overflow to inf: the same kept boxes as the torch path."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(20, 230, (12, 2))
    pick = rng.integers(0, 12, 1000)
    size = rng.uniform(10, 90, (12, 2))[pick] * rng.uniform(0.8, 1.25, (1000, 2))
    xy = centres[pick] + rng.normal(0, 4, (1000, 2))
    b = torch.from_numpy(np.concatenate([xy - size / 2, xy + size / 2], 1).astype(np.float32))
    s = torch.from_numpy(rng.random(1000).astype(np.float32))
    b[5] = float("nan")
    b[17, 2] = float("inf")
    b[30] = torch.tensor([0.0, 0.0, 3e38, 3e38])
    b[31] = torch.tensor([1.0, 1.0, 3e38, 3e38])
    got = [nms(b, s, t) for t in (0.5, 0.7)]
    torch_path()
    for k, t in zip(got, (0.5, 0.7)):
        assert torch.equal(k, nms(b, s, t))
        assert 12 <= len(k) < 1000


def test_float64_and_disabled_kernel_take_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 boxes never reach the float32 kernel; LOWBIT_NATIVE=0 leaves it unbuilt and NMS
    still gives the loop's answer."""
    rng = np.random.default_rng(1)
    b, s = _boxes(rng, 40, grid=False)
    assert native.greedy(b.double(), 0.5, None) is None
    monkeypatch.setattr(native, "_state", {"tried": False, "lib": None,
                                           "status": "not loaded yet"})
    monkeypatch.setenv("LOWBIT_NATIVE", "0")
    assert native.lib() is None and "disabled" in native.status()
    assert nms(b, s, 0.5).tolist() == _loop_nms(b.numpy(), s.numpy(), 0.5)
