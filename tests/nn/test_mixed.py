"""Mixed precision: sensitivity ranking and bit assignment under a budget."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from lowbit.nn import Recipe, Sensitivity, assign_bits, prepare, quant_layers, sensitivity


class _Parallel(nn.Module):
    """``y = robust(x) + medium(x) + fragile(x)``: each layer's quantization error adds alone.

    ``robust``: every weight +-0.5 (on every LBW grid: quantization is exact); ``medium``:
    Gaussian weights (std 0.3); ``fragile``: the same Gaussian weights plus one outlier of 30,
    so that a least-squares power-of-two grid with few levels zeroes every ordinary weight."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.robust = nn.Linear(16, 16, bias=False)
        self.medium = nn.Linear(16, 16, bias=False)
        self.fragile = nn.Linear(16, 16, bias=False)
        with torch.no_grad():
            self.robust.weight.copy_(0.5 * torch.sign(torch.randn(16, 16, generator=g)))
            self.medium.weight.copy_(0.3 * torch.randn(16, 16, generator=g))
            self.fragile.weight.copy_(0.3 * torch.randn(16, 16, generator=g))
            self.fragile.weight[0, 0] = 30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.robust(x) + self.medium(x) + self.fragile(x)


def _constructed() -> _Parallel:
    return _Parallel()


def test_sensitivity_ranks_the_fragile_layer_first() -> None:
    m = _constructed()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    ref = m(x).detach()

    def evaluate(model: nn.Module) -> float:
        return -float(((model(x) - ref) ** 2).mean())

    before = copy.deepcopy(m.state_dict())
    sens = sensitivity(m, evaluate, Recipe(layers=("linear",)), bits=(2, 4, 6))
    assert sens.base == 0.0
    assert [n for n, _ in sens.ranking()] == ["fragile", "medium", "robust"]
    assert sens.drops["robust"] == {2: 0.0, 4: 0.0, 6: 0.0}
    assert sens.drops["fragile"][2] > sens.drops["fragile"][6] > 0
    assert sens.numel == {"robust": 256, "medium": 256, "fragile": 256}
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # untouched
    assert type(m.fragile) is nn.Linear
    assert sens.drops["fragile"][2] > 2 * sens.drops["medium"][2]
    assert "fragile" in str(sens)


def _brute_force(sens: Sensitivity, budget: float, bits: tuple[int, ...]):
    names = list(sens.drops)
    best = None
    for choice in itertools.product(bits, repeat=len(names)):
        cost = sum(math.ceil(sens.numel[n] * b / 8) + sens.overhead[n]
                   for n, b in zip(names, choice))
        if cost > budget:
            continue
        drop = sum(max(sens.drops[n][c] for c in bits if c >= b) for n, b in zip(names, choice))
        key = (round(drop, 12), cost)
        if best is None or key < best[0]:
            best = (key, dict(zip(names, choice)))
    return best


@pytest.mark.parametrize("budget", [400, 500, 650, 800, 1000, 2000])
def test_assign_bits_is_optimal_under_budget(budget: int) -> None:
    g = torch.Generator().manual_seed(budget)
    bits = (2, 4, 6, 8)
    names = [f"l{i}" for i in range(4)]
    numel = {n: int(k) for n, k in zip(names, (100, 300, 500, 200))}
    drops = {}
    for n in names:
        d = sorted((torch.rand(4, generator=g) * 3).tolist(), reverse=True)
        drops[n] = dict(zip(bits, d))
    drops["l1"][6] = drops["l1"][4] + 0.5  # a non-monotone measurement
    sens = Sensitivity(0.0, drops, numel, {n: 4 for n in names}, Recipe(), bits)
    got = assign_bits(sens, budget)
    choice = {n: got.overrides[n]["bits"] for n in names}
    cost = sum(math.ceil(numel[n] * b / 8) + 4 for n, b in choice.items())
    assert cost <= budget
    oracle = _brute_force(sens, budget, bits)
    drop = sum(max(drops[n][c] for c in bits if c >= b) for n, b in choice.items())
    assert drop == pytest.approx(oracle[0][0], abs=1e-9)


def test_assign_bits_budget_too_small_and_recipe_usable() -> None:
    m = _constructed()
    x = torch.randn(8, 16)
    ref = m(x).detach()
    sens = sensitivity(m, lambda mod: -float(((mod(x) - ref) ** 2).mean()),
                       Recipe(layers=("linear",)), bits=(2, 4, 8))
    with pytest.raises(ValueError, match="budget"):
        assign_bits(sens, 10)
    budget = 3 * (256 * 4 // 8 + 4)  # the all-4-bit size
    recipe = assign_bits(sens, budget)
    q = prepare(copy.deepcopy(m), recipe)
    bits = {n: layer.bits for n, layer in quant_layers(q)}
    assert bits["robust"] == 2  # costs nothing to drop, frees bytes for the fragile layer
    assert bits["fragile"] >= 4
    assert sum(math.ceil(256 * b / 8) + 4 for b in bits.values()) <= budget
