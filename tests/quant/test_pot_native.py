"""The optional C kernels of the float32 fast path (lowbit.quant._native): bit identity with
the torch path, threading, and the clean fallback when they cannot be built or are off."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.quant._native as native
import lowbit.quant.pot as pot
from lowbit.quant import lbw_exact, lbw_exact_channels, lbw_exact_many
from tests.quant.test_pot_many import bits_equal, tensor_st

needs_native = pytest.mark.skipif(native.lib() is None,
                                  reason=f"C kernels not available: {native.status()}")

_SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -3e-39, 2.0**-126, -(2.0**-126), 1.0, -1.0,
            1.5, -1.4999999, 3.4e38, -3.4e38, 2.0**-149, 0.75, -0.75]


@st.composite
def float32_flat(draw, nonfinite: bool = False) -> torch.Tensor:
    """A flat float32 tensor: random bit patterns (every exponent, both signs), specials,
    or scaled Gaussians; optionally Inf/NaN sprinkled in."""
    size = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["bits", "gauss", "special", "mixed"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "bits":
        x = torch.randint(-(2**31), 2**31 - 1, (size,), generator=g, dtype=torch.int64)
        x = x.to(torch.int32).view(torch.float32)
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    elif kind == "gauss":
        x = torch.randn(size, generator=g) * 2.0 ** draw(st.integers(-140, 120))
    elif kind == "special":
        sp = torch.tensor(_SPECIAL, dtype=torch.float32)
        x = sp[torch.randint(0, len(_SPECIAL), (size,), generator=g)]
    else:
        x = torch.randn(size, generator=g) * torch.exp2(
            torch.randint(-150, 100, (size,), generator=g).float())
    if nonfinite:
        bad = torch.tensor([float("inf"), float("-inf"), float("nan")])
        x = x.clone()
        x[torch.randint(0, size, (max(1, size // 50),), generator=g)] = bad[
            draw(st.integers(0, 2))]
    return x.contiguous()


def _torch_path(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pot, "_NATIVE", False)


@needs_native
@settings(max_examples=60, deadline=None)
@given(xs=st.lists(float32_flat(), min_size=1, max_size=6), threads=st.integers(1, 3),
       nonfinite=st.booleans(), scan_from=st.sampled_from([1, 700, 1 << 40]), data=st.data())
def test_counts_equal_torch_path(xs: list[torch.Tensor], threads: int, nonfinite: bool,
                                 scan_from: int, data) -> None:
    """Counts from the kernel (key range by min/max or by scanning the histogram, 1-3
    threads) equal the torch path's, column offset included."""
    if nonfinite:
        xs = xs + [data.draw(float32_flat(nonfinite=True))]
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_PER_THREAD", 1)  # split even tiny tensors over the threads
        mp.setattr(native, "_SCAN_FROM", scan_from)
        torch.set_num_threads(threads)
        try:
            got = native.count_many(xs)
        finally:
            torch.set_num_threads(before)
        mp.setattr(pot, "_NATIVE", False)
        ref = pot._fine_counts_many(xs)
    assert got is not None
    assert got[1] == ref[1] and got[0].dtype == torch.int64 and torch.equal(got[0], ref[0])


@needs_native
@settings(max_examples=60, deadline=None)
@given(xs=st.lists(float32_flat(), min_size=1, max_size=6), threads=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1))
def test_lookup_equals_torch_path(xs: list[torch.Tensor], threads: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tab = torch.randn(len(xs), 1024, generator=g)
    tab[:, ::7] = -0.0
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_PER_THREAD", 1)
        torch.set_num_threads(threads)
        try:
            got = native.lookup_many(xs, tab)
        finally:
            torch.set_num_threads(before)
        mp.setattr(pot, "_NATIVE", False)
        ref = pot._lookup_many(xs, tab)
    assert got is not None
    for a, b in zip(got, ref):
        assert bits_equal(a, b)


@needs_native
@settings(max_examples=50, deadline=None)
@given(ws=st.lists(tensor_st(), min_size=1, max_size=6), bits=st.integers(2, 8),
       threads=st.integers(1, 2), scan_from=st.sampled_from([1, 1 << 40]))
def test_many_native_equals_torch_path(ws: list[torch.Tensor], bits: int, threads: int,
                                       scan_from: int) -> None:
    """Whole quantizer, every dtype/shape/zeros/subnormals, b = 2..8: the C kernels change
    nothing (values, signs of zero, exponents), threaded or not, and match lbw_exact."""
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_PER_THREAD", 1)
        mp.setattr(native, "_SCAN_FROM", scan_from)
        torch.set_num_threads(threads)
        try:
            fast = lbw_exact_many(ws, bits)
        finally:
            torch.set_num_threads(before)
        mp.setattr(pot, "_NATIVE", False)
        slow = lbw_exact_many(ws, bits)
    for w, (a, sa), (b, sb) in zip(ws, fast, slow):
        assert bits_equal(a, b) and int(sa) == int(sb)
        ref, s_ref = lbw_exact(w, bits)
        assert bits_equal(a, ref) and int(sa) == s_ref


@needs_native
def test_layer_sized_tensors_native_threads_and_fallback_agree() -> None:
    """ResNet-like float32 layers (the fast path decides; at b >= 6 some need the float64
    path): 1 and 2 threads of the kernels and the torch path give the same bits."""
    g = torch.Generator().manual_seed(11)
    ws = [torch.randn(s, generator=g) * 0.02 for s in
          [(64, 3, 7, 7), (256, 64, 1, 1), (128, 128, 3, 3), (1000, 512), (7,)]]
    ws[1][0, 0] = -0.0
    ws[2][1, 1, 1, 1] = 1e-42
    before = torch.get_num_threads()
    for bits in range(2, 9):
        outs = []
        for threads, use in ((1, True), (2, True), (1, False)):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(pot, "_NATIVE", use)
                torch.set_num_threads(threads)
                try:
                    outs.append(lbw_exact_many(ws, bits))
                finally:
                    torch.set_num_threads(before)
        for res in outs[1:]:
            for (a, sa), (b, sb) in zip(outs[0], res):
                assert bits_equal(a, b) and int(sa) == int(sb)
        for w, (a, sa) in zip(ws, outs[0]):
            ref, s_ref = lbw_exact(w.double(), bits)
            assert int(sa) == s_ref and torch.equal(a.double(), ref)


@needs_native
def test_native_nonfinite_and_odd_inputs() -> None:
    with pytest.raises(ValueError, match=r"tensors\[1\] contains 2 NaN/Inf"):
        lbw_exact_many([torch.ones(5), torch.tensor([1.0, float("inf"), float("nan")])], 4)
    w = torch.randn(40, 30)
    strided = w[:, ::3]  # non-contiguous
    empty = torch.empty(0)
    out = lbw_exact_many([strided, empty, w.t()], 5)
    for x, (wq, s) in zip([strided, empty, w.t()], out):
        ref, s_ref = lbw_exact(x.double(), 5)
        assert int(s) == s_ref and torch.equal(wq.double(), ref) and wq.shape == x.shape
    assert not native.usable([torch.ones(3, dtype=torch.float64)])
    assert not native.usable([torch.ones(4)[::2]])
    assert not native.usable([torch.empty(0)])
    assert not native.usable([])


def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels not loaded yet, and not switched off by the environment of this run."""
    monkeypatch.setattr(native, "_state", {"tried": False, "lib": None,
                                           "status": "not loaded yet"})
    monkeypatch.delenv("LOWBIT_NATIVE", raising=False)


def test_disabled_by_environment_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _fresh_state(monkeypatch)
    monkeypatch.setenv("LOWBIT_NATIVE", "0")
    assert native.lib() is None and "disabled" in native.status()
    assert native.count_many([torch.ones(3)]) is None
    assert not native.usable([torch.ones(3)])
    w = torch.randn(300) * 0.1
    wq, s = lbw_exact(w, 4)
    ref, s_ref = lbw_exact(w.double(), 4)
    assert s == s_ref and torch.equal(wq.double(), ref)


@pytest.mark.parametrize("how", ["failing", "missing"])
def test_broken_compiler_falls_back(how: str, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path) -> None:
    """A compiler that fails (or none on PATH) and an empty cache: lib() is None, the status
    says why, and every quantizer still gives the torch path's bits."""
    _fresh_state(monkeypatch)
    monkeypatch.setenv("LOWBIT_NATIVE_CACHE", str(tmp_path / "cache"))
    if how == "failing":
        if not native.shutil.which("false"):
            pytest.skip("no `false` program")
        monkeypatch.setenv("CC", native.shutil.which("false"))
    else:
        monkeypatch.delenv("CC", raising=False)
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert native.lib() is None and native.status().startswith("unavailable")
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(64, 3, 3, 3, generator=g) * 0.05, torch.randn(10, generator=g)]
    for bits in (2, 6):
        for w, (wq, s) in zip(ws, lbw_exact_many(ws, bits)):
            ref, s_ref = lbw_exact(w.double(), bits)
            assert int(s) == s_ref and torch.equal(wq.double(), ref)
    wq, s = lbw_exact_channels(ws[0], 3)
    assert wq.shape == ws[0].shape


@needs_native
def test_fresh_build_in_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A clean cache directory (as in CI): the first call compiles, the result loads and
    agrees with the torch path; the second call reuses the file."""
    _fresh_state(monkeypatch)
    cache = tmp_path / "c"
    monkeypatch.setenv("LOWBIT_NATIVE_CACHE", str(cache))
    assert native.lib() is not None and native.status() == "loaded"
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".so")  # the build folder is gone
    x = [torch.randn(5000) * 0.01]
    got = native.count_many(x)
    monkeypatch.setattr(pot, "_NATIVE", False)
    ref = pot._fine_counts_many(x)
    assert got is not None and got[1] == ref[1] and torch.equal(got[0], ref[0])
    _fresh_state(monkeypatch)
    assert native.lib() is not None
    assert sorted(p.name for p in cache.iterdir()) == files


def test_shared_cache_directory_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Code is loaded from the cache: a directory others may write to is not used."""
    if not hasattr(native.os, "getuid"):
        pytest.skip("no POSIX owners")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _fresh_state(monkeypatch)
    monkeypatch.setenv("LOWBIT_NATIVE_CACHE", str(shared))
    assert native.lib() is None and "not a private directory" in native.status()
    assert list(shared.iterdir()) == []
    w = torch.randn(50)
    assert lbw_exact(w, 3)[1] == lbw_exact(w.double(), 3)[1]


@needs_native
@settings(max_examples=40, deadline=None)
@given(x=float32_flat())
def test_stats_equal_bincount(x: torch.Tensor) -> None:
    """The float64 statistics kernel is torch.bincount of the signed half-octave keys, bit
    for bit (same per-bin summation order, squares rounded before they are added)."""
    got = native.stats(x)
    assert got is not None
    key = torch.bitwise_right_shift(x.view(torch.int32), 22).long() + 512
    xd = x.double()
    ref = (torch.bincount(key, minlength=1024), torch.bincount(key, weights=xd, minlength=1024),
           torch.bincount(key, weights=xd * xd, minlength=1024))
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.int64), b.view(torch.int64))


@needs_native
def test_stats_equal_bincount_long() -> None:
    """Long inputs too (a parallel torch.bincount would add in another order)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3_000_000, generator=g) * torch.exp2(
        torch.randint(-30, 5, (3_000_000,), generator=g).float())
    cnt, s1, s2 = native.stats(x)
    key = torch.bitwise_right_shift(x.view(torch.int32), 22).long() + 512
    xd = x.double()
    assert torch.equal(cnt, torch.bincount(key, minlength=1024))
    assert torch.equal(s1.view(torch.int64),
                       torch.bincount(key, weights=xd, minlength=1024).view(torch.int64))
    assert torch.equal(s2.view(torch.int64),
                       torch.bincount(key, weights=xd * xd, minlength=1024).view(torch.int64))


@needs_native
@pytest.mark.parametrize("bits", [6, 7, 8])
def test_undecided_rows_native_statistics(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 tensors the counts-only decision leaves undecided take the float64 statistics
    from the C kernel and the lookup from the fast path's kernel: the same bits and exponent
    as the torch path and as brute force."""
    from tests.quant._oracles import brute_force_lbw, nearest_pot

    ws = []
    for seed in range(400):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(int(torch.randint(5, 400, (1,), generator=g)), generator=g)
        fold, c0 = pot._fine_counts_many([w])
        _, dec = pot._fast_decide(fold, 2 ** (bits - 2), torch.tensor([127]), ["w"], c0)
        if not bool(dec[0]):
            ws.append(w)
        if len(ws) == 3:
            break
    assert ws, "no undecided tensor found"
    ws.append(torch.randn(50) * 0.1)  # a decided one in the same call
    calls = []
    real = native.stats
    monkeypatch.setattr(native, "stats", lambda x: calls.append(x.numel()) or real(x))
    fast = lbw_exact_many(ws, bits)
    assert sorted(calls) == sorted(w.numel() for w in ws[:-1])
    monkeypatch.setattr(pot, "_NATIVE", False)
    slow = lbw_exact_many(ws, bits)
    for w, (a, sa), (b, sb) in zip(ws, fast, slow):
        assert bits_equal(a, b) and int(sa) == int(sb)
        _, s_doc, _ = brute_force_lbw(w.double(), bits)
        assert int(sa) == s_doc
        ref = nearest_pot(w.double(), s_doc, 2 ** (bits - 2)).float()
        assert bits_equal(a, torch.where(w < 0, -ref.abs(), ref.abs()))


def test_solver_threads_restored() -> None:
    """The solvers run on one intra-op thread (few rows) and give the caller's thread count
    back, also when they raise; results do not depend on the thread count."""
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(8)
    ws = [torch.randn(64, 32, 3, 3, generator=g) * 0.03, torch.randn(100, generator=g)]
    try:
        torch.set_num_threads(2)
        seen = []
        real = pot._fast_decide

        def spy(*a, **k):
            seen.append(torch.get_num_threads())
            return real(*a, **k)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pot, "_fast_decide", spy)
            two = lbw_exact_many(ws, 6)
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="NaN"):
            lbw_exact_many([torch.tensor([1.0, float("nan")])], 4)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = lbw_exact_many(ws, 6)
        for (a, sa), (b, sb) in zip(two, one):
            assert bits_equal(a, b) and int(sa) == int(sb)
    finally:
        torch.set_num_threads(before)


@needs_native
def test_many_small_tensors() -> None:
    """Many tensors in one call (the count rows are allocated at their exact width)."""
    g = torch.Generator().manual_seed(9)
    ws = [torch.randn(int(k), generator=g) * 2.0 ** int(e)
          for k, e in zip(torch.randint(1, 40, (1200,), generator=g),
                          torch.randint(-20, 20, (1200,), generator=g))]
    got = native.count_many(ws)
    assert got is not None and got[0].shape[0] == 1200
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pot, "_NATIVE", False)
        ref = pot._fine_counts_many(ws)
        slow = lbw_exact_many(ws, 5)
    assert got[1] == ref[1] and torch.equal(got[0], ref[0])
    for (a, sa), (b, sb) in zip(lbw_exact_many(ws, 5), slow):
        assert bits_equal(a, b) and int(sa) == int(sb)
