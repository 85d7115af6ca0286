"""quantize_step for lbw-mu (registry ``lbw-approx``) layers: one lbw_approx_many pass per
parameter set, and the same forward/training trajectory, bit for bit, as every layer running
the definition of lbw_approx as it was written element by element (the oracle of
tests/quant/test_pot_approx.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn import RegistryWeightQuant, prepare, quant_layers, quantize_step
from lowbit.quant.registry import _pot_result
from tests.quant.test_pot_approx import oracle_registry


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2).to(memory_format=torch.channels_last),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def _oracle_quantize(self, w):
    """RegistryWeightQuant.quantize with lbw-approx replaced by the old definition."""
    if self.method != "lbw-approx":
        raise AssertionError(self.method)
    p = self.params
    wq, s = oracle_registry(w.detach(), p)
    res = _pot_result(wq, s, p.bits, p.axis if p.per_channel else None)
    self.last = res
    return res


@pytest.mark.parametrize("params", [
    {"mu_ratio": 0.75, "partial_terms": 4},          # the demo's lbw-mu
    {"mu_ratio": 0.75},
    {"mu_ratio": 0.5, "per_channel": True},
    {"mu": 0.05, "partial_terms": 2},
])
@pytest.mark.parametrize("bits", [3, 6])
def test_lbw_mu_step_matches_the_old_per_layer_definition(monkeypatch, params, bits) -> None:
    torch.manual_seed(0)
    a = _net()
    b = copy.deepcopy(a)
    recipe = {"method": "lbw-approx", "bits": bits, "layers": ["conv", "linear"],
              "params": params}
    prepare(a, recipe)
    prepare(b, recipe)
    b._forward_pre_hooks.clear()  # b: every layer runs its own quantizer ...
    calls = []

    def quantize(self, w):
        calls.append(self)
        return _oracle_quantize(self, w)  # ... which is the old definition

    monkeypatch.setattr(RegistryWeightQuant, "quantize", quantize)
    oa = torch.optim.SGD(a.parameters(), lr=0.5, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(4, 3, 10, 10)
    y = torch.tensor([0, 1, 2, 3])
    for step in range(3):
        calls.clear()
        out_a = a(x)
        n_a = len(calls)
        out_b = b(x)
        assert n_a == 0 and len(calls) == 4  # a: one pass for all four layers
        assert torch.equal(out_a, out_b), step
        for opt, out in ((oa, out_a), (ob, out_b)):
            opt.zero_grad()
            F.cross_entropy(out, y).backward()
            opt.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
        for (_, la), (_, lb) in zip(quant_layers(a), quant_layers(b)):
            ra, rb = la.weight_quant.last, lb.weight_quant.last
            assert torch.equal(ra.values, rb.values)
            assert torch.equal(torch.as_tensor(ra.exponent), torch.as_tensor(rb.exponent))
            assert torch.equal(ra.scale, rb.scale) and ra.axis == rb.axis
    a.eval()
    b.eval()
    assert torch.equal(a(x), b(x))  # eval: each layer's own (new) quantizer vs the old one


def test_mixed_methods_and_parameters_group_separately(monkeypatch) -> None:
    """lbw-exact and two lbw-approx parameter sets in one model: three passes, each layer
    the result of its own quantizer."""
    import lowbit.nn.layers as L

    torch.manual_seed(1)
    m = _net()
    prepare(m, {"method": "lbw-approx", "bits": 5, "layers": ["conv", "linear"],
                "params": {"partial_terms": 4}})
    layers = [lay for _, lay in quant_layers(m)]
    layers[1].weight_quant = RegistryWeightQuant.build("lbw-exact", 5)
    layers[2].weight_quant = RegistryWeightQuant.build("lbw-approx", 5, {"mu_ratio": 0.6})
    groups = []
    orig = L._many

    def spy(key, ws):
        groups.append((key[0], len(ws)))
        return orig(key, ws)

    monkeypatch.setattr(L, "_many", spy)
    m.train()
    assert quantize_step(m) == 4
    assert sorted(groups) == [("lbw-approx", 1), ("lbw-approx", 2), ("lbw-exact", 1)]
    for lay in layers:
        want = lay.weight_quant.entry.fn(lay.weight.detach(), lay.weight_quant.params)
        got = lay._step[1]
        assert torch.equal(got.values, want.values)
        assert torch.equal(torch.as_tensor(got.exponent), torch.as_tensor(want.exponent))
