"""Recipe, prepare / convert round trip, describe, weight_memory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit.quant as Q
from lowbit.nn import (
    QuantConv2d,
    QuantLinear,
    Recipe,
    UniformActQuant,
    act_quantizers,
    convert,
    describe,
    prepare,
    quant_layers,
    weight_memory,
)

# ---------------------------------------------------------------------- recipe


def test_default_recipe_is_the_papers() -> None:
    r = Recipe()
    assert r.method == "lbw-exact" and r.layers == ("conv",) and r.act is None
    assert r.resolve("x.conv", "conv").bits == 4  # lbw-exact's default
    assert r.resolve("fc", "linear") is None


def test_recipe_from_dict_and_validation() -> None:
    r = Recipe.from_dict({"method": "lbw-approx", "bits": 6, "params": {"mu_ratio": 0.5},
                          "layers": ["conv", "linear"], "act": {"method": "pact", "bits": 4}})
    assert r.act.method == "pact" and r.layers == ("conv", "linear")
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="no field"):
        Recipe.from_dict({"methd": "twn"})
    with pytest.raises(ValueError, match="unknown quantizer"):
        Recipe(method="nope")
    with pytest.raises(ValueError, match="bits"):
        Recipe(method="lbw-exact", bits=9)
    with pytest.raises(ValueError, match="ternary"):
        Recipe(method="twn", bits=4)
    with pytest.raises(ValueError, match="mu_ratio"):
        Recipe(method="lbw-approx", params={"mu_ratio": -1.0})
    with pytest.raises(ValueError, match="act method"):
        Recipe(act={"method": "zzz"})
    with pytest.raises(ValueError, match="unknown key"):
        Recipe(overrides={"a.*": {"bitz": 3}})
    with pytest.raises(ValueError, match="first_layer"):
        Recipe(first_layer="skip")


def test_recipe_resolution_order() -> None:
    r = Recipe(bits=6, layers=("conv", "linear"), include=("net.*",), exclude=("net.skip*",),
               first_layer="float", last_layer=8,
               overrides={"net.b*": {"bits": 3}, "net.b2": {"method": "twn"},
                          "net.skip1": {"float": False}})
    assert r.resolve("net.a", "conv", first=True) is None
    assert r.resolve("net.a", "conv").bits == 6
    assert r.resolve("other", "conv") is None
    assert r.resolve("net.skip0", "conv") is None
    assert r.resolve("net.skip1", "conv").bits == 6  # forced back on
    assert r.resolve("net.b1", "conv").bits == 3
    c = r.resolve("net.b2", "conv")
    assert (c.method, c.bits) == ("twn", 2)
    assert r.resolve("net.z", "linear", last=True).bits == 8


# ---------------------------------------------------------------------- prepare / convert


def _reference_forward(m, x, method, bits):
    """The nested model's forward with each conv/linear weight replaced by Q(w) (oracle)."""
    def q(w):
        return Q.get(method)(w.detach(), bits=bits).values

    st = m.stem
    h = F.relu(st[1](F.conv2d(x, q(st[0].weight), st[0].bias, padding=1)))
    shared = m.blocks[0][0]
    h = F.relu(F.conv2d(h, q(shared.weight), None, padding=1))
    a = m.blocks[1]["a"]
    h = F.relu(F.conv2d(h, q(a.weight), a.bias))
    h = F.conv2d(h, q(shared.weight), None, padding=1)
    fc = m.head["fc"]
    return F.linear(h.mean((2, 3)), q(fc.weight), fc.bias)


def test_prepare_keeps_names_and_matches_quantized_reference(nested) -> None:
    float_model = copy.deepcopy(nested).eval()
    names = [n for n, _ in nested.named_parameters()]
    sd_keys = list(nested.state_dict())
    m = prepare(nested, {"method": "lbw-exact", "bits": 3, "layers": ["conv", "linear"]})
    assert [n for n, _ in m.named_parameters()] == names
    assert list(m.state_dict()) == sd_keys
    assert isinstance(m.stem[0], QuantConv2d) and isinstance(m.head["fc"], QuantLinear)
    assert m.blocks[0][0] is m.blocks[1]["b"][0]  # the shared conv stays shared
    x = torch.randn(2, 3, 6, 6)
    m.eval()
    with torch.no_grad():
        y = m(x)
        ref = _reference_forward(float_model, x, "lbw-exact", 3)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    # and the model still loads a float checkpoint strictly
    m.load_state_dict(float_model.state_dict(), strict=True)


def test_convert_freezes_codes_and_keeps_outputs(nested) -> None:
    m = prepare(nested, {"method": "lbw-exact", "bits": 4, "layers": ["conv", "linear"]}).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = m(x)
        convert(m)
        after = m(x)
    assert torch.equal(before, after)
    for name, layer in quant_layers(m):
        res = layer.frozen
        assert res is not None and res.kind == "pot" and res.bits == 4
        assert res.scale.item() == 2.0 ** res.exponent
        codes = layer.weight_codes()
        assert codes.dtype == torch.int32 and int(codes.abs().max()) <= 4
        assert torch.equal(res.decode(codes), layer.quantized_weight())
        wq, s = Q.lbw_exact(layer.weight.detach(), 4)
        assert s == res.exponent and torch.equal(wq, res.values), name
    # frozen: later weight edits do not change the forward, in train mode either
    with torch.no_grad():
        m.stem[0].weight.add_(1.0)
    m.train()
    m.stem[1].eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), after)


def test_convert_qn_and_uniform_kinds(nested) -> None:
    m = prepare(copy.deepcopy(nested), {"method": "qn", "bits": 2}).eval()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        before = m(x)
        convert(m)
        torch.testing.assert_close(m(x), before)
    for _, layer in quant_layers(m):
        res = layer.frozen
        assert res.kind == "table" and res.levels.numel() == 3
        assert torch.equal(res.decode(res.codes()), res.values)
    m2 = prepare(copy.deepcopy(nested), {"method": "uniform", "bits": 8,
                                         "params": {"per_channel": True}}).eval()
    with torch.no_grad():
        before = m2(x)
        convert(m2)
        torch.testing.assert_close(m2(x), before)
    res = m2.stem[0].frozen
    assert res.kind == "uniform" and res.scale.shape == (8,) and res.axis == 0


def test_activation_quantizers_input_and_after_relu(nested) -> None:
    m = prepare(copy.deepcopy(nested), {"act": {"method": "uniform", "bits": 8},
                                        "first_layer": "float"})
    assert m.stem[0].__class__ is nn.Conv2d  # first layer left float
    assert isinstance(m.blocks[1]["a"].input_quant, UniformActQuant)
    m2 = prepare(copy.deepcopy(nested), {"act": {"method": "pact", "bits": 4,
                                                 "position": "after_relu"}})
    relus = [n for n, a in act_quantizers(m2)]
    assert relus == ["stem.2.1", "blocks.0.1.1"]
    x = torch.randn(2, 3, 6, 6)
    m2.eval()
    with torch.no_grad():
        m2(x)
        h = m2.stem(x)
    scale = m2.stem[2][1].clip.item() / 15
    assert torch.allclose(h / scale, torch.round(h / scale), atol=1e-4)


# ---------------------------------------------------------------------- describe / memory


def test_describe_sparsity_and_distinct_equal_direct_counts(nested) -> None:
    m = prepare(nested, {"method": "lbw-exact", "bits": 2})
    rows = {r["name"]: r for r in describe(m)}
    for name in ("stem.0", "blocks.0.0", "blocks.1.a"):
        w = dict(m.named_modules())[name].weight.detach()
        wq, s = Q.lbw_exact(w, 2)
        zeros = sum(1 for v in wq.reshape(-1).tolist() if v == 0.0)
        assert rows[name]["sparsity"] == zeros / w.numel()
        assert rows[name]["distinct"] == len(set(wq.reshape(-1).tolist()))
        assert rows[name]["method"] == "lbw-exact" and rows[name]["bits"] == 2
        assert rows[name]["scale"] == f"2^{s}"
    assert rows["head.fc"]["method"] == "float" and rows["head.fc"]["bits"] == 32
    text = str(describe(m))
    assert "sparsity" in text and "blocks.1.a" in text


def test_weight_memory_by_hand(nested) -> None:
    m = prepare(nested, {"method": "lbw-exact", "bits": 4})
    mem = weight_memory(m)
    # quantized convs: stem.0 (8*3*9), shared (8*8*9, counted once), blocks.1.a (8*8)
    sizes = [8 * 3 * 9, 8 * 8 * 9, 8 * 8]
    assert [r["numel"] for r in mem["layers"]] == sizes
    assert mem["quantized_bytes"] == sum(math.ceil(n * 4 / 8) + 4 for n in sizes)
    n_all = sum(p.numel() for p in m.parameters())
    assert mem["fp32_bytes"] == 4 * n_all
    assert mem["other_bytes"] == 4 * (n_all - sum(sizes))
    assert mem["total_bytes"] == mem["quantized_bytes"] + mem["other_bytes"]
    assert mem["compression"] == pytest.approx(mem["fp32_bytes"] / mem["total_bytes"])
