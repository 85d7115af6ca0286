"""Incremental Network Quantization: partition by magnitude, frozen values, grid, checkpoints.

The oracles here are plain Python: magnitudes sorted by hand, INQ's grid from its formula
(``n1 = floor(log2(4 max|W| / 3))``, ``n2 = n1 + 1 - 2**(b-2)``) and nearest-level rounding by
scanning the levels.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.nn import (
    INQSchedule,
    INQWeightQuant,
    Recipe,
    convert,
    inq_portion,
    make_weight_quantizer,
    prepare,
    quant_layers,
)
from lowbit.train.checkpoint import load_checkpoint, save_checkpoint


def _grid(w: list[float], bits: int) -> tuple[int, list[float]]:
    """INQ's exponent n1 and its non-negative levels ``[0, 2**n2, ..., 2**n1]``."""
    m = max(abs(x) for x in w)
    n1 = math.floor(math.log2(4.0 * m / 3.0))
    n2 = n1 + 1 - 2 ** (bits - 2)
    return n1, [0.0] + [2.0 ** k for k in range(n2, n1 + 1)]


def _nearest(x: float, levels: list[float]) -> float:
    """The level nearest to |x| (ties to the larger one), with x's sign."""
    best = levels[0]
    for lv in levels:
        if abs(abs(x) - lv) <= abs(abs(x) - best):
            best = lv
    return math.copysign(best, x) if best else 0.0


def _top(values: list[float], free: list[int], k: int) -> set[int]:
    """The k free indices of largest |value| (sorted by hand; values are distinct)."""
    ranked = sorted(free, key=lambda i: -abs(values[i]))
    return set(ranked[:k])


def _weight(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 0.2


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_each_stage_freezes_the_largest_free_weights_on_the_start_grid(bits: int) -> None:
    w = _weight((6, 4, 3, 3), bits)  # 216 weights
    q = INQWeightQuant(bits, auto_start=False)
    n1, levels = _grid(w.reshape(-1).tolist(), bits)
    frozen: dict[int, float] = {}
    g = torch.Generator().manual_seed(100 + bits)
    for p in (0.5, 0.75, 0.875, 1.0):
        vals = w.reshape(-1).tolist()
        free = [i for i in range(len(vals)) if i not in frozen]
        new = _top(vals, free, math.ceil(p * len(vals)) - len(frozen))
        for i in new:
            frozen[i] = _nearest(vals[i], levels)  # grid of the *starting* weights
        q.set_portion(p, w)
        got = {i for i, m in enumerate(q.mask.reshape(-1).tolist()) if m}
        assert got == set(frozen), p
        fv = q.frozen.reshape(-1).tolist()
        assert all(fv[i] == v for i, v in frozen.items()), p
        assert int(q.exponent) == n1
        # "re-training" between stages: the free weights move and grow past the old max|W|,
        # so a grid recomputed later would differ
        w = w.clone()
        w.reshape(-1)[free] *= 1.7 + 0.1 * torch.rand(len(free), generator=g)
    assert q.quantized_share == 1.0
    q.set_portion(0.5, w)  # portions never shrink
    assert q.quantized_share == 1.0


def test_count_rounds_up_and_ties_go_to_the_lower_index() -> None:
    q = INQWeightQuant(4, auto_start=False)
    w = torch.tensor([[0.5, -0.5, 0.25, 0.5, 0.1, -0.2, 0.05]])
    q.set_portion(0.3, w)  # ceil(0.3 * 7) = 3 of the four magnitudes >= 0.25
    assert q.mask.tolist() == [[True, True, False, True, False, False, False]]


def test_frozen_values_survive_weight_decay_and_momentum_free_ones_train() -> None:
    torch.manual_seed(0)
    model = prepare(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 4, 3, padding=1)),
                    {"method": "inq-incremental", "bits": 4})
    layers = [m for _, m in quant_layers(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    x = torch.randn(4, 3, 8, 8)
    target = torch.randn(4, 4, 8, 8)
    start = [m.weight.detach().clone() for m in layers]
    model.train()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for step in range(12):
        if step == 6:
            INQSchedule().apply(model, 0.3)  # second stage: 75%
        loss = ((model(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:  # the first training forward started INQ at 50% by itself
            assert all(m.weight_quant.quantized_share == pytest.approx(0.5, abs=0.01)
                       for m in layers)
        for m in layers:
            mask = m.weight_quant.mask
            assert torch.count_nonzero(m.weight.grad[mask]) == 0
            assert torch.count_nonzero(m.weight.grad[~mask]) > 0
            seen.append((mask.clone(), m.weight_quant.frozen.clone()))
        opt.step()
        for i, m in enumerate(layers):  # the weight the layer uses, right after the step
            used = m.quantized_weight().detach()
            first_mask, first_vals = seen[i]
            assert torch.equal(used[first_mask], first_vals[first_mask])
            mask = m.weight_quant.mask
            assert torch.equal(used[~mask], m.weight.detach()[~mask])
    for m, w0 in zip(layers, start):
        mask = m.weight_quant.mask
        assert m.weight_quant.quantized_share == pytest.approx(0.75, abs=0.01)
        # weight decay did move the float Parameter under the frozen entries ...
        assert not torch.equal(m.weight.detach()[mask], w0[mask])
        # ... and the free entries trained
        assert not torch.equal(m.weight.detach()[~mask], w0[~mask])
    # eval mode uses the same frozen values
    model.eval()
    for m in layers:
        mask = m.weight_quant.mask
        assert torch.equal(m.quantized_weight()[mask], m.weight_quant.frozen[mask])


def test_full_portion_puts_every_weight_on_inq_grid_and_converts_to_pot() -> None:
    torch.manual_seed(1)
    model = prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 5, 1)),
                    {"method": "inq-incremental", "bits": 3})
    grids = {n: _grid(m.weight.reshape(-1).tolist(), 3) for n, m in quant_layers(model)}
    sched = INQSchedule()
    for prog in (0.0, 0.25, 0.5):
        sched.apply(model, prog)
        with torch.no_grad():  # re-training moves the free weights
            for _, m in quant_layers(model):
                m.weight.mul_(1.3)
    assert sched.apply(model, 1.0) == 1.0
    convert(model)
    for name, m in quant_layers(model):
        n1, levels = grids[name]
        allowed = set(levels) | {-v for v in levels}
        fr = m.frozen
        assert set(fr.values.reshape(-1).tolist()) <= allowed, name
        assert fr.kind == "pot" and fr.exponent == n1 and fr.bits == 3
        assert torch.equal(fr.values, m.weight_quant.frozen)
        assert torch.equal(fr.decode(fr.codes()), fr.values)


def test_eval_before_start_is_the_one_shot_inq_grid() -> None:
    from lowbit.quant import quantize

    w = _weight((5, 7), 3)
    q = INQWeightQuant(4).eval()
    assert torch.equal(q(w), quantize("inq", w, bits=4).values)
    assert not bool(q.started)


def test_checkpoint_round_trip_and_resumed_stage(tmp_path) -> None:
    def build() -> nn.Module:
        torch.manual_seed(2)
        return prepare(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1)),
                       {"method": "inq-incremental", "bits": 4})

    sched = INQSchedule()
    total = 8
    a = build()
    opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(2, 3, 6, 6)

    def step(model: nn.Module, opt: torch.optim.Optimizer, it: int) -> None:
        model.train()
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        sched.apply(model, (it + 1) / total)

    for it in range(3):  # stops inside the second stage (progress 3/8)
        step(a, opt, it)
    path = save_checkpoint(tmp_path, a, opt, state={"iteration": 3})
    b = build()
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    assert not bool(quant_layers(b)[0][1].weight_quant.started)
    load_checkpoint(path, b, opt_b)
    for (_, la), (_, lb) in zip(quant_layers(a), quant_layers(b)):
        qa, qb = la.weight_quant, lb.weight_quant
        assert torch.equal(qa.mask, qb.mask) and torch.equal(qa.frozen, qb.frozen)
        assert int(qa.exponent) == int(qb.exponent)
        assert float(qb.portion) == 0.75 and qb.quantized_share == pytest.approx(0.75, abs=0.02)
    before = [lb.weight_quant.mask.clone() for _, lb in quant_layers(b)]
    sched.apply(b, 3 / total)  # the resumed run recomputes the same stage: nothing changes
    assert all(torch.equal(m, lb.weight_quant.mask) for m, (_, lb) in zip(before,
                                                                          quant_layers(b)))
    for it in range(3, total):  # both runs go on identically to the end
        step(a, opt, it)
        step(b, opt_b, it)
    for (_, la), (_, lb) in zip(quant_layers(a), quant_layers(b)):
        assert bool(la.weight_quant.mask.all()) and torch.equal(la.weight_quant.mask,
                                                                 lb.weight_quant.mask)
        assert torch.equal(la.weight_quant.frozen, lb.weight_quant.frozen)


def test_a_state_without_mask_restarts_at_the_loaded_portion() -> None:
    """A warm start that skipped mask/frozen (shapes differ) keeps the portion and restarts
    the partition from the loaded weight on the next forward."""
    w = _weight((4, 5), 7)
    a = INQWeightQuant(4, auto_start=False)
    a.set_portion(0.75, w)
    state = {k: v for k, v in a.state_dict().items() if k not in ("mask", "frozen")}
    b = INQWeightQuant(4, auto_start=False)
    b.load_state_dict(state, strict=False)
    assert not b.started and float(b.portion) == 0.75
    b.train()(w)
    assert torch.equal(b.mask, a.mask) and torch.equal(b.frozen, a.frozen)


def test_schedule_spreads_stages_and_ends_quantized() -> None:
    got = [inq_portion(i / 8) for i in range(9)]
    assert got == [0.5, 0.5, 0.75, 0.75, 0.875, 0.875, 1.0, 1.0, 1.0]
    assert [inq_portion(i / 3, (0.5, 1.0)) for i in range(4)] == [0.5, 0.5, 1.0, 1.0]
    for bad in ([], [0.5, 0.9], [0.75, 0.5, 1.0], [0.0, 1.0]):
        with pytest.raises(ValueError):
            inq_portion(0.1, bad)


def test_recipe_validates_inq_parameters() -> None:
    r = Recipe.from_dict({"method": "inq-incremental", "bits": 3,
                          "params": {"portions": [0.25, 0.5, 1.0]}})
    assert r.resolve("c", "conv").bits == 3
    q = make_weight_quantizer("inq-incremental", 3, {"portions": [0.25, 0.5, 1.0]})
    assert isinstance(q, INQWeightQuant) and q.portions == (0.25, 0.5, 1.0)
    with pytest.raises(ValueError, match="last inq portion"):
        Recipe.from_dict({"method": "inq-incremental", "params": {"portions": [0.5]}})
    with pytest.raises(ValueError, match="bits"):
        Recipe.from_dict({"method": "inq-incremental", "bits": 1})
    with pytest.raises(ValueError, match="no parameter"):
        Recipe.from_dict({"method": "inq-incremental", "params": {"mu": 1}})
