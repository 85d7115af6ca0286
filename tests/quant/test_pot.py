"""LBW-Net quantizers against brute-force oracles written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant import inq, lbw_approx, lbw_errors, lbw_exact, lbw_ternary_sorted, pot_round
from tests.quant._oracles import brute_force_lbw, make_weights, nearest_pot, weights_st


def sq_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).sum())


@settings(max_examples=120, deadline=None)
@given(w=weights_st, bits=st.integers(2, 8))
def test_lbw_exact_matches_brute_force(w: torch.Tensor, bits: int) -> None:
    best, s_doc, _ = brute_force_lbw(w, bits)
    wq, s = lbw_exact(w, bits)
    s2 = float((w * w).sum())
    err = sq_err(wq, w)
    assert err <= best * (1 + 1e-9) + 1e-300
    assert err >= best * (1 - 1e-9)
    assert s == s_doc
    # the values really are on the grid 2**s * {0, +-2**(1-n), ..., +-1} (nearest level)
    assert torch.equal(wq, nearest_pot(w, s, 2 ** (bits - 2)).view_as(wq))
    assert s2 >= 0


@settings(max_examples=60, deadline=None)
@given(w=weights_st, bits=st.integers(2, 8))
def test_lbw_exact_float32_path_agrees(w: torch.Tensor, bits: int) -> None:
    """float32 inputs take the counts-only fast path; it must reach the same optimum."""
    w32 = w.float()
    if not torch.isfinite(w32).all():
        return
    best, s_doc, _ = brute_force_lbw(w32.double(), bits)
    wq, s = lbw_exact(w32, bits)
    assert wq.dtype == torch.float32
    assert s == s_doc
    assert sq_err(wq, w32) == pytest.approx(best, rel=1e-9, abs=1e-300)


def test_lbw_exact_large_float32_vs_oracle_errors() -> None:
    """A layer-sized tensor: the fast path's s minimises the exact error curve."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, 3, 3, generator=g) * 0.02
    for bits in range(2, 9):
        wq, s = lbw_exact(w, bits)
        grid, err = lbw_errors(w.double(), bits)
        s2 = float((w.double() ** 2).sum())
        assert int(grid[err <= err.min() + 1e-12 * s2].min()) == s
        assert sq_err(wq, w) == pytest.approx(float(err.min()), rel=1e-9)


def test_threshold_ties_round_to_larger_magnitude() -> None:
    # with s = 0 and b = 3 the levels are {0, 0.5, 1}; thresholds 0.25 and 0.75
    w = torch.tensor([0.25, 0.75, -0.25, -0.75, 0.2, 1.0, 0.5], dtype=torch.float64)
    q = pot_round(w, 0, 3)
    assert q.tolist() == [0.5, 1.0, -0.5, -1.0, 0.0, 1.0, 0.5]


def test_equal_error_exponents_pick_the_smaller_s() -> None:
    # |w| = 1.5 is equidistant from 1 (s=0) and 2 (s=1) in the ternary case
    wq, s = lbw_exact(torch.tensor([1.5, -1.5]), 2)
    assert s == 0 and wq.tolist() == [1.0, -1.0]
    # b = 8: scales far above max|W| tie up to float64 noise; the tightest one is chosen
    w = torch.randn(4096, generator=torch.Generator().manual_seed(5)) * 0.02
    _, s8 = lbw_exact(w, 8)
    assert 2.0 ** (s8 - 1) < float(w.abs().max()) < 2.0 ** (s8 + 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_device_preserved(dtype: torch.dtype) -> None:
    w = (torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype)
    wq, s = lbw_exact(w, 4)
    assert wq.dtype == dtype and wq.shape == w.shape and wq.device == w.device
    ref, s_ref = lbw_exact(w.double(), 4)
    assert s == s_ref
    assert torch.equal(wq.double(), ref)


def test_all_zero_single_element_empty_noncontiguous() -> None:
    wq, s = lbw_exact(torch.zeros(3, 3), 5)
    assert s == 0 and torch.count_nonzero(wq) == 0
    wq, s = lbw_exact(torch.tensor([0.3]), 4)
    assert wq.item() == 0.25 and s == -2  # 0.3 is nearest 2**-2
    wq, s = lbw_exact(torch.empty(0), 4)
    assert wq.numel() == 0 and s == 0
    base = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    nc = base.t()
    assert not nc.is_contiguous()
    wq_nc, s_nc = lbw_exact(nc, 4)
    wq_c, s_c = lbw_exact(nc.contiguous(), 4)
    assert s_nc == s_c and torch.equal(wq_nc, wq_c)


def test_subnormal_float32_inputs_are_exact() -> None:
    w = torch.tensor([1e-40, 3e-39, 0.0, -2e-41, 5e-45], dtype=torch.float32)
    for bits in (2, 4, 8):
        best, s_doc, _ = brute_force_lbw(w.double(), bits)
        wq, s = lbw_exact(w, bits)
        assert s == s_doc
        assert sq_err(wq, w) == pytest.approx(best, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_rejected(bad: float) -> None:
    w = torch.tensor([0.5, bad, 1.0])
    for fn in (lambda x: lbw_exact(x, 4), lbw_ternary_sorted, lambda x: lbw_approx(x, 4)):
        with pytest.raises(ValueError, match="NaN/Inf"):
            fn(w)


@pytest.mark.parametrize("bits", [0, 1, 9, 2.5, True])
def test_bits_out_of_range(bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        lbw_exact(torch.ones(3), bits)


def test_integer_input_rejected() -> None:
    with pytest.raises(ValueError, match="floating"):
        lbw_exact(torch.ones(3, dtype=torch.int32), 4)


@settings(max_examples=80, deadline=None)
@given(w=weights_st)
def test_ternary_formula_equals_exact_b2(w: torch.Tensor) -> None:
    wq_s, s_s = lbw_ternary_sorted(w)
    wq_e, _ = lbw_exact(w, 2)
    assert sq_err(wq_s, w) == pytest.approx(sq_err(wq_e, w), rel=1e-9, abs=1e-300)
    # structure of (2.7): the k largest magnitudes get sign * 2**s, the rest are zero
    nz = wq_s != 0
    if nz.any():
        assert torch.all(wq_s[nz].abs() == 2.0**s_s)
        assert float(w.abs()[nz].min()) >= float(w.abs()[~nz].max()) if (~nz).any() else True


def _approx_q_oracle(w: torch.Tensor, bits: int, mu: float) -> torch.Tensor:
    """Q of (2.8), written as the paper's case list with a Python loop."""
    n = 2 ** (bits - 2)
    out = []
    for x in w.double().reshape(-1).tolist():
        a = abs(x)
        sg = float(np.sign(x))
        if n == 1:
            out.append(sg if a >= 2 * mu / 3 else 0.0)
            continue
        if a < 2.0 ** (2 - n) * mu / 3:
            q = 0.0
        elif a < 2.0 ** (2 - n) * mu:
            q = 2.0 ** (1 - n)
        elif a >= mu:
            q = 1.0
        else:
            q = next(2.0**-t for t in range(1, n - 1) if 2.0**-t * mu <= a < 2.0 ** (1 - t) * mu)
        out.append(sg * q)
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(w=weights_st, bits=st.integers(2, 7), ratio=st.floats(0.3, 1.0))
def test_lbw_approx_q_and_optimal_power(w: torch.Tensor, bits: int, ratio: float) -> None:
    mu = ratio * float(w.abs().max())
    if mu == 0:
        return
    wq, s = lbw_approx(w, bits, mu=mu)
    q = _approx_q_oracle(w, bits, mu)
    if not q.any():
        assert torch.count_nonzero(wq) == 0
        return
    assert torch.equal(wq.double(), q * 2.0**s)
    # (2.9) is optimal for this fixed Q: brute force over s
    x = w.double().reshape(-1)
    errs = {t: float(((q * 2.0**t - x) ** 2).sum()) for t in range(s - 40, s + 41)}
    assert errs[s] <= min(errs.values()) * (1 + 1e-12) + 1e-300


def test_lbw_approx_default_mu_and_partial_terms() -> None:
    w = make_weights(3, "laplace", 500, -4)
    wq, s = lbw_approx(w, 6)
    wq2, s2 = lbw_approx(w, 6, mu=0.75 * float(w.abs().max()))
    assert s == s2 and torch.equal(wq, wq2)
    # partial sums (t = 0..3) only change s, never Q's pattern
    wq4, s4 = lbw_approx(w, 6, partial_terms=4)
    assert torch.equal(wq4 != 0, wq != 0)
    assert torch.equal(wq4 / 2.0**s4, wq / 2.0**s)
    # the exact solver is never worse than the approximation
    assert sq_err(lbw_exact(w, 6)[0], w) <= sq_err(wq, w) + 1e-15


def test_inq_levels_and_exponent() -> None:
    w = make_weights(4, "gauss", 300, -3)
    for bits in (3, 4, 5):
        wq, s = inq(w, bits)
        assert s == int(np.floor(np.log2(4 * float(w.abs().max()) / 3)))
        assert torch.equal(wq, nearest_pot(w, s, 2 ** (bits - 2)).view_as(wq))


@settings(max_examples=40, deadline=None)
@given(w=weights_st, bits=st.integers(2, 8))
def test_idempotent_and_never_worse_than_zero(w: torch.Tensor, bits: int) -> None:
    wq, s = lbw_exact(w, bits)
    wq2, s2 = lbw_exact(wq, bits)
    assert torch.equal(wq2, wq)
    assert sq_err(wq, w) <= float((w.double() ** 2).sum())


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_float32_fast_path_certifies_layer_sized_tensors(bits: int) -> None:
    """The counts-only path must decide on ordinary weights (not silently fall back to float64
    every time) and agree with the exact path whenever it decides."""
    from lowbit.quant.pot import _fast_decide, _fine_counts, _fine_keys

    decided = 0
    for seed in range(8):
        w = torch.randn(128, 64, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.02
        cnt = _fine_counts(_fine_keys(w))[None]
        s_fast, ok = _fast_decide(cnt, 2 ** (bits - 2), torch.tensor([127]), ["w"])
        if bool(ok[0]):
            decided += 1
            assert int(s_fast[0]) == lbw_exact(w.double(), bits)[1]
    assert decided >= 6
