"""Weight quantizers as small modules owned by :class:`~lowbit.nn.QuantConv2d` /
:class:`~lowbit.nn.QuantLinear` (attribute ``weight_quant``).

Every quantizer maps the float weight ``W`` (the layer's Parameter) to the weight the forward
uses, and can :meth:`~WeightQuantizer.freeze` it into a :class:`lowbit.quant.QuantResult`
(integer codes + scale/exponent/levels) that equals its eval-mode output.

* :class:`RegistryWeightQuant`: any quantizer of the :mod:`lowbit.quant` registry with the
  straight-through estimator: the forward uses ``Q(W)``, the backward hands ``dL/dQ(W)`` to
  ``W`` unchanged. With a plain optimizer this is LBW-Net's projected SGD (001, section 2.2):
  the gradient is evaluated at the quantized weights and the step is taken on the float ones.
* :class:`QNWeightQuant`: Quantization Networks (003): a soft staircase of sigmoids with
  temperature ``T`` and learnable input/output scales beta/alpha, biases by 1-D k-means;
  the hard staircase in eval mode.
* :class:`ClipWeightQuant`: the clipping-based method (002): weights clamped to ``[-c, c]`` with
  a learnable clip ``c`` while training in float, ``bits``-bit symmetric uniform quantization
  with scale ``c / (2**(bits-1) - 1)`` once :attr:`~ClipWeightQuant.quantize` is switched on.
* :class:`lowbit.nn.inq.INQWeightQuant` (recipe method ``"inq-incremental"``): Incremental
  Network Quantization, weights frozen on a power-of-two grid portion by portion.

Each class registers its recipe method(s) in :mod:`lowbit.nn.methods` (module class, parameter
dataclass, bits, overhead, paper); :func:`make_weight_quantizer` builds through that registry.
Every quantizer keeps its validated parameter dataclass as :attr:`WeightQuantizer.params`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import lowbit.quant as Q
from lowbit.nn import methods
from lowbit.nn.methods import NNMethod
from lowbit.quant._common import check_params_bits
from lowbit.quant.registry import QnParams, QuantizerEntry, QuantResult
from lowbit.quant.sigmoid import hard_staircase, init_biases, levels_for_bits, soft_staircase
from lowbit.quant.uniform import CALIBRATORS, fake_quant, qrange
from lowbit.quant.uniform import calibrate as _calibrate

__all__ = [
    "WeightQuantizer",
    "RegistryWeightQuant",
    "QNWeightQuant",
    "ClipWeightQuant",
    "ClipParams",
    "make_weight_quantizer",
    "scale_overhead",
    "tensor_overhead",
    "ste",
]

_CLIP_PAPER = ("Clipping-Based Post Training 8-Bit Quantization of Convolution Neural Networks "
               "for Object Detection")


class _STE(torch.autograd.Function):
    """Forward returns ``wq``; backward passes the incoming gradient to ``w`` unchanged."""

    @staticmethod
    def forward(ctx, w: Tensor, wq: Tensor) -> Tensor:  # noqa: D102
        return wq

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad, None


def _grad_scale(x: Tensor, g: float) -> Tensor:
    """``x`` in the forward, ``g * dL/dx`` in the backward."""
    return (x - x * g).detach() + x * g


def adopt_saved_shapes(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                       names: tuple[str, ...]) -> None:
    """For buffers whose shape is only known once data was seen (QN activation levels, INQ
    masks): resize each named buffer of ``module`` in place to the shape saved in
    ``state_dict`` (call from ``_load_from_state_dict`` before the standard shape check; in
    place, so references held elsewhere, e.g. DDP's buffer list, stay valid)."""
    for name in names:
        src = state_dict.get(prefix + name)
        buf = getattr(module, name)
        if isinstance(src, Tensor) and src.shape != buf.shape:
            buf.resize_(src.shape)


def ste(w: Tensor, wq: Tensor) -> Tensor:
    """Straight-through: value ``wq``, gradient with respect to ``w`` = gradient at ``wq``."""
    return _STE.apply(w, wq)


class WeightQuantizer(nn.Module):
    """Base class. ``forward(w)`` returns the weight the layer uses (differentiable in ``w``);
    ``freeze(w)`` returns the :class:`QuantResult` of the eval-mode weight; ``bits`` and
    ``method`` describe it; ``params`` is the method's validated parameter dataclass (see
    :mod:`lowbit.nn.methods`); ``state_key()`` changes whenever the eval-mode output for the
    same ``w`` may change (the layer's eval cache uses it)."""

    method: str = ""
    params: Any = None

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self._rev = 0

    def state_key(self) -> tuple:
        return (self._rev, self.training)

    def set_bits(self, bits: int) -> None:
        """Change the bit-width (mixed precision, sensitivity)."""
        raise NotImplementedError

    def overhead_bytes(self, channels: int) -> int:
        """Bytes stored besides the codes (scales, zero points, level tables; 4 bytes each)
        for a weight with ``channels`` output channels, at the current bit-width: the
        registered method's ``overhead`` (4 bytes, one scale, for an unregistered one)."""
        if self.params is None or self.method not in methods.METHODS:
            return 4
        return methods.get(self.method).overhead(self.params, channels)

    def freeze(self, w: Tensor) -> QuantResult:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method!r}, bits={self.bits}"


class RegistryWeightQuant(WeightQuantizer):
    """A registry quantizer (``lowbit.quant.get(method)``) with the straight-through estimator.

    The quantizer runs on ``w.detach()`` once per call; :attr:`last` keeps the latest
    :class:`QuantResult` (used by :func:`lowbit.nn.quant_penalty` without recomputing).
    """

    def __init__(self, method: str, params: Any) -> None:
        super().__init__(params.bits)
        self.method = method
        self.entry = Q.get(method)
        self.params = params
        self.last: QuantResult | None = None

    @classmethod
    def build(cls, method: str, bits: int | None, params: dict[str, Any] | None = None
              ) -> RegistryWeightQuant:
        entry = Q.get(method)
        kw = dict(params or {})
        p = entry.params(**kw) if bits is None else entry.params(bits=bits, **kw)
        return cls(method, p)

    def quantize(self, w: Tensor) -> QuantResult:
        """The registry result for ``w`` (no gradient)."""
        res = self.entry.fn(w.detach(), self.params)
        self.last = res
        return res

    def forward(self, w: Tensor) -> Tensor:
        return ste(w, self.quantize(w).values)

    def freeze(self, w: Tensor) -> QuantResult:
        with torch.no_grad():
            return self.quantize(w)

    def overhead_bytes(self, channels: int) -> int:
        # the tensor quantizer's storage (also for "qn", whose nn method is QNWeightQuant)
        return tensor_overhead(self.method)(self.params, channels)

    def set_bits(self, bits: int) -> None:
        self.params = dataclasses.replace(self.params, bits=bits)  # re-validated
        self.bits = int(bits)
        self._rev += 1

    def state_key(self) -> tuple:
        return (self._rev,)


class QNWeightQuant(WeightQuantizer):
    """Quantization Networks weights: ``alpha * (sum_i s_i sigmoid(T (beta w - b_i)) - o)``.

    Signed integer levels ``levels_for_bits(bits)`` (ternary ``{-1, 0, 1}`` at 2 bits),
    ``o = -q_0``. Initialised from the weights on first use, as the paper's public code:
    ``beta = 5/4 * q_max / max|W|``, ``alpha = 1 / beta`` and the biases the midpoints of a
    1-D k-means of ``beta W`` (fixed afterwards); alpha and beta are Parameters (learned).
    ``temperature`` (a buffer) is set by :class:`lowbit.nn.QNSchedule`. Training mode uses the
    soft staircase with exact autograd; eval mode, or :attr:`hard` True, the hard staircase
    (no gradient). ``hard`` is how the "activations" phase of the schedule keeps weights fixed.
    """

    method = "qn"

    def __init__(self, bits: int = QnParams.bits) -> None:
        params = QnParams(bits)  # validated
        super().__init__(bits)
        self.params = params
        self.register_buffer("levels", levels_for_bits(bits))
        n = self.levels.numel() - 1
        self.register_buffer("biases", (self.levels[1:] + self.levels[:-1]) / 2)
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.hard = False
        self._n = n

    def state_key(self) -> tuple:
        return (self._rev, self.alpha._version, self.beta._version, self.biases._version,
                bool(self.initialized))

    @torch.no_grad()
    def init_from(self, w: Tensor) -> None:
        """Set beta, alpha and the biases from the weights ``w`` (any shape)."""
        x = w.detach().float()
        amax = float(x.abs().max()) if x.numel() else 0.0
        qmax = float(self.levels[-1])
        beta = 1.25 * qmax / amax if amax > 0 else 1.0
        self.beta.fill_(beta)
        self.alpha.fill_(1.0 / beta)
        if x.numel():
            self.biases.copy_(init_biases(x.reshape(-1), self.levels.cpu(), beta).to(self.biases))
        self.initialized.fill_(True)
        self._rev += 1

    def _check(self, layer: str = "") -> None:
        if not (torch.isfinite(self.alpha) and torch.isfinite(self.beta)):
            raise ValueError(f"{layer}qn alpha/beta became non-finite "
                             f"(alpha={self.alpha.item()}, beta={self.beta.item()})")

    def forward(self, w: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.init_from(w)
        self._check()
        if self.training and not self.hard:
            t = float(self.temperature)
            # alpha and beta are scalars whose gradient sums over every weight of the layer
            # (and grows with T): one SGD step at the network's learning rate sends them to
            # inf on a 10^5-weight conv. Scale their gradient by 1/sqrt(N * q_max) as LSQ
            # does for its step size (value unchanged, gradient only).
            g = 1.0 / math.sqrt(max(w.numel(), 1) * float(self.levels.abs().max().clamp(min=1)))
            alpha = _grad_scale(self.alpha, g)
            beta = _grad_scale(self.beta, g)
            return soft_staircase(w, self.levels, self.biases, t, alpha, beta)
        return hard_staircase(w, self.levels, self.biases, self.alpha.detach(),
                              self.beta.detach())

    def freeze(self, w: Tensor) -> QuantResult:
        with torch.no_grad():
            if not bool(self.initialized):
                self.init_from(w)
            self._check()
            a = self.alpha.detach().double()
            vals = hard_staircase(w.detach(), self.levels, self.biases, a.to(w.dtype),
                                  self.beta.detach().to(w.dtype))
            steps = (self.levels[1:] - self.levels[:-1]).double()
            cum = torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])
            lv = a * (cum + self.levels[0].double())  # alpha * (cum - o), o = -q_0
            return QuantResult(vals, "table", self.bits, a.clone(), levels=lv.to(w.device))

    def set_bits(self, bits: int) -> None:
        self.params = dataclasses.replace(self.params, bits=bits)  # re-validated
        dev = self.levels.device
        self.bits = int(bits)
        self.levels = levels_for_bits(bits).to(dev)
        self.biases = ((self.levels[1:] + self.levels[:-1]) / 2).to(dev)
        self.initialized.fill_(False)
        self._n = self.levels.numel() - 1
        self._rev += 1

    def extra_repr(self) -> str:
        return f"method='qn', bits={self.bits}, T={float(self.temperature):g}"


@dataclass
class ClipParams:
    """Parameters of :class:`ClipWeightQuant`: ``bits`` in [2, 8] (default 8), the clip's
    initial ``calibrator`` (``minmax | percentile | mse | kl``) and whether it is
    ``learnable``."""

    BITS: ClassVar[tuple[int, int]] = (2, 8)

    bits: int = 8
    calibrator: str = "mse"
    learnable: bool = True

    def __post_init__(self) -> None:
        check_params_bits(self)
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"clip: calibrator must be one of {CALIBRATORS}, got "
                             f"{self.calibrator!r}")


class ClipWeightQuant(WeightQuantizer):
    """Clipping-based weights (002): ``clamp(w, -c, c)``; b-bit uniform when :attr:`quantize`.

    The clip ``c`` is initialised on first use from the weights by ``calibrator`` (default:
    the MSE-optimal ``bits``-bit clip) and is learnable (``learnable=True``: it receives the
    gradient of the clamped weights, as PACT's clip does); then the post-training quantization
    needs no calibration: scale ``c / (2**(bits-1) - 1)``, zero point 0, codes in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, straight-through rounding.
    """

    method = "clip"

    def __init__(self, bits: int = ClipParams.bits, calibrator: str = "mse",
                 learnable: bool = True) -> None:
        params = ClipParams(bits, calibrator, learnable)  # validated
        super().__init__(bits)
        self.params = params
        if learnable:
            self.clip = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_buffer("clip", torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.quantize = False

    @property
    def calibrator(self) -> str:
        """The calibrator of the clip's initial value."""
        return self.params.calibrator

    @property
    def learnable(self) -> bool:
        """Whether the clip is a Parameter."""
        return self.params.learnable

    def state_key(self) -> tuple:
        return (self._rev, self.clip._version, bool(self.initialized), self.quantize)

    @torch.no_grad()
    def init_from(self, w: Tensor) -> None:
        x = w.detach().float()
        c = float(_calibrate(x, self.bits, True, self.calibrator)[1]) if x.numel() else 0.0
        self.clip.fill_(c if c > 0 else 1.0)
        self.initialized.fill_(True)
        self._rev += 1

    def _scale(self) -> Tensor:
        c = self.clip.detach()
        if not bool(torch.isfinite(c)) or float(c) <= 0:
            raise ValueError(f"clip must be finite and > 0, got {float(c)}")
        return c / qrange(self.bits, True)[1]

    def forward(self, w: Tensor) -> Tensor:
        if not bool(self.initialized):
            self.init_from(w)
        c = self.clip.to(w.dtype)
        wc = torch.maximum(torch.minimum(w, c), -c)
        if not self.quantize:
            return wc
        qmin, qmax = qrange(self.bits, True)
        q = fake_quant(wc.detach(), self._scale(), torch.zeros(()), qmin, qmax)
        return ste(wc, q)

    def freeze(self, w: Tensor) -> QuantResult:
        with torch.no_grad():
            if not bool(self.initialized):
                self.init_from(w)
            c = self.clip.detach().to(w.dtype)
            wc = torch.maximum(torch.minimum(w.detach(), c), -c)
            qmin, qmax = qrange(self.bits, True)
            scale = self._scale().double()
            vals = fake_quant(wc, scale, torch.zeros(()), qmin, qmax)
            return QuantResult(vals, "uniform", self.bits, scale,
                               torch.zeros((), dtype=torch.float64))

    def set_bits(self, bits: int) -> None:
        self.params = dataclasses.replace(self.params, bits=bits)  # re-validated
        self.bits = int(bits)
        self._rev += 1

    def extra_repr(self) -> str:
        return f"method='clip', bits={self.bits}, quantize={self.quantize}"


# ---------------------------------------------------------------------- overhead


def scale_overhead(p: Any, channels: int) -> int:
    """One 4-byte scale (or exponent) per tensor, per channel when ``p.per_channel``."""
    return 4 * (channels if getattr(p, "per_channel", False) else 1)


def _table_overhead(p: Any, channels: int) -> int:
    """A 4-byte level table of ``2**bits`` entries per tensor (per channel if per-channel)."""
    return scale_overhead(p, channels) * (1 << p.bits)


def _affine_overhead(p: Any, channels: int) -> int:
    """A scale, plus a zero point when affine (``symmetric`` False)."""
    return scale_overhead(p, channels) * (1 if p.symmetric else 2)


def _qn_levels_overhead(p: Any, channels: int) -> int:
    """Trainable QN's level table ``alpha * (cum - o)``: one entry per signed level."""
    return 4 * levels_for_bits(p.bits).numel()


#: storage of the tensor quantizers that keep more than one scale per tensor / channel
_TENSOR_OVERHEAD: dict[str, Callable[[Any, int], int]] = {
    "kmeans": _table_overhead,
    "qn": _table_overhead,  # the post-training staircase stores 2**bits levels
    "uniform": _affine_overhead,
}


def tensor_overhead(name: str) -> Callable[[Any, int], int]:
    """``overhead(params, channels) -> bytes`` of the :mod:`lowbit.quant` quantizer ``name``
    (:func:`scale_overhead` unless it stores level tables or zero points)."""
    return _TENSOR_OVERHEAD.get(name, scale_overhead)


# ---------------------------------------------------------------------- registration


def _wrap(entry: QuantizerEntry) -> NNMethod:
    """The nn method of a :mod:`lowbit.quant` quantizer: :class:`RegistryWeightQuant`."""

    def factory(bits: int | None, params: dict[str, Any]) -> RegistryWeightQuant:
        return RegistryWeightQuant.build(entry.name, bits, params)

    return NNMethod(entry.name, RegistryWeightQuant, entry.params_cls, entry.description,
                    entry.paper, tensor_overhead(entry.name), factory, nn_only=False)


methods.register(NNMethod(
    "qn", QNWeightQuant, QnParams,
    "Quantization Networks: soft staircase of sigmoids, learnable alpha/beta, annealed "
    "temperature (hard staircase in eval mode)",
    "Quantization Networks", _qn_levels_overhead, nn_only=False))
methods.register(NNMethod(
    "clip", ClipWeightQuant, ClipParams,
    "Weights clamped to a learnable clip while training; b-bit uniform from the clip after",
    _CLIP_PAPER, scale_overhead))
methods.set_tensor_wrapper(_wrap)  # every other lowbit.quant quantizer, also ones added later


def make_weight_quantizer(method: str, bits: int | None,
                          params: Mapping[str, Any] | None = None) -> WeightQuantizer:
    """Build the weight quantizer module for a recipe entry (validated), through the method
    registry :mod:`lowbit.nn.methods`; ``bits`` None: the method's default."""
    return methods.build(method, bits, params)
