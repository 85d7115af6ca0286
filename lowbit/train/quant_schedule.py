"""Quantizers whose state follows the training clock, driven by the engine.

Two recipes change while they train, and a run that does not drive them trains something else:

* Quantization Networks (``qn`` weights and/or activations, 003): the temperature rises with
  the epochs a quantizer has been trained (``T = qn_t0 * (e + 1)``, :class:`lowbit.nn.QNSchedule`)
  and, with ``train.qn_phases``, the three phases (weights only, activations only with the
  weights held on their hard staircase, both) follow each other. Without it every step would
  run at the initial ``T = 1``.
* INQ (``inq-incremental``): the frozen share of each layer's weights steps through the
  quantizer's ``portions`` (default 50 / 75 / 87.5 / 100%) evenly over the run
  (:func:`lowbit.nn.inq_portion` of ``iteration / total``); the final evaluation sees every
  weight quantized.

:class:`QuantClock` is applied before every optimizer step (iteration ``i`` runs at epoch
``i / ipe`` and progress ``i / total``) and once more at the end (progress 1, before the final
evaluation). Everything follows from the iteration -- a resumed run sets the same temperatures,
phases and portions (INQ's frozen values come from the checkpoint); the clock only remembers
which INQ portion it last set, so INQ layers are partitioned once per stage, not every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["QuantClock"]


class QuantClock:
    """Drives the QN and INQ quantizers of a model from the iteration count.

    Args:
        model: the (unwrapped) model after :func:`lowbit.nn.prepare`.
        ipe: iterations per epoch. total: iterations of the run.
        qn_t0: QN's temperature slope per epoch (:class:`lowbit.nn.QNSchedule` ``t0``).
        qn_phases: QN's phases as ``[(name, epochs), ...]`` (names ``weights``,
            ``activations``, ``both``; fractional epochs allowed) or None (one ``both`` phase).

    :attr:`active` is False for a model with neither kind of quantizer (the engine then skips
    it). :meth:`apply` returns what it set: ``{"qn_phase", "qn_t_weights", "qn_t_acts"}`` and
    ``{"inq_portion"}`` as applicable.
    """

    def __init__(self, model: nn.Module, ipe: int, total: int, qn_t0: float = 20.0,
                 qn_phases: Sequence[Sequence[Any]] | None = None) -> None:
        from lowbit.nn import INQWeightQuant, QNActQuant, QNSchedule, QNWeightQuant
        from lowbit.nn.layers import quant_layers
        from lowbit.nn.surgery import act_quantizers

        self.ipe, self.total = max(1, int(ipe)), max(1, int(total))
        self.inq = [(layer, layer.weight_quant) for _, layer in quant_layers(model)
                    if isinstance(layer.weight_quant, INQWeightQuant)]
        has_qn = any(isinstance(layer.weight_quant, QNWeightQuant)
                     for _, layer in quant_layers(model)) or any(
            isinstance(aq, QNActQuant) for _, aq in act_quantizers(model))
        self._inq_applied: dict[int, float] = {}  # portion last set per INQ quantizer
        phases = None if qn_phases is None else tuple((str(n), float(e)) for n, e in qn_phases)
        self.qn = QNSchedule(t0=float(qn_t0), phases=phases) if has_qn else None

    @property
    def active(self) -> bool:
        return self.qn is not None or bool(self.inq)

    def apply(self, model: nn.Module, iteration: int) -> dict[str, Any]:
        """Set every driven quantizer for the step that starts at ``iteration`` (0-based;
        ``iteration = total``: the end of the run)."""
        from lowbit.nn.inq import inq_portion

        out: dict[str, Any] = {}
        if self.qn is not None:
            got = self.qn.apply(model, iteration / self.ipe)
            out.update({"qn_phase": got["phase"], "qn_t_weights": got["t_weights"],
                        "qn_t_acts": got["t_acts"]})
        progress = min(1.0, iteration / self.total)
        for layer, q in self.inq:
            p = inq_portion(progress, q.portions)
            if p != self._inq_applied.get(id(q)):  # a new stage (or the first call)
                q.set_portion(p, layer.weight)
                layer.invalidate()
                self._inq_applied[id(q)] = p
            out["inq_portion"] = p
        return out
