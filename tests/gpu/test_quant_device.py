"""Every registered weight quantizer gives, on the device, bit for bit the CPU result (values,
scale, zero point, levels, exponent and integer codes) in float32, float16 and bfloat16, and
keeps the input's device and dtype."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lowbit.quant import get, list_quantizers

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cases() -> list[tuple[str, dict]]:
    cases: list[tuple[str, dict]] = [(n, {}) for n in list_quantizers()]
    for n in list_quantizers():
        fields = {f.name for f in dataclasses.fields(get(n).params_cls)}
        if "per_channel" in fields:
            cases.append((n, {"per_channel": True}))
    return cases


CASES = _cases()


def _weights(dtype: torch.dtype, seed: int, big: bool) -> torch.Tensor:
    """A conv weight ``[24, 16, 3, 3]`` (``big``: ``[128, 64, 3, 3]``, where the device's
    parallel reductions split the work differently from the CPU's) with a spread of
    magnitudes, an exact zero, a subnormal of float16 and a row of ties (equal magnitudes)."""
    g = torch.Generator().manual_seed(seed)
    o, i = (128, 64) if big else (24, 16)
    w = torch.randn(o, i, 3, 3, generator=g) * torch.rand(o, 1, 1, 1, generator=g) * 0.1
    w[0, 0, 0, 0] = 0.0
    w[1, 0, 0, 0] = 3e-6
    w[2] = 0.03
    return w.to(dtype)


def _same(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None:
        assert a.dtype == b.dtype, (what, a.dtype, b.dtype)
        assert torch.equal(a.detach().cpu(), b.detach().cpu()), what


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name,kw", CASES,
                         ids=[n + ("-per-channel" if kw else "") for n, kw in CASES])
def test_quantizer_on_device_equals_cpu(device: torch.device, name: str, kw: dict,
                                        dtype: torch.dtype) -> None:
    entry = get(name)
    # the small tensor on the cpu sanity path keeps `make test` fast
    w = _weights(dtype, seed=len(name), big=device.type != "cpu")
    ref = entry(w, **kw)
    got = entry(w.to(device), **kw)
    assert got.values.device.type == device.type and got.values.dtype == dtype
    assert got.values.shape == w.shape and bool(torch.isfinite(got.values.float()).all())
    _same(got.values, ref.values, f"{name} values")
    _same(got.scale, ref.scale, f"{name} scale")
    _same(got.zero_point, ref.zero_point, f"{name} zero_point")
    _same(got.levels, ref.levels, f"{name} levels")
    if isinstance(ref.exponent, torch.Tensor):  # per-channel power-of-two: Tensor[C]
        _same(got.exponent, ref.exponent, f"{name} exponent")
    else:
        assert got.exponent == ref.exponent
    assert got.axis == ref.axis and got.kind == ref.kind
    codes = got.codes()
    _same(codes, ref.codes(), f"{name} codes")
    # the codes rebuild the values on the device itself
    assert torch.equal(got.decode(codes).cpu(), ref.values)
    # not vacuous: the quantizer changed the weights and kept more than one level
    assert not torch.equal(ref.values, w) and ref.values.unique().numel() >= 2
