"""Packed container: exact round trips, bit packing vs a loop oracle, sizes, bad files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.export.packed import (
    load_packed,
    pack_bits,
    radix_layout,
    radix_pack,
    radix_unpack,
    save_packed,
    unpack_bits,
)
from lowbit.nn import convert, prepare, quant_layers


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


RECIPES = [
    {"method": "lbw-exact", "bits": 2},
    {"method": "lbw-exact", "bits": 4},
    {"method": "lbw-exact", "bits": 6},
    {"method": "lbw-exact", "bits": 8},
    {"method": "uniform", "bits": 8, "params": {"per_channel": True}},
    {"method": "kmeans", "bits": 4},
]


def _converted(recipe: dict) -> nn.Module:
    m = prepare(_net(), recipe).eval()
    m(torch.randn(2, 3, 12, 12))
    return convert(m)


@pytest.mark.parametrize("coding", ["raw", "zlib", "radix"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r['method']}{r['bits']}")
def test_round_trip_exact(tmp_path: Path, recipe: dict, coding: str) -> None:
    m = _converted(recipe)
    x = torch.randn(3, 3, 12, 12)
    f = tmp_path / "m.lbp"
    save_packed(m, f, arch={"name": "net"}, coding=coding)
    m2 = load_packed(f, builder=lambda arch: _net())
    assert torch.equal(m2(x), m(x))
    for (n1, a), (n2, b) in zip(quant_layers(m), quant_layers(m2)):
        assert n1 == n2
        assert torch.equal(a.frozen.values, b.frozen.values)
        assert torch.equal(a.weight_codes(), b.weight_codes())


def _oracle_pack(fields: list[int], width: int) -> bytes:
    out = bytearray(math.ceil(len(fields) * width / 8))
    pos = 0
    for f in fields:
        for b in range(width):  # one bit at a time, LSB first
            if (f >> b) & 1:
                out[pos // 8] |= 1 << (pos % 8)
            pos += 1
    return bytes(out)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_pack_bits_matches_loop_oracle(width: int) -> None:
    rng = np.random.default_rng(width)
    for count in (0, 1, 7, 13, 100):
        fields = rng.integers(0, 1 << width, count)
        packed = pack_bits(fields, width)
        assert packed.tobytes() == _oracle_pack(fields.tolist(), width)
        assert np.array_equal(unpack_bits(packed, width, count), fields)


def test_sizes_hand_computed(tmp_path: Path) -> None:
    m = _converted({"method": "lbw-exact", "bits": 4})
    info = save_packed(m, tmp_path / "m.lbp", arch=None)
    # 4 bits x weights of both convs and the linear (the default recipe quantizes convs only)
    numels = [layer.weight.numel() for _, layer in quant_layers(m)]
    assert info["codes_bytes"] == sum(math.ceil(n * 4 / 8) for n in numels)
    assert info["bytes"] == (tmp_path / "m.lbp").stat().st_size
    fp32 = 4 * sum(v.numel() for v in m.state_dict().values() if v.is_floating_point())
    assert info["fp32_bytes"] == fp32


def test_bad_files(tmp_path: Path) -> None:
    m = _converted({"method": "lbw-exact", "bits": 4})
    good = tmp_path / "m.lbp"
    save_packed(m, good, arch=None)
    blob = good.read_bytes()
    trunc = tmp_path / "trunc.lbp"
    trunc.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="trunc.lbp"):
        load_packed(trunc, builder=lambda a: _net())
    wrong = tmp_path / "wrong.lbp"
    wrong.write_bytes(blob.replace(b"lowbit-packed", b"lowbit-paXked"))
    with pytest.raises(ValueError, match="wrong.lbp.*not a lowbit packed"):
        load_packed(wrong, builder=lambda a: _net())
    bits = tmp_path / "bits.lbp"
    old, new = b'\\"bits\\": 4, \\"width\\": 4', b'\\"bits\\": 6, \\"width\\": 6'
    bits.write_bytes(blob.replace(old, new))
    assert bits.read_bytes() != blob
    with pytest.raises(ValueError, match="bits.lbp"):
        load_packed(bits, builder=lambda a: _net())
    garbage = tmp_path / "garbage.lbp"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="garbage.lbp"):
        load_packed(garbage, builder=lambda a: _net())


@pytest.mark.parametrize("radix", [2, 3, 5, 9, 17, 33, 65, 129])
def test_radix_pack_matches_loop_oracle(radix: int) -> None:
    group, word = radix_layout(radix)
    assert radix ** group <= 1 << word <= 2 * radix ** group and word <= 63
    rng = np.random.default_rng(radix)
    for count in (0, 1, group - 1, group, 3 * group + 1, 200):
        fields = rng.integers(0, radix, count)
        words = []
        for s in range(0, count, group):  # one word per group, digit i weighs radix**i
            chunk = list(fields[s:s + group]) + [0] * (group - len(fields[s:s + group]))
            words.append(sum(int(f) * radix ** i for i, f in enumerate(chunk)))
        packed = radix_pack(fields, radix)
        assert packed.tobytes() == _oracle_pack(words, word)
        assert np.array_equal(radix_unpack(packed, radix, count), fields)


def test_radix_coding_sizes(tmp_path: Path) -> None:
    """4-bit LBW codes take 9 values: 17 per 54-bit word instead of 4 bits each."""
    m = _converted({"method": "lbw-exact", "bits": 4})
    info = save_packed(m, tmp_path / "m.lbp", arch=None, coding="radix")
    for name, layer in quant_layers(m):
        e = info["layers"][name]
        n = layer.weight.numel()
        expect = math.ceil(math.ceil(n / 17) * 54 / 8)
        if expect < math.ceil(n * 4 / 8):
            assert (e["coding"], e["radix"], e["nbytes"]) == ("radix", 9, expect)
        else:
            assert e["coding"] == "raw"


PER_CHANNEL = [
    {"method": "lbw-exact", "bits": 2, "params": {"per_channel": True}},
    {"method": "lbw-exact", "bits": 4, "params": {"per_channel": True}},
    {"method": "lbw-approx", "bits": 5, "params": {"per_channel": True}},
    {"method": "inq", "bits": 4, "params": {"per_channel": True}},
    {"method": "twn", "bits": 2, "params": {"per_channel": True}},
]


@pytest.mark.parametrize("coding", ["raw", "radix"])
@pytest.mark.parametrize("recipe", PER_CHANNEL, ids=lambda r: f"{r['method']}{r['bits']}-ch")
def test_per_channel_round_trip_exact(tmp_path: Path, recipe: dict, coding: str) -> None:
    m = _converted(recipe)
    x = torch.randn(3, 3, 12, 12)
    f = tmp_path / "m.lbp"
    info = save_packed(m, f, arch={"name": "net"}, coding=coding)
    m2 = load_packed(f, builder=lambda arch: _net())
    assert torch.equal(m2(x), m(x))
    for (n1, a), (n2, b) in zip(quant_layers(m), quant_layers(m2)):
        assert n1 == n2
        ra, rb = a.frozen, b.frozen
        assert torch.equal(ra.values, rb.values) and rb.axis == 0
        assert torch.equal(ra.scale.double(), rb.scale.double())
        assert rb.scale.shape == (a.weight.shape[0],)
        if recipe["method"] != "twn":  # power-of-two: one stored exponent per channel
            assert info["layers"][n1]["exponent"] is None
            assert torch.equal(rb.exponent, ra.exponent.cpu())
            assert rb.exponent.shape == (a.weight.shape[0],)
        assert info["layers"][n1]["params"]["per_channel"] is True
        assert b.weight_quant.params.per_channel is True


def test_per_channel_exponent_mismatch_refused(tmp_path: Path) -> None:
    """A file whose exponents disagree with its scales is refused (checksum recomputed so
    that only the consistency check can catch it)."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from lowbit.export.packed import _DIGEST_PLACEHOLDER, _with_checksum, read_packed_header

    m = _converted(PER_CHANNEL[1])
    f = tmp_path / "m.lbp"
    save_packed(m, f, arch=None)
    _, blob = read_packed_header(f)
    (n,) = __import__("struct").unpack("<Q", blob[:8])
    meta = __import__("json").loads(blob[8:8 + n])["__metadata__"]
    t = st_load(blob)
    key = next(k for k in t if k.endswith(".exponent"))
    t[key] = t[key].clone()
    t[key][0] += 1
    meta["checksum"] = _DIGEST_PLACEHOLDER
    bad = tmp_path / "bad.lbp"
    bad.write_bytes(_with_checksum(st_save(t, metadata=meta)))
    with pytest.raises(ValueError, match="bad.lbp.*2\\*\\*exponent"):
        load_packed(bad, builder=lambda a: _net())


def test_every_single_bit_flip_is_refused(tmp_path: Path) -> None:
    """Issue 18 item 8: flip one bit in every byte of a saved file (bit index rotating with
    the offset: length prefix, JSON header, its padding, codes, scales, float tensors) --
    every flipped file must be refused with a ValueError naming it."""
    m = _converted(PER_CHANNEL[1])
    good = tmp_path / "good.lbp"
    save_packed(m, good, arch=None, coding="radix")
    blob = good.read_bytes()
    load_packed(good, builder=lambda a: _net())  # the intact file loads
    f = tmp_path / "flip.lbp"
    refused = 0
    for off in range(len(blob)):
        b = bytearray(blob)
        b[off] ^= 1 << (off % 8)
        f.write_bytes(bytes(b))
        with pytest.raises(ValueError, match="flip.lbp"):
            load_packed(f, builder=lambda a: _net())
        refused += 1
    assert refused == len(blob) > 1000
