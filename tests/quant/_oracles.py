"""Shared generators and brute-force oracles for the quantizer tests (independent of lowbit)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

DISTS = ("gauss", "student", "laplace", "outliers", "tiny", "huge", "zeros", "repeated", "mixed")


def make_weights(seed: int, dist: str, size: int, log_scale: int) -> torch.Tensor:
    """A float64 weight vector of a named distribution (Gaussian, heavy tails, outliers, ...)."""
    rng = np.random.default_rng(seed)
    if dist == "gauss":
        w = rng.standard_normal(size)
    elif dist == "student":
        w = rng.standard_t(2.0, size)
    elif dist == "laplace":
        w = rng.laplace(size=size)
    elif dist == "outliers":
        w = rng.standard_normal(size) * 0.01
        w[rng.integers(0, size, max(1, size // 20))] *= 300.0
    elif dist == "tiny":
        w = rng.standard_normal(size) * 1e-30
    elif dist == "huge":
        w = rng.standard_normal(size) * 1e30
    elif dist == "zeros":
        w = rng.standard_normal(size)
        w[rng.random(size) < 0.5] = 0.0
    elif dist == "repeated":
        w = rng.choice([-0.75, -0.5, 0.25, 0.375, 1.0, 1.5, 3.0], size)
    else:  # mixture of scales
        w = rng.standard_normal(size) * np.exp2(rng.integers(-12, 4, size))
    return torch.from_numpy(w * 2.0**log_scale)


weights_st = st.builds(
    make_weights,
    seed=st.integers(0, 2**31 - 1),
    dist=st.sampled_from(DISTS),
    size=st.integers(1, 300),
    log_scale=st.integers(-8, 8),
)


def nearest_pot(w: torch.Tensor, s: int, n: int) -> torch.Tensor:
    """Oracle: round each weight to the nearest of 2**s * {0, +-2**(1-n), ..., +-1}.

    Distances are compared directly (float64); a tie goes to the larger magnitude.
    """
    w = w.double().reshape(-1)
    mags = [2.0 ** (s - j) for j in range(n)] + [0.0]  # descending: argmin picks larger on ties
    lv = torch.tensor(mags, dtype=torch.float64)
    d = (w.abs()[:, None] - lv[None, :]).abs()
    q = lv[d.argmin(dim=1)]
    return torch.sign(w) * q


def brute_force_lbw(w: torch.Tensor, bits: int) -> tuple[float, int, dict[int, float]]:
    """Oracle for problem (2.1): try every s over a wide range; (min error, documented s, errors).

    The documented s is the smallest s whose error is within 1e-12 * ||W||^2 of the minimum.
    """
    n = 2 ** (bits - 2)
    x = w.double().reshape(-1)
    a = x.abs()
    nz = a[a > 0]
    if nz.numel() == 0:
        return 0.0, 0, {}
    lo = int(np.floor(np.log2(float(nz.min())))) - 3
    hi = int(np.ceil(np.log2(float(nz.max())))) + n + 3
    errs = {}
    for s in range(lo, hi + 1):
        errs[s] = float(((nearest_pot(x, s, n) - x) ** 2).sum())
    s2 = float((x * x).sum())
    best = min(errs.values())
    s_doc = min(s for s, e in errs.items() if e <= best + 1e-12 * s2)
    return best, s_doc, errs
