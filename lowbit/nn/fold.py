"""Batch-norm folding: merge ``Conv2d -> BatchNorm2d`` pairs into the convolution.

For a BN in eval mode, ``y = gamma (z - mean) / sqrt(var + eps) + beta`` with ``z = W * x + b``
is the convolution with ``W' = W * k`` (``k = gamma / sqrt(var + eps)`` per output channel)
and ``b' = (b - mean) k + beta``. Folding uses the running statistics, so the folded model
equals the unfolded one in eval mode (the usual deployment step, and the step before
quantizing folded weights: fold first, then :func:`lowbit.nn.prepare`).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.nn.layers import QuantMixin

__all__ = ["fold_bn", "find_conv_bn_pairs"]


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps every Conv2d (quantized ones included) and BN as a call_module."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            return True
        return super().is_leaf_module(m, qualname)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    graph = _LeafTracer().trace(model)
    mods = dict(model.named_modules())
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if not isinstance(mods.get(src.target), nn.Conv2d):
            continue
        # the conv output must feed only this BN, and neither module may be reused elsewhere
        if len(src.users) != 1 or uses[src.target] != 1 or uses[node.target] != 1:
            continue
        pairs.append((src.target, node.target))
    return pairs


def _pairs_structural(model: nn.Module) -> list[tuple[str, str]]:
    """Fallback when fx cannot trace (data-dependent control flow): a Conv2d directly followed
    by a BatchNorm2d inside a Sequential, or sibling attributes named ``convK`` / ``bnK``
    (torchvision's naming, also ``conv`` / ``bn``)."""
    pairs = []
    for pname, parent in model.named_modules():
        pre = f"{pname}." if pname else ""
        kids = list(parent._modules.items())
        if isinstance(parent, nn.Sequential):
            for (ka, a), (kb, b) in zip(kids, kids[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((pre + ka, pre + kb))
            continue
        d = dict(kids)
        for key, mod in kids:
            if isinstance(mod, nn.Conv2d) and key.startswith("conv"):
                bn_key = "bn" + key[4:]
                if isinstance(d.get(bn_key), nn.BatchNorm2d):
                    pairs.append((pre + key, pre + bn_key))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` pairs where the BN consumes the conv's output and nothing else
    does. Traces with ``torch.fx``; falls back to :func:`_pairs_structural` when tracing fails."""
    try:
        return _pairs_fx(model)
    except Exception:  # noqa: BLE001  (fx raises many types on untraceable code)
        return _pairs_structural(model)


@torch.no_grad()
def fold_bn(model: nn.Module, pairs: list[tuple[str, str]] | None = None) -> nn.Module:
    """Fold each Conv2d + BatchNorm2d pair into the conv; the BN becomes ``nn.Identity``.

    In place; returns ``model``. ``pairs``: explicit ``(conv_name, bn_name)`` list (default
    :func:`find_conv_bn_pairs`). The conv's weight Parameter is updated in place (an optimizer
    or a quantized layer keeps referring to it); a conv without bias gets one. Works on
    :class:`QuantConv2d` too (its float weight is folded). Raises ValueError on a BN without
    running statistics, a channel mismatch, or a non-finite folded weight.
    """
    if pairs is None:
        pairs = find_conv_bn_pairs(model)
    mods = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"fold_bn: {conv_name!r}/{bn_name!r} is not a Conv2d/BatchNorm2d pair")
        if isinstance(conv, QuantMixin) and conv.frozen is not None:
            raise ValueError(f"fold_bn: {conv_name!r} is converted (frozen); fold before convert")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"fold_bn: {bn_name!r} tracks no running statistics")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"fold_bn: {bn_name!r} has {bn.num_features} channels, "
                             f"{conv_name!r} {conv.out_channels}")
        w = conv.weight
        gamma = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var).double()
        k = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() if bn.affine else torch.zeros_like(k)
        b0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(k)
        new_w = (w.double() * k.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        new_b = ((b0 - bn.running_mean.double()) * k + shift).to(w.dtype)
        if not (torch.isfinite(new_w).all() and torch.isfinite(new_b).all()):
            raise ValueError(f"fold_bn: folding {bn_name!r} into {conv_name!r} gives non-finite "
                             "weights (zero running_var with eps=0?)")
        w.copy_(new_w)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b)
        else:
            conv.bias.copy_(new_b)
        if isinstance(conv, QuantMixin):
            conv.invalidate()
        parent_name, _, key = bn_name.rpartition(".")
        parent = mods[parent_name] if parent_name else model
        parent._modules[key] = nn.Identity()
    return model
