"""The quantizer registry: names, parameter validation, codes that decode exactly."""

from __future__ import annotations

import pytest
import torch

import lowbit.quant as Q
from lowbit.quant.registry import PotParams, QuantizerEntry, register

BITS = {"twn": 2, "binary": 1, "lbw-ternary": 2, "qn": 2}


def test_list_and_get() -> None:
    names = Q.list()
    for expected in ("lbw-exact", "lbw-approx", "lbw-ternary", "inq", "twn", "binary", "dorefa",
                     "uniform", "kmeans", "log", "qn"):
        assert expected in names
    with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
        Q.get("nope")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(QuantizerEntry("lbw-exact", PotParams, lambda w, p: None, ""))


def test_params_validated() -> None:
    with pytest.raises(ValueError, match="bits"):
        Q.get("lbw-exact").params(bits=9)
    with pytest.raises(ValueError, match="no parameter"):
        Q.get("lbw-exact").params(bitz=4)
    with pytest.raises(ValueError, match="method"):
        Q.get("uniform").params(method="magic")


@pytest.mark.parametrize("name", sorted(Q.list()))
def test_codes_decode_exactly_and_fit_bits(name: str) -> None:
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    bits = BITS.get(name, 4)
    r = Q.get(name)(w, bits=bits)
    assert r.values.shape == w.shape and r.values.dtype == w.dtype
    codes = r.codes()
    assert torch.equal(r.decode(codes), r.values)
    assert torch.unique(codes).numel() <= 2**bits


@pytest.mark.parametrize("name", ["uniform", "kmeans", "log"])
def test_per_channel_codes(name: str) -> None:
    w = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(1))
    r = Q.get(name)(w, bits=3, per_channel=True)
    assert torch.equal(r.decode(r.codes()), r.values)
