"""Power-of-two weight quantizers of LBW-Net (Yin et al. 2019, section 2) and INQ.

Notation of the paper: ``b`` bits, ``n = 2**(b-2)``, quantized weights ``2**s * Q`` with integer
``s`` and ``Q_i in {0, +-2**(1-n), ..., +-2**-1, +-1}``. A b-bit LBW tensor therefore has the
``n`` magnitudes ``2**s, 2**(s-1), ..., 2**(s+1-n)`` plus zero.

Nearest-level geometry (used by every function here): between neighbouring levels ``2**(k-1)`` and
``2**k`` the decision threshold is their midpoint ``3/4 * 2**k``; between 0 and the smallest level
``2**kmin`` it is ``2**(kmin-1)``; above the top level ``2**s`` magnitudes saturate. Every threshold
is therefore a power of two or 3/4 of one, i.e. a boundary between two *half-octave buckets*
``[2**e, 1.5 * 2**e)`` and ``[1.5 * 2**e, 2**(e+1))``, which are read straight off the IEEE-754
exponent and the top mantissa bit. That is what makes :func:`lbw_exact` O(N) and exact.

Tie rules (deterministic, documented once here):

* a weight exactly on a threshold goes to the larger magnitude (away from zero);
* when several exponents ``s`` give the same error (within ``1e-12 * ||W||**2``, i.e. float64
  rounding), the smallest ``s`` wins: the tightest range, whose top level is closest to max|W|.
  (At b >= 6 many ``s`` differ only by the error of a few weights below 2**-20 of the scale; the
  smallest keeps them.) The paper's (2.9) formula, used by :func:`lbw_approx`, resolves its own
  parabola tie upwards instead;
* an all-zero (or empty) tensor quantizes to zeros with ``s = 0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lowbit.quant._common import check_bits, check_float, compute_dtype

__all__ = [
    "lbw_exact",
    "lbw_ternary_sorted",
    "lbw_approx",
    "inq",
    "pot_round",
    "pot_levels_count",
    "lbw_errors",
]

# (integer view dtype, mantissa bits, exponent bias) of the formats the bucketing reads.
_IEEE = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}
_TIE_RTOL = 1e-12


def pot_levels_count(bits: int) -> int:
    """Number of non-zero magnitudes ``n = 2**(bits-2)`` of a b-bit LBW quantizer."""
    return 1 << (check_bits(bits) - 2)


def _level_exponents(h: Tensor, s: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Level exponent and zero mask for half-octave indices ``h`` under top exponent(s) ``s``.

    ``h = 2*e + m`` indexes the bucket ``[2**e * (1 + m/2), ...)``. Broadcasts ``h`` against ``s``.
    Returns ``(k, is_zero)``: the magnitude is ``2**k`` unless ``is_zero``.
    """
    k = torch.div(h + 1, 2, rounding_mode="floor")  # ceil(h / 2): level of an interior bucket
    k = torch.minimum(torch.maximum(k, s + 1 - n), s)  # smallest level absorbs, top saturates
    return k, h < 2 * (s - n)


def _keys(x: Tensor, fine: int = 0) -> tuple[Tensor, int, int]:
    """Sign-folded half-octave keys of a float32/float64 tensor, flattened.

    Returns ``(key, nmag, bias2)``: ``key in [0, 2*nmag)`` with negatives in ``[0, nmag)`` and
    positives in ``[nmag, 2*nmag)``; the magnitude key ``km = key mod nmag`` equals
    ``2*biased_exponent + top_mantissa_bit`` and ``h = km - bias2`` for normal numbers.
    With ``fine > 0`` the keys carry ``fine`` more mantissa bits (``km >> fine`` is the
    half-octave key).
    """
    ityp, mbits, bias = _IEEE[x.dtype]
    nbits = 8 * x.element_size()
    shift = mbits - 1 - fine
    nmag = 1 << (nbits - 1 - shift)
    # Arithmetic shift of a negative float's bit pattern gives (magnitude >> shift) - nmag.
    key = torch.bitwise_right_shift(x.view(ityp), shift).reshape(-1).add_(nmag)
    return key, nmag, 2 * bias


def _pot_table(
    s: int, n: int, nmag: int, bias2: int, dtype: torch.dtype, device, fine: int = 0
) -> Tensor:
    """Signed lookup table ``key -> quantized value`` for top exponent ``s`` (float64 math)."""
    km = torch.arange(nmag >> fine, device=device, dtype=torch.int64)
    k, zero = _level_exponents(km - bias2, torch.tensor(s, device=device), n)
    mag = torch.ldexp(torch.ones((), dtype=torch.float64, device=device), k.to(torch.float64))
    mag = torch.where(zero | (km < 2), torch.zeros_like(mag), mag)  # zeros and subnormals -> 0
    mag = mag.to(dtype)[:, None].expand(-1, 1 << fine).reshape(-1)
    return torch.cat([-mag, mag])


_FINE = 7  # extra mantissa bits of the fast path's buckets


_MID_CACHE: dict[str, Tensor] = {}


def _fine_midpoints(device) -> Tensor:
    """float64 midpoint of every fine float32 magnitude bucket (cached per device)."""
    key = str(device)
    if key not in _MID_CACHE:
        shift = 22 - _FINE
        km = torch.arange(1 << (31 - shift), dtype=torch.int32, device=device)
        mid = ((km << shift) | (1 << (shift - 1))).view(torch.float32).double()
        _MID_CACHE[key] = torch.where(torch.isfinite(mid), mid, torch.zeros_like(mid))
    return _MID_CACHE[key]


def _fast_s(x: Tensor, n: int, s_cap: int) -> tuple[Tensor, int, int | None]:
    """Counts-only pass for float32: returns ``(fine_keys, nmag, s)``, ``s`` None if undecided.

    Buckets carry 7 extra mantissa bits, so each half-octave's ``sum |w|`` is known to within
    ``count * 2**(e-8)`` from counts alone. Each candidate's error *difference* to the estimated
    best gets a rigorous interval; when every candidate is then certainly inside or certainly
    outside the tie band, the documented choice is certain. Otherwise (a candidate straddles the
    band, or the optimum's zero threshold reaches subnormals) ``s`` is None and the caller
    falls back to exact float64 statistics.
    """
    key, nmag, bias2 = _keys(x, _FINE)
    cnt = torch.bincount(key, minlength=2 * nmag)
    cnt = (cnt[:nmag] + cnt[nmag:]).double()
    per = 1 << _FINE
    mid = _fine_midpoints(x.device)
    c_h = cnt.view(-1, per).sum(1)
    s1_h = (cnt * mid).view(-1, per).sum(1)
    top = c_h.numel() - 2
    n_bad, n_tiny = torch.stack([c_h[top:].sum(), c_h[:2].sum()]).tolist()
    if n_bad:
        raise ValueError(f"w contains {int(n_bad)} NaN/Inf value(s); refusing to quantize")
    e = torch.arange(c_h.numel(), device=x.device) // 2 - bias2 // 2
    delta = torch.ldexp(c_h, (e - 8).double())  # |true - estimated sum|w|| per bucket
    s2_hat = float((cnt * mid * mid).sum())
    out = _solve(c_h, s1_h, s1_h.new_zeros(()), n, bias2, s_cap, delta)
    if out[0] is None:
        return key, nmag, None  # only zeros/subnormals: let the exact path decide
    _, grid, err, lev, sl = out
    # Certify the documented choice (smallest s within 1e-12 ||W||^2 of the minimum) using
    # differences to the estimated best r: buckets at the same level under s and r cancel
    # exactly, so |D(s) - D_hat(s)| <= sum_b 2 |L_s - L_r| delta_b.
    r = int(torch.argmin(err))
    d_hat = err - err[r]
    bnd = 2.0 * ((lev - lev[r]).abs() * delta[sl]).sum(dim=1)
    # zeros/subnormals sit in buckets the estimate treats as zero; under any candidate they
    # change an error by < count * 2**-250 (and the bound on ||W||^2 covers them too)
    bnd = bnd + n_tiny * 2.0**-250
    band_lo = _TIE_RTOL * s2_hat * (1 - 2.0**-6)
    band_hi = _TIE_RTOL * (s2_hat * (1 + 2.0**-6) + n_tiny * 2.0**-250)
    m_lo = float((d_hat - bnd).min())
    sure_in = d_hat + bnd <= m_lo + band_lo
    sure_out = d_hat - bnd > band_hi
    if not bool((sure_in | sure_out).all()):
        return key, nmag, None
    s_best = int(grid[sure_in].min())
    if n_tiny and s_best - n < -126:  # the zero threshold reaches subnormals: be exact
        return key, nmag, None
    return key, nmag, s_best


def _bucket_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor, float, int, int]:
    """Per-bucket count and sum of |x| (float64), folded over sign; keys; ``||x||**2``."""
    key, nmag, bias2 = _keys(x)
    cnt = torch.bincount(key, minlength=2 * nmag)
    xd = x.reshape(-1).to(torch.float64)
    s1 = torch.bincount(key, weights=xd, minlength=2 * nmag)
    cnt = cnt[:nmag] + cnt[nmag:]
    s1 = s1[nmag:] - s1[:nmag]  # negative bins hold negative sums
    s2 = torch.dot(xd, xd)
    return key, cnt, s1, s2, nmag, bias2


def _max_exponent(dtype: torch.dtype) -> int:
    """Largest s with 2**s finite in ``dtype``."""
    return math.frexp(torch.finfo(dtype).max)[1] - 1


def _solve(
    cnt: Tensor, s1: Tensor, s2: Tensor, n: int, bias2: int, s_cap: int, delta: Tensor | None = None
):
    """Error of every candidate s from half-octave statistics.

    Returns ``(s_best, s_grid, err)``; when ``delta`` (a per-bucket bound on the error of
    ``s1``) is given, also the level matrix ``Tensor[S, H]`` and the bucket slice it covers.
    """
    nmag = cnt.numel()
    km = torch.arange(nmag, device=cnt.device)
    idx = torch.nonzero((cnt > 0) & (km >= 2)).flatten()
    if idx.numel() == 0:
        return (None, None, None) if delta is None else (None, None, None, None, None)
    lo_k, hi_k = idx[[0, -1]].tolist()
    h = km[lo_k : hi_k + 1] - bias2
    c = cnt[lo_k : hi_k + 1].to(torch.float64)
    a = s1[lo_k : hi_k + 1]
    h_min, h_max = lo_k - bias2, hi_k - bias2
    # Below s_lo every weight saturates at 2**s < |w| (error only grows); above s_hi the
    # largest weight falls under the zero threshold (the all-zero solution).
    s_hi = min(h_max // 2 + n, s_cap)
    s_lo = min(h_min // 2 - 1, s_hi)
    s_grid = torch.arange(s_lo, s_hi + 1, device=cnt.device)[:, None]
    k, zero = _level_exponents(h[None, :], s_grid, n)
    lev = torch.ldexp(torch.ones((), dtype=torch.float64, device=cnt.device), k.double())
    lev = torch.where(zero, torch.zeros_like(lev), lev)
    err = s2 - (lev * (2.0 * a - lev * c)).sum(dim=1)
    best = err.min()
    near = err <= best + _TIE_RTOL * s2
    s_best = int(s_grid.flatten()[near].min())  # ties -> smaller s
    if delta is not None:
        return s_best, s_grid.flatten(), err, lev, slice(lo_k, hi_k + 1)
    return s_best, s_grid.flatten(), err


def lbw_errors(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """The exact quantization error ``||2**s Q*(s) - W||**2`` for every candidate exponent.

    Returns ``(s_grid: Tensor[S] int64, err: Tensor[S] float64)`` -- the curve
    :func:`lbw_exact` minimises (useful for plots and for checking the solver).
    """
    check_float(w, finite=False)
    n = pot_levels_count(bits)
    x = w.detach().to(compute_dtype(w))
    _, cnt, s1, s2, _, bias2 = _bucket_stats(x)
    _, grid, err = _solve(cnt, s1, s2, n, bias2, _max_exponent(w.dtype))
    if grid is None:
        return torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64)
    return grid, err


def lbw_exact(w: Tensor, bits: int) -> tuple[Tensor, int]:
    """Exact least-squares b-bit LBW quantization (problem 2.1 of the paper), O(N), no sort.

    Args:
        w: weights, any shape, float16/bfloat16/float32/float64, any device, any strides.
        bits: b in [2, 8].

    Returns:
        ``(wq, s)``: ``wq`` of ``w``'s shape, dtype and device with values in
        ``2**s * {0, +-2**(1-n), ..., +-1}`` minimising ``||wq - w||**2``; ``s`` a Python int.

    Algorithm: one pass buckets ``|w|`` by IEEE exponent and top mantissa bit and accumulates the
    count and ``sum |w|`` (float64) per bucket; because every decision threshold is a bucket
    boundary, each candidate ``s`` maps whole buckets to levels and its error
    ``||W||**2 - sum_b (2 L_b S1_b - L_b**2 C_b)`` is exact. A second elementwise pass looks each
    weight's bucket up in the winning ``s``'s table. Ties: see the module docstring. Half inputs
    are computed in float32 (exact) and the levels rounded back to the input dtype (levels below
    the dtype's range become 0; ``s`` is capped so ``2**s`` stays finite). float64 subnormals
    (below 2**-1022) are treated as zero; float32 subnormals are handled exactly.

    Raises:
        ValueError: NaN/Inf in ``w``, non-float ``w``, or ``bits`` outside [2, 8].
    """
    check_float(w, finite=False)
    n = pot_levels_count(bits)
    if w.numel() == 0:
        return w.detach().clone(), 0
    x = w.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    wq, s = _lbw_exact(x, n, _max_exponent(w.dtype))
    return wq.to(w.dtype), s


def _lbw_exact(x: Tensor, n: int, s_cap: int) -> tuple[Tensor, int]:
    """:func:`lbw_exact` on a float32/float64 tensor; returns values in ``x``'s dtype."""
    if x.dtype == torch.float32:
        key, nmag, s_fast = _fast_s(x, n, s_cap)
        if s_fast is not None:
            table = _pot_table(s_fast, n, nmag, 254, x.dtype, x.device, _FINE)
            return torch.index_select(table, 0, key).view(x.shape), s_fast
    key, cnt, s1, s2, nmag, bias2 = _bucket_stats(x)
    top = nmag - 2  # buckets of the all-ones exponent: Inf and NaN
    flags = torch.stack([cnt[top:].sum().double(), cnt[1].double(), s1[0]]).tolist()  # one sync
    if flags[0]:
        raise ValueError(f"w contains {int(flags[0])} NaN/Inf value(s); refusing to quantize")
    if x.dtype == torch.float32 and (flags[1] or flags[2] > 0.0):
        # float32 subnormals: solve in float64, where they are normal numbers (exact upcast).
        wq, s = _lbw_exact(x.double(), n, s_cap)
        return wq.to(x.dtype), s
    s_best, _, _ = _solve(cnt, s1, s2, n, bias2, s_cap)
    if s_best is None:  # all zero (or only float64 subnormals)
        return torch.zeros(x.shape, dtype=x.dtype, device=x.device), 0
    table = _pot_table(s_best, n, nmag, bias2, x.dtype, x.device)
    return torch.index_select(table, 0, key).view(x.shape), s_best


def _apply_pot(x: Tensor, s: int, n: int) -> Tensor:
    """Round float32/float64 ``x`` to ``2**s * {0, +-2**(1-n), ..., +-1}`` (nearest, ties up)."""
    key, nmag, bias2 = _keys(x)
    table = _pot_table(s, n, nmag, bias2, x.dtype, x.device)
    return torch.index_select(table, 0, key).view(x.shape)


def pot_round(w: Tensor, s: int, bits: int) -> Tensor:
    """Nearest-level rounding of ``w`` onto the b-bit LBW grid with a *given* exponent ``s``.

    Same grid, thresholds and tie rule as :func:`lbw_exact`; the result has ``w``'s dtype.
    """
    check_float(w)
    n = pot_levels_count(bits)
    x = w.detach().to(compute_dtype(w))
    return _apply_pot(x, int(s), n).to(w.dtype)


def _floor_log2(r: Tensor) -> Tensor:
    """Exact ``floor(log2(r))`` for positive finite ``r`` (via frexp, no rounding of log2)."""
    _, e = torch.frexp(r)
    return e.to(torch.int64) - 1


def lbw_ternary_sorted(w: Tensor) -> tuple[Tensor, int]:
    """The paper's exact ternary formula (2.6)-(2.7): sort magnitudes, cumulative sum, argmin g.

    ``g(u, v) = v (2**floor(log2(4u/3v)) - u/v)**2 - u**2/v`` over ``k0 = 1..N`` with
    ``u = ||W_[k0]||_1`` and ``v = k0``; O(N log N). Kept as the paper's reference: its error
    equals ``lbw_exact(w, 2)``'s. Ties in ``g`` pick the smallest ``k0`` (fewest non-zeros);
    ties in magnitude are broken by a stable sort. Returns ``(wq, s)`` like :func:`lbw_exact`.
    """
    check_float(w)
    if w.numel() == 0:
        return w.detach().clone(), 0
    x = w.detach().reshape(-1).to(torch.float64)
    a = x.abs()
    srt, order = torch.sort(a, descending=True, stable=True)
    u = torch.cumsum(srt, 0)
    v = torch.arange(1, a.numel() + 1, device=a.device, dtype=torch.float64)
    pos = u > 0
    if not bool(pos.any()):
        return torch.zeros_like(w).detach(), 0
    s_k = torch.where(pos, _floor_log2(torch.where(pos, 4.0 * u / (3.0 * v), 1.0)), 0)
    lvl = torch.ldexp(torch.ones_like(u), s_k.double())
    g = torch.where(pos, v * (lvl - u / v) ** 2 - u * u / v, torch.inf)
    k0 = int(torch.argmin(g))  # first minimum = smallest k0
    s = int(s_k[k0])
    keep = torch.zeros_like(a, dtype=torch.bool)
    keep[order[: k0 + 1]] = True
    wq = torch.where(keep, torch.sign(x) * float(2.0**s), torch.zeros_like(x))
    return wq.view(w.shape).to(w.dtype), s


def lbw_approx(
    w: Tensor, bits: int, mu: float | Tensor | None = None, partial_terms: int | None = None
) -> tuple[Tensor, int]:
    """The paper's semi-analytical scheme: Q from thresholds on mu (2.8), optimal power s (2.9).

    Args:
        w: weights, any shape/float dtype/device.
        bits: b in [2, 8]; ``n = 2**(b-2)`` magnitudes.
        mu: the single parameter of (2.8); default ``3/4 * max|W|`` (section 2.2). Magnitudes
            ``>= mu`` map to Q = +-1; ``[2**-t mu, 2**(1-t) mu)`` to +-2**-t (t = 1..n-2);
            ``[2**(2-n) mu / 3, 2**(2-n) mu)`` to +-2**(1-n); below that to 0 (b = 2: one
            threshold ``2 mu / 3``).
        partial_terms: if set, the sums of (2.9) keep only t < partial_terms (the paper used 4);
            Q itself always uses every level.

    Returns:
        ``(wq, s)`` with ``wq = 2**s Q`` in ``w``'s dtype and ``s = floor(log2(4u / 3v))``,
        ``u = sum_t 2**-t ||W_[t]||_1``, ``v = sum_t k_t 2**-2t`` -- the minimiser over integer s
        of ``||2**s Q - W||**2`` for this Q (ties -> larger s). All-zero Q gives zeros, s = 0.
    """
    check_float(w)
    n = pot_levels_count(bits)
    if partial_terms is not None and partial_terms < 1:
        raise ValueError(f"partial_terms must be >= 1, got {partial_terms}")
    if w.numel() == 0:
        return w.detach().clone(), 0
    x = w.detach().reshape(-1).to(compute_dtype(w))
    a = x.abs()
    mu_t = 0.75 * a.max() if mu is None else torch.as_tensor(mu, dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(mu_t)) or float(mu_t) < 0:
        raise ValueError(f"mu must be finite and >= 0, got {float(mu_t)}")
    if float(mu_t) == 0.0:
        return torch.zeros_like(w).detach(), 0
    exps = torch.arange(n - 2, -1, -1, device=x.device, dtype=x.dtype)  # 2**-(n-2) .. 2**0
    bounds = torch.cat([(2.0 ** (2 - n)) * mu_t.reshape(1) / 3.0, torch.ldexp(mu_t, -exps)])
    idx = torch.bucketize(a, bounds, right=True)  # 0: zero; i >= 1: level t = n - i
    t = (n - idx).clamp(max=n - 1)
    nz = idx > 0
    q_mag = torch.where(nz, torch.ldexp(torch.ones_like(a), -t.to(a.dtype)), torch.zeros_like(a))
    use = nz if partial_terms is None else nz & (t < partial_terms)
    ad = a.double()
    qd = q_mag.double()
    u = float((ad * qd)[use].sum())
    v = float((qd * qd)[use].sum())
    if v == 0.0 or u == 0.0:
        return torch.zeros_like(w).detach(), 0
    s = int(_floor_log2(torch.tensor(4.0 * u / (3.0 * v), dtype=torch.float64)))
    s = min(s, _max_exponent(w.dtype))
    wq = torch.sign(x) * q_mag * float(2.0**s)
    return wq.view(w.shape).to(w.dtype), s


def inq(w: Tensor, bits: int) -> tuple[Tensor, int]:
    """INQ's power-of-two rounding (Zhou et al. 2017) with its exponent range from max|W|.

    INQ sets ``n1 = floor(log2(4 max|W| / 3))`` and ``n2 = n1 + 1 - 2**(b-1)/2``, levels
    ``{0, +-2**n2, ..., +-2**n1}`` and thresholds at the midpoints ``(a + b)/2`` of neighbouring
    levels -- the LBW grid with ``s = n1`` fixed instead of optimised. Returns ``(wq, s=n1)``.
    """
    check_float(w)
    n = pot_levels_count(bits)
    if w.numel() == 0:
        return w.detach().clone(), 0
    x = w.detach().to(compute_dtype(w))
    amax = x.abs().max()
    if float(amax) == 0.0:
        return torch.zeros_like(w).detach(), 0
    s = min(int(_floor_log2((4.0 * amax.double() / 3.0).reshape(1))), _max_exponent(w.dtype))
    return _apply_pot(x, s, n).to(w.dtype), s
