"""Weight statistics of the paper's section 3.2: magnitude-bin tables (Tables 3.2-3.3) and
distribution shape (Fig. 3.2: histogram, excess kurtosis, skewness, normality test).

Magnitude bins: ``[2**-k, 2**(1-k))`` for ``k = K .. 2``, below them ``(0, 2**-K)``, above
them ``[2**-1, inf)``, and exact zeros as a row of their own, first. The bin of a weight is
read off its IEEE exponent (``torch.frexp``), so there is no rounding at bin edges. Shares are
percentages of all weights of the layer and sum to 100.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "WeightStats",
    "magnitude_rows",
    "magnitude_table",
    "weight_stats",
    "auto_min_exponent",
    "select_layers",
    "format_magnitude_table",
]


def _exponent_bins(w: Tensor) -> Tensor:
    """k with ``|w| in [2**-k, 2**(1-k))`` for every non-zero weight (int64)."""
    a = w.detach().reshape(-1).double().abs()
    _, e = torch.frexp(a[a > 0])  # |w| = m 2**e, m in [0.5, 1)  ->  [2**(e-1), 2**e)
    return 1 - e.to(torch.int64)


def magnitude_rows(k_min: int) -> list[str]:
    """Row labels for a table whose smallest bin is ``[2**-k_min, 2**(1-k_min))``."""
    rows = ["|w| = 0", f"0 < |w| < 2^-{k_min}"]
    rows += [f"2^-{k} <= |w| < 2^-{k - 1}" for k in range(k_min, 1, -1)]
    rows.append("2^-1 <= |w|")
    return rows


def magnitude_table(w: Tensor, k_min: int = 16) -> list[float]:
    """Percent of weights per row of :func:`magnitude_rows` (``k_min >= 2``); sums to 100."""
    if k_min < 2:
        raise ValueError(f"k_min must be >= 2, got {k_min}")
    n = w.numel()
    if n == 0:
        raise ValueError("cannot tabulate an empty tensor")
    k = _exponent_bins(w)
    zeros = n - k.numel()
    out = [zeros, int((k > k_min).sum())]
    counts = torch.bincount(k.clamp(min=1, max=k_min + 1), minlength=k_min + 2)
    out += [int(counts[j]) for j in range(k_min, 1, -1)]
    out.append(int((k <= 1).sum()))
    return [100.0 * c / n for c in out]


def auto_min_exponent(weights: Sequence[Tensor], share: float = 0.05, cap: int = 24) -> int:
    """Smallest K (>= 4, <= cap) such that at most ``share`` percent of every tensor's non-zero
    weights lie below 2**-K -- the table then shows the bulk, as the paper's does."""
    best = 4
    for w in weights:
        k = _exponent_bins(w)
        if k.numel() == 0:
            continue
        q = torch.quantile(k.double(), 1.0 - share / 100.0) if k.numel() < 2**24 else k.max()
        best = max(best, int(q))
    return min(best, cap)


@dataclass
class WeightStats:
    """Shape statistics of one tensor. ``normality_p``: D'Agostino-Pearson test (NaN if n < 8)."""

    n: int
    mean: float
    std: float
    excess_kurtosis: float
    skewness: float
    normality_p: float
    sparsity: float
    distinct: int


def weight_stats(w: Tensor, max_test: int = 1_000_000) -> WeightStats:
    """Mean, std, excess kurtosis, skewness, normality p-value, zero share, distinct values.

    The normality test uses at most ``max_test`` weights (an evenly strided subset).
    """
    from scipy import stats as sps

    x = w.detach().reshape(-1).double().cpu().numpy()
    n = x.size
    if n == 0:
        raise ValueError("cannot describe an empty tensor")
    sub = x[:: max(1, n // max_test)]
    if n >= 8 and np.ptp(sub) > 0:
        p = float(sps.normaltest(sub).pvalue)
    else:
        p = math.nan
    var = float(x.var())
    return WeightStats(
        n=n,
        mean=float(x.mean()),
        std=math.sqrt(var),
        excess_kurtosis=float(sps.kurtosis(x, fisher=True)) if var > 0 else math.nan,
        skewness=float(sps.skew(x)) if var > 0 else math.nan,
        normality_p=p,
        sparsity=float((x == 0).mean()),
        distinct=int(np.unique(x).size),
    )


def select_layers(names: Sequence[str], pattern: str | None) -> list[str]:
    """Names matching the regular expression ``pattern`` (all when None).

    Raises:
        ValueError: ``pattern`` is not a regular expression, or matches no name.
    """
    if not pattern:
        return list(names)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"layer pattern {pattern!r} is not a regular expression ({e})") from None
    sel = [n for n in names if rx.search(n)]
    if not sel:
        raise ValueError(f"no layer matches {pattern!r}; layers: {', '.join(names[:20])} ...")
    return sel


def format_magnitude_table(columns: Mapping[str, list[float]], k_min: int) -> str:
    """Markdown table: one row per magnitude bin, one column per model."""
    names = list(columns)
    lines = ["| magnitude | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, row in enumerate(magnitude_rows(k_min)):
        row = row.replace("|", "\\|")  # literal bars inside a markdown cell
        cells = []
        for c in names:
            v = columns[c][i]
            cells.append("0" if v == 0 else f"{v:.3f}%")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
