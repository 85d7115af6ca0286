"""A QAT step of a small prepared model on the device follows the CPU step: same loss, same
gradients and updated float weights within float32 summation-order tolerance, and the same
quantized weights (the power-of-two grid is re-projected from nearly equal float weights)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.nn import prepare, quant_layers

RECIPES = {
    "lbw-exact-w4": {"method": "lbw-exact", "bits": 4},
    "lbw-exact-w4-pact-a4": {"method": "lbw-exact", "bits": 4,
                             "act": {"method": "pact", "bits": 4}},
    "twn": {"method": "twn"},
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _steps(model: nn.Module, device: torch.device, n: int) -> list[float]:
    """``n`` SGD steps on fixed batches; the losses."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(n):
        x = torch.randn(16, 3, 16, 16, generator=g).to(device)
        y = torch.randint(0, 10, (16,), generator=g).to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_qat_step_on_device_follows_cpu(device: torch.device, recipe: str) -> None:
    base = prepare(_model(), RECIPES[recipe])
    ref, dev = copy.deepcopy(base), copy.deepcopy(base)
    ref_losses = _steps(ref, torch.device("cpu"), 1)
    dev_losses = _steps(dev, device, 1)
    assert abs(ref_losses[0] - dev_losses[0]) <= 1e-5 * max(1.0, abs(ref_losses[0]))
    # float shadow weights and BN statistics after one step: float32 summation order only
    for (k, a), (k2, b) in zip(ref.state_dict().items(), dev.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=k)
    # the projected (quantized) weights: the grid decisions agree almost everywhere (a float
    # weight within 1e-6 of a decision boundary may round the other way on another device)
    with torch.no_grad():
        for (name, la), (_, lb) in zip(quant_layers(ref), quant_layers(dev)):
            qa = la.weight_quant(la.weight)
            qb = lb.weight_quant(lb.weight).cpu()
            assert qa.dtype == qb.dtype == torch.float32
            agree = float((qa == qb).float().mean())
            assert agree >= 0.999, (name, agree)


def test_qat_trains_on_device(device: torch.device) -> None:
    """Five steps on the same four batches lower the loss (the device step is a real step)."""
    model = prepare(_model(), RECIPES["lbw-exact-w4"])
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 3, 16, 16, generator=g).to(device)
    y = torch.randint(0, 10, (32,), generator=g).to(device)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert all(p.device.type == device.type for p in model.parameters())
