"""Weight statistics: magnitude tables against a direct loop count, distribution shape."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.analysis.stats import (
    format_magnitude_table,
    magnitude_rows,
    magnitude_table,
    weight_stats,
)
from lowbit.quant import lbw_exact


def loop_table(w: torch.Tensor, k_min: int) -> list[float]:
    """Oracle: classify every weight with a Python loop and math.log2-free comparisons."""
    counts = [0] * (k_min + 2)
    for v in w.reshape(-1).tolist():
        a = abs(v)
        if a == 0:
            counts[0] += 1
        elif a < 2.0**-k_min:
            counts[1] += 1
        elif a >= 0.5:
            counts[-1] += 1
        else:
            for i, k in enumerate(range(k_min, 1, -1)):
                if 2.0**-k <= a < 2.0 ** -(k - 1):
                    counts[2 + i] += 1
                    break
    return [100.0 * c / w.numel() for c in counts]


def test_table_matches_loop_and_sums_to_100() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3000, generator=g) * 0.02
    w[::7] = 0.0
    w[1] = 2.0**-5  # exactly on a bin edge
    w[2] = 0.75
    for table_w in (w, lbw_exact(w, 4)[0]):
        got = magnitude_table(table_w, 12)
        assert got == pytest.approx(loop_table(table_w, 12))
        assert sum(got) == pytest.approx(100.0)
        assert len(got) == len(magnitude_rows(12))
    # the zero row equals a direct count
    wq = lbw_exact(w, 4)[0]
    assert magnitude_table(wq, 12)[0] == pytest.approx(100.0 * float((wq == 0).sum()) / w.numel())


def test_weight_stats_gaussian_vs_heavy_tails() -> None:
    g = torch.Generator().manual_seed(1)
    gauss = weight_stats(torch.randn(20000, generator=g, dtype=torch.float64))
    assert abs(gauss.excess_kurtosis) < 0.2 and abs(gauss.skewness) < 0.1
    assert gauss.normality_p > 1e-3
    heavy = weight_stats(torch.distributions.StudentT(3.0).sample((20000,)).double())
    assert heavy.excess_kurtosis > 2.0 and heavy.normality_p < 1e-5
    wq = lbw_exact(torch.randn(1000, generator=g), 3)[0]
    st = weight_stats(wq)
    assert st.distinct <= 5 and st.sparsity == pytest.approx(float((wq == 0).float().mean()))
    assert math.isnan(weight_stats(torch.zeros(10)).normality_p)


def test_format_table() -> None:
    text = format_magnitude_table({"fp32": [0.0, 1.0, 99.0] + [0.0] * 4}, 5)
    assert "| \\|w\\| = 0 | 0 |" in text and "99.000%" in text
