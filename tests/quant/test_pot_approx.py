"""lbw_approx / lbw_approx_many (LBW-Net's mu scheme, eqs. 2.8-2.9): bit identity with the
definition as it was written element by element (kept here as the oracle), on the C kernels
and the torch path, for every dtype, per tensor and per channel, ties at the thresholds,
zeros, subnormals, partial sums and the errors; and s against exact rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit.quant._native as native
import lowbit.quant.pot as pot
from lowbit.quant import get, lbw_approx, quantize
from lowbit.quant.pot import lbw_approx_many
from lowbit.quant.registry import LbwApproxParams
from tests.quant._oracles import make_weights
from tests.quant.test_pot_many import DTYPES, bits_equal

# ------------------------------------------------------------------ the oracle (verbatim)
# lowbit.quant.pot.lbw_approx as of commit aeacbc3 (element-wise searchsorted and float64
# sums), with the small helpers it used written out here.


def _o_check_float(w: torch.Tensor, name: str = "w") -> None:
    if w.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"{name} must be a floating tensor, got dtype {w.dtype}")
    if w.numel() and not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); refusing to quantize")


def _o_as_rows(w, per_channel, axis=0):
    if not per_channel:
        return w.reshape(1, w.numel()), lambda t: t.reshape(w.shape)
    if w.dim() == 0:
        raise ValueError("w: per-channel quantization needs at least 1 dim, got a 0-dim tensor")
    if not -w.dim() <= axis < w.dim():
        raise ValueError(f"w: axis {axis} out of range for shape {tuple(w.shape)}")
    ax = axis % w.dim()
    moved = w.movedim(ax, 0)
    shape = moved.shape
    rows = moved.reshape(shape[0], math.prod(shape[1:]))
    return rows, lambda t: t.reshape(shape).movedim(0, ax)


def _o_floor_log2(r):
    _, e = torch.frexp(r)
    return e.to(torch.int64) - 1


def _o_pow2(k):
    hi = k.clamp(min=-1022)
    lo = (k - hi).clamp(min=-1022)
    f = torch.bitwise_left_shift(hi + 1023, 52).view(torch.float64)
    return f * torch.bitwise_left_shift(lo + 1023, 52).view(torch.float64)


def _o_max_exponent(dtype):
    return math.frexp(torch.finfo(dtype).max)[1] - 1


def oracle_lbw_approx(w, bits, mu=None, partial_terms=None, per_channel=False, axis=0):
    _o_check_float(w)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    n = 1 << (bits - 2)
    if partial_terms is not None and partial_terms < 1:
        raise ValueError(f"partial_terms must be >= 1, got {partial_terms}")
    x = w.detach().to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    rows, restore = _o_as_rows(x, per_channel, axis)
    r = rows.shape[0]
    if rows.numel() == 0:
        zs = torch.zeros(r, dtype=torch.int64, device=w.device)
        return torch.zeros_like(w).detach(), zs if per_channel else 0
    a = rows.abs()
    if mu is None:
        mu_t = 0.75 * a.amax(1)
    else:
        mu_t = torch.as_tensor(mu, dtype=x.dtype, device=x.device).reshape(-1)
        if mu_t.numel() not in (1, r):
            raise ValueError(f"mu must be a scalar or have one value per channel ({r}), got "
                             f"{mu_t.numel()} values")
        mu_t = mu_t.expand(r)
    if not bool((torch.isfinite(mu_t) & (mu_t >= 0)).all()):
        raise ValueError(f"mu must be finite and >= 0, got {mu_t.tolist()[:4]}")
    exps = torch.arange(n - 2, -1, -1, device=x.device, dtype=x.dtype)  # 2**-(n-2) .. 2**0
    mu_c = mu_t[:, None]
    bounds = torch.cat([(2.0 ** (2 - n)) * mu_c / 3.0, torch.ldexp(mu_c, -exps[None])], 1)
    idx = torch.searchsorted(bounds.contiguous(), a.contiguous(), right=True)  # 0: zero
    t = (n - idx).clamp(max=n - 1)
    nz = idx > 0
    q_mag = torch.where(nz, torch.ldexp(torch.ones_like(a), -t.to(a.dtype)), torch.zeros_like(a))
    use = nz if partial_terms is None else nz & (t < partial_terms)
    ad = a.double()
    qd = q_mag.double()
    u = torch.where(use, ad * qd, 0.0).sum(1)
    v = torch.where(use, qd * qd, 0.0).sum(1)
    ok = (v != 0) & (u != 0) & (mu_t != 0)
    s = _o_floor_log2(torch.where(ok, 4.0 * u / (3.0 * torch.where(ok, v, 1.0)), 1.0))
    s = torch.where(ok, s.clamp(max=_o_max_exponent(w.dtype)), 0)
    scale = _o_pow2(s).to(x.dtype)[:, None]
    wq = torch.where(ok[:, None], torch.sign(rows) * q_mag * scale, torch.zeros_like(rows))
    wq = restore(wq).to(w.dtype)
    return wq, s if per_channel else int(s[0])


def oracle_registry(w, p: LbwApproxParams):
    """The registry's lbw-approx of commit aeacbc3: mu = mu_ratio * max|W| in w's dtype."""
    mu = p.mu
    if mu is None and w.numel():
        rows, _ = _o_as_rows(w.detach(), p.per_channel, p.axis)
        mu = p.mu_ratio * rows.abs().amax(1)
        mu = mu if p.per_channel else mu[0]
    return oracle_lbw_approx(w, p.bits, mu=mu, partial_terms=p.partial_terms,
                             per_channel=p.per_channel, axis=p.axis)


# ------------------------------------------------------------------ helpers


needs_native = pytest.mark.skipif(native.lib() is None,
                                  reason=f"C kernels not available: {native.status()}")
PATHS = ["native", "torch"]
# the path fixture only switches the engine; it holds no state an example could change
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if request.param == "native":
        if native.lib() is None:
            pytest.skip(f"C kernels not available: {native.status()}")
    else:
        monkeypatch.setattr(pot, "_NATIVE", False)
    return request.param


def same(got, want) -> None:
    """(wq, s) pairs equal bit for bit (so -0.0 != 0.0), s of the same kind."""
    (gw, gs), (ww, ws) = got, want
    assert bits_equal(gw, ww), (gw, ww)
    if isinstance(ws, torch.Tensor):
        assert isinstance(gs, torch.Tensor) and torch.equal(gs, ws), (gs, ws)
    else:
        assert type(gs) is int and gs == ws, (gs, ws)


def thresholds(mu: float, n: int, dtype: torch.dtype) -> list[float]:
    """The n thresholds of (2.8) as the definition rounds them in ``dtype`` (float32/64),
    written out by hand: 2**(2-n) mu / 3, then mu * 2**-(n-2) .. mu."""
    m = torch.tensor(mu, dtype=dtype)
    first = (m * (2.0 ** (2 - n))) / 3.0
    return [float(first)] + [float(m * 2.0 ** -(n - 2 - k)) for k in range(n - 1)]


def _nextafter(v: float, toward: float, dtype: torch.dtype) -> float:
    return float(torch.nextafter(torch.tensor(v, dtype=dtype), torch.tensor(toward, dtype=dtype)))


@st.composite
def approx_case(draw):
    """A weight tensor (any dtype, 0..3 dims, specials), bits, per-channel/axis, partial
    terms and a mu: default, a ratio of max|W|, a power-of-two multiple of one of the weights
    (so weights sit exactly on thresholds), a per-channel tensor, zero or subnormal."""
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0 if ndim else 1, 6)) for _ in range(ndim))
    numel = math.prod(shape)
    w = make_weights(draw(st.integers(0, 2**31 - 1)),
                     draw(st.sampled_from(["gauss", "student", "laplace", "outliers", "zeros",
                                           "repeated", "mixed", "tiny", "huge"])),
                     max(numel, 1), draw(st.integers(-6, 6)))[:numel]
    bits = draw(st.integers(2, 8))
    n = 1 << (bits - 2)
    kind = draw(st.sampled_from(["plain", "subnormal", "allzero", "ties", "negzero"]))
    w = w.clone()
    if kind == "subnormal" and numel:
        tiny = {torch.float16: 2.0**-20, torch.bfloat16: 2.0**-130,
                torch.float32: 2.0**-140, torch.float64: 2.0**-1060}[dtype]
        w[::2] = w[::2].sign() * tiny * (1 + torch.arange(w[::2].numel()) % 3)
    elif kind == "allzero":
        w.zero_()
    elif kind == "negzero" and numel:
        w[::3] = -0.0
    lim = torch.finfo(dtype).max / 4
    w = w.clamp(-lim, lim).to(dtype)
    per_channel = draw(st.booleans()) and ndim >= 1
    axis = draw(st.integers(-ndim, ndim - 1)) if per_channel else 0
    mu_kind = draw(st.sampled_from(["default", "ratio", "weight", "channels", "zero", "tiny"]))
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    mx = float(w.to(cdt).abs().max()) if numel else 1.0
    mu = None
    if mu_kind == "ratio":
        mu = draw(st.sampled_from([0.1, 0.5, 0.75, 1.0, 2.0])) * mx
    elif mu_kind == "weight" and numel:
        mu = float(w.to(cdt).abs().reshape(-1)[draw(st.integers(0, numel - 1))]) * \
            2.0 ** draw(st.integers(0, n))
    elif mu_kind == "channels" and per_channel and numel:
        c = shape[axis]
        mu = torch.rand(c, generator=torch.Generator().manual_seed(1)).to(cdt) * mx
    elif mu_kind == "zero":
        mu = 0.0
    elif mu_kind == "tiny":
        mu = draw(st.sampled_from([1e-44, 2.0**-126, 2.0**-100, 1e-300]))
    if kind == "ties" and numel and mu is not None and not isinstance(mu, torch.Tensor):
        # weights exactly on the thresholds and one float step either side
        tb = thresholds(mu, n, cdt)
        vals = []
        for b in tb:
            vals += [b, _nextafter(b, 0.0, cdt), _nextafter(b, math.inf, cdt)]
        vt = torch.tensor(vals, dtype=cdt)
        flat = w.to(cdt).reshape(-1).clone()
        k = min(numel, vt.numel())
        flat[:k] = vt[:k] * torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0).to(cdt)
        # thresholds of a mu near the dtype's top lie above its largest finite value: keep
        # the weights finite (float16 65504 with mu = 2 * 65504 gave -inf and a failing case)
        fmax = torch.finfo(dtype).max
        w = flat.clamp(-fmax, fmax).to(dtype)
    if mu is not None and not isinstance(mu, torch.Tensor) and not math.isfinite(
            float(torch.tensor(mu, dtype=cdt))):
        mu = None
    w = w.view(shape)
    if draw(st.booleans()) and ndim >= 2:  # non-contiguous input
        w = w.transpose(0, -1).contiguous().transpose(0, -1)
    pt = draw(st.sampled_from([None, None, 1, 2, 4, 7]))
    return w, bits, mu, pt, per_channel, axis


# ------------------------------------------------------------------ bit identity


@settings(max_examples=250, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(case=approx_case())
def test_lbw_approx_is_bit_identical_to_the_definition(path, case) -> None:
    w, bits, mu, pt, pc, axis = case
    want = oracle_lbw_approx(w, bits, mu, pt, pc, axis)
    same(lbw_approx(w, bits, mu, pt, pc, axis), want)


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(cases=st.lists(approx_case(), min_size=1, max_size=5), pc=st.booleans(),
       bits=st.integers(2, 8), pt=st.sampled_from([None, 3]), explicit=st.booleans())
def test_many_is_bit_identical_to_the_definition_per_tensor(path, cases, pc, bits, pt,
                                                            explicit) -> None:
    ws = [c[0] for c in cases]
    if pc:
        ws = [w if w.dim() else w.reshape(1) for w in ws]
    mus = [c[2] if explicit and not isinstance(c[2], torch.Tensor) else None for c in cases]
    got = lbw_approx_many(ws, bits, mu=mus if explicit else None, partial_terms=pt,
                          per_channel=pc)
    for w, m, (gw, gs) in zip(ws, mus, got):
        ww, wsv = oracle_lbw_approx(w, bits, m, pt, pc, 0)
        assert bits_equal(gw, ww)
        assert torch.equal(gs, torch.as_tensor(wsv)), (gs, wsv)
        assert gs.dtype == torch.int64 and gs.dim() == (1 if pc else 0)


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(cases=st.lists(approx_case(), min_size=1, max_size=4), pc=st.booleans(),
       bits=st.integers(2, 8), ratio=st.sampled_from([0.3, 0.75, 1.1]),
       pt=st.sampled_from([None, 4]))
def test_many_with_mu_ratio_is_the_registry_rule(path, cases, pc, bits, ratio, pt) -> None:
    ws = [c[0] if c[0].dim() else c[0].reshape(1) for c in cases]
    p = LbwApproxParams(bits=bits, mu_ratio=ratio, partial_terms=pt, per_channel=pc)
    got = lbw_approx_many(ws, bits, partial_terms=pt, per_channel=pc, mu_ratio=ratio)
    for w, (gw, gs) in zip(ws, got):
        ww, wsv = oracle_registry(w, p)
        assert bits_equal(gw, ww)
        assert torch.equal(gs, torch.as_tensor(wsv))
        res = quantize("lbw-approx", w, bits=bits, mu_ratio=ratio, partial_terms=pt,
                       per_channel=pc)
        assert bits_equal(res.values, ww)
        assert torch.equal(torch.as_tensor(res.exponent), torch.as_tensor(wsv))


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(case=approx_case(), threads=st.integers(1, 3))
def test_native_and_torch_paths_agree_at_any_thread_count(monkeypatch, case, threads) -> None:
    w, bits, mu, pt, pc, axis = case
    monkeypatch.setattr(native, "_PER_THREAD", 1)  # split even tiny tensors over threads
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = lbw_approx(w, bits, mu, pt, pc, axis)
    finally:
        torch.set_num_threads(old)
    monkeypatch.setattr(pot, "_NATIVE", False)
    same(a, lbw_approx(w, bits, mu, pt, pc, axis))
    same(a, oracle_lbw_approx(w, bits, mu, pt, pc, axis))


def test_large_float32_tensor_every_bits(path) -> None:
    """Sizes where the C kernels split work and summation order really differs."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300_001, generator=g) * torch.exp2(torch.randint(-8, 3, (300_001,),
                                                                     generator=g).float())
    for bits in range(2, 9):
        for pt in (None, 4):
            same(lbw_approx(w, bits, partial_terms=pt), oracle_lbw_approx(w, bits, None, pt))
        w2 = w.view(300_001, 1)[:300_000].view(1000, 300)
        same(lbw_approx(w2, bits, per_channel=True), oracle_lbw_approx(w2, bits, None, None,
                                                                         True))


def test_thresholds_ties_and_signs_exhaustive(path) -> None:
    """Every threshold, its float neighbours, +-0, subnormals, for every b and a normal and
    a subnormal-threshold mu: Q by hand from the rule of (2.8) (>= threshold goes up)."""
    for dtype in (torch.float32, torch.float64):
        for bits in range(2, 9):
            n = 1 << (bits - 2)
            for mu in (0.75, 3.0 * 2.0**-120, 1e-40):
                tb = thresholds(mu, n, dtype)
                vals = [0.0, -0.0, 2.0**-149, 1e-45, mu, 2 * mu, 10.0]
                for b in tb:
                    vals += [b, _nextafter(b, 0.0, dtype), _nextafter(b, math.inf, dtype)]
                x = torch.tensor(vals + [-v for v in vals], dtype=dtype)
                wq, s = lbw_approx(x, bits, mu=mu)
                same((wq, s), oracle_lbw_approx(x, bits, mu=mu))
                if s == 0 and not bool((wq != 0).any()):
                    continue
                # Q by hand: number of thresholds at or below |x| -> level
                for xi, qi in zip(x.tolist(), wq.tolist()):
                    k = sum(1 for b in tb if b <= abs(xi))
                    want = 0.0 if k == 0 else 2.0 ** -min(n - k, n - 1)
                    want = math.copysign(want, xi) if xi != 0 else 0.0
                    got = qi / 2.0**s
                    assert got == want or (want == 0 and qi == 0), (xi, qi, s, want)


def test_zeros_quantize_to_positive_zero_and_negatives_below_threshold_to_negative_zero(
        path) -> None:
    x = torch.tensor([-0.0, 0.0, -1e-3, 1e-3, -1.0, 1.0])
    wq, s = lbw_approx(x, 3)
    assert wq.view(torch.int32).tolist()[:4] == [0, 0, -(2**31), 0]
    # a mu whose first threshold underflows to 0: zeros still quantize to +0
    wq, _ = lbw_approx(torch.tensor([0.0, -0.0, 1e-45]), 8, mu=1e-44)
    same((wq, _), oracle_lbw_approx(torch.tensor([0.0, -0.0, 1e-45]), 8, mu=1e-44))
    assert wq.view(torch.int32).tolist()[:2] == [0, 0]


# ------------------------------------------------------------------ s against exact sums


@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(1, 400), bits=st.integers(2, 8),
       pt=st.sampled_from([None, 2, 4]))
def test_s_is_the_exact_rational_floor_log2(path, seed, size, bits, pt) -> None:
    """s = floor(log2(4u/3v)) with u, v summed exactly (Fractions), Q by hand."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, generator=g) * 2.0 ** float(torch.randint(-20, 20, (1,), generator=g))
    n = 1 << (bits - 2)
    wq, s = lbw_approx(x, bits, partial_terms=pt)
    mu = float(0.75 * x.abs().max())
    tb = thresholds(mu, n, torch.float32)
    u = v = Fraction(0)
    for xi in x.tolist():
        k = sum(1 for b in tb if b <= abs(xi))
        if k == 0:
            continue
        t = min(n - k, n - 1)
        if pt is not None and t >= pt:
            continue
        u += Fraction(abs(xi)) / 2**t
        v += Fraction(1, 4**t)
    if u == 0:
        assert s == 0 and not bool((wq != 0).any())
        return
    r = 4 * u / (3 * v)
    e = r.numerator.bit_length() - r.denominator.bit_length()
    e = e if Fraction(2) ** e <= r else e - 1  # floor(log2 r), exactly
    assert Fraction(2) ** e <= r < Fraction(2) ** (e + 1)
    assert s == min(e, 127)


def test_power_of_two_ratio_ties_take_the_definitions_code(path, monkeypatch) -> None:
    """4u/3v exactly 1 (all weights 0.75 and 0.75 -+ one ulp pairs): not certifiable, so
    the tensor goes through the element-wise definition -- and still matches the oracle."""
    calls = []
    ref = pot._mu_rows_reference

    def spy(*a, **k):
        calls.append(1)
        return ref(*a, **k)

    monkeypatch.setattr(pot, "_mu_rows_reference", spy)
    up = _nextafter(0.75, 1.0, torch.float32)
    dn = 0.75 - (up - 0.75)
    x = torch.tensor([0.75] * 1000 + [up, dn] * 50)
    got = lbw_approx(x, 2, mu=0.5)
    assert calls
    same(got, oracle_lbw_approx(x, 2, mu=0.5))
    assert got[1] == 0
    calls.clear()
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    same(lbw_approx(x, 6), oracle_lbw_approx(x, 6))
    assert not calls  # an ordinary tensor is certified


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("dtype", DTYPES)
def test_errors_match_the_definition(path, dtype) -> None:
    x = torch.randn(4, 5).to(dtype)
    cases = [dict(bits=1), dict(bits=6, partial_terms=0), dict(bits=6, mu=-1.0),
             dict(bits=6, mu=float("nan")), dict(bits=6, mu=torch.ones(3), per_channel=True),
             dict(bits=6, per_channel=True, axis=5)]
    for kw in cases:
        with pytest.raises(ValueError) as want:
            oracle_lbw_approx(x, **kw)
        with pytest.raises(ValueError) as got:
            lbw_approx(x, **kw)
        assert str(got.value) == str(want.value)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[1, 2] = bad
        y[3, 0] = bad
        for kw in (dict(bits=6), dict(bits=6, per_channel=True), dict(bits=6, mu=0.5),
                   dict(bits=1), dict(bits=6, per_channel=True, axis=7)):
            with pytest.raises(ValueError, match="contains 2 NaN/Inf"):
                lbw_approx(y, **kw)
        with pytest.raises(ValueError, match=r"tensors\[1\] contains 2 NaN/Inf"):
            lbw_approx_many([x, y], 6)
    with pytest.raises(ValueError, match="must be a floating tensor"):
        lbw_approx(torch.ones(3, dtype=torch.int32), 6)
    with pytest.raises(ValueError, match="one entry per tensor"):
        lbw_approx_many([x, x], 6, mu=[None])
    with pytest.raises(ValueError, match="single Tensor"):
        lbw_approx_many(x, 6)


def test_registry_entry_is_the_old_rule() -> None:
    g = torch.Generator().manual_seed(5)
    for dtype in DTYPES:
        w = (torch.randn(8, 3, 3, 3, generator=g) * 0.1).to(dtype)
        for kw in (dict(), dict(mu_ratio=0.6, partial_terms=4), dict(per_channel=True),
                   dict(mu=0.05), dict(per_channel=True, axis=1, mu_ratio=0.9)):
            p = LbwApproxParams(bits=5, **kw)
            res = get("lbw-approx").fn(w, p)
            ww, ws = oracle_registry(w, p)
            assert bits_equal(res.values, ww)
            assert torch.equal(torch.as_tensor(res.exponent), torch.as_tensor(ws))
