"""QuantConv2d / QuantLinear: straight-through gradient, projected SGD, caching, errors, QN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit.quant as Q
from lowbit.nn import (
    ClipWeightQuant,
    QNWeightQuant,
    QuantConv2d,
    QuantLinear,
    RegistryWeightQuant,
    UniformActQuant,
    make_weight_quantizer,
)


def _conv(method: str = "lbw-exact", bits: int = 4, **kw) -> QuantConv2d:
    torch.manual_seed(1)
    base = nn.Conv2d(4, 6, 3, padding=1, **kw)
    return QuantConv2d.from_float(base, make_weight_quantizer(method, bits), name="c")


@pytest.mark.parametrize("method,bits", [("lbw-exact", 2), ("lbw-exact", 6), ("lbw-approx", 4),
                                         ("twn", 2), ("uniform", 4), ("kmeans", 3)])
def test_ste_gradient_is_gradient_at_quantized_weight_conv(method: str, bits: int) -> None:
    layer = _conv(method, bits)
    x = torch.randn(2, 4, 5, 5)
    g = torch.randn(2, 6, 5, 5)
    (layer(x) * g).sum().backward()
    # oracle: a plain conv evaluated at the quantized weight, that weight as the leaf
    wq = Q.get(method)(layer.weight.detach(), bits=bits).values.clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    (F.conv2d(x, wq, b, padding=1) * g).sum().backward()
    assert torch.equal(layer.weight.grad, wq.grad)
    assert torch.equal(layer.bias.grad, b.grad)


def test_ste_gradient_linear_float64() -> None:
    torch.manual_seed(2)
    lin = nn.Linear(7, 3).double()
    q = QuantLinear.from_float(lin, make_weight_quantizer("lbw-exact", 5))
    x = torch.randn(4, 7, dtype=torch.float64)
    q(x).pow(2).sum().backward()
    wq, _ = Q.lbw_exact(lin.weight.detach(), 5)
    wq = wq.clone().requires_grad_(True)
    F.linear(x, wq, lin.bias.detach()).pow(2).sum().backward()
    assert torch.equal(q.weight.grad, wq.grad)


def test_projected_sgd_step_with_nesterov_and_weight_decay() -> None:
    """One SGD step = w - lr * (grad at Q(w) + wd * w) (first step: momentum buffer = d_p)."""
    layer = _conv("lbw-exact", 4)
    w0 = layer.weight.detach().clone()
    lr, wd, mom = 0.1, 1e-2, 0.9
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=mom, nesterov=True, weight_decay=wd)
    x = torch.randn(2, 4, 5, 5)
    layer(x).square().mean().backward()
    wq = Q.lbw_exact(w0, 4)[0].requires_grad_(True)
    F.conv2d(x, wq, layer.bias.detach(), padding=1).square().mean().backward()
    d_p = wq.grad + wd * w0
    expect = w0 - lr * (d_p + mom * d_p)  # nesterov: d_p + momentum * buf, buf = d_p
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), expect, rtol=1e-6, atol=1e-7)


def test_subclass_and_state_dict_keys() -> None:
    base = nn.Conv2d(3, 4, 3)
    keys = set(base.state_dict())
    q = QuantConv2d.from_float(base, make_weight_quantizer("lbw-exact", 4))
    assert isinstance(q, nn.Conv2d)
    assert set(q.state_dict()) == keys
    assert q.weight is base.weight and q.bias is base.bias
    lin = QuantLinear.from_float(nn.Linear(3, 2), make_weight_quantizer("twn", 2))
    assert isinstance(lin, nn.Linear) and set(lin.state_dict()) == {"weight", "bias"}


class _Counting(RegistryWeightQuant):
    calls = 0

    def quantize(self, w):
        type(self).calls += 1
        return super().quantize(w)


def test_quantizer_runs_once_per_training_forward_and_is_cached_in_eval() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(2, 3, 3)
    p = Q.get("lbw-exact").params(bits=4)
    layer = QuantConv2d.from_float(base, _Counting("lbw-exact", p))
    x = torch.randn(1, 2, 5, 5)
    _Counting.calls = 0
    layer.train()
    for _ in range(3):
        layer(x)
    assert _Counting.calls == 3
    layer.eval()
    y1 = layer(x)
    y2 = layer(x)
    assert _Counting.calls == 4 and torch.equal(y1, y2)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in-place change bumps the version: cache invalid
    y3 = layer(x)
    assert _Counting.calls == 5
    wq = Q.lbw_exact(layer.weight.detach(), 4)[0]
    torch.testing.assert_close(y3, F.conv2d(x, wq, layer.bias))
    layer.load_state_dict({"weight": base.weight.detach() * 0.5, "bias": base.bias.detach()})
    layer(x)
    assert _Counting.calls == 6
    layer.train()
    layer.eval()
    layer(x)
    assert _Counting.calls == 7  # train()/eval() drop the cache


def test_eval_mode_still_passes_gradient() -> None:
    layer = _conv("lbw-exact", 4).eval()
    layer(torch.randn(1, 4, 4, 4)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_nan_weight_raises_naming_the_layer() -> None:
    layer = _conv("lbw-exact", 4)
    layer.qname = "backbone.conv7"
    with torch.no_grad():
        layer.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="backbone.conv7"):
        layer(torch.randn(1, 4, 4, 4))


def test_qn_weight_gradcheck_float64() -> None:
    q = QNWeightQuant(bits=3).double()
    w = (torch.randn(20, dtype=torch.float64) * 0.1)
    q.init_from(w)
    q.temperature.fill_(3.0)
    q.train()
    w = w.clone().requires_grad_(True)

    def f(w_, a_, b_):
        with torch.no_grad():
            q.alpha.copy_(a_)
            q.beta.copy_(b_)
        from lowbit.quant.sigmoid import soft_staircase
        return soft_staircase(w_, q.levels.double(), q.biases.double(), 3.0, a_, b_)

    a = q.alpha.detach().clone().requires_grad_(True)
    b = q.beta.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (w, a, b))
    # the module's forward is that function of (w, alpha, beta)
    torch.testing.assert_close(q(w), f(w, a, b))


def test_qn_soft_converges_to_hard_inside_a_layer() -> None:
    torch.manual_seed(3)
    base = nn.Conv2d(4, 8, 3, padding=1)
    layer = QuantConv2d.from_float(base, make_weight_quantizer("qn", 2))
    x = torch.randn(2, 4, 6, 6)
    layer.eval()
    hard = layer(x).detach()
    vals = torch.unique(layer.quantized_weight().detach())
    assert vals.numel() <= 3  # ternary: alpha * {-1, 0, 1}
    layer.train()
    errs = []
    for t in (1.0, 10.0, 100.0, 1000.0, 1e5):
        layer.weight_quant.temperature.fill_(t)
        errs.append(float((layer(x).detach() - hard).abs().max()))
    assert all(b <= a + 1e-6 for a, b in zip(errs, errs[1:]))
    assert errs[0] > 1e-2 and errs[-1] < 1e-3


def test_qn_init_follows_paper_code() -> None:
    w = torch.tensor([-0.8, -0.3, -0.01, 0.0, 0.02, 0.25, 0.6])
    q = QNWeightQuant(2)
    q.init_from(w)
    assert q.beta.item() == pytest.approx(1.25 / 0.8)
    assert q.alpha.item() == pytest.approx(0.8 / 1.25)
    assert q.biases.numel() == 2 and q.biases[0] < 0 < q.biases[1]


def test_clip_weight_quantizer_and_its_gradient() -> None:
    q = ClipWeightQuant(bits=8, calibrator="minmax")
    w = torch.tensor([-2.0, -0.5, 0.1, 0.7, 1.5], requires_grad=True)
    q(w)  # initialises the clip to max|w|
    assert q.clip.item() == pytest.approx(2.0)
    with torch.no_grad():
        q.clip.fill_(1.0)
    out = q(w)
    assert torch.equal(out.detach(), torch.tensor([-1.0, -0.5, 0.1, 0.7, 1.0]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    assert float(q.clip.grad) == pytest.approx(1.0 - 1.0)  # +1 from 1.5, -1 from -2.0
    q.quantize = True
    res = q.freeze(w)
    codes = res.codes()
    assert codes.abs().max() <= 127 and torch.equal(res.decode(codes), res.values)
    assert float(res.scale) == pytest.approx(1.0 / 127)


def test_pact_clip_gradient() -> None:
    a = UniformActQuant(bits=4, mode="pact", clip=1.0)
    x = torch.tensor([-1.0, 0.2, 0.55, 1.5, 3.0], requires_grad=True)
    y = a(x)
    # clamp to [0, 1], 4-bit grid of step 1/15 (round half to even)
    expect = torch.round(torch.tensor([0.0, 0.2, 0.55, 1.0, 1.0]) * 15) / 15
    torch.testing.assert_close(y.detach(), expect)
    y.sum().backward()
    assert float(a.clip.grad) == 2.0  # two inputs above the clip
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))
