"""Training-side helpers: Quantization Networks schedule, the quantization-drop penalty,
post-training calibration of activation ranges.

LBW-Net's projected SGD needs nothing here: a model prepared with any ``lbw-*`` method and a
plain optimizer (``torch.optim.SGD(..., momentum=0.9, nesterov=True, weight_decay=...)``)
evaluates the gradient at the quantized weights and steps the float ones (001, section 2.2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.nn.act import QNActQuant
from lowbit.nn.layers import quant_layers
from lowbit.nn.quantizers import ClipWeightQuant, QNWeightQuant, RegistryWeightQuant
from lowbit.nn.surgery import act_quantizers

__all__ = ["QNSchedule", "quant_penalty", "calibrate", "QN_PHASES"]

QN_PHASES = ("weights", "activations", "both")


@dataclass
class QNSchedule:
    """Quantization Networks' temperature schedule and training phases (003).

    The temperature rises linearly in epochs: ``T = T0 * e`` for the ``e``-th epoch (1-based)
    in which a quantizer is being trained (fractional epochs allowed, capped at ``t_max``;
    the paper's public code caps at 2000). ``phases``: ``((name, epochs), ...)`` with names
    ``"weights"`` (QN weight quantizers soft-trained, activation quantizers off),
    ``"activations"`` (weights held on their hard staircase with no gradient to them, QN
    activation quantizers soft-trained) and ``"both"``; the paper's three-phase schedule is
    ``(("weights", a), ("activations", b), ("both", c))``. Phase lengths are epochs as floats
    (finite, >= 0), so a fine-tuning budget shorter than one epoch can hold all three phases,
    e.g. ``(("weights", 0.1), ("activations", 0.1), ("both", 0.12))`` with the epoch passed as
    ``iteration / iterations_per_epoch``. Each kind of quantizer has its own
    clock: it counts only the epochs of the phases that train it. After the last phase the
    last one continues. ``phases=None`` is a single ``"both"`` phase. Default ``T0 = 20``:
    with levels one unit apart on the ``beta``-scaled axis, the public code's cap of 2000 is
    reached after 100 epochs; on the digits benchmark (15 epochs) T0 = 2 / 10 / 20 gave
    91.3 / 98.4 / 99.1 % test accuracy for ternary weights.
    """

    t0: float = 20.0
    t_max: float = 2000.0
    phases: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        if not self.t0 > 0 or not self.t_max >= self.t0:
            raise ValueError(f"need 0 < t0 <= t_max, got t0={self.t0}, t_max={self.t_max}")
        if self.phases is not None:
            phases = []
            for ph in self.phases:
                try:
                    n, e = ph
                    e = float(e)
                except (TypeError, ValueError):
                    raise ValueError(f"phase must be a (name, epochs) pair, got {ph!r}") from None
                if n not in QN_PHASES or not math.isfinite(e) or e < 0:
                    raise ValueError(f"phase must be ({'|'.join(QN_PHASES)}, epochs >= 0), "
                                     f"got ({n!r}, {e})")
                phases.append((str(n), e))
            self.phases = tuple(phases)
            if not self.phases:
                raise ValueError("phases must not be empty")

    def temperature(self, epoch: float) -> float:
        """``T`` for a quantizer in its ``epoch``-th training epoch (0-based: ``T0*(epoch+1)``)."""
        return float(min(self.t0 * (max(epoch, 0.0) + 1.0), self.t_max))

    def phase(self, epoch: float) -> str:
        """The phase name at (0-based, fractional) ``epoch``."""
        if self.phases is None:
            return "both"
        start = 0.0
        for name, n in self.phases:
            if epoch < start + n - 1e-9:  # a boundary hit up to float rounding starts the next
                return name
            start += n
        return self.phases[-1][0]

    def clocks(self, epoch: float) -> tuple[float, float]:
        """Epochs spent training (weights, activations) before ``epoch`` (0-based)."""
        if self.phases is None:
            return epoch, epoch
        cw = ca = 0.0
        start = 0.0
        for i, (name, n) in enumerate(self.phases):
            last = i == len(self.phases) - 1
            span = max(0.0, epoch - start) if last else min(max(0.0, epoch - start), n)
            if name in ("weights", "both"):
                cw += span
            if name in ("activations", "both"):
                ca += span
            start += n
        return cw, ca

    def apply(self, model: nn.Module, epoch: float) -> dict[str, Any]:
        """Set every QN quantizer of ``model`` for ``epoch`` (0-based, fractional allowed):
        temperatures, which quantizers are active / soft, and ``requires_grad`` of the weights
        of QN layers (False during an ``"activations"`` phase). Call at each epoch start (or
        each step). Returns ``{"phase", "t_weights", "t_acts"}``."""
        ph = self.phase(epoch)
        cw, ca = self.clocks(epoch)
        tw, ta = self.temperature(cw), self.temperature(ca)
        for _, layer in quant_layers(model):
            q = layer.weight_quant
            if isinstance(q, QNWeightQuant):
                q.temperature.fill_(tw)
                q.hard = ph == "activations"
                train_w = ph != "activations"
                layer.weight.requires_grad_(train_w)
                q.alpha.requires_grad_(train_w)
                q.beta.requires_grad_(train_w)
        for _, aq in act_quantizers(model):
            if isinstance(aq, QNActQuant):
                aq.temperature.fill_(ta)
                aq.enabled = ph != "weights"
        return {"phase": ph, "t_weights": tw, "t_acts": ta}


def quant_penalty(model: nn.Module, lam: float = 1.0) -> Tensor:
    """The extra loss term against the quantization drop (002): ``lam * sum_l e_l`` with

    ``e_l = ||W_l - Q(W_l)||**2 / ||W_l||**2``,

    the relative squared distance of layer ``l``'s float weights to their quantized values
    (clipping included: a weight beyond the clip counts its distance to the clip). ``Q(W)`` is
    detached, so the gradient ``2 lam (W - Q(W)) / ||W||**2`` pulls every weight towards its
    nearest level and the later rounding changes the weights, and the output, less. Why this
    normalisation: it is dimensionless, so every layer counts alike whatever its weight scale
    or size, and its stiffness ``2 lam lr / ||W||**2`` stays small for any bit-width (dividing
    by the squared step instead makes the term so stiff at 8 bits that SGD oscillates around
    the grid). For the clipping method ``Q`` is the b-bit post-training quantization from the
    current clip, computed here; for STE methods the result of the last training forward is
    reused (no extra quantizer call). QN layers are skipped (their soft staircase is itself
    the relaxation). Returns a 0-dim tensor (0 when the model has no quantized layer).
    """
    total: Tensor | None = None
    for _, layer in quant_layers(model):
        q = layer.weight_quant
        w = layer.weight
        if isinstance(q, RegistryWeightQuant) and layer.training and q.last is not None:
            res = q.last
        elif isinstance(q, (ClipWeightQuant, RegistryWeightQuant)):
            res = q.freeze(w)
        else:
            continue
        d = w - res.values.detach().to(w.dtype)
        e = (d * d).sum() / (w.detach() * w.detach()).sum().clamp(min=1e-30)
        total = e if total is None else total + e
    if total is None:
        return torch.zeros(())
    return lam * total


def _first(batch: Any) -> Any:
    if isinstance(batch, (list, tuple)) and batch and not isinstance(batch, Tensor):
        return batch[0]
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    return batch


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], device: torch.device | str | None = None
              ) -> dict[str, tuple[float, float]]:
    """Post-training calibration: run ``batches`` through ``model`` (eval mode, no gradient)
    with every activation quantizer observing, then set their ranges.

    ``batches``: an iterable of inputs (a Tensor, or a tuple/list whose first item is the
    input, as a DataLoader of ``(x, y)`` gives). Uniform quantizers take their calibrator's
    range (``minmax``: exact min/max over all batches; ``percentile``/``mse``/``kl``: on a random
    subsample of at most 2**20 values); PACT/clip quantizers get their initial clip; QN
    quantizers their beta/alpha/biases. Weight quantizers are not involved. Restores the
    model's train/eval mode. Returns ``{name: (lo, hi)}`` of the uniform ranges (QN: the
    ``beta``-scaled range ``(0, q_max / beta)``). Raises ValueError if a quantizer saw nothing.
    """
    aqs = act_quantizers(model)
    was_training = model.training
    model.eval()
    try:
        for _, aq in aqs:
            aq.observing = True
            aq.observer = None
        n = 0
        for batch in batches:
            x = _first(batch)
            if device is not None:
                x = x.to(device)
            model(x)
            n += 1
        if n == 0:
            raise ValueError("calibrate: no batches")
        out = {}
        for name, aq in aqs:
            aq.finish_observing()
            if isinstance(aq, QNActQuant):
                out[name] = (0.0, float(aq.levels[-1]) / aq.beta.item())
            elif aq.learnable:
                c = aq.clip.item()
                out[name] = (-c if bool(aq.signed) else 0.0, c)
            else:
                out[name] = (float(aq.lo), float(aq.hi))
        return out
    finally:
        for _, aq in aqs:
            aq.observing = False
            aq.observer = None
        model.train(was_training)
