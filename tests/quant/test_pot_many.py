"""Whole-model and per-channel exact LBW: bit identity with ``lbw_exact`` and brute force."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant import lbw_exact, lbw_exact_channels, lbw_exact_many
from tests.quant._oracles import brute_force_lbw, make_weights, nearest_pot

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float32: torch.int32, torch.float64: torch.int64}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bit pattern (so -0.0 and 0.0 differ)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    iv = _INT_VIEW[a.dtype]
    return torch.equal(a.contiguous().view(iv), b.contiguous().view(iv))


@st.composite
def tensor_st(draw, min_dim: int = 0) -> torch.Tensor:
    """One weight tensor: any of 4 dtypes, 0..3 dims (some empty), zeros, subnormals."""
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(min_dim, 3))
    shape = tuple(draw(st.integers(0 if ndim else 1, 5)) for _ in range(ndim))
    numel = 1
    for d in shape:
        numel *= d
    w = make_weights(draw(st.integers(0, 2**31 - 1)),
                     draw(st.sampled_from(["gauss", "student", "laplace", "outliers", "zeros",
                                           "repeated", "mixed", "tiny", "huge"])),
                     max(numel, 1), draw(st.integers(-6, 6)))[:numel]
    kind = draw(st.sampled_from(["plain", "subnormal", "allzero", "zerochannel"]))
    if kind == "subnormal" and numel:
        tiny = {torch.float16: 2.0**-20, torch.bfloat16: 2.0**-130,
                torch.float32: 2.0**-140, torch.float64: 2.0**-1060}[dtype]
        w = w.clone()
        w[::2] = w[::2].sign() * tiny * (1 + torch.arange(w[::2].numel()) % 3)
    elif kind == "allzero":
        w = torch.zeros_like(w)
    elif kind == "zerochannel" and ndim and shape[0] > 1:
        w = w.clone().view(shape)
        w[0] = 0.0
        w = w.reshape(-1)
    lim = torch.finfo(dtype).max / 4
    w = w.clamp(-lim, lim).to(dtype).view(shape)
    if draw(st.booleans()) and ndim >= 2:  # non-contiguous input
        w = w.transpose(0, -1).contiguous().transpose(0, -1)
    return w


@settings(max_examples=50, deadline=None)
@given(ws=st.lists(tensor_st(), min_size=1, max_size=6), bits=st.integers(2, 8))
def test_many_is_bit_identical_to_lbw_exact(ws: list[torch.Tensor], bits: int) -> None:
    out = lbw_exact_many(ws, bits)
    assert len(out) == len(ws)
    for w, (wq, s) in zip(ws, out):
        ref, s_ref = lbw_exact(w, bits)
        assert bits_equal(wq, ref)
        assert s.dtype == torch.int64 and s.dim() == 0 and int(s) == s_ref


@settings(max_examples=50, deadline=None)
@given(ws=st.lists(tensor_st(min_dim=1), min_size=1, max_size=5), bits=st.integers(2, 8))
def test_per_channel_is_bit_identical_to_lbw_exact_per_slice(ws: list[torch.Tensor],
                                                             bits: int) -> None:
    out = lbw_exact_many(ws, bits, per_channel=True)
    for w, (wq, s) in zip(ws, out):
        one, s_one = lbw_exact_channels(w, bits)
        assert bits_equal(wq, one) and torch.equal(s, s_one)
        assert s.shape == (w.shape[0],) and s.dtype == torch.int64
        for c in range(w.shape[0]):
            ref, s_ref = lbw_exact(w[c], bits)
            assert bits_equal(wq[c], ref), c
            assert int(s[c]) == s_ref


@settings(max_examples=40, deadline=None)
@given(w=tensor_st(min_dim=2), bits=st.integers(2, 8), data=st.data())
def test_per_channel_any_axis(w: torch.Tensor, bits: int, data) -> None:
    axis = data.draw(st.integers(-w.dim(), w.dim() - 1))
    wq, s = lbw_exact_channels(w, bits, axis=axis)
    assert wq.shape == w.shape and s.shape == (w.shape[axis],)
    for c in range(w.shape[axis]):
        ref, s_ref = lbw_exact(w.select(axis, c), bits)
        assert bits_equal(wq.select(axis, c), ref)
        assert int(s[c]) == s_ref


def _brute_force_channels(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, list[int]]:
    """Per channel: enumerate s, round each weight to the nearest level (ties up), keep the
    smallest s within 1e-12 ||W_c||^2 of the minimum; all-zero channel -> zeros, s = 0."""
    n = 2 ** (bits - 2)
    rows, ss = [], []
    for c in range(w.shape[0]):
        x = w[c].double().reshape(-1)
        _, s_doc, _ = brute_force_lbw(x, bits)
        ss.append(s_doc)
        rows.append(nearest_pot(x, s_doc, n).view(w[c].shape))
    return torch.stack(rows), ss


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), channels=st.integers(1, 6), length=st.integers(1, 40),
       dist=st.sampled_from(["gauss", "student", "outliers", "zeros", "repeated", "mixed"]),
       scales=st.lists(st.integers(-10, 10), min_size=6, max_size=6), bits=st.integers(2, 8),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_per_channel_matches_brute_force(seed: int, channels: int, length: int, dist: str,
                                         scales: list[int], bits: int,
                                         dtype: torch.dtype) -> None:
    w = make_weights(seed, dist, channels * length, 0).view(channels, length)
    w = (w * torch.tensor([2.0**s for s in scales[:channels]])[:, None]).to(dtype)
    ref, s_ref = _brute_force_channels(w, bits)
    wq, s = lbw_exact_channels(w, bits)
    assert s.tolist() == s_ref
    assert torch.equal(wq.double(), ref)


def test_all_zero_empty_and_subnormal_channels() -> None:
    w = torch.zeros(3, 4)
    w[1] = torch.tensor([1e-40, -3e-39, 0.0, 2e-41])  # float32 subnormals only
    w[2] = torch.tensor([0.5, -0.25, 0.1, 1.0])
    wq, s = lbw_exact_channels(w, 4)
    assert s[0] == 0 and not wq[0].any()
    for c in range(3):
        ref, s_ref = lbw_exact(w[c], 4)
        assert bits_equal(wq[c], ref) and int(s[c]) == s_ref
    assert wq[1].abs().max() > 0  # the subnormal channel is solved, not zeroed
    wq, s = lbw_exact_channels(torch.empty(4, 0), 3)
    assert wq.shape == (4, 0) and s.tolist() == [0, 0, 0, 0]
    wq, s = lbw_exact_channels(torch.empty(0, 5), 3)
    assert wq.shape == (0, 5) and s.shape == (0,)
    out = lbw_exact_many([torch.empty(0), torch.zeros(2, 2), torch.ones(())], 5)
    assert [int(s) for _, s in out] == [0, 0, 0]
    assert out[2][0].item() == 1.0


def test_float16_cap_and_mixed_devices_dtypes_in_one_call() -> None:
    big = torch.tensor([60000.0, -50000.0, 1.0], dtype=torch.float16)
    ws = [big, big.float(), big.double(), big.bfloat16()]
    for (wq, s), w in zip(lbw_exact_many(ws, 3), ws):
        ref, s_ref = lbw_exact(w, 3)
        assert bits_equal(wq, ref) and int(s) == s_ref and torch.isfinite(wq).all()
    assert int(lbw_exact_many([big], 3)[0][1]) <= 15  # 2**s finite in float16


def test_errors_name_the_tensor() -> None:
    ws = [torch.ones(3), torch.tensor([1.0, float("nan")])]
    with pytest.raises(ValueError, match=r"tensors\[1\] contains 1 NaN/Inf"):
        lbw_exact_many(ws, 4)
    with pytest.raises(ValueError, match=r"tensors\[1\] contains 1 NaN/Inf"):
        lbw_exact_many(ws, 4, per_channel=True)
    with pytest.raises(ValueError, match=r"tensors\[0\].*0-dim"):
        lbw_exact_many([torch.ones(())], 4, per_channel=True)
    with pytest.raises(ValueError, match="axis 2 out of range"):
        lbw_exact_channels(torch.ones(3, 3), 4, axis=2)
    with pytest.raises(ValueError, match="floating"):
        lbw_exact_many([torch.ones(3, dtype=torch.int64)], 4)
    with pytest.raises(ValueError, match="sequence"):
        lbw_exact_many(torch.ones(3), 4)
    with pytest.raises(ValueError, match="bits"):
        lbw_exact_many([torch.ones(3)], 9)
    with pytest.raises(ValueError, match="too large"):
        lbw_exact(torch.tensor([1e300, 1.0], dtype=torch.float64), 4)


def test_layer_sized_tensors_take_the_fast_path_and_agree() -> None:
    """ResNet-like layers in one call equal one call per layer (float32 fast path)."""
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(s, generator=g) * 0.02 for s in
          [(64, 3, 7, 7), (64, 64, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1), (10, 256)]]
    for bits in (2, 4, 6, 8):
        for (wq, s), w in zip(lbw_exact_many(ws, bits), ws):
            ref, s_ref = lbw_exact(w, bits)
            assert bits_equal(wq, ref) and int(s) == s_ref
        for (wq, s), w in zip(lbw_exact_many(ws, bits, per_channel=True), ws):
            for c in range(0, w.shape[0], 7):
                ref, s_ref = lbw_exact(w[c], bits)
                assert bits_equal(wq[c], ref) and int(s[c]) == s_ref


@settings(max_examples=40, deadline=None)
@given(ws=st.lists(st.builds(make_weights, seed=st.integers(0, 2**31 - 1),
                             dist=st.sampled_from(["gauss", "student", "outliers", "zeros",
                                                   "repeated", "mixed"]),
                             size=st.integers(1, 200), log_scale=st.integers(-8, 8)),
                   min_size=1, max_size=5),
       chunk=st.integers(1, 64), ascending=st.booleans(), bits=st.integers(2, 8))
def test_chunked_float32_path_matches_brute_force(ws: list[torch.Tensor], chunk: int,
                                                  ascending: bool, bits: int) -> None:
    """The float32 fast path counts and looks up chunk by chunk: any chunk length (here
    1..64, so tensors span many chunks; sorted by magnitude, later chunks reach higher
    buckets than earlier ones) gives the brute-force optimum, rounded to the nearest level."""
    import lowbit.quant.pot as pot

    ws32 = [w.float() for w in ws]
    if ascending:
        ws32 = [w[w.abs().argsort()] for w in ws32]
    n = 2 ** (bits - 2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pot, "_CHUNK", chunk)
        mp.setattr(pot, "_NATIVE", False)  # the torch path chunks (the C kernels do not)
        out = lbw_exact_many(ws32, bits)
    for w, (wq, s) in zip(ws32, out):
        _, s_doc, _ = brute_force_lbw(w.double(), bits)
        assert int(s) == s_doc
        ref = nearest_pot(w.double(), s_doc, n).float()
        assert bits_equal(wq, torch.where(w < 0, -ref.abs(), ref.abs()))  # -0.0 for w < 0


def test_chunked_fast_path_on_layer_sized_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors longer than the chunk (and chunk lengths that do not divide them) give the
    same bits as one chunk per tensor and as the float64 path, and the fast path decides."""
    import lowbit.quant.pot as pot

    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(s, generator=g) * 0.02 for s in [(300, 64, 3, 3), (1000, 77), (5,)]]
    ws[1][3, 4] = 0.0
    ws[1][7, 0] = -0.0
    decided = []
    real = pot._fast_decide

    def spy(*args, **kw):
        out = real(*args, **kw)
        decided.append(out[1].tolist())
        return out

    monkeypatch.setattr(pot, "_fast_decide", spy)
    monkeypatch.setattr(pot, "_NATIVE", False)  # the torch path chunks (the C kernels do not)
    for bits in (2, 4, 6):
        monkeypatch.setattr(pot, "_CHUNK", 1 << 40)
        whole = lbw_exact_many(ws, bits)
        monkeypatch.setattr(pot, "_CHUNK", 4099)
        parts = lbw_exact_many(ws, bits)
        for w, (a, sa), (b, sb) in zip(ws, whole, parts):
            assert bits_equal(a, b) and int(sa) == int(sb)
            ref, s_ref = lbw_exact(w.double(), bits)  # float64 statistics, no fast path
            assert int(sb) == s_ref and torch.equal(b.double(), ref)
            assert bits_equal(b, torch.where(w.signbit(), -b.abs(), b.abs()))
    assert decided and all(all(d) for d in decided)


@pytest.mark.parametrize("use_native", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 128, 1 << 18])
def test_fine_counts_many_equals_one_histogram_per_tensor(chunk: int, use_native: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's narrowed fine counts are the per-tensor histograms (sign folded) at the
    column offset it reports, zero elsewhere: zeros (key 0), subnormals, values whose
    histogram is shorter than one half-octave block, and negatives of every magnitude
    (torch path chunked, and the C kernels where they load)."""
    import lowbit.quant._native as native
    import lowbit.quant.pot as pot

    if use_native and native.lib() is None:
        pytest.skip(f"C kernels not available: {native.status()}")
    monkeypatch.setattr(pot, "_CHUNK", chunk)
    monkeypatch.setattr(pot, "_NATIVE", use_native)
    monkeypatch.setattr(native, "_PER_THREAD", 1 if use_native else native._PER_THREAD)
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(500, generator=g) * 0.05,
          torch.tensor([0.5, -0.25, 1.0, -3.0]),
          torch.tensor([1e-40, -2e-39, 0.0, -0.0, 1e-30]),
          torch.tensor([2.0**-100]),
          torch.randn(300, generator=g) * 2.0**20]
    for sub in ([xs[1]], [xs[3]], [xs[1], xs[4]], xs, xs[2:], [xs[2]]):
        fold, col0 = pot._fine_counts_many(sub)
        per = 1 << pot._FINE
        assert fold.shape[1] % per == 0 and col0 * per + fold.shape[1] <= 1 << 16
        for row, x in zip(fold, sub):
            # independent reference: magnitude key of every element, counted in Python
            mag = (x.view(torch.int32).long() & 0x7FFFFFFF) >> 15
            ref = torch.zeros(1 << 16, dtype=torch.int64)
            for k in mag.tolist():
                ref[k] += 1
            assert torch.equal(row, ref[col0 * per:col0 * per + fold.shape[1]])
            assert int(row.sum()) == x.numel()  # nothing left off
