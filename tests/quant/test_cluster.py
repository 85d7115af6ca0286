"""1-D k-means against brute force over all partitions; log quantizer."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant import kmeans_1d, kmeans_quantize, log_quantize
from lowbit.quant.pot import pot_round


def brute_kmeans_sse(vals: list[float], k: int) -> float:
    """Best SSE over every partition of the sorted values into k contiguous groups."""
    v = sorted(vals)
    n = len(v)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), k - 1):
        b = (0, *cuts, n)
        sse = 0.0
        for i, j in itertools.pairwise(b):
            g = v[i:j]
            m = sum(g) / len(g)
            sse += sum((x - m) ** 2 for x in g)
        best = min(best, sse)
    return best


def sse_of(vals: torch.Tensor, cen: torch.Tensor) -> float:
    d = (vals[:, None] - cen[None, :]) ** 2
    return float(d.min(dim=1).values.sum())


@settings(max_examples=40, deadline=None)
@given(
    vals=st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=11),
    k=st.integers(2, 4),
)
def test_kmeans_exact_equals_brute_force(vals: list[float], k: int) -> None:
    x = torch.tensor(vals, dtype=torch.float64)
    cen = kmeans_1d(x, k)
    distinct = sorted(set(vals))
    if len(distinct) <= k:
        assert sse_of(x, cen) == pytest.approx(0.0, abs=1e-12)
        return
    assert sse_of(x, cen) == pytest.approx(brute_kmeans_sse(vals, k), rel=1e-9, abs=1e-9)


def test_lloyd_path_is_close_to_exact() -> None:
    x = torch.randn(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = kmeans_1d(x, 8, exact_max=10**9)
    fast = kmeans_1d(x, 8, exact_max=10)
    assert sse_of(x, fast) <= sse_of(x, exact) * 1.02
    assert sse_of(x, exact) <= sse_of(x, fast) + 1e-9


def test_kmeans_quantize_uses_at_most_2b_levels() -> None:
    w = torch.randn(16, 50, generator=torch.Generator().manual_seed(1))
    wq, levels = kmeans_quantize(w, 2)
    assert torch.unique(wq).numel() <= 4 and levels.numel() == 4
    wq, levels = kmeans_quantize(w, 2, per_channel=True)
    assert levels.shape == (16, 4)
    assert all(torch.unique(r).numel() <= 4 for r in wq)


def test_log_quantizer_is_pot_grid_times_real_scale() -> None:
    w = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    wq, alpha = log_quantize(w, 4)
    assert alpha.item() == float(w.abs().max())
    assert torch.equal(wq, pot_round(w / alpha, 0, 4) * alpha)


@pytest.mark.parametrize("axis", [7, 2, -3])
def test_kmeans_and_log_bad_axis_is_value_error(axis: int) -> None:
    w = torch.randn(4, 4)
    for pc in (True, False):
        with pytest.raises(ValueError, match=f"kmeans: axis {axis} is out of range"):
            kmeans_quantize(w, 2, per_channel=pc, axis=axis)
        with pytest.raises(ValueError, match=f"log: axis {axis} is out of range"):
            log_quantize(w, 3, per_channel=pc, axis=axis)
    # a valid axis still clusters each channel on its own: 4 distinct values per column
    wq, levels = kmeans_quantize(w, 2, per_channel=True, axis=-1)
    assert levels.shape == (4, 4)
    for j in range(4):
        assert set(wq[:, j].tolist()) <= set(levels[j].float().tolist())
