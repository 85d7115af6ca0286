"""prepare on layers lowbit did not write: every conv/linear class, subclasses with their own
forward, shared weights, and the coverage report that keeps it from ever being silent."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import lowbit.quant as Q
from lowbit.nn import (
    CoverageWarning,
    QuantMixin,
    convert,
    coverage,
    describe,
    prepare,
    quant_layers,
)

# ---------------------------------------------------------------------- layers of other people


class StaticSamePadConv(nn.Conv2d):
    """As EfficientNet-PyTorch's Conv2dStaticSamePadding: its own padding module and forward."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        pad = max(k - stride, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StdConv(nn.Conv2d):
    """Weight-standardised conv (as timm's StdConv2d): standardises ``self.weight`` per output
    channel inside its forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mu = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self._conv_forward(x, (w - mu) / torch.sqrt(var + 1e-6), self.bias)


class ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.linear(x, self.weight, self.bias)


class Zoo(nn.Module):
    """Every kind prepare must handle, in one small model."""

    def __init__(self) -> None:
        super().__init__()
        self.c1d = nn.Conv1d(3, 6, 3, padding=1)
        self.same = StaticSamePadConv(3, 8, 3, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.std = StdConv(8, 8, 1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2)
        self.c3d = nn.Conv3d(1, 2, 3, padding=1)
        self.up3d = nn.ConvTranspose3d(2, 2, 2, stride=2)
        self.up1d = nn.ConvTranspose1d(6, 3, 2, stride=2)
        self.fc = ScaledLinear(4 * 8 * 8 + 2 * 4 * 4 * 4 + 3 * 8, 5)

    def forward(self, img: torch.Tensor, seq: torch.Tensor, vol: torch.Tensor) -> torch.Tensor:
        a = self.up(self.std(torch.relu(self.dw(self.same(img)))))
        b = self.up3d(self.c3d(vol))
        c = self.up1d(self.c1d(seq))
        return self.fc(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1)], 1))


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, generator=g),
            torch.randn(2, 1, 2, 2, 2, generator=g))


def _weight_layers(m: nn.Module) -> dict[str, nn.Module]:
    return {n: x for n, x in m.named_modules()
            if isinstance(x, (nn.modules.conv._ConvNd, nn.Linear))}


# ---------------------------------------------------------------------- quantizing them


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_every_kind_is_quantized_and_equals_hand_substitution(bits: int) -> None:
    torch.manual_seed(0)
    model = Zoo().eval()
    ref = copy.deepcopy(model)
    prepare(model, {"method": "lbw-exact", "bits": bits, "layers": ["conv", "linear"]})
    assert {n for n, _ in quant_layers(model)} == set(_weight_layers(ref))
    # the oracle: the same architecture with each weight replaced by lbw_exact of it, by hand
    with torch.no_grad():
        for layer in _weight_layers(ref).values():
            layer.weight.copy_(Q.lbw_exact(layer.weight, bits)[0])
    x = _inputs()
    assert torch.equal(model(*x), ref(*x))
    # the subclasses kept their own forward (and their own submodules)
    assert isinstance(model.same, StaticSamePadConv) and isinstance(model.same, QuantMixin)
    assert isinstance(model.same.static_padding, nn.ZeroPad2d)
    assert type(model.same).forward is not StaticSamePadConv.forward  # wrapped, not replaced
    # converted: same output, in eval and in train mode
    convert(model)
    assert torch.equal(model(*x), ref(*x))
    assert torch.equal(model.train()(*x), ref.train()(*x))


def test_parameters_state_dict_and_training_unchanged_in_form() -> None:
    torch.manual_seed(0)
    model = Zoo()
    keys = set(model.state_dict())
    params = dict(model.named_parameters())
    prepare(model, {"method": "lbw-exact", "bits": 4, "layers": ["conv", "linear"]})
    assert {k for k in model.state_dict() if "weight_quant" not in k} == keys
    assert all(model.get_parameter(n) is p for n, p in params.items())
    before = {n: p.detach().clone() for n, p in params.items() if n.endswith("weight")}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(*_inputs()).square().mean().backward()
    opt.step()
    moved = [n for n, w in before.items() if not torch.equal(w, model.get_parameter(n))]
    assert set(moved) == set(before)  # every float weight got a (straight-through) gradient
    # the float weight is back in place after the forward, also when the forward raises
    for layer in _weight_layers(model).values():
        assert isinstance(layer._parameters["weight"], nn.Parameter)
    with pytest.raises(RuntimeError):
        model.same(torch.randn(1, 5, 8, 8))  # wrong channel count
    assert model.same._parameters["weight"] is params["same.weight"]


def test_straight_through_gradient_of_a_subclass_equals_float_gradient_at_quantized() -> None:
    torch.manual_seed(0)
    layer = StdConv(3, 4, 3)
    model = nn.Sequential(layer)
    w0 = layer.weight.detach().clone()
    prepare(model, {"method": "lbw-exact", "bits": 4})
    x = torch.randn(2, 3, 6, 6)
    model(x).sum().backward()
    wq = Q.lbw_exact(w0, 4)[0].requires_grad_(True)
    ref = StdConv(3, 4, 3)
    ref.weight = nn.Parameter(wq)
    ref.bias = nn.Parameter(layer.bias.detach().clone())
    ref(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)


def test_tied_weights_share_one_quantizer_and_a_module_twice_is_one_layer() -> None:
    a = nn.Linear(4, 4)
    b = nn.Linear(4, 4)
    b.weight = a.weight  # tied
    twice = nn.Conv1d(4, 4, 1)
    model = nn.ModuleDict({"a": a, "b": b, "t1": twice, "t2": twice})
    prepare(model, {"method": "lbw-exact", "bits": 3, "layers": ["conv", "linear"]})
    assert model["a"].weight_quant is model["b"].weight_quant
    assert model["t1"] is model["t2"] and isinstance(model["t1"], QuantMixin)
    names = [n for n, _ in quant_layers(model)]
    assert names == ["a", "b", "t1"]  # named_modules lists a shared module once
    rep = coverage(model)
    assert rep.total_numel == 16 + 16  # the tied weight counted once
    assert rep.share == 1.0


def test_transposed_per_channel_axis_is_the_output_channel_axis() -> None:
    from lowbit.nn import channel_axis

    assert channel_axis(nn.ConvTranspose2d(4, 6, 2)) == 1
    assert channel_axis(nn.Conv2d(4, 6, 2)) == 0 and channel_axis(nn.Linear(2, 3)) == 0


# ---------------------------------------------------------------------- coverage, never silent


def test_coverage_reports_reasons_and_share() -> None:
    torch.manual_seed(0)
    model = Zoo()
    with pytest.warns(CoverageWarning, match="fc"):
        prepare(model, {"method": "lbw-exact", "bits": 4, "exclude": ["dw"],
                        "first_layer": "float"})
    rep = coverage(model)
    layers = _weight_layers(model)
    left = {n: r for n, _, _, r in rep.left_float}
    assert set(left) == {"c1d", "dw", "fc"}
    assert "first_layer" in left["c1d"] and "'dw'" in left["dw"] and "linear" in left["fc"]
    total = sum(m.weight.numel() for m in layers.values())
    floated = sum(layers[n].weight.numel() for n in left)
    assert rep.total_numel == total
    assert rep.share == pytest.approx((total - floated) / total)
    text = str(rep)
    assert "left float" in text and "fc" in text and f"{100 * rep.share:.1f}%" in text
    d = rep.to_dict()
    assert {r["name"] for r in d["left_float"]} == set(left)
    table = str(describe(model))
    assert "coverage:" in table and "float" in table


def test_min_coverage_raises_naming_the_layers_and_changes_nothing() -> None:
    model = Zoo()
    ref_types = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=r"min_coverage.*fc"):
        prepare(model, {"method": "lbw-exact", "bits": 4, "min_coverage": 0.95})
    assert {n: type(m) for n, m in model.named_modules()} == ref_types
    with pytest.raises(ValueError, match="min_coverage"):
        prepare(model, {"min_coverage": 1.5})
    # met: no error and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(model, {"layers": ["conv", "linear"], "min_coverage": 1.0})


def test_full_default_coverage_does_not_warn() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), StaticSamePadConv(4, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(model)
    assert coverage(model).share == 1.0


@pytest.mark.parametrize("which", ["include", "exclude"])
def test_pattern_matching_nothing_is_an_error_naming_it(which: str) -> None:
    with pytest.raises(ValueError, match=rf"{which} pattern 'backbone\.\*'"):
        prepare(Zoo(), {which: ["backbone.*"]})


def test_layers_lowbit_cannot_quantize_are_reported() -> None:
    class Raw(nn.Module):  # convolves with a weight, but is no Conv subclass
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight)

    class Sym(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return (w + w.transpose(0, 1)) / 2

    para = nn.Linear(4, 4)
    parametrize.register_parametrization(para, "weight", Sym())
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Raw(), nn.BatchNorm2d(4))
    model.add_module("para", para)
    prepare(model, {"layers": ["conv", "linear"], "min_coverage": 0.0})
    rep = coverage(model)
    assert [n for n, *_ in rep.unrecognised] == ["1"]  # Raw; BatchNorm is not listed
    left = {n: r for n, _, _, r in rep.left_float}
    assert "para" in left and "Parameter" in left["para"]
    assert "unrecognised" in str(rep)


def test_unprepared_model_reports_zero() -> None:
    rep = coverage(Zoo())
    assert rep.share == 0.0 and all(r == "not prepared" for *_, r in rep.left_float)


# ---------------------------------------------------------------------- one pass per step


def _resnetish() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         StaticSamePadConv(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_step_is_bit_identical_to_per_layer_and_replaces_it(monkeypatch,
                                                                     per_channel: bool) -> None:
    from lowbit.nn import RegistryWeightQuant, quantize_step

    torch.manual_seed(0)
    a = _resnetish()
    b = copy.deepcopy(a)
    recipe = {"method": "lbw-exact", "bits": 5, "layers": ["conv", "linear"],
              "params": {"per_channel": per_channel}}
    prepare(a, recipe)
    prepare(b, recipe)
    b._forward_pre_hooks.clear()  # b: every layer runs its own quantizer
    calls = []
    orig = RegistryWeightQuant.quantize

    def counting(self, w):
        calls.append(self)
        return orig(self, w)

    monkeypatch.setattr(RegistryWeightQuant, "quantize", counting)
    oa = torch.optim.SGD(a.parameters(), lr=0.5, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(4, 3, 10, 10)
    y = torch.tensor([0, 1, 2, 3])
    for step in range(3):
        calls.clear()
        la = F.cross_entropy(a(x), y)
        n_a = len(calls)
        lb = F.cross_entropy(b(x), y)
        assert n_a == 0 and len(calls) == 4  # a: one pass for all four layers; b: per layer
        assert torch.equal(la, lb), step
        for opt, loss in ((oa, la), (ob, lb)):
            opt.zero_grad()
            loss.backward()
            opt.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
        for (_, la_), (_, lb_) in zip(quant_layers(a), quant_layers(b)):
            ra, rb = la_.weight_quant.last, lb_.weight_quant.last
            assert torch.equal(torch.as_tensor(ra.exponent), torch.as_tensor(rb.exponent))
            assert torch.equal(ra.scale, rb.scale) and ra.axis == rb.axis
            assert torch.as_tensor(ra.exponent).numel() == (
                la_.weight.shape[0] if per_channel else 1)
    # nothing stale: after the optimizer step the hook's results no longer match the weights,
    # so a direct submodule call recomputes
    calls.clear()
    a[0](x)
    assert len(calls) == 1
    assert quantize_step(a) == 4 and quantize_step(a) == 0  # fresh results are kept
    a.eval()
    assert quantize_step(a) == 0  # eval mode keeps its own cache


def test_describe_names_per_channel_scales_even_with_one_channel() -> None:
    model = nn.Sequential(nn.Conv2d(3, 1, 3), nn.ReLU(), nn.Conv2d(1, 4, 1))
    prepare(model, {"method": "lbw-exact", "bits": 4, "params": {"per_channel": True}})
    table = describe(model)
    assert [r["scale"] for r in table] == ["per-channel[1]", "per-channel[4]"]
