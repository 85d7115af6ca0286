"""Mixed precision: per-layer sensitivity and bit assignment under a weight-memory budget."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lowbit.nn.layers import quant_layers
from lowbit.nn.recipe import Recipe
from lowbit.nn.surgery import act_quantizers, layer_bytes, prepare

__all__ = ["Sensitivity", "sensitivity", "assign_bits"]


@dataclass
class Sensitivity:
    """Result of :func:`sensitivity`.

    ``base``: the metric of the float model. ``drops[name][bits]``: ``base - metric`` with only
    that layer quantized at ``bits`` (larger = more fragile). ``numel[name]`` and
    ``overhead[name]`` (bytes besides the codes) feed :func:`assign_bits`; ``recipe`` is the
    recipe the layers were quantized with.
    """

    base: float
    drops: dict[str, dict[int, float]]
    numel: dict[str, int]
    overhead: dict[str, int]
    recipe: Recipe
    bits: tuple[int, ...] = field(default=())

    def ranking(self, bits: int | None = None) -> list[tuple[str, float]]:
        """Layers sorted by drop at ``bits`` (default the smallest tried), most fragile first."""
        b = min(self.bits) if bits is None else bits
        return sorted(((n, d[b]) for n, d in self.drops.items()), key=lambda t: -t[1])

    def __str__(self) -> str:
        head = ["layer"] + [f"{b}-bit" for b in self.bits]
        rows = [head] + [[n] + [f"{self.drops[n][b]:+.4f}" for b in self.bits]
                         for n, _ in self.ranking()]
        w = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.rjust(x) if i else c.ljust(x) for i, (c, x) in
                                   enumerate(zip(r, w))) for r in rows)


@torch.no_grad()
def sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    recipe: Recipe | dict[str, Any] | None = None,
    bits: Sequence[int] = (2, 4, 6, 8),
    progress: bool = False,
) -> Sensitivity:
    """Quantize one layer at a time (post-training, weights only) and record the metric drop.

    ``model`` is not modified (a deep copy is prepared with ``recipe``, default ``Recipe()``;
    its activation quantizers are disabled). ``evaluate(model) -> float`` is a metric where
    higher is better (accuracy, negative loss), called in eval mode once for the float copy
    and once per (layer, bits). The recipe's method must accept every entry of ``bits``.
    """
    recipe = Recipe() if recipe is None else Recipe.from_dict(recipe)
    bits = tuple(sorted(set(int(b) for b in bits)))
    if not bits:
        raise ValueError("bits must not be empty")
    m = prepare(copy.deepcopy(model), recipe)
    m.eval()
    for _, aq in act_quantizers(m):
        aq.enabled = False
    layers = quant_layers(m)
    if not layers:
        raise ValueError("the recipe quantizes no layer of this model")
    for _, layer in layers:
        layer.quant_enabled = False
    base = float(evaluate(m))
    drops: dict[str, dict[int, float]] = {}
    numel: dict[str, int] = {}
    overhead: dict[str, int] = {}
    it = [(n, layer, b) for n, layer in layers for b in bits]
    for name, layer, b in tqdm(it, desc="sensitivity", disable=not progress, leave=False):
        q = layer.weight_quant
        old = q.bits
        try:
            q.set_bits(b)
        except ValueError as e:
            raise ValueError(f"sensitivity: layer {name!r} cannot use {b} bits: {e}") from e
        layer.quant_enabled = True
        layer.invalidate()
        drops.setdefault(name, {})[b] = base - float(evaluate(m))
        overhead.setdefault(name, {})[b] = q.overhead_bytes(layer.weight.shape[0])
        layer.quant_enabled = False
        q.set_bits(old)
        numel[name] = layer.weight.numel()
    return Sensitivity(base, drops, numel, {n: max(o.values()) for n, o in overhead.items()},
                       recipe, bits)


def assign_bits(sens: Sensitivity, budget_bytes: float, bits: Sequence[int] | None = None
                ) -> Recipe:
    """Per-layer bit-widths minimising the summed sensitivity drops under a memory budget.

    Cost of a layer at ``b`` bits: ``ceil(numel * b / 8) + overhead`` bytes (as
    :func:`lowbit.nn.weight_memory` counts the quantized layers); ``budget_bytes`` bounds the
    sum over the layers of ``sens``. Drops are made monotone (a layer never gains by losing
    bits: each drop is replaced by the largest drop at that or more bits), assumed additive,
    and the choice is exact: a dynamic programme over layers keeping the Pareto front of
    (bytes, summed drop). Returns ``sens.recipe`` with one override ``{name: {"bits": b}}``
    per layer. Raises ValueError if even the smallest bit-widths exceed the budget.
    """
    cand = tuple(sorted(set(bits if bits is not None else sens.bits)))
    if not cand or any(b not in sens.bits for b in cand):
        raise ValueError(f"bits {cand} must be a subset of the measured {sens.bits}")
    names = list(sens.drops)
    opts: list[list[tuple[int, float, int]]] = []
    for n in names:
        row, worst = [], float("-inf")
        for b in sorted(cand, reverse=True):  # monotone from high to low bits
            worst = max(worst, sens.drops[n][b])
            row.append((layer_bytes(sens.numel[n], b, sens.overhead[n]), worst, b))
        opts.append(row)
    front: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for row in opts:
        nxt = [(c + c2, d + d2, ch + (b,)) for c, d, ch in front for c2, d2, b in row
               if c + c2 <= budget_bytes]
        if not nxt:
            need = sum(min(o[0] for o in r) for r in opts)
            raise ValueError(f"budget {budget_bytes} bytes is below the minimum {need} bytes")
        nxt.sort(key=lambda t: (t[0], t[1]))
        front, best = [], float("inf")
        for t in nxt:  # keep the Pareto front: cost ascending, drop strictly decreasing
            if t[1] < best - 1e-15:
                front.append(t)
                best = t[1]
        if len(front) > 20000:  # thin very long fronts (many layers); keeps the extremes
            step = len(front) / 20000
            front = [front[int(i * step)] for i in range(20000)] + [front[-1]]
    _, _, choice = min(front, key=lambda t: (t[1], t[0]))
    overrides = dict(sens.recipe.overrides)
    for n, b in zip(names, choice):
        overrides[n] = {"bits": int(b)}
    return sens.recipe.replace(overrides=overrides)
