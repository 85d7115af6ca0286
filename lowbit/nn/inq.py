"""Incremental Network Quantization (Zhou et al. 2017, "INQ"): weight partition, group-wise
quantization and re-training.

Per layer the weights are split by magnitude. At each accumulated *portion* ``p`` (default
50%, 75%, 87.5%, 100% of the layer's weights) the largest-``|w|`` weights not quantized yet
are rounded onto INQ's power-of-two grid and frozen; the remaining float weights are
re-trained to compensate. After the last portion (1.0) every weight is quantized.

* The grid is fixed once per layer, from the layer's weights when INQ starts (the first
  non-zero portion): ``n1 = floor(log2(4 max|W| / 3))``, ``n2 = n1 + 1 - 2**(b-2)``, levels
  ``{0, +-2**n2, ..., +-2**n1}``, nearest level with thresholds at the midpoints of neighbouring
  levels (ties up), i.e. :func:`lowbit.quant.pot.pot_round` with ``s = n1`` -- the same grid as
  the registry's one-shot ``inq`` quantizer (:func:`lowbit.quant.pot.inq`).
* Frozen weights live in buffers (``mask``, ``frozen``): the training forward is
  ``where(mask, frozen, w)``, so they get no gradient and neither weight decay nor momentum
  (which still move the float Parameter at those entries) can change the value the layer uses.
* :class:`INQSchedule` maps training progress to the portion: the stages are spread evenly
  over the budget and the last one (100%) starts at ``(K-1)/K`` of it, so the last ``1/K`` of
  the iterations train only the parameters that are not quantized (BatchNorm, biases).

Checkpoints: ``mask``, ``frozen``, the grid exponent and the portion are buffers and save with
the model; a fresh (not yet started) quantizer accepts them at load time whatever their shape.

The recipe method ``"inq-incremental"`` (:class:`INQWeightQuant`, :class:`INQParams`) is
registered in :mod:`lowbit.nn.methods` by this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lowbit.nn import methods
from lowbit.nn.layers import quant_layers
from lowbit.nn.methods import NNMethod
from lowbit.nn.quantizers import WeightQuantizer, adopt_saved_shapes, scale_overhead
from lowbit.quant import pot
from lowbit.quant._common import check_params_bits
from lowbit.quant.registry import QuantResult

__all__ = ["DEFAULT_PORTIONS", "INQParams", "INQWeightQuant", "INQSchedule", "check_portions",
           "inq_portion"]

#: the paper's accumulated portions of quantized weights (50%, 75%, 87.5%, 100%)
DEFAULT_PORTIONS: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)

# p * N is rounded up; this slack keeps e.g. 0.1 * 30 = 3.0000000000000004 at 3
_COUNT_EPS = 1e-9


def check_portions(portions: Sequence[float]) -> tuple[float, ...]:
    """Validate accumulated portions: non-empty, strictly increasing, in ``(0, 1]``, ending at
    1.0. Returns them as a tuple of floats; ValueError naming the problem."""
    try:
        ps = tuple(float(p) for p in portions)
    except (TypeError, ValueError):
        raise ValueError(f"inq portions must be a sequence of numbers, got {portions!r}") from None
    if not ps:
        raise ValueError("inq portions must not be empty")
    if any(not (0.0 < p <= 1.0) for p in ps):
        raise ValueError(f"inq portions must lie in (0, 1], got {list(ps)}")
    if any(b <= a for a, b in zip(ps, ps[1:])):
        raise ValueError(f"inq portions must increase strictly, got {list(ps)}")
    if ps[-1] != 1.0:
        raise ValueError(f"the last inq portion must be 1.0 (every weight quantized), got {ps[-1]}")
    return ps


def inq_portion(progress: float, portions: Sequence[float] = DEFAULT_PORTIONS) -> float:
    """The portion for training ``progress`` (fraction of the budget done, in ``[0, 1]``).

    ``K = len(portions)`` stages of equal length: stage ``k`` (0-based) covers progress
    ``[k/K, (k+1)/K)``, and progress >= ``(K-1)/K`` (the last stage, including the end of
    training) gives ``portions[-1] = 1.0``. Progress below 0 gives the first portion.
    """
    ps = check_portions(portions)
    k = len(ps)
    stage = math.floor(float(progress) * k + _COUNT_EPS)
    return ps[min(max(stage, 0), k - 1)]


@dataclass
class INQParams:
    """Parameters of :class:`INQWeightQuant`: ``bits`` in [2, 8] (default 4), the accumulated
    ``portions`` (validated by :func:`check_portions`, stored as a tuple) and ``auto_start``."""

    BITS: ClassVar[tuple[int, int]] = (2, 8)

    bits: int = 4
    portions: Sequence[float] = DEFAULT_PORTIONS
    auto_start: bool = True

    def __post_init__(self) -> None:
        check_params_bits(self)
        self.portions = check_portions(self.portions)
        self.auto_start = bool(self.auto_start)


class INQWeightQuant(WeightQuantizer):
    """INQ weights: a growing set of weights frozen on a power-of-two grid, the rest float.

    Args:
        bits: bit-width ``b`` in ``[2, 8]`` (``2**(b-2)`` non-zero magnitudes, and zero).
        portions: the accumulated portions of :class:`INQSchedule` (validated; the first one
            is where a training forward starts on its own when ``auto_start``).
        auto_start: the first training-mode forward of a quantizer that has not started yet
            applies ``portions[0]``, so the first optimizer step of a run already trains only
            the free weights (the trainer's callbacks run after each step).

    Buffers: ``mask`` (bool, the weight's shape; True = quantized and frozen), ``frozen``
    (the weight's shape and dtype; the fixed values where ``mask``), ``exponent`` (int64,
    ``n1``, fixed when INQ starts) and ``portion`` (float64, the portion asked for).
    ``mask``/``frozen`` are empty until INQ starts (:attr:`started`); a state dict whose
    ``mask`` does not fit (e.g. a warm start that skipped it) restarts INQ on the next forward
    at the loaded portion, with the grid of the weight then.

    Forward: training mode ``where(mask, frozen, w)`` -- exact gradient 1 at the free entries,
    0 at the frozen ones (no straight-through estimator: INQ re-trains free weights in float).
    Eval mode (and :meth:`freeze`): the deployable weight, ``where(mask, frozen, round(w))``
    with ``round`` onto the layer's grid (the whole weight on the grid of the current ``w`` if
    INQ has not started), so a converted model equals the prepared model's eval output; once
    the portion is 1.0 both modes give ``frozen``.
    """

    method = "inq-incremental"

    def __init__(self, bits: int = INQParams.bits, portions: Sequence[float] = DEFAULT_PORTIONS,
                 auto_start: bool = True) -> None:
        params = INQParams(bits, portions, auto_start)  # validated
        super().__init__(bits)
        self.params = params
        self.register_buffer("mask", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros(0))
        self.register_buffer("exponent", torch.zeros((), dtype=torch.int64))
        self.register_buffer("portion", torch.zeros((), dtype=torch.float64))

    # ------------------------------------------------------------------ state

    @property
    def portions(self) -> tuple[float, ...]:
        """The accumulated portions (validated)."""
        return self.params.portions

    @property
    def auto_start(self) -> bool:
        """Whether the first training forward applies ``portions[0]``."""
        return self.params.auto_start

    def state_key(self) -> tuple:
        return (self._rev, self.mask._version, self.frozen._version, self.portion._version,
                self.exponent._version, self.started)

    @property
    def started(self) -> bool:
        """Whether INQ has started (grid fixed, ``mask`` / ``frozen`` sized)."""
        return self.mask.numel() > 0 and self.frozen.shape == self.mask.shape

    @property
    def quantized_share(self) -> float:
        """Share of the layer's weights that are frozen now (0.0 before INQ starts)."""
        n = self.mask.numel()
        return float(self.mask.sum()) / n if n else 0.0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kw: Any) -> None:
        # mask / frozen are sized lazily, when INQ starts
        adopt_saved_shapes(self, state_dict, prefix, ("mask", "frozen"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)
        self._rev += 1

    @torch.no_grad()
    def _start(self, w: Tensor) -> None:
        """Fix the grid from ``w`` and size the buffers (nothing frozen yet)."""
        _, s = pot.inq(w.detach(), self.bits)
        self.exponent.fill_(int(s))
        self.mask.resize_(w.shape).fill_(False)
        if self.frozen.dtype != w.dtype:
            self.frozen = self.frozen.to(w.dtype)
        self.frozen.resize_(w.shape).zero_()
        self._rev += 1

    def _target(self, numel: int) -> int:
        """Number of weights frozen at the current portion: ``ceil(portion * numel)``."""
        return min(numel, math.ceil(float(self.portion) * numel - _COUNT_EPS))

    @torch.no_grad()
    def _sync(self, w: Tensor) -> None:
        """Freeze the largest-|w| free weights until the portion asked for is reached.

        Ties in ``|w|`` go to the lower flat (row-major) index first."""
        numel = w.numel()
        target = self._target(numel)
        if target <= 0:
            return
        if not self.started:
            self._start(w)
        elif self.mask.shape != w.shape:
            raise ValueError(f"inq: weight shape {tuple(w.shape)} differs from the quantizer's "
                             f"mask {tuple(self.mask.shape)}")
        have = int(self.mask.sum())
        if target <= have:
            return
        flat = w.detach().reshape(-1)
        score = flat.abs().to(torch.float64)
        score[self.mask.reshape(-1)] = -math.inf
        idx = torch.sort(score, descending=True, stable=True).indices[:target - have]
        vals = pot.pot_round(flat[idx], int(self.exponent), self.bits)
        self.frozen.view(-1)[idx] = vals.to(self.frozen.dtype)
        self.mask.view(-1)[idx] = True
        self._rev += 1

    def set_portion(self, p: float, w: Tensor | None = None) -> None:
        """Ask for an accumulated portion ``p`` in ``[0, 1]`` of frozen weights.

        With ``w`` (the layer's weight) the partition is applied now, else at the next
        forward / :meth:`freeze`. The portion never decreases: a smaller ``p`` is ignored
        (quantized weights are never released). The grid is fixed from the weight seen when
        the first weights are frozen."""
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"inq portion must be in [0, 1], got {p}")
        if p > float(self.portion):
            self.portion.fill_(p)
            self._rev += 1
        if w is not None:
            self._sync(w)

    # ------------------------------------------------------------------ forward

    def _deploy(self, w: Tensor) -> tuple[Tensor, int]:
        """Eval-mode weight and exponent (no gradient)."""
        x = w.detach()
        if not self.started:
            wq, s = pot.inq(x, self.bits)
            return wq, int(s)
        s = int(self.exponent)
        rest = pot.pot_round(x, s, self.bits)
        return torch.where(self.mask, self.frozen.to(x.dtype), rest), s

    def forward(self, w: Tensor) -> Tensor:
        if self.training and self.auto_start and not self.started and float(
                self.portion) == 0.0:
            self.set_portion(self.portions[0])
        self._sync(w)
        if not self.training:
            return self._deploy(w)[0]
        if not self.started:
            return w
        return torch.where(self.mask, self.frozen.to(w.dtype), w)

    def freeze(self, w: Tensor) -> QuantResult:
        with torch.no_grad():
            self._sync(w)
            vals, s = self._deploy(w)
            return QuantResult(vals.to(w.dtype), "pot", self.bits,
                               torch.tensor(2.0 ** s, dtype=torch.float64, device=w.device),
                               exponent=s)

    def set_bits(self, bits: int) -> None:
        """Change the bit-width; this restarts INQ (nothing frozen, portion 0)."""
        self.params = dataclasses.replace(self.params, bits=bits)  # re-validated
        self.bits = int(bits)
        self.mask.resize_(0)
        self.frozen.resize_(0)
        self.portion.zero_()
        self._rev += 1

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, bits={self.bits}, portion={float(self.portion):g}, "
                f"quantized={self.quantized_share:.3f}")


class INQSchedule:
    """Drives every :class:`INQWeightQuant` of a model from the training progress.

    ``portion(progress)`` is :func:`inq_portion`; ``apply(model, progress)`` sets it on each
    INQ layer (partitioning its weight now) and returns it. Call it after every optimizer step
    with the progress of the *next* step (``iteration / total``): at the end of training
    (progress 1) every weight is quantized before the final evaluation. Stateless, so a resumed
    run recomputes the same stage (and the quantizers' buffers come from the checkpoint).
    """

    def __init__(self, portions: Sequence[float] = DEFAULT_PORTIONS) -> None:
        self.portions = check_portions(portions)

    def portion(self, progress: float) -> float:
        return inq_portion(progress, self.portions)

    def apply(self, model: nn.Module, progress: float) -> float:
        p = self.portion(progress)
        for _, layer in quant_layers(model):
            q = layer.weight_quant
            if isinstance(q, INQWeightQuant):
                q.set_portion(p, layer.weight)
                layer.invalidate()
        return p


methods.register(NNMethod(
    "inq-incremental", INQWeightQuant, INQParams,
    "Weights frozen on INQ's power-of-two grid portion by portion (largest |w| first), the "
    "float rest re-trained in between",
    "Incremental Network Quantization: Towards Lossless CNNs with Low-Precision Weights",
    scale_overhead))
