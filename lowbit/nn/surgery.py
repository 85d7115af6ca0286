"""Model surgery: :func:`prepare`, :func:`convert`, :func:`describe`, :func:`weight_memory`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from lowbit.nn.act import QNActQuant, UniformActQuant
from lowbit.nn.coverage import (
    _REASONS_ATTR,
    COVERAGE_WARN,
    CoverageReport,
    CoverageWarning,
    coverage,
)
from lowbit.nn.layers import (
    _BATCHED,
    QuantMixin,
    channel_axis,
    install_quantize_step,
    quant_layers,
    quantize_module,
    weight_layer_kind,
)
from lowbit.nn.quantizers import ClipWeightQuant, WeightQuantizer, make_weight_quantizer
from lowbit.nn.recipe import ActRecipe, Recipe, _match

__all__ = [
    "prepare",
    "convert",
    "describe",
    "weight_memory",
    "layer_bytes",
    "make_act_quantizer",
    "act_quantizers",
    "LayerTable",
]

def _kind(m: nn.Module) -> str | None:
    """``"conv"`` / ``"linear"`` for a float weight layer prepare can quantize, else None."""
    if isinstance(m, QuantMixin):
        return None
    return weight_layer_kind(m)


def make_act_quantizer(a: ActRecipe) -> nn.Module:
    """The activation quantizer module for an :class:`ActRecipe`."""
    if a.method == "qn":
        return QNActQuant(a.bits, outlier=a.outlier, bias_init=a.bias_init)
    return UniformActQuant(a.bits, a.method, a.symmetric, a.calibrator, a.clip)


def act_quantizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every activation quantizer in ``model``."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (UniformActQuant, QNActQuant))]


def _replace_all(model: nn.Module, mapping: dict[int, nn.Module]) -> None:
    """Replace every reference (shared modules included) to ``id(old)`` by ``mapping[id]``."""
    for mod in list(model.modules()):
        for key, child in list(mod._modules.items()):
            if child is not None and id(child) in mapping:
                mod._modules[key] = mapping[id(child)]


def prepare(model: nn.Module, recipe: Recipe | dict[str, Any] | None = None) -> nn.Module:
    """Quantize the conv and linear layers of ``model`` (and insert activation quantizers)
    according to ``recipe``; in place, returns ``model``.

    Which layers: every module that convolves or multiplies with a ``weight`` Parameter --
    ``nn.Conv1d/2d/3d`` (grouped, depthwise, dilated), ``nn.ConvTranspose1d/2d/3d``,
    ``nn.Linear`` **and their subclasses** -- filtered by the recipe (:class:`Recipe`:
    ``layers``, include/exclude, first/last-layer policy, overrides). Each chosen layer becomes
    quantized in place (:func:`lowbit.nn.layers.quantize_module`): exact ``nn.Conv2d`` /
    ``nn.Linear`` become :class:`QuantConv2d` / :class:`QuantLinear`; any other class keeps its
    own forward (same-padding, weight standardisation, ...), which then reads the quantized
    weight. Parameters stay the same objects, so parameter names, state_dict keys and an
    optimizer built before are unaffected; quantizers with state add entries under
    ``<layer>.weight_quant.*`` / ``<layer>.input_quant.*``.

    Policies: per-channel quantizers (``params: {per_channel: true}``) take the output-channel
    axis of each layer (:func:`lowbit.nn.layers.channel_axis`: 0, or 1 for transposed convs)
    unless the recipe gives ``axis``. A weight Parameter shared by several layers (tied weights)
    gets one quantizer, the first layer's (in ``named_modules`` order), used by all of them; a
    module registered twice is one layer. First/last layer = first/last conv or linear layer in
    registration order.

    Coverage is never silent: the reason each conv/linear layer is left float is recorded and
    :func:`lowbit.nn.coverage` reports it. With ``recipe.min_coverage`` set, prepare raises
    ValueError naming the layers left float when less than that share of conv+linear weight
    elements is quantized (the model is then left as it was); otherwise it warns
    (:class:`~lowbit.nn.coverage.CoverageWarning`) below 90%. An include or exclude pattern
    that matches no conv/linear layer name is a ValueError naming the pattern.
    ``recipe``: a :class:`Recipe`, its dict, or None for ``Recipe()``.
    """
    recipe = Recipe() if recipe is None else Recipe.from_dict(recipe)
    cands: list[tuple[str, nn.Module, str]] = []
    seen: set[int] = set()
    for n, m in model.named_modules():
        k = _kind(m)
        if k is not None and id(m) not in seen:
            seen.add(id(m))
            cands.append((n, m, k))
    names = [n for n, _, _ in cands] + [n for n, m in model.named_modules()
                                        if isinstance(m, QuantMixin)]
    if recipe.act is not None and recipe.act.position == "after_relu":
        names += [n for n, m in model.named_modules() if type(m) in (nn.ReLU, nn.ReLU6)]
    for which, pats in (("include", recipe.include), ("exclude", recipe.exclude)):
        for pat in pats:
            if pat != "*" and not _match_any(names, pat):
                raise ValueError(f"recipe {which} pattern {pat!r} matches no layer "
                                 f"of the model ({len(names)} layers, e.g. "
                                 f"{', '.join(map(repr, names[:3]))})")
    plan: list[tuple[str, nn.Module, Any]] = []
    reasons: dict[int, str] = {}
    for i, (name, mod, kind) in enumerate(cands):
        w = mod._parameters.get("weight")
        if not isinstance(w, nn.Parameter):
            reasons[id(mod)] = "no `weight` Parameter (parametrized or weight-normed?)"
            continue
        cfg, why = recipe.explain(name, kind, first=i == 0, last=i == len(cands) - 1)
        if cfg is None:
            reasons[id(mod)] = why
            continue
        plan.append((name, mod, cfg))
    _check_coverage(model, plan, reasons, recipe)
    shared: dict[int, tuple[str, WeightQuantizer]] = {}
    for name, mod, cfg in plan:
        w = mod.weight
        if id(w) in shared:
            wq = shared[id(w)][1]
        else:
            params = dict(cfg.params)
            if params.get("per_channel") and "axis" not in params:
                params["axis"] = channel_axis(mod)
            wq = make_weight_quantizer(cfg.method, cfg.bits, params).to(w.device)
            shared[id(w)] = (name, wq)
        aq = None
        if cfg.act and recipe.act is not None and recipe.act.position == "input":
            aq = make_act_quantizer(recipe.act).to(w.device)
            aq.qname = f"{name}.input_quant"
        quantize_module(mod, wq, aq, name=name)
    if any(cfg.method in _BATCHED for _, _, cfg in plan):
        install_quantize_step(model)  # one quantizer pass per training step for all layers
    mapping: dict[int, nn.Module] = {}
    if recipe.act is not None and recipe.act.position == "after_relu":
        for name, mod in model.named_modules():
            if type(mod) in (nn.ReLU, nn.ReLU6) and _match(name, recipe.include) and not _match(
                    name, recipe.exclude):
                aq = make_act_quantizer(recipe.act)
                aq.qname = f"{name}.1"
                mapping[id(mod)] = nn.Sequential(mod, aq)
    if id(model) in mapping:  # the model itself is a bare ReLU
        raise ValueError("prepare needs a container module; wrap the layer in nn.Sequential")
    _replace_all(model, mapping)
    old = getattr(model, _REASONS_ATTR, None) or {}
    object.__setattr__(model, _REASONS_ATTR, {**old, **reasons})
    return model


def _match_any(names: list[str], pat: str) -> bool:
    return any(_match(n, (pat,)) for n in names)


def _check_coverage(model: nn.Module, plan: list, reasons: dict[int, str],
                    recipe: Recipe) -> None:
    """Raise (``recipe.min_coverage``) or warn (< :data:`COVERAGE_WARN`) before anything is
    changed, from the layers ``plan`` will quantize."""
    total = done = 0
    seen: set[int] = set()
    chosen = {id(m) for _, m, _ in plan}
    left: list[tuple[str, int, str]] = []
    for name, m in model.named_modules():
        if weight_layer_kind(m) is None or id(m) in seen:
            continue
        seen.add(id(m))
        w = m._parameters.get("weight")
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        total += w.numel()
        if isinstance(m, QuantMixin) or id(m) in chosen:
            done += w.numel()
        else:
            left.append((name, w.numel(), reasons.get(id(m), "not chosen")))
    share = done / total if total else 1.0
    if recipe.min_coverage is not None and share < recipe.min_coverage:
        left.sort(key=lambda r: -r[1])
        shown = "; ".join(f"{n} ({k:,}): {r}" for n, k, r in left[:8])
        more = f"; and {len(left) - 8} more" if len(left) > 8 else ""
        raise ValueError(f"recipe min_coverage {recipe.min_coverage:g} not met: "
                         f"{100 * share:.1f}% of {total:,} conv+linear weights would be "
                         f"quantized; left float: {shown}{more}")
    if recipe.min_coverage is None and share < COVERAGE_WARN and total:
        left.sort(key=lambda r: -r[1])
        shown = ", ".join(f"{n} ({r})" for n, _, r in left[:4])
        warnings.warn(f"lowbit.nn.prepare quantized only {100 * share:.1f}% of the model's "
                      f"{total:,} conv+linear weights; left float: {shown}"
                      + (f" and {len(left) - 4} more" if len(left) > 4 else "")
                      + " (lowbit.nn.coverage(model) lists all; recipe min_coverage makes "
                      "this an error)", CoverageWarning, stacklevel=3)


def convert(model: nn.Module) -> nn.Module:
    """Freeze every quantized layer (in place; returns ``model``).

    Each :class:`QuantConv2d` / :class:`QuantLinear` computes its eval-mode quantized weight
    once and keeps it: ``layer.frozen`` is the :class:`lowbit.quant.QuantResult` (exponent
    ``s`` for power-of-two methods, scale / zero point for uniform ones, levels for tables)
    and ``layer.weight_codes()`` its int32 codes, from which export is built. The forward then
    uses the frozen values in every mode, so the converted model's output equals the prepared
    model's eval-mode output. Clipping-based (002) weights and activations are switched to
    their b-bit quantization first (post-training quantization from the clip values);
    activation quantizers are fixed (QN: hard staircase). Raises ValueError naming a layer whose
    activation quantizer never saw data.
    """
    ptq_from_clips(model)
    for name, layer in quant_layers(model):
        layer.qname = layer.qname or name
        layer.freeze()
    for name, aq in act_quantizers(model):
        if aq.observing:
            aq.finish_observing()
        if not bool(aq.initialized):
            raise ValueError(f"activation quantizer {name!r} has no range yet: run the model "
                             "or lowbit.nn.calibrate before convert")
        if isinstance(aq, QNActQuant):
            aq.hard = True
    return model


def ptq_from_clips(model: nn.Module, bits: int | None = None) -> nn.Module:
    """Switch the clipping-based method's quantizers (weights ``clip``, activations ``clip``)
    to b-bit uniform quantization from their clip values (002's post-training step); ``bits``
    None keeps each quantizer's bit-width. In place; returns ``model``."""
    for _, layer in quant_layers(model):
        if isinstance(layer.weight_quant, ClipWeightQuant):
            if bits is not None:
                layer.weight_quant.set_bits(bits)
            layer.weight_quant.quantize = True
            layer.invalidate()
    for _, aq in act_quantizers(model):
        if isinstance(aq, UniformActQuant) and aq.mode == "clip":
            if bits is not None:
                aq.bits = int(bits)
            aq.quantize = True
    return model


# ---------------------------------------------------------------------- describe


class LayerTable(list):
    """A list of per-layer dicts that prints as an aligned text table."""

    columns = ("name", "shape", "method", "bits", "scale", "sparsity", "distinct")
    #: the model's :class:`~lowbit.nn.coverage.CoverageReport`, printed under the table
    coverage: CoverageReport | None = None

    def __str__(self) -> str:
        rows = [self.columns] + [
            (r["name"], "x".join(map(str, r["shape"])), r["method"], str(r["bits"]), r["scale"],
             f"{r['sparsity']:.3f}", str(r["distinct"])) for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.coverage is not None:
            lines += ["", str(self.coverage)]
        return "\n".join(lines)


def _scale_str(res) -> str:
    sc = res.scale.reshape(-1)
    if res.kind == "table":
        n = res.levels.shape[-1] if res.levels is not None else 0
        return f"{n} levels"
    if sc.numel() > 1 or res.axis is not None:
        return f"per-channel[{sc.numel()}]"
    if res.exponent is not None:
        return f"2^{res.exponent}"
    s = f"{float(sc):.4g}"
    if res.zero_point is not None and float(res.zero_point.reshape(-1)[0]) != 0:
        s += f" zp={float(res.zero_point.reshape(-1)[0]):g}"
    return s


@torch.no_grad()
def describe(model: nn.Module, include_float: bool = True) -> LayerTable:
    """Per-layer table of the model's conv and linear layers (every class, see
    :func:`lowbit.nn.coverage`), printed with the coverage report under it (``.coverage``).

    Each row: ``name``, ``shape`` (weight shape), ``method`` (``"float"`` for unquantized
    layers), ``bits`` (32 for float), ``scale`` (``2^s`` for power-of-two methods, the scale
    (and zero point) for uniform ones, ``per-channel[C]``, or ``K levels``), ``sparsity``
    (share of exactly-zero weights in the weight the forward uses), ``distinct`` (number of
    distinct values in it), ``numel``. Quantized layers are described by their frozen result
    (converted) or by quantizing the current weight as eval mode would (not converted).
    """
    rows = LayerTable()
    for name, m in model.named_modules():
        if isinstance(m, QuantMixin):
            res = m.quant_result()
            w = res.values
            method, bits, scale = m.method, m.bits, _scale_str(res)
        elif weight_layer_kind(m) is not None and include_float:
            w = m.weight.detach()
            method, bits, scale = "float", 32, "-"
        else:
            continue
        rows.append({
            "name": name,
            "shape": tuple(w.shape),
            "method": method,
            "bits": bits,
            "scale": scale,
            "sparsity": float((w == 0).sum()) / max(w.numel(), 1),
            "distinct": int(torch.unique(w).numel()),
            "numel": w.numel(),
        })
    rows.coverage = coverage(model)
    return rows


# ---------------------------------------------------------------------- memory


def layer_bytes(numel: int, bits: int, overhead: int = 4) -> int:
    """Bytes of one quantized weight tensor: ``ceil(numel * bits / 8) + overhead``."""
    return math.ceil(numel * bits / 8) + overhead


def weight_memory(model: nn.Module) -> dict[str, Any]:
    """Parameter memory of ``model`` with its quantized weights at their bit-widths.

    Quantized layers: ``ceil(numel * bits / 8)`` bytes of codes plus their overhead (4 bytes
    per scale / exponent / zero point / level-table entry, per channel when per-channel).
    Every other Parameter (biases, BatchNorm affine, float layers) counts 4 bytes (FP32);
    quantizer-owned Parameters (QN alpha/beta, clip values) and buffers (BN running stats) are
    not counted. Returns ``{"layers": [{"name", "numel", "bits", "weight_bytes",
    "overhead_bytes"}], "quantized_bytes", "other_bytes", "total_bytes", "fp32_bytes",
    "ratio" (total / fp32), "compression" (fp32 / total)}``.
    """
    owned = set()
    for m in model.modules():
        if isinstance(m, (WeightQuantizer, UniformActQuant, QNActQuant)):
            owned.update(id(p) for p in m.parameters())
    layers, qids = [], set()
    for name, layer in quant_layers(model):
        if id(layer.weight) in qids:
            continue
        qids.add(id(layer.weight))
        n = layer.weight.numel()
        bits = layer.bits
        over = layer.weight_quant.overhead_bytes(layer.weight.shape[channel_axis(layer)])
        layers.append({"name": name, "numel": n, "bits": bits,
                       "weight_bytes": math.ceil(n * bits / 8), "overhead_bytes": over})
    quant = sum(r["weight_bytes"] + r["overhead_bytes"] for r in layers)
    other = fp32 = 0
    for p in model.parameters():  # unique Parameters
        if id(p) in owned:
            continue
        fp32 += 4 * p.numel()
        if id(p) not in qids:
            other += 4 * p.numel()
    total = quant + other
    return {
        "layers": layers,
        "quantized_bytes": quant,
        "other_bytes": other,
        "total_bytes": total,
        "fp32_bytes": fp32,
        "ratio": total / fp32 if fp32 else 1.0,
        "compression": fp32 / total if total else 1.0,
    }
