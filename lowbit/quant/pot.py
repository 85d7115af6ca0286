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

Per channel and many tensors at once: :func:`lbw_exact_channels` gives each slice along an
axis its own exponent, :func:`lbw_exact_many` quantizes a list of tensors (a whole model) in
one call. Both put every segment (tensor or channel) in its own row of one histogram
(per-row key offsets) and solve all rows together; a row's arithmetic never depends on the
other rows, so the results are bit-identical to :func:`lbw_exact` on each tensor or slice --
:func:`lbw_exact` itself is the one-tensor case.

The float32 fast path's elementwise passes (fine counts, table lookup, and the float64
statistics of rows it cannot decide) run as small C kernels (:mod:`lowbit.quant._native`,
compiled with the system C compiler on first use) when they load, else as torch ops; both
give the same bits (integer work on the bit patterns; sums in bincount's order).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lowbit.quant import _native
from lowbit.quant._common import as_rows, check_bits, check_float, compute_dtype
from lowbit.runtime import at_most_threads

__all__ = [
    "lbw_exact",
    "lbw_exact_channels",
    "lbw_exact_many",
    "exact_pow2",
    "lbw_ternary_sorted",
    "lbw_approx",
    "lbw_approx_many",
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


def _max_exponent(dtype: torch.dtype) -> int:
    """Largest s with 2**s finite in ``dtype``."""
    return math.frexp(torch.finfo(dtype).max)[1] - 1


# ---------------------------------------------------------------- batched exact solver
#
# Every quantizer call below works on *rows*: independent segments (a whole tensor, or one
# channel of a tensor) whose half-octave statistics sit in one matrix, one row per segment.
# Rows are solved together; nothing computed for a row depends on the other rows or on how
# much padding the batch adds (sums along a row use a sequential ``cumsum``, padding is zeros
# at the end), so a tensor's result is bit-identical whether it is quantized alone, with
# other tensors, or as a channel slice.

_NOCOL = -(1 << 40)  # hcol marker of columns outside the solve (zeros, subnormals, padding)
_BIG = 1 << 62


def _floordiv(a: Tensor, d: int) -> Tensor:
    return torch.div(a, d, rounding_mode="floor")


def exact_pow2(k: Tensor) -> Tensor:
    """Exact ``2.0**k`` as float64 for an int64 tensor ``k <= 1023`` (0 below 2**-1074), built
    from IEEE bits (no ``pow``/``ldexp``: exact and fast). Same shape as ``k``."""
    hi = k.clamp(min=-1022)
    lo = (k - hi).clamp(min=-1022)
    f = torch.bitwise_left_shift(hi + 1023, 52).view(torch.float64)
    return f * torch.bitwise_left_shift(lo + 1023, 52).view(torch.float64)


_pow2 = exact_pow2


def _window(cnt: Tensor, hcol: Tensor, n: int, s_cap: Tensor):
    """Per-row occupied column window and candidate exponent range (shared by both solvers)."""
    r, hh = cnt.shape
    dev = cnt.device
    occ = (cnt > 0) & (hcol != _NOCOL)
    has = occ.any(1)
    col = torch.arange(hh, device=dev)
    lo_c = torch.where(has, torch.where(occ, col, hh).amin(1), 0)
    hi_c = torch.where(has, torch.where(occ, col, -1).amax(1), 0)
    h_lo = torch.where(has, hcol.gather(1, lo_c[:, None]).squeeze(1), 0)
    h_hi = torch.where(has, hcol.gather(1, hi_c[:, None]).squeeze(1), 0)
    # Below s_lo every weight saturates at 2**s < |w| (error only grows); above s_hi the
    # largest weight falls under the zero threshold (the all-zero solution).
    s_hi = torch.minimum(_floordiv(h_hi, 2) + n, s_cap)
    s_lo = torch.minimum(_floordiv(h_lo, 2) - 1, s_hi)
    sizes = torch.stack([(hi_c - lo_c + 1).amax(), (s_hi - s_lo + 1).amax()]) if r else None
    w_n, j_n = sizes.tolist() if sizes is not None else (1, 1)
    ar_w = torch.arange(w_n, device=dev)
    widx = lo_c[:, None] + ar_w
    wvalid = (widx <= hi_c[:, None]) & has[:, None]
    widx = widx.clamp(max=hh - 1)
    grid = s_lo[:, None] + torch.arange(j_n, device=dev)
    valid = (grid <= s_hi[:, None]) & has[:, None]
    return has, h_lo, widx, wvalid, grid, valid


def _take(t: Tensor, widx: Tensor, wvalid: Tensor) -> Tensor:
    return torch.where(wvalid, t.gather(1, widx), t.new_zeros(()))


def _choose(err: Tensor, valid: Tensor, grid: Tensor, has: Tensor, s2: Tensor) -> Tensor:
    """The documented choice per row: smallest s within ``1e-12 * s2`` of the row minimum."""
    best = err.amin(1)
    near = valid & (err <= best[:, None] + _TIE_RTOL * s2[:, None])
    return torch.where(has, torch.where(near, grid, _BIG).amin(1), 0), best


def _solve_rows(
    cnt: Tensor, s1: Tensor, s2b: Tensor, hcol: Tensor, n: int, s_cap: Tensor
) -> dict[str, Tensor]:
    """Exact error of every candidate exponent for R independent rows; the documented choice.

    Args:
        cnt, s1, s2b: ``Tensor[R, H]`` float64 per column: count, ``sum |x|``, ``sum x**2`` of
            a half-octave bucket.
        hcol: ``Tensor[R, H]`` int64 half-octave index ``h`` of each column (bucket
            ``[2**e (1 + m/2), ...)`` has ``h = 2e + m``), ``_NOCOL`` for columns outside the
            solve (zeros, subnormals, padding); a row's usable columns carry consecutive ``h``.
        n: levels count; s_cap: ``Tensor[R]`` int64 largest allowed s per row.

    Returns ``{"has": [R] bool (a non-zero normal value), "s": [R] int64 (0 where not has),
    "best": [R] min error, "grid"/"valid"/"err": [R, J]}`` (err +inf where not valid).

    Under exponent s a bucket is zero (``h < 2(s-n)``), on the smallest level
    ``2**(s+1-n)`` (``h <= 2(s+1-n)``), interior at ``2**ceil(h/2)`` whatever s is
    (``h <= 2s``) or saturated at ``2**s``. Prefix sums along each row's window (sequential
    ``cumsum``, so padding and batching never change a row's rounding) give every candidate's
    error in O(1): ``err = ||x||**2 - sum_b L_b (2 S1_b - L_b C_b)``.
    """
    has, h_lo, widx, wvalid, grid, valid = _window(cnt, hcol, n, s_cap)
    c = _take(cnt, widx, wvalid)
    a = _take(s1, widx, wvalid)
    q = _take(s2b, widx, wvalid)
    r, w_n = c.shape
    h = h_lo[:, None] + torch.arange(w_n, device=c.device)
    li = _pow2(_floordiv(h + 1, 2))  # interior level ceil(h/2)
    f = torch.where(wvalid, li * (2.0 * a - li * c), c.new_zeros(()))
    pre = torch.cumsum(torch.stack([c, a, f, q]), 2)
    pre = torch.nn.functional.pad(pre, (1, 0))  # P[:, :, i] = sum over columns < i
    pc, pa, pf, pq = pre
    s2 = pq[:, -1]
    h0 = h_lo[:, None]

    def at(p: Tensor, hb: Tensor) -> Tensor:  # prefix up to (excluding) h = hb
        return p.gather(1, (hb - h0).clamp(0, w_n))

    b0 = 2 * (grid - n)
    b1 = 2 * (grid + 1 - n) + 1
    i1 = 2 * grid + 1
    lb = _pow2(grid + 1 - n)
    ls = _pow2(grid)
    cb = at(pc, b1) - at(pc, b0)
    ab = at(pa, b1) - at(pa, b0)
    cs = pc[:, -1:] - at(pc, i1)
    as_ = pa[:, -1:] - at(pa, i1)
    x = lb * (2.0 * ab - lb * cb) + (at(pf, i1) - at(pf, b1)) + ls * (2.0 * as_ - ls * cs)
    err = torch.where(valid, s2[:, None] - x, torch.inf)
    s, best = _choose(err, valid, grid, has, s2)
    return {"has": has, "s": s, "best": best, "grid": grid, "valid": valid, "err": err}


def _solve_rows_levels(
    cnt: Tensor, s1: Tensor, hcol: Tensor, n: int, s_cap: Tensor
) -> dict[str, Tensor]:
    """The fast path's estimate: like :func:`_solve_rows` with ``||x||**2 := 0`` (only error
    differences matter there), also returning the level matrix ``lev [R, J, W]`` and the
    window ``widx``/``wvalid [R, W]`` its certification bound needs."""
    has, h_lo, widx, wvalid, grid, valid = _window(cnt, hcol, n, s_cap)
    c = _take(cnt, widx, wvalid)
    a = _take(s1, widx, wvalid)
    h = h_lo[:, None] + torch.arange(c.shape[1], device=c.device)
    k, is_zero = _level_exponents(h[:, None, :], grid[:, :, None], n)
    lev = torch.where(is_zero, c.new_zeros(()), _pow2(k))
    x = (lev * (2.0 * a[:, None, :] - lev * c[:, None, :])).sum(2)
    err = torch.where(valid, -x, torch.inf)
    return {"has": has, "grid": grid, "valid": valid, "err": err, "lev": lev, "widx": widx,
            "wvalid": wvalid}


def _level_table(s: Tensor, hcol: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """Signed lookup tables ``Tensor[R, 2H]`` (negatives first) for rows with exponents ``s``."""
    k, is_zero = _level_exponents(hcol, s[:, None], n)
    mag = _pow2(k.clamp(max=1023))
    mag = torch.where(is_zero | (hcol == _NOCOL), torch.zeros_like(mag), mag).to(dtype)
    return torch.cat([-mag, mag], 1)


def _nonfinite_error(name: str, count: int) -> ValueError:
    return ValueError(f"{name} contains {count} NaN/Inf value(s); refusing to quantize")


def _row_keys(x: Tensor, name: str) -> tuple[Tensor, Tensor, int]:
    """Signed half-octave keys of the rows of ``x: Tensor[R, L]`` (float32/float64).

    Returns ``(keys Tensor[R*L], hcol Tensor[R, H], H)``: row ``r``'s keys lie in
    ``[2rH, 2(r+1)H)``, negatives first. A single float32 row keeps IEEE's 512 magnitude
    columns (Inf/NaN land in the last two; callers check the counts); otherwise columns are
    compressed to the tensor's occupied exponent range, column 0 collecting zeros and
    subnormals, and Inf/NaN raise here.
    """
    rows, length = x.shape
    dev = x.device
    if x.dtype == torch.float32:
        ityp, shift, nmag, bias2 = torch.int32, 22, 512, 254
    else:
        ityp, shift, nmag, bias2 = torch.int64, 51, 4096, 2046
    key = torch.bitwise_right_shift(x.view(ityp), shift).reshape(-1).add_(nmag)
    if rows == 1 and x.dtype == torch.float32:
        hh = nmag
        km = torch.arange(hh, device=dev)
        hcol = torch.where(km >= 2, km - bias2, _NOCOL)[None]
    else:
        glob = torch.bincount(key, minlength=2 * nmag)
        glob = glob[:nmag] + glob[nmag:]
        nbad = int(glob[nmag - 2:].sum())
        if nbad:
            raise _nonfinite_error(name, nbad)
        km = torch.arange(nmag, device=dev)
        occ = km[(glob > 0) & (km >= 2)]
        lo, hi = occ[[0, -1]].tolist() if occ.numel() else (2, 1)
        hh = hi - lo + 2
        col = torch.where(km >= lo, km - (lo - 1), 0)
        lut = torch.cat([col, col + hh]).to(key.dtype)
        key = torch.index_select(lut, 0, key)
        cc = torch.arange(hh, device=dev)
        hcol = torch.where(cc >= 1, cc + (lo - 1) - bias2, _NOCOL)[None]
    if rows > 1:
        off = torch.arange(0, 2 * hh * rows, 2 * hh, device=dev, dtype=key.dtype)
        key.view(rows, length).add_(off[:, None])
    return key, hcol.expand(rows, -1).contiguous(), hh


def _exact_rows(x: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Half-octave statistics of ``x: Tensor[R, L]`` (float32/float64), one row per segment.

    Returns ``(keys, cnt, s1, s2b, hcol)``: ``keys`` int ``Tensor[R*L]`` index the signed
    tables of :func:`_level_table` flattened (row ``r``'s table at ``r * 2H``), or ``None``
    when the C kernel of :mod:`lowbit.quant._native` made the statistics (a single contiguous
    float32 CPU row: its keys are IEEE's, :func:`_lookup_many` applies the table); the stats are
    ``Tensor[R, H]`` float64 folded over sign; ``hcol`` as :func:`_solve_rows` wants it.
    A single float32 row keeps IEEE's 512 magnitude columns; otherwise columns are compressed
    to the tensor's occupied exponent range (column 0 collects zeros and subnormals), so that
    per-channel histograms stay small.
    """
    rows = x.shape[0]
    flat = x.reshape(-1)
    nat = None
    if rows == 1 and _NATIVE and _native.usable([flat]):
        nat = _native.stats(flat)  # the same three bincounts in one pass, bit for bit
    if nat is not None:
        key, hh = None, 512
        km = torch.arange(hh, device=x.device)
        hcol = torch.where(km >= 2, km - 254, _NOCOL)[None]
        cnt, s1, s2b = (t.view(1, 2, hh) for t in nat)
    else:
        key, hcol, hh = _row_keys(x, name)
        xd = flat.to(torch.float64)
        nb = 2 * hh * rows
        cnt = torch.bincount(key, minlength=nb).view(rows, 2, hh)
        s1 = torch.bincount(key, weights=xd, minlength=nb).view(rows, 2, hh)
        s2b = torch.bincount(key, weights=xd * xd, minlength=nb).view(rows, 2, hh)
    cnt = (cnt[:, 0] + cnt[:, 1]).double()
    s1 = s1[:, 1] - s1[:, 0]  # negative bins hold negative sums
    s2b = s2b[:, 0] + s2b[:, 1]
    if rows == 1 and x.dtype == torch.float32:  # uncompressed: last two columns Inf/NaN
        nbad = int(cnt[:, hh - 2:].sum())
        if nbad:
            raise _nonfinite_error(name, nbad)
    return key, cnt, s1, s2b, hcol


def _has_subnormals(s1: Tensor, hcol: Tensor) -> bool:
    """Whether any row has a non-zero value in a column outside the solve (subnormals)."""
    return bool((torch.where(hcol == _NOCOL, s1, 0.0) > 0).any())


_FINE = 7  # extra mantissa bits of the fast path's buckets
_NMAG_FINE = 1 << (9 + _FINE)  # fine float32 magnitude buckets (8 exponent + 1 + _FINE bits)

_MID_CACHE: dict[str, tuple[Tensor, Tensor]] = {}


def _fine_midpoints(device) -> tuple[Tensor, Tensor]:
    """float64 midpoint of every fine float32 magnitude bucket and its square (cached)."""
    key = str(device)
    if key not in _MID_CACHE:
        shift = 22 - _FINE
        km = torch.arange(1 << (31 - shift), dtype=torch.int32, device=device)
        mid = ((km << shift) | (1 << (shift - 1))).view(torch.float32).double()
        mid = torch.where(torch.isfinite(mid), mid, torch.zeros_like(mid))
        _MID_CACHE[key] = (mid, mid * mid)
    return _MID_CACHE[key]


def _fine_keys(x: Tensor) -> Tensor:
    """Sign-folded fine keys ``[0, 2**17)`` of a float32 tensor, flattened (int32)."""
    return torch.bitwise_right_shift(x.view(torch.int32), 22 - _FINE).reshape(-1).add_(_NMAG_FINE)


def _fine_counts(key: Tensor) -> Tensor:
    """Fine magnitude-bucket counts ``Tensor[2**16]`` int64 of :func:`_fine_keys` output."""
    h = torch.bincount(key, minlength=2 * _NMAG_FINE)
    return h[:_NMAG_FINE] + h[_NMAG_FINE:]


# Elements per chunk of the float32 fast path's two passes on CPU: the int32 keys of one
# chunk stay in cache between the ops that make and use them (a full-size key tensor costs
# a write and several re-reads from memory). Results never depend on the chunking.
_CHUNK = 1 << 18

# Use the C kernels of :mod:`lowbit.quant._native` for the two float32 passes when they
# compile and load (the torch code below otherwise; tests switch this off to cover it).
_NATIVE = True


def _chunk_width(xs: Sequence[Tensor]) -> int:
    """Chunk length for flat tensors ``xs`` on one device (whole tensors off the CPU)."""
    longest = max(x.numel() for x in xs)
    return min(longest, _CHUNK) if xs[0].device.type == "cpu" else longest


def _fine_counts_many(xs: Sequence[Tensor]) -> tuple[Tensor, int]:
    """Fine magnitude-bucket counts of G float32 tensors: ``(fold Tensor[G, W] int64, col0)``.

    ``xs``: flat contiguous non-empty float32 tensors (one device). Row ``g`` equals columns
    ``[col0 * 2**_FINE, col0 * 2**_FINE + W)`` of ``_fine_counts(_fine_keys(xs[g]))``
    (``W`` a multiple of ``2**_FINE``; the columns left off are zero in every row), as
    :func:`_fast_decide` takes them: a weight's key is the top 16 magnitude bits of its bit
    pattern, ``(bits >> 15) & 0xFFFF``, counted chunk by chunk (or by the C kernel of
    :mod:`lowbit.quant._native` when it is available: same counts, one pass).
    """
    if _NATIVE and _native.usable(xs):
        res = _native.count_many(xs)
        if res is not None:
            return res
    dev = xs[0].device
    width = _chunk_width(xs)
    buf = torch.empty(width, dtype=torch.int32, device=dev)
    shift = torch.tensor(22 - _FINE, dtype=torch.int32)
    accs = []
    for x in xs:
        xi = x.view(torch.int32)
        acc = None
        for a in range(0, xi.numel(), width):
            part = xi[a:a + width]
            key = buf[:part.numel()]
            torch.bitwise_right_shift(part, shift, out=key)
            key.bitwise_and_(_NMAG_FINE - 1)
            h = torch.bincount(key)
            if acc is None:
                acc = h
            elif h.numel() <= acc.numel():
                acc[:h.numel()] += h
            else:
                h[:acc.numel()] += acc
                acc = h
        accs.append(acc)
    # only the columns some tensor occupies: the zero prefix of every row (bincount starts at
    # key 0) is left off, so the batch's statistics stay small. col0 = the first half-octave
    # block holding a count in some row; a row's incomplete last block only bounds it.
    per = 1 << _FINE
    blocks = torch.zeros(len(xs), _NMAG_FINE // per + 1, dtype=torch.int64, device=dev)
    whole = [h.numel() // per for h in accs]
    for g, (h, nb) in enumerate(zip(accs, whole)):
        blocks[g, :nb] = h[:nb * per].view(nb, per).sum(1)
    blocks[torch.arange(len(xs), device=dev), torch.tensor(whole, device=dev)] = 1
    col0 = int(torch.nonzero(blocks.any(0))[0])
    w = -(-max(h.numel() for h in accs) // per) * per - col0 * per
    fold = torch.zeros(len(xs), w, dtype=torch.int64, device=dev)
    for g, h in enumerate(accs):
        if h.numel() > col0 * per:
            fold[g, :h.numel() - col0 * per] = h[col0 * per:]
    return fold, col0


def _lookup_many(xs: Sequence[Tensor], tab: Tensor) -> list[Tensor]:
    """``tab[g]`` looked up at each element's signed half-octave key, per tensor.

    ``xs``: flat contiguous float32 tensors; ``tab``: ``Tensor[G, 1024]`` float32 signed
    tables as :func:`_level_table` makes them for IEEE's 512 magnitude columns (negatives
    first). The key ``(bits >> 22) + 512`` is the sign-folded half-octave key. Chunked on CPU
    (keys stay in cache), or one pass of the C kernel of :mod:`lowbit.quant._native` when it
    is available (same bits); returns new flat float32 tensors.
    """
    if _NATIVE and _native.usable(xs):
        outs = _native.lookup_many(xs, tab)
        if outs is not None:
            return outs
    dev = xs[0].device
    width = _chunk_width(xs)
    buf = torch.empty(width, dtype=torch.int32, device=dev)
    shift = torch.tensor(22, dtype=torch.int32)
    outs = []
    for g, x in enumerate(xs):
        xi = x.view(torch.int32)
        out = torch.empty(xi.shape, dtype=torch.float32, device=dev)
        t = tab[g]
        for a in range(0, xi.numel(), width):
            part = xi[a:a + width]
            key = buf[:part.numel()]
            torch.bitwise_right_shift(part, shift, out=key)
            key.add_(512)
            torch.index_select(t, 0, key, out=out[a:a + part.numel()])
        outs.append(out)
    return outs


def _fast_decide(fold: Tensor, n: int, s_cap: Tensor, names: list[str], col0: int = 0
                 ) -> tuple[Tensor, Tensor]:
    """Counts-only decision for float32 rows: ``(s [G] int64, decided [G] bool)``.

    ``fold``: ``Tensor[G, W]`` int64 fine magnitude-bucket counts per tensor: columns
    ``[col0 * 2**_FINE, col0 * 2**_FINE + W)`` of :func:`_fine_counts` (``W`` a multiple of
    ``2**_FINE``; the columns left off are all zero). Buckets carry 7 extra
    mantissa bits, so each half-octave's ``sum |w|`` is known to within ``count * 2**(e-8)``
    from counts alone. Each candidate's error *difference* to the estimated best gets a
    rigorous interval; when every candidate is then certainly inside or certainly outside the
    tie band, the documented choice is certain. Otherwise (a candidate straddles the band, or
    the optimum's zero threshold reaches subnormals) the row is undecided and the caller uses
    exact float64 statistics.
    """
    g = fold.shape[0]
    dev = fold.device
    per = 1 << _FINE
    c_h = fold.view(g, -1, per).sum(2)
    hh = _NMAG_FINE // per
    c_h = torch.nn.functional.pad(c_h, (col0, hh - col0 - c_h.shape[1]))
    bad = c_h[:, -2:].sum(1)
    tiny = c_h[:, :2].sum(1)
    occ = torch.nonzero(c_h[:, 2:hh - 2].any(0)).flatten() + 2
    lims = torch.cat([bad, occ[[0, -1]] if occ.numel() else occ.new_tensor([2, 1])]).tolist()
    for i, b in enumerate(lims[:g]):
        if b:
            raise _nonfinite_error(names[i], int(b))
    lo, hi = lims[g:]
    # float64 sums only over the half-octaves some tensor occupies (zeros/subnormals and the
    # empty exponent range contribute nothing the bounds below do not already cover)
    mid, mid2 = _fine_midpoints(dev)
    s1_h = torch.zeros(g, hh, dtype=torch.float64, device=dev)
    s2_hat = torch.zeros(g, dtype=torch.float64, device=dev)
    if hi >= lo:
        cs = fold[:, (lo - col0) * per:(hi + 1 - col0) * per].double()
        ms = mid[lo * per:(hi + 1) * per]
        s1_h[:, lo:hi + 1] = (cs.view(g, -1, per) * ms.view(-1, per)).sum(2)
        s2_hat = cs @ mid2[lo * per:(hi + 1) * per]
    c_h = c_h.double()
    km = torch.arange(hh, device=dev)
    hcol = torch.where((km >= 2) & (km < hh - 2), km - 254, _NOCOL).expand(g, -1).contiguous()
    sol = _solve_rows_levels(c_h, s1_h, hcol, n, s_cap)
    e = _floordiv(km, 2) - 127
    delta = c_h * _pow2(e - (_FINE + 1))  # |true - estimated sum|w|| per bucket
    err, lev, valid, grid = sol["err"], sol["lev"], sol["valid"], sol["grid"]
    # Certify the documented choice (smallest s within 1e-12 ||W||^2 of the minimum) using
    # differences to the estimated best r: buckets at the same level under s and r cancel
    # exactly, so |D(s) - D_hat(s)| <= sum_b 2 |L_s - L_r| delta_b.
    r = err.argmin(1)
    err_r = err.gather(1, r[:, None])
    d_hat = torch.where(valid, err - err_r, torch.inf)
    lev_r = lev.gather(1, r[:, None, None].expand(-1, 1, lev.shape[2]))
    dw = torch.where(sol["wvalid"], delta.gather(1, sol["widx"]), 0.0)
    tiny_d = tiny.double() * 2.0**-250
    # zeros/subnormals sit in buckets the estimate treats as zero; under any candidate they
    # change an error by < count * 2**-250 (and the bound on ||W||^2 covers them too)
    bnd = 2.0 * ((lev - lev_r).abs() * dw[:, None, :]).sum(2) + tiny_d[:, None]
    band_lo = _TIE_RTOL * s2_hat * (1 - 2.0**-6)
    band_hi = _TIE_RTOL * (s2_hat * (1 + 2.0**-6) + tiny_d)
    m_lo = torch.where(valid, d_hat - bnd, torch.inf).amin(1)
    sure_in = valid & (d_hat + bnd <= m_lo[:, None] + band_lo[:, None])
    sure_out = ~valid | (d_hat - bnd > band_hi[:, None])
    s_best = torch.where(sure_in, grid, _BIG).amin(1)
    decided = sol["has"] & (sure_in | sure_out).all(1)
    decided &= ~((tiny > 0) & (s_best - n < -126))  # zero threshold reaches subnormals
    return torch.where(decided, s_best, 0), decided


def _prepare_many(ws: Sequence[Tensor], n: int, per_channel: bool, axis: int, what: str):
    """Validate and view each input; returns per-tensor job dicts."""
    jobs = []
    for i, w in enumerate(ws):
        name = what if len(ws) == 1 and what == "w" else f"{what}[{i}]"
        check_float(w, name=name, finite=False)
        job = {"w": w, "name": name, "cap": _max_exponent(w.dtype)}
        x = w.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x, job["restore"] = as_rows(x, per_channel, axis, name)
        job["x"] = x
        jobs.append(job)
    return jobs


def _pad_cols(t: Tensor, width: int, value: float | int) -> Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


_SOLVER_ONE_THREAD_ROWS = 1024


def _solver_threads(device: torch.device, rows: int) -> contextlib.AbstractContextManager:
    """One intra-op thread for the solvers on CPU when they solve at most
    :data:`_SOLVER_ONE_THREAD_ROWS` rows (tensors, not channels). Their tensors are then small
    (``[G, J, W]`` candidate x bucket grids, a few hundred thousand elements): splitting each
    of their ~40 ops over threads saves little, and OpenMP's fork/join and spin-waits cost a
    lot on a busy machine (measured under load ~4 on 2 cores: 380 ms at 2 threads vs 16 ms at
    1 for the ResNet-50 decision). The elementwise passes over the weights keep every thread;
    so do per-channel solves (thousands of rows)."""
    return at_most_threads(1 if rows <= _SOLVER_ONE_THREAD_ROWS else None, device)


def _quantize_rows(
    ws: Sequence[Tensor], n: int, per_channel: bool, axis: int, what: str
) -> list[tuple[Tensor, Tensor]]:
    """The engine behind :func:`lbw_exact`, :func:`lbw_exact_channels`, :func:`lbw_exact_many`."""
    jobs = _prepare_many(ws, n, per_channel, axis, what)
    for j in jobs:
        j["s"] = None
    # 1. float32 per-tensor rows: counts-only fast path (one row per tensor)
    fast = [j for j in jobs if not per_channel and j["x"].dtype == torch.float32
            and j["x"].numel()]
    for dev in dict.fromkeys(j["x"].device for j in fast):
        grp = [j for j in fast if j["x"].device == dev]
        flat = [j["x"].reshape(-1).contiguous() for j in grp]
        fold, col0 = _fine_counts_many(flat)
        caps = torch.tensor([j["cap"] for j in grp], device=dev)
        with _solver_threads(dev, len(grp)):
            s, decided = _fast_decide(fold, n, caps, [j["name"] for j in grp], col0)
            dec = decided.tolist()
            hc = torch.arange(512, device=dev)
            hcol = torch.where(hc >= 2, hc - 254, _NOCOL).expand(len(grp), -1)
            tab = _level_table(s, hcol, n, torch.float32)  # [G, 1024]
        if any(dec):
            idx = [i for i, d in enumerate(dec) if d]
            outs = _lookup_many([flat[i] for i in idx], tab[idx])
            for i, wq in zip(idx, outs):
                grp[i]["wq"] = wq
                grp[i]["s"] = s[i]
    # 2. everything else: exact float64 statistics, all rows in one solve
    todo = [j for j in jobs if j["s"] is None and j["x"].numel()]
    stats = [_exact_rows(j["x"], j["name"]) for j in todo]
    for i, j in enumerate(todo):
        if j["x"].dtype == torch.float32 and _has_subnormals(stats[i][2], stats[i][4]):
            # float32 subnormals: solve in float64, where they are normal (exact upcast)
            j["x"] = j["x"].double()
            stats[i] = _exact_rows(j["x"], j["name"])
    if todo:
        hmax = max(st[1].shape[1] for st in stats)
        cnt = torch.cat([_pad_cols(st[1], hmax, 0.0) for st in stats])
        s1 = torch.cat([_pad_cols(st[2], hmax, 0.0) for st in stats])
        s2b = torch.cat([_pad_cols(st[3], hmax, 0.0) for st in stats])
        hcol = torch.cat([_pad_cols(st[4], hmax, _NOCOL) for st in stats])
        caps = torch.cat([torch.full((st[1].shape[0],), j["cap"], device=cnt.device)
                          for j, st in zip(todo, stats)])
        with _solver_threads(cnt.device, cnt.shape[0]):
            sol = _solve_rows(cnt, s1, s2b, hcol, n, caps)
        if bool((sol["has"] & ~torch.isfinite(sol["best"])).any()):
            bad = [j["name"] for j in todo]
            raise ValueError(f"{', '.join(bad)}: magnitudes too large for float64 error sums "
                             "(|w| above ~2**511); refusing to quantize")
        row = 0
        for j, st in zip(todo, stats):
            rows = st[1].shape[0]
            sj = sol["s"][row:row + rows]
            tab = _level_table(sj, st[4], n, j["x"].dtype)
            if st[0] is None:  # native statistics: 512 IEEE columns, the fast path's lookup
                j["wq"] = _lookup_many([j["x"].reshape(-1)], tab)[0]
            else:
                j["wq"] = torch.index_select(tab.reshape(-1), 0, st[0])
            j["s"] = sj if per_channel else sj[0]
            row += rows
    out = []
    for j in jobs:
        w, x = j["w"], j["x"]
        if not x.numel():
            wq = w.detach().clone()
            rows = x.shape[0] if per_channel else 1
            s = torch.zeros(rows, dtype=torch.int64, device=w.device)
            if per_channel and rows:
                wq = torch.zeros_like(wq)
            out.append((wq, s if per_channel else s[0]))
            continue
        wq = j["restore"](j["wq"]).to(w.dtype)
        out.append((wq, j["s"]))
    return out


def lbw_errors(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """The exact quantization error ``||2**s Q*(s) - W||**2`` for every candidate exponent.

    Returns ``(s_grid: Tensor[S] int64, err: Tensor[S] float64)`` -- the curve
    :func:`lbw_exact` minimises (useful for plots and for checking the solver).
    """
    check_float(w, finite=False)
    n = pot_levels_count(bits)
    x = w.detach().reshape(1, -1).double()
    if x.numel() == 0:
        return torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64)
    _, cnt, s1, s2b, hcol = _exact_rows(x, "w")
    cap = torch.tensor([_max_exponent(w.dtype)], device=x.device)
    sol = _solve_rows(cnt, s1, s2b, hcol, n, cap)
    if not bool(sol["has"][0]):
        return torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float64)
    v = sol["valid"][0]
    return sol["grid"][0][v], sol["err"][0][v]


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
    weight's bucket up in the winning ``s``'s table. float32 takes a counts-only fast path (7
    more mantissa bits per bucket, a certified decision) and falls back to the float64 sums
    when it cannot certify. Ties: see the module docstring. Half inputs are computed in float32
    (exact) and the levels rounded back to the input dtype (levels below the dtype's range
    become 0; ``s`` is capped so ``2**s`` stays finite). float64 subnormals (below 2**-1022)
    are treated as zero; float32 subnormals are handled exactly. This is
    :func:`lbw_exact_many` on one tensor (bit-identical by construction).

    Raises:
        ValueError: NaN/Inf in ``w``, non-float ``w``, ``bits`` outside [2, 8], or float64
            magnitudes whose squares overflow (above ~2**511).
    """
    n = pot_levels_count(bits)
    wq, s = _quantize_rows([w], n, False, 0, "w")[0]
    return wq, int(s)


def lbw_exact_channels(w: Tensor, bits: int, axis: int = 0) -> tuple[Tensor, Tensor]:
    """Per-channel exact LBW: each slice along ``axis`` gets its own least-squares exponent.

    Args:
        w: weights ``Tensor[..., C, ...]`` (at least 1 dim), float16/bfloat16/float32/float64.
        bits: b in [2, 8]. axis: the channel axis (output channels: 0 for conv/linear).

    Returns:
        ``(wq, s)``: ``wq`` of ``w``'s shape/dtype/device; ``s: Tensor[C]`` int64 with
        ``wq.select(axis, c)`` in ``2**s[c] * {0, +-2**(1-n), ..., +-1}``. Bit-identical to
        ``lbw_exact(w.select(axis, c), bits)`` for every channel (values and ``s``, same ties;
        an all-zero channel gives zeros and ``s = 0``). O(N) in one vectorised pass: one
        histogram with per-channel offsets and one solve over all channels (float64 bucket
        sums; no Python loop over channels).

    Raises:
        ValueError: as :func:`lbw_exact`, plus a 0-dim ``w`` or ``axis`` out of range.
    """
    n = pot_levels_count(bits)
    return _quantize_rows([w], n, True, axis, "w")[0]


def lbw_exact_many(
    tensors: Sequence[Tensor], bits: int, per_channel: bool = False
) -> list[tuple[Tensor, Tensor]]:
    """Quantize many tensors (e.g. every LBW layer of a model) in one vectorised pass.

    Args:
        tensors: any float tensors (shapes, dtypes and devices may differ).
        bits: b in [2, 8], shared by all.
        per_channel: one exponent per slice along axis 0 (output channel) of each tensor.

    Returns:
        ``[(wq_i, s_i)]`` in input order: ``wq_i`` like ``tensors[i]``; ``s_i`` a 0-dim int64
        tensor (per tensor) or ``Tensor[C_i]`` int64 (per channel). Bit-identical to
        :func:`lbw_exact` (or :func:`lbw_exact_channels` with ``axis=0``) on each tensor.

    One histogram row per tensor (or channel), one solve for all rows, one table lookup per
    tensor: the fixed cost of a call is paid once, not once per layer.

    Raises:
        ValueError naming ``tensors[i]``: NaN/Inf, non-float, 0-dim with ``per_channel``;
        ``bits`` outside [2, 8].
    """
    if isinstance(tensors, Tensor):
        raise ValueError("tensors must be a sequence of tensors, got a single Tensor")
    n = pot_levels_count(bits)
    return _quantize_rows(list(tensors), n, per_channel, 0, "tensors")


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
    # the error is a parabola in the level: above the dtype's largest power the best is it
    s_k = s_k.clamp(max=_max_exponent(w.dtype))
    lvl = torch.ldexp(torch.ones_like(u), s_k.double())
    g = torch.where(pos, v * (lvl - u / v) ** 2 - u * u / v, torch.inf)
    k0 = int(torch.argmin(g))  # first minimum = smallest k0
    s = int(s_k[k0])
    keep = torch.zeros_like(a, dtype=torch.bool)
    keep[order[: k0 + 1]] = True
    wq = torch.where(keep, torch.sign(x) * float(2.0**s), torch.zeros_like(x))
    return wq.view(w.shape).to(w.dtype), s


# ---------------------------------------------------------------- the mu scheme (2.8)-(2.9)
#
# lbw_approx's Q depends on each weight only through its sign and its *level index* (how many
# of the n thresholds of (2.8) lie at or below |w|); s only through per-level counts and
# sums of |w|. The engine below computes the level index by exact comparisons against the
# very threshold values the definition computes (so Q is the definition's), accumulates
# count and float64 sum per level, and looks the result up in a per-row table built with the
# definition's float ops. s = floor(log2(4u / 3v)) is decided from the per-level sums and
# *certified*: u and v are sums of exact non-negative float64 terms, so any order of addition
# (the definition's element-by-element sum, ours per level) is within (length) ulps of the
# exact value; unless 4u / 3v lies that close to a power of two, every order gives the same
# s. A row that cannot be certified sends its tensor to the definition's code
# (:func:`_mu_rows_reference`), as do float64 inputs (whose products may underflow).

_MU_MAXN = 64  # thresholds per row the C kernels take (n <= 64 at b <= 8)


def _mu_bounds(mu_t: Tensor, n: int) -> Tensor:
    """The ``n`` ascending thresholds of (2.8) per row, ``Tensor[R, n]`` in ``mu_t``'s dtype:
    ``2**(2-n) mu / 3``, then ``mu * 2**-(n-2), ..., mu * 2**0``. This float arithmetic is
    part of the definition (thresholds of a tiny mu round)."""
    exps = torch.arange(n - 2, -1, -1, device=mu_t.device, dtype=mu_t.dtype)
    mu_c = mu_t[:, None]
    return torch.cat([(2.0 ** (2 - n)) * mu_c / 3.0, torch.ldexp(mu_c, -exps[None])], 1)


def _mu_q(idx: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(q, t)`` for level indices ``idx`` (thresholds at or below ``|w|``, 0..n): Q's
    magnitude ``2**-t`` in ``dtype`` (0 where ``idx == 0``) and ``t``; same shape."""
    t = (n - idx).clamp(max=n - 1)
    q = torch.where(idx > 0, torch.ldexp(torch.ones(idx.shape, dtype=dtype, device=idx.device),
                                         -t.to(dtype)),
                    torch.zeros((), dtype=dtype, device=idx.device))
    return q, t


_MU_CONST: dict[tuple, dict[str, Tensor]] = {}


def _mu_consts(n: int, partial_terms: int | None, device) -> dict[str, Tensor]:
    """Per-(n, partial_terms, device) constants of the engine (cached): ``qv``/``qv2``
    float64 ``[n+1]``: ``2**-t`` and ``2**-2t`` of each level index where (2.9) sums it, else
    0; ``sq`` float32 ``[1, 2, n+1]``: ``(-1 * q, +1 * q)`` with the definition's float32
    ``q``; ``shift`` int32 ``[1, n-1]``: ``(n-1-j) << 23`` for j = 1..n-1."""
    key = (n, partial_terms, str(device))
    if key not in _MU_CONST:
        idx = torch.arange(n + 1, device=device)
        q, t = _mu_q(idx, n, torch.float32)
        use = idx > 0
        if partial_terms is not None:
            use = use & (t < partial_terms)
        qv = torch.where(use, _pow2(-t), 0.0)
        sg = torch.tensor([-1.0, 1.0], dtype=torch.float32, device=device)[None, :, None]
        j = torch.arange(1, max(n, 1), device=device, dtype=torch.int32)
        _MU_CONST[key] = {"qv": qv, "qv2": qv * qv, "sq": sg * q[None, None, :],
                          "shift": ((n - 1 - j) << 23)[None]}
    return _MU_CONST[key]


def _mu_rows_reference(
    rows: Tensor, mu_t: Tensor, n: int, partial_terms: int | None, cap: int
) -> tuple[Tensor, Tensor]:
    """The definition, element by element (float64 sums over the rows): ``(wq Tensor[R, L]
    in rows' dtype, s Tensor[R] int64)`` for rows ``Tensor[R, L]`` (float32/float64) and
    validated ``mu_t: Tensor[R]``. The engine's fallback and float64 path."""
    a = rows.abs()
    bounds = _mu_bounds(mu_t, n)
    idx = torch.searchsorted(bounds.contiguous(), a.contiguous(), right=True)  # 0: zero
    q_mag, t = _mu_q(idx, n, a.dtype)
    nz = idx > 0
    use = nz if partial_terms is None else nz & (t < partial_terms)
    ad = a.double()
    qd = q_mag.double()
    u = torch.where(use, ad * qd, 0.0).sum(1)
    v = torch.where(use, qd * qd, 0.0).sum(1)
    ok = (v != 0) & (u != 0) & (mu_t != 0)
    s = _floor_log2(torch.where(ok, 4.0 * u / (3.0 * torch.where(ok, v, 1.0)), 1.0))
    s = torch.where(ok, s.clamp(max=cap), 0)
    scale = _pow2(s).to(rows.dtype)[:, None]
    wq = torch.where(ok[:, None], torch.sign(rows) * q_mag * scale, torch.zeros_like(rows))
    return wq, s


def _mu_solve(
    cnt: Tensor, usum: Tensor, mu_t: Tensor, n: int, partial_terms: int | None, cap: Tensor,
    length: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """s of (2.9) from per-level statistics of float32 rows.

    Args:
        cnt, usum: ``Tensor[R, n+1]`` count (int64) and float64 sum of ``|w|`` per level
            index (any order of addition); mu_t: ``Tensor[R]``; cap: ``Tensor[R]`` int64
            largest allowed s; length: ``Tensor[R]`` elements per row.

    Returns ``(s, ok, certain)``, each ``Tensor[R]``: ``s`` (0 where not ``ok``), ``ok`` (a
    non-zero Q and mu), and ``certain``: the definition's element-wise float64 sums, in
    whatever order, give this same ``s``. Its products ``|w| 2**-t`` and ``2**-2t`` are exact
    (float32 magnitudes, t <= 63), so its u and v, and ours, are within ``gamma_h`` (h <
    length + 2n + 128 additions deep) of the exact sums; 4u and the division and 3v round once
    each. Their ratios therefore differ by less than ``(2 length + 4n + 256) 2**-52``
    relatively; ``certain`` asks for 8 times that margin to the binade's ends.
    """
    c = _mu_consts(n, partial_terms, cnt.device)
    u = (usum * c["qv"]).sum(1)
    v = (cnt.double() * c["qv2"]).sum(1)
    ok = (v != 0) & (u != 0) & (mu_t != 0)
    r = torch.where(ok, 4.0 * u / (3.0 * torch.where(ok, v, 1.0)), 1.0)
    frac, e = torch.frexp(r)  # r = frac * 2**e, frac in [1/2, 1): floor(log2 r) = e - 1
    k = e.to(torch.int64) - 1
    tol = 8.0 * (2.0 * length.double() + (4 * n + 256)) * 2.0**-52
    certain = ~ok | ((tol < 0.25) & (frac * (1.0 - tol) >= 0.5) & (frac * (1.0 + tol) < 1.0))
    s = torch.where(ok, torch.minimum(k, cap), 0)
    return s, ok, certain


def _mu_tables(s: Tensor, ok: Tensor, n: int) -> Tensor:
    """float32 ``Tensor[R, 2, n+1]``: the value of a negative / positive non-zero weight at
    each level index, by the definition's ops ``(sign * q) * 2**s`` (0 where not ``ok``).
    Weights equal to +-0 quantize to +0 (``sign(0) = 0``)."""
    scale = _pow2(s).to(torch.float32)[:, None, None]
    val = _mu_consts(n, None, s.device)["sq"] * scale
    return torch.where(ok[:, None, None], val, torch.zeros((), dtype=torch.float32,
                                                           device=s.device))


def _mu_fast_flags(mu_t: Tensor, bounds: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """For float32 rows: ``(mb int32 [R], fast bool [R])`` -- mu's bit pattern, and whether
    the thresholds after the first are exactly ``mu * 2**(j+1-n)``, all normal (the C
    kernel then reads the level index off the bit distance to mu)."""
    mb = mu_t.contiguous().view(torch.int32)
    fast = (mb > 0) & (mb < 0x7F800000) & ((mb >> 23) >= n - 1)
    if n > 1:
        want = mb[:, None] - _mu_consts(n, None, mu_t.device)["shift"]
        fast &= (bounds[:, 1:].contiguous().view(torch.int32) == want).all(1)
    return mb, fast


def _mu_jobs(
    ws: Sequence[Tensor], n: int, mus: Sequence, ratio: float | None, partial_terms: int | None,
    per_channel: bool, axis: int, what: str
) -> list[dict]:
    """Validate each tensor (in the order :func:`lbw_approx` always checked) and view it as
    rows; ``mus[i]``: an explicit mu (float or Tensor) or None."""
    if partial_terms is not None and partial_terms < 1:
        raise ValueError(f"partial_terms must be >= 1, got {partial_terms}")
    jobs = []
    for i, (w, mu) in enumerate(zip(ws, mus)):
        name = what if len(ws) == 1 and what == "w" else f"{what}[{i}]"
        check_float(w, name=name, finite=False)
        x = w.detach().to(compute_dtype(w))
        try:
            rows, restore = as_rows(x, per_channel, axis, name)
        except ValueError:
            check_float(w, name=name)  # Inf/NaN is reported first, as always
            raise
        jobs.append({"w": w, "x": x, "rows": rows, "restore": restore, "name": name, "mu": mu,
                     "cap": _max_exponent(w.dtype)})
    return jobs


def _mu_value(j: dict, amax: Tensor | None, ratio: float | None) -> Tensor:
    """The validated ``mu_t: Tensor[R]`` (rows' dtype) of job ``j``; ``amax``: ``max |row|``
    in the rows' dtype (None when an explicit mu makes it unnecessary)."""
    x, rows, mu = j["x"], j["rows"], j["mu"]
    r = rows.shape[0]
    if mu is None and ratio is not None:  # the registry's rule: rounded in w's own dtype
        mu = ratio * amax.to(j["w"].dtype)
        mu = mu if r != 1 else mu[0]
    if mu is None:
        mu_t = 0.75 * amax
    else:
        mu_t = torch.as_tensor(mu, dtype=x.dtype, device=x.device).reshape(-1)
        if mu_t.numel() not in (1, r):
            raise ValueError(f"mu must be a scalar or have one value per channel ({r}), got "
                             f"{mu_t.numel()} values")
        mu_t = mu_t.expand(r)
    if not bool((torch.isfinite(mu_t) & (mu_t >= 0)).all()):
        raise ValueError(f"mu must be finite and >= 0, got {mu_t.tolist()[:4]}")
    return mu_t


def _mu_torch_rows(j: dict, n: int, ratio: float | None, partial_terms: int | None
                   ) -> tuple[Tensor, Tensor]:
    """One float32 job by torch ops: the engine's statistics, certification and tables
    (the definition's code when a row is uncertain). ``(wq rows, s)``."""
    rows = j["rows"]
    a = rows.abs()
    amax = a.amax(1)
    if not bool(torch.isfinite(amax).all()):
        check_float(j["w"], name=j["name"])
    mu_t = _mu_value(j, amax, ratio)
    r, length = rows.shape
    m = n + 1
    bounds = _mu_bounds(mu_t, n)
    idx = torch.searchsorted(bounds.contiguous(), a.contiguous(), right=True)
    key = idx + (torch.arange(r, device=rows.device) * m)[:, None]
    cnt = torch.bincount(key.reshape(-1), minlength=r * m).view(r, m)
    usum = torch.bincount(key.reshape(-1), weights=a.reshape(-1).double(),
                          minlength=r * m).view(r, m)
    cap = torch.full((r,), j["cap"], device=rows.device)
    s, ok, certain = _mu_solve(cnt, usum, mu_t, n, partial_terms, cap,
                               torch.full((r,), length, device=rows.device))
    if not bool(certain.all()):
        return _mu_rows_reference(rows, mu_t, n, partial_terms, j["cap"])
    tab = _mu_tables(s, ok, n).reshape(-1)
    key = key + (rows >= 0) * m + (torch.arange(r, device=rows.device) * m)[:, None]
    wq = torch.index_select(tab, 0, key.reshape(-1)).view(r, length)
    if bool((ok & (bounds[:, 0] == 0)).any()):  # zeros reach level 1 only then
        wq = wq.masked_fill(rows == 0, 0.0)
    return wq, s


def _mu_native_rows(jobs: list[dict], n: int, ratio: float | None, partial_terms: int | None
                    ) -> list[tuple[Tensor, Tensor]]:
    """Contiguous float32 CPU jobs through the C kernels: one pass for max |w| (and Inf/NaN),
    one for the per-level statistics, one table lookup; every row of every job at once."""
    rows = [j["rows"] for j in jobs]
    nrow = [x.shape[0] for x in rows]
    ptrs = torch.cat([x.data_ptr() + torch.arange(x.shape[0], dtype=torch.int64)
                      * (4 * x.shape[1]) for x in rows])
    lens = torch.cat([torch.full((x.shape[0],), x.shape[1], dtype=torch.int64) for x in rows])
    amax_b = _native.mu_absmax(ptrs, lens)
    bad = (amax_b >= 0x7F800000).split(nrow)
    for j, b in zip(jobs, bad):
        if bool(b.any()):
            check_float(j["w"], name=j["name"])
    amax = amax_b.view(torch.float32).split(nrow)
    mu_t = torch.cat([_mu_value(j, am, ratio) for j, am in zip(jobs, amax)])
    m = n + 1
    bounds = _mu_bounds(mu_t, n)
    mb, fast = _mu_fast_flags(mu_t, bounds, n)
    bnd = torch.zeros(len(mu_t), _MU_MAXN, dtype=torch.int32)
    bnd[:, :n] = bounds.view(torch.int32)
    nb = torch.full((len(mu_t),), n, dtype=torch.int32)
    fast8 = fast.to(torch.int8)
    cnt, usum = _native.mu_stats(ptrs, lens, bnd, nb, fast8, mb, m)
    cap = torch.cat([torch.full((k,), j["cap"], dtype=torch.int64) for k, j in zip(nrow, jobs)])
    s, ok, certain = _mu_solve(cnt, usum, mu_t, n, partial_terms, cap, lens)
    tab = _mu_tables(s, ok, n)
    outs = [torch.empty_like(x) for x in rows]
    out_ptrs = torch.cat([o.data_ptr() + torch.arange(o.shape[0], dtype=torch.int64)
                          * (4 * o.shape[1]) for o in outs])
    sure = torch.stack([c.all() for c in certain.split(nrow)]).tolist()
    if all(sure):
        _native.mu_lookup(ptrs, out_ptrs, lens, bnd, nb, fast8, mb, m, tab)
    else:  # the certain jobs' segments only
        keep = torch.cat([torch.full((k,), ok_, dtype=torch.bool) for k, ok_ in zip(nrow, sure)])
        _native.mu_lookup(ptrs[keep], out_ptrs[keep], lens[keep], bnd[keep], nb[keep],
                          fast8[keep], mb[keep], m, tab[keep])
    res = []
    for j, o, sj, mj, sure_j in zip(jobs, outs, s.split(nrow), mu_t.split(nrow), sure):
        if sure_j:
            res.append((o, sj))
        else:
            res.append(_mu_rows_reference(j["rows"], mj, n, partial_terms, j["cap"]))
    return res


def _approx_rows(
    ws: Sequence[Tensor], n: int, mus: Sequence, ratio: float | None,
    partial_terms: int | None, per_channel: bool, axis: int, what: str
) -> list[tuple[Tensor, Tensor]]:
    """The engine behind :func:`lbw_approx` and :func:`lbw_approx_many`: ``[(wq, s)]`` with
    ``s`` a ``Tensor[R]`` int64 (R = 1 per tensor, or channels)."""
    jobs = _mu_jobs(ws, n, mus, ratio, partial_terms, per_channel, axis, what)
    res: list[tuple[Tensor, Tensor] | None] = [None] * len(jobs)
    nat = []
    for i, j in enumerate(jobs):
        rows = j["rows"]
        if rows.numel() == 0:
            zs = torch.zeros(rows.shape[0], dtype=torch.int64, device=j["w"].device)
            res[i] = (torch.zeros_like(rows), zs)
        elif rows.dtype == torch.float64:  # float64 products may underflow: the definition
            a = rows.abs()
            amax = a.amax(1)
            if not bool(torch.isfinite(amax).all()):
                check_float(j["w"], name=j["name"])
            mu_t = _mu_value(j, amax if j["mu"] is None else None, ratio)
            res[i] = _mu_rows_reference(rows, mu_t, n, partial_terms, j["cap"])
        elif (_NATIVE and rows.device.type == "cpu" and rows.shape[1] < _native._MAX_NUMEL
              and _native.lib() is not None):
            j["rows"] = rows.contiguous()
            nat.append(i)
        else:
            res[i] = _mu_torch_rows(j, n, ratio, partial_terms)
    if nat:
        for i, r in zip(nat, _mu_native_rows([jobs[i] for i in nat], n, ratio, partial_terms)):
            res[i] = r
    out = []
    for j, (wq, s) in zip(jobs, res):  # type: ignore[misc]
        if j["rows"].numel() == 0:
            out.append((torch.zeros_like(j["w"]).detach(), s))
        else:
            out.append((j["restore"](wq).to(j["w"].dtype), s))
    return out


def lbw_approx(
    w: Tensor,
    bits: int,
    mu: float | Tensor | None = None,
    partial_terms: int | None = None,
    per_channel: bool = False,
    axis: int = 0,
    mu_ratio: float | None = None,
) -> tuple[Tensor, int | Tensor]:
    """The paper's semi-analytical scheme: Q from thresholds on mu (2.8), optimal power s (2.9).

    Args:
        w: weights, any shape/float dtype/device.
        bits: b in [2, 8]; ``n = 2**(b-2)`` magnitudes.
        mu: the single parameter of (2.8); default ``3/4 * max|W|`` (section 2.2), per channel
            ``3/4 * max|W_c|`` with ``per_channel`` (a ``Tensor[C]`` gives each channel its
            own). Magnitudes ``>= mu`` map to Q = +-1; ``[2**-t mu, 2**(1-t) mu)`` to +-2**-t
            (t = 1..n-2); ``[2**(2-n) mu / 3, 2**(2-n) mu)`` to +-2**(1-n); below that to 0
            (b = 2: one threshold ``2 mu / 3``).
        partial_terms: if set, the sums of (2.9) keep only t < partial_terms (the paper used 4);
            Q itself always uses every level.
        per_channel, axis: one mu and one s per slice along ``axis``.
        mu_ratio: without ``mu``, use ``mu = mu_ratio * max|W|`` (per channel ``max|W_c|``)
            rounded in ``w``'s own dtype -- the registry's ``lbw-approx`` rule (for float16/
            bfloat16 it differs from the default, whose ``3/4 max|W|`` is a float32 product).

    Returns:
        ``(wq, s)`` with ``wq = 2**s Q`` in ``w``'s dtype and ``s = floor(log2(4u / 3v))``,
        ``u = sum_t 2**-t ||W_[t]||_1``, ``v = sum_t k_t 2**-2t`` -- the minimiser over integer s
        of ``||2**s Q - W||**2`` for this Q (ties -> larger s), capped so ``2**s`` is finite
        in ``w``'s dtype. All-zero Q gives zeros, s = 0. ``s`` is a Python int, or a
        ``Tensor[C]`` int64 with ``per_channel``.

    Arithmetic (part of the definition): half inputs are computed in float32, float64 in
    float64; thresholds and mu in that dtype; u and v as float64 sums (their rounding can
    only matter when ``4u / 3v`` is within a few ulps per weight of a power of two, and then
    the sums are taken element by element, see the comment above :func:`_mu_bounds`). On CPU
    float32 work runs in the C kernels of :mod:`lowbit.quant._native` when they load (same
    bits). This is :func:`lbw_approx_many` on one tensor (bit-identical by construction).
    """
    check_float(w, finite=False)  # Inf/NaN: found by the engine's max|W| pass
    try:
        n = pot_levels_count(bits)
        if partial_terms is not None and partial_terms < 1:
            raise ValueError(f"partial_terms must be >= 1, got {partial_terms}")
    except ValueError:
        check_float(w)  # Inf/NaN is reported first, as always
        raise
    wq, s = _approx_rows([w], n, [mu], mu_ratio, partial_terms, per_channel, axis, "w")[0]
    return wq, s if per_channel else int(s[0])


def lbw_approx_many(
    tensors: Sequence[Tensor],
    bits: int,
    mu: Sequence[float | Tensor | None] | None = None,
    partial_terms: int | None = None,
    per_channel: bool = False,
    mu_ratio: float | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """:func:`lbw_approx` on many tensors (e.g. every lbw-mu layer of a model) in one pass.

    Args:
        tensors: any float tensors (shapes, dtypes and devices may differ).
        bits: b in [2, 8], shared by all.
        mu: None, or one entry per tensor: an explicit mu (float, or ``Tensor[C]`` per
            channel) or None for the default ``3/4 max|W|`` of :func:`lbw_approx`.
        partial_terms: as :func:`lbw_approx`, shared by all.
        per_channel: one mu and one s per slice along axis 0 (output channel).
        mu_ratio: if set, the tensors without an explicit mu use ``mu = mu_ratio * max|W|``
            (per channel ``max|W_c|``) *rounded in the tensor's own dtype* -- the rule of the
            registry's ``lbw-approx`` (``LbwApproxParams.mu_ratio``). For float32/float64
            tensors and ratio 0.75 this is the default; for float16/bfloat16 the product is
            rounded to the half dtype first.

    Returns:
        ``[(wq_i, s_i)]`` in input order: ``wq_i`` like ``tensors[i]`` (contiguous);
        ``s_i`` a 0-dim int64 tensor (per tensor) or ``Tensor[C_i]`` int64 (per channel).
        Bit-identical to ``lbw_approx(tensors[i], bits, mu[i], partial_terms, per_channel)``
        (with ``mu_ratio``: to ``lowbit.quant.quantize("lbw-approx", ...)``'s values).

    One pass for max|W| and Inf/NaN, one for the per-level statistics, one table lookup over
    all tensors together (C kernels on CPU float32), so a training step pays the fixed cost of
    a call once, not once per layer.

    Raises:
        ValueError naming ``tensors[i]``: NaN/Inf, non-float, 0-dim with ``per_channel``, a
        bad mu; ``bits`` outside [2, 8]; ``partial_terms < 1``.
    """
    if isinstance(tensors, Tensor):
        raise ValueError("tensors must be a sequence of tensors, got a single Tensor")
    ws = list(tensors)
    n = pot_levels_count(bits)
    mus = [None] * len(ws) if mu is None else list(mu)
    if len(mus) != len(ws):
        raise ValueError(f"mu must have one entry per tensor ({len(ws)}), got {len(mus)}")
    out = _approx_rows(ws, n, mus, mu_ratio, partial_terms, per_channel, 0, "tensors")
    return [(wq, s if per_channel else s[0]) for wq, s in out]


def _round_rows(x: Tensor, s: Tensor, n: int) -> Tensor:
    """Round the rows of ``x: Tensor[R, L]`` (float32/float64) onto ``2**s[r]`` LBW grids
    (nearest level, ties to the larger magnitude, zeros/subnormals to 0); same shape."""
    key, hcol, _ = _row_keys(x, "w")
    tab = _level_table(s, hcol, n, x.dtype)
    return torch.index_select(tab.reshape(-1), 0, key).view(x.shape)


def inq(
    w: Tensor, bits: int, per_channel: bool = False, axis: int = 0
) -> tuple[Tensor, int | Tensor]:
    """INQ's power-of-two rounding (Zhou et al. 2017) with its exponent range from max|W|.

    INQ sets ``n1 = floor(log2(4 max|W| / 3))`` and ``n2 = n1 + 1 - 2**(b-1)/2``, levels
    ``{0, +-2**n2, ..., +-2**n1}`` and thresholds at the midpoints ``(a + b)/2`` of neighbouring
    levels -- the LBW grid with ``s = n1`` fixed instead of optimised (capped so ``2**s`` is
    finite in ``w``'s dtype). Returns ``(wq, s=n1)``; with ``per_channel`` one ``n1`` per slice
    along ``axis`` (``s: Tensor[C]`` int64, an all-zero channel gives zeros and 0).
    """
    check_float(w)
    n = pot_levels_count(bits)
    x = w.detach().to(compute_dtype(w))
    rows, restore = as_rows(x, per_channel, axis)
    if rows.numel() == 0:
        zs = torch.zeros(rows.shape[0], dtype=torch.int64, device=w.device)
        return w.detach().clone(), zs if per_channel else 0
    amax = rows.abs().amax(1).double()
    pos = amax > 0
    s = _floor_log2(torch.where(pos, 4.0 * amax / 3.0, 1.0))
    s = torch.where(pos, s.clamp(max=_max_exponent(w.dtype)), 0)
    wq = restore(_round_rows(rows, s, n)).to(w.dtype)
    return wq, s if per_channel else int(s[0])
