"""Model surgery: :func:`prepare`, :func:`convert`, :func:`describe`, :func:`weight_memory`."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lowbit.nn.act import QNActQuant, UniformActQuant
from lowbit.nn.layers import QuantConv2d, QuantLinear, QuantMixin, quant_layers
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

_FLOAT_TYPES = (nn.Conv2d, nn.Linear)


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, QuantMixin):
        return None
    if type(m) is nn.Conv2d:
        return "conv"
    if type(m) is nn.Linear:
        return "linear"
    return None


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
    """Swap ``nn.Conv2d`` / ``nn.Linear`` for :class:`QuantConv2d` / :class:`QuantLinear` (and
    insert activation quantizers) according to ``recipe``; in place, returns ``model``.

    Works on any ``nn.Module`` (nested Sequential / ModuleList / ModuleDict, shared modules).
    The swapped layers keep the same Parameter objects, so parameter names and an optimizer
    built before are unaffected; quantizers with state (``qn``'s alpha/beta, ``clip``'s clip,
    activation ranges) add entries under ``<layer>.weight_quant.*`` / ``<layer>.input_quant.*``.
    Only exact ``nn.Conv2d`` / ``nn.Linear`` instances are swapped (subclasses are left alone).
    ``recipe``: a :class:`Recipe`, its dict, or None for ``Recipe()``.
    """
    recipe = Recipe() if recipe is None else Recipe.from_dict(recipe)
    cands = [(n, m, _kind(m)) for n, m in model.named_modules() if _kind(m) is not None]
    mapping: dict[int, nn.Module] = {}
    for i, (name, mod, kind) in enumerate(cands):
        cfg = recipe.resolve(name, kind, first=i == 0, last=i == len(cands) - 1)
        if cfg is None:
            continue
        wq = make_weight_quantizer(cfg.method, cfg.bits, cfg.params).to(mod.weight.device)
        aq = None
        if cfg.act and recipe.act is not None and recipe.act.position == "input":
            aq = make_act_quantizer(recipe.act).to(mod.weight.device)
            aq.qname = f"{name}.input_quant"
        cls = QuantConv2d if kind == "conv" else QuantLinear
        mapping[id(mod)] = cls.from_float(mod, wq, aq, name=name)
    if recipe.act is not None and recipe.act.position == "after_relu":
        for name, mod in model.named_modules():
            if type(mod) in (nn.ReLU, nn.ReLU6) and _match(name, recipe.include) and not _match(
                    name, recipe.exclude):
                aq = make_act_quantizer(recipe.act)
                aq.qname = f"{name}.1"
                mapping[id(mod)] = nn.Sequential(mod, aq)
    if id(model) in mapping:  # the model itself is a bare Conv2d / Linear / ReLU
        raise ValueError("prepare needs a container module; wrap the layer in nn.Sequential")
    _replace_all(model, mapping)
    return model


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

    def __str__(self) -> str:
        rows = [self.columns] + [
            (r["name"], "x".join(map(str, r["shape"])), r["method"], str(r["bits"]), r["scale"],
             f"{r['sparsity']:.3f}", str(r["distinct"])) for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _scale_str(res) -> str:
    sc = res.scale.reshape(-1)
    if res.kind == "table":
        n = res.levels.shape[-1] if res.levels is not None else 0
        return f"{n} levels"
    if sc.numel() > 1:
        return f"per-channel[{sc.numel()}]"
    if res.exponent is not None:
        return f"2^{res.exponent}"
    s = f"{float(sc):.4g}"
    if res.zero_point is not None and float(res.zero_point.reshape(-1)[0]) != 0:
        s += f" zp={float(res.zero_point.reshape(-1)[0]):g}"
    return s


@torch.no_grad()
def describe(model: nn.Module, include_float: bool = True) -> LayerTable:
    """Per-layer table of the model's Conv2d / Linear layers.

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
        elif isinstance(m, _FLOAT_TYPES) and include_float:
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
        over = layer.weight_quant.overhead_bytes(layer.weight.shape[0])
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
