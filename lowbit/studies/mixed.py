"""Mixed-precision planning for ``lowbit compare``'s ``mixed`` row: per-layer bit-widths from a
sensitivity analysis (output MSE on calibration images) within the uniform b-bit memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MIXED_BITS", "MIXED_IMAGES", "OutputMSE", "plan_mixed",
]

#: candidate bit-widths of ``mixed`` (the requested b is added)
MIXED_BITS: tuple[int, ...] = (2, 3, 4, 6, 8)


#: calibration images ``mixed``'s sensitivity runs on (each (layer, bits) pair is one pass)
MIXED_IMAGES = 8


def _raw_tensors(raw: dict[str, Any], keys: Sequence[str]) -> list[Tensor]:
    """The float tensors of a ``forward_raw`` dict under ``keys`` (the detector's declared
    ``raw_outputs``, which depend on the weights), in that order (lists flattened: YOLOv3's
    per-level maps)."""
    out: list[Tensor] = []
    for key in keys:
        v = raw[key]
        for t in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(t, Tensor) and t.is_floating_point():
                out.append(t)
    return out


def _pinned(value: Any) -> Any:
    """A detached copy of a ``forward_raw`` value to feed back in (tensors cloned)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return [_pinned(v) for v in value]
    return value


class OutputMSE:
    """A cheap, data-driven sensitivity metric: how far a model's raw detector outputs move from
    the FP32 reference's on a few images.

    Every detector here follows :class:`lowbit.detection.Detector`: ``forward_raw(batch)`` is
    the network before post-processing (R-FCN/Faster R-CNN objectness, RPN deltas and the
    head's class logits / box deltas; YOLOv3's three maps; SSD's logits and box regressions),
    and its ``detector_spec`` names the weight-dependent outputs (``raw_outputs``, compared
    here) and the keyword arguments ``forward_raw`` takes (``raw_kwargs``). The reference's
    outputs are computed once per batch of ``images`` (lists of ``Tensor[3, H, W]`` in [0, 1],
    prepared by ``reference.transform``); ``image_sizes``, when taken, is the transform's, and
    every declared keyword is pinned to the reference's value (two-stage detectors get the
    reference's proposals as fixed input, so their head outputs stay aligned RoI by RoI; the
    RPN's effect is seen in its own maps).

    ``errors(model)``: per output tensor ``k`` (in ``raw_outputs`` order),
    ``sum_batches ||o_k - r_k||^2 / sum_batches ||r_k||^2`` (float64; the denominator is
    floored at 1e-30). ``model(...)``: ``-mean_k errors`` -- higher is better, 0 for a model
    that reproduces the reference; what :func:`lowbit.nn.sensitivity` expects. ``ValueError``
    naming the class (and the members it lacks) when ``reference`` is not a detector.
    """

    def __init__(self, reference: nn.Module, images: Sequence[Sequence[Tensor]]) -> None:
        from lowbit.detection.protocol import require_detector

        spec = require_detector(reference, "the output metric")
        self._outputs = spec.raw_outputs
        self.inputs: list[tuple[Tensor, dict[str, Any]]] = []
        self.reference: list[list[Tensor]] = []
        was = reference.training
        reference.eval()
        with torch.no_grad():
            for ims in images:
                if not ims:
                    continue
                dev = next(reference.parameters()).device
                batch, sizes, _ = reference.transform([im.to(dev) for im in ims], None)
                kw: dict[str, Any] = {}
                if "image_sizes" in spec.raw_kwargs:
                    kw["image_sizes"] = sizes
                raw = reference.forward_raw(batch, **kw)
                kw.update({k: _pinned(raw[k]) for k in spec.raw_kwargs if k != "image_sizes"})
                self.inputs.append((batch, kw))
                self.reference.append([t.detach().double()
                                       for t in _raw_tensors(raw, self._outputs)])
        reference.train(was)
        if not self.inputs:
            raise ValueError("the output metric needs at least one image")

    @torch.no_grad()
    def errors(self, model: nn.Module) -> list[float]:
        num = [0.0] * len(self.reference[0])
        den = [0.0] * len(self.reference[0])
        for (batch, kw), ref in zip(self.inputs, self.reference):
            outs = _raw_tensors(model.forward_raw(batch, **kw), self._outputs)
            if len(outs) != len(ref):
                raise ValueError(f"forward_raw gave {len(outs)} outputs, the reference {len(ref)}")
            for k, (o, r) in enumerate(zip(outs, ref)):
                num[k] += float(((o.double() - r) ** 2).sum())
                den[k] += float((r ** 2).sum())
        errs = [n / max(d, 1e-30) for n, d in zip(num, den)]
        if not all(math.isfinite(e) for e in errs):
            raise ValueError(f"non-finite output error {errs}")
        return errs

    def __call__(self, model: nn.Module) -> float:
        errs = self.errors(model)
        return -sum(errs) / len(errs)


def plan_mixed(model: nn.Module, calib: Sequence[Sequence[Tensor]], bits: int,
               candidates: Sequence[int] = MIXED_BITS, images: int = MIXED_IMAGES,
               metric: Callable[[nn.Module], float] | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``mixed``'s recipe: LBW exact with per-layer bits chosen by sensitivity.

    1. :func:`lowbit.nn.sensitivity` quantizes each conv of the uniform ``{"method":
       "lbw-exact", "bits": bits}`` recipe alone (post-training, weights only) at every
       candidate width (``candidates`` plus ``bits``); the cost is the drop of ``metric``
       (default :class:`OutputMSE` on the first ``images`` images of ``calib``, whose FP32
       value is 0: the mean relative MSE of the raw outputs).
    2. The budget is that recipe's weight memory at ``bits`` (``ceil(numel * bits / 8) + 4``
       bytes per layer, :func:`lowbit.nn.layer_bytes`); :func:`lowbit.nn.assign_bits` picks
       the widths minimising the summed cost within it (exact DP; monotone costs).

    ``model`` (the FP32 detector) is not modified. Returns ``(recipe dict, info)``; info:
    ``mixed_assignment`` ``{layer: bits}``, ``mixed_sensitivity`` ``{layer: {"b": cost}}``,
    ``mixed_budget_bytes``, ``mixed_assigned_bytes``, ``mixed_candidates`` and
    ``sensitivity_images``. Deterministic for a deterministic forward.
    """
    import lowbit.nn as L

    cand = tuple(sorted(set(int(b) for b in candidates) | {int(bits)}))
    flat = [im for b in calib for im in b][:max(1, images)]
    if metric is None:
        metric = OutputMSE(model, [flat[i:i + 4] for i in range(0, len(flat), 4)])
    recipe = L.Recipe.from_dict({"method": "lbw-exact", "bits": int(bits)})
    sens = L.sensitivity(model, metric, recipe, bits=cand)
    budget = sum(L.layer_bytes(sens.numel[n], int(bits), sens.overhead[n]) for n in sens.numel)
    chosen = L.assign_bits(sens, budget)
    assignment = {n: int(chosen.overrides[n]["bits"]) for n in sens.drops}
    used = sum(L.layer_bytes(sens.numel[n], b, sens.overhead[n]) for n, b in assignment.items())
    info = {"mixed_assignment": assignment,
            "mixed_sensitivity": {n: {str(b): float(d) for b, d in sorted(ds.items())}
                                  for n, ds in sens.drops.items()},
            "mixed_budget_bytes": int(budget), "mixed_assigned_bytes": int(used),
            "mixed_candidates": list(cand), "sensitivity_images": len(flat)}
    return chosen.to_dict(), info
