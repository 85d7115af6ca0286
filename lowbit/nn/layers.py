"""Quantized layers: :class:`QuantConv2d` and :class:`QuantLinear`.

Subclasses of ``nn.Conv2d`` / ``nn.Linear``: ``isinstance`` checks and ``state_dict`` keys
(``weight``, ``bias``) keep working. The float weight stays the Parameter; the forward uses
``weight_quant(weight)`` (see :mod:`lowbit.nn.quantizers`), optionally after an input
activation quantizer ``input_quant``.

Cost and caching: in training mode the weight quantizer runs once per forward call. In eval
mode its output is cached and reused until the weight changes (its autograd version counter or
storage moves: optimizer steps, ``load_state_dict``, ``.to()``), the quantizer's state changes,
or ``train()`` / ``eval()`` is called. In-place edits through ``weight.data`` bypass the
version counter: call :meth:`QuantMixin.invalidate` after those.

After :func:`lowbit.nn.convert` a layer is frozen: :attr:`QuantMixin.frozen` holds the
:class:`lowbit.quant.QuantResult` (values, kind, bits, scale / exponent / zero point / levels),
:meth:`QuantMixin.weight_codes` its int32 codes, and the forward uses the frozen values in
every mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.nn.quantizers import RegistryWeightQuant, WeightQuantizer, ste
from lowbit.quant.registry import QuantResult
from lowbit.runtime import at_most_threads

__all__ = [
    "QuantMixin",
    "QuantConv2d",
    "QuantLinear",
    "quant_layers",
    "quantize_module",
    "quantize_step",
    "install_quantize_step",
    "weight_layer_kind",
    "channel_axis",
    "set_quantizer_threads",
]

_QUANT_THREADS: int | None = 1


def set_quantizer_threads(n: int | None) -> None:
    """Intra-op threads used while a layer runs its weight quantizer on CPU (default 1; None:
    leave torch's setting). The quantizers are chains of small memory-bound ops, where
    OpenMP's fork/join dominates: on this project's 2-core machine under load, ``lbw_exact``
    over ResNet-18's 11 M conv weights took 0.5-3.4 s per pass with 2 threads and 0.09-0.13 s
    with 1 (see README, ``lowbit bench qat``)."""
    global _QUANT_THREADS
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    _QUANT_THREADS = n


class QuantMixin:
    """Shared machinery of the quantized layers (see the module docstring).

    Attributes:
        weight_quant: the :class:`~lowbit.nn.quantizers.WeightQuantizer` module.
        input_quant: activation quantizer applied to the input, or None.
        qname: the layer's name in its model (set by :func:`lowbit.nn.prepare`; used in errors).
        quant_enabled: False makes the layer behave as its float parent (sensitivity analysis).
    """

    weight: nn.Parameter
    weight_quant: WeightQuantizer
    input_quant: nn.Module | None

    def _init_quant(self, weight_quant: WeightQuantizer, input_quant: nn.Module | None,
                    name: str) -> None:
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.qname = name
        self.quant_enabled = True
        self._cache_key: tuple | None = None
        self._cache: Tensor | None = None
        self._frozen: QuantResult | None = None
        self._step: tuple[tuple, QuantResult] | None = None  # set by quantize_step

    # ------------------------------------------------------------------ weight

    def invalidate(self) -> None:
        """Drop the eval-mode cache and the :func:`quantize_step` result of the quantized
        weight."""
        self._cache_key, self._cache = None, None
        self._step = None

    def _run_quantizer(self) -> Tensor:
        try:
            with at_most_threads(_QUANT_THREADS, self.weight.device):
                return self.weight_quant(self.weight)
        except ValueError as e:
            raise ValueError(f"layer {self.qname or type(self).__name__!r}: {e}") from e

    def _key(self) -> tuple:
        w = self.weight
        return (w._version, w.data_ptr(), w.dtype, w.device, self.weight_quant.state_key())

    def quantized_weight(self) -> Tensor:
        """The weight the forward uses (shape of ``weight``)."""
        if self._frozen is not None:
            return self.frozen_weight
        if not self.quant_enabled:
            return self.weight
        if self.training:
            step = self._step
            if step is not None and step[0] == self._key():  # computed by quantize_step
                self.weight_quant.last = step[1]  # type: ignore[attr-defined]
                return ste(self.weight, step[1].values)
            return self._run_quantizer()
        w = self.weight
        if self._cache is None or self._key() != self._cache_key:
            with torch.no_grad():
                self._cache = self._run_quantizer().detach()
            self._cache_key = self._key()  # after the run: lazy initialisation changes state
        if torch.is_grad_enabled() and w.requires_grad:
            return ste(w, self._cache)
        return self._cache

    def train(self, mode: bool = True):
        self.invalidate()
        return super().train(mode)  # type: ignore[misc]

    # ------------------------------------------------------------------ frozen

    @property
    def frozen(self) -> QuantResult | None:
        """The :class:`QuantResult` fixed by :func:`lowbit.nn.convert` (None before)."""
        if self._frozen is None:
            return None
        v = self.frozen_weight
        if self._frozen.values is not v:
            self._frozen.values = v  # follow .to(device)
        return self._frozen

    def freeze(self) -> QuantResult:
        """Fix the quantized weight (what :func:`lowbit.nn.convert` calls per layer)."""
        res = self.weight_quant.freeze(self.weight.detach())
        values = res.values.detach().to(self.weight.dtype).contiguous()
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"layer {self.qname!r}: quantized weight is not finite")
        self.register_buffer("frozen_weight", values, persistent=False)  # type: ignore[attr-defined]
        res.values = self.frozen_weight
        self._frozen = res
        self.invalidate()
        return res

    def weight_codes(self) -> Tensor:
        """int32 codes of the frozen weight (``frozen.decode(codes) == frozen.values``)."""
        if self.frozen is None:
            raise ValueError(f"layer {self.qname!r} is not converted; call lowbit.nn.convert")
        return self.frozen.codes()

    def quant_result(self) -> QuantResult:
        """The frozen result, or (not converted) the eval-mode quantization of the weight now."""
        if self.frozen is not None:
            return self.frozen
        return self.weight_quant.freeze(self.weight.detach())

    @property
    def method(self) -> str:
        return self.weight_quant.method

    @property
    def bits(self) -> int:
        return self.weight_quant.bits


class QuantConv2d(QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses the quantized weight (see :mod:`lowbit.nn.layers`).

    Input ``Tensor[N, C_in, H, W]``, output ``Tensor[N, C_out, H', W']`` as ``nn.Conv2d``.
    """

    def __init__(self, *args, weight_quant: WeightQuantizer, input_quant: nn.Module | None = None,
                 name: str = "", **kw) -> None:
        super().__init__(*args, **kw)
        self._init_quant(weight_quant, input_quant, name)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant: WeightQuantizer,
                   input_quant: nn.Module | None = None, name: str = "") -> QuantConv2d:
        """A QuantConv2d sharing ``conv``'s Parameters (same objects) and hyper-parameters."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device="meta", weight_quant=weight_quant, input_quant=input_quant, name=name)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    """``nn.Linear`` whose forward uses the quantized weight. ``Tensor[..., in] -> [..., out]``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_quant: WeightQuantizer, input_quant: nn.Module | None = None,
                 name: str = "", **kw) -> None:
        super().__init__(in_features, out_features, bias, **kw)
        self._init_quant(weight_quant, input_quant, name)

    @classmethod
    def from_float(cls, lin: nn.Linear, weight_quant: WeightQuantizer,
                   input_quant: nn.Module | None = None, name: str = "") -> QuantLinear:
        """A QuantLinear sharing ``lin``'s Parameters (same objects)."""
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, device="meta",
                  weight_quant=weight_quant, input_quant=input_quant, name=name)
        new.weight = lin.weight
        new.bias = lin.bias
        new.train(lin.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        return F.linear(x, self.quantized_weight(), self.bias)


def quant_layers(model: nn.Module) -> list[tuple[str, QuantMixin]]:
    """``(name, layer)`` for every quantized layer of ``model`` (named_modules order):
    :class:`QuantConv2d`, :class:`QuantLinear` and the quantized subclasses made by
    :func:`quantize_module`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantMixin)]


# ---------------------------------------------------------------------- any weight layer


def weight_layer_kind(m: nn.Module) -> str | None:
    """``"conv"`` for every convolution (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` and
    their subclasses), ``"linear"`` for ``nn.Linear`` and its subclasses, else None.

    These are the modules that convolve or multiply with their ``weight``; they are what
    :func:`lowbit.nn.prepare` quantizes and what its coverage report counts.
    """
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    return None


def channel_axis(m: nn.Module) -> int:
    """The weight axis of output channels: 0 for convs and Linear (``[C_out, C_in/g, ...]``,
    ``[out, in]``), 1 for transposed convs (``[C_in, C_out/g, ...]``). With ``groups = g`` a
    transposed conv's index ``j`` on axis 1 feeds the ``g`` output channels ``j + k*C_out/g``:
    a per-channel scale along axis 1 is shared by those ``g`` channels and still factors out of
    each output channel's sum (shift-only arithmetic is kept)."""
    return 1 if getattr(m, "transposed", False) else 0


class _WrappedQuantMixin(QuantMixin):
    """Forward of a quantized subclass: the class's *own* forward runs unchanged, with
    ``self.weight`` reading the quantized weight for the duration of the call.

    The float Parameter stays registered as ``weight`` (state_dict keys, optimizers and
    ``model.parameters()`` are unchanged); during the call ``_parameters["weight"]`` holds the
    quantized tensor (straight-through to the Parameter), and is restored afterwards, also when
    the forward raises. Same-padding, weight-standardised or otherwise customised forwards
    therefore compute with the quantized weight exactly where they used the float one (a
    weight-standardised conv standardises the quantized weight).
    """

    def forward(self, *args, **kwargs):  # type: ignore[override]
        if self.input_quant is not None and args:
            args = (self.input_quant(args[0]),) + tuple(args[1:])
        params = self._parameters  # type: ignore[attr-defined]
        float_w = params["weight"]
        wq = self.quantized_weight()
        params["weight"] = wq
        try:
            return self._float_cls.forward(self, *args, **kwargs)
        finally:
            params["weight"] = float_w


_QUANT_CLASSES: dict[type, type] = {}


def _quant_class(cls: type) -> type:
    """The quantized class of a conv/linear class (cached): ``QuantConv2d`` for exactly
    ``nn.Conv2d``, ``QuantLinear`` for exactly ``nn.Linear``, else a subclass of ``cls`` with
    :class:`_WrappedQuantMixin` in front (named ``Quant<cls>``)."""
    if cls is nn.Conv2d:
        return QuantConv2d
    if cls is nn.Linear:
        return QuantLinear
    if cls not in _QUANT_CLASSES:
        _QUANT_CLASSES[cls] = type(f"Quant{cls.__name__}", (_WrappedQuantMixin, cls),
                                   {"_float_cls": cls, "__module__": __name__})
    return _QUANT_CLASSES[cls]


def quantize_module(module: nn.Module, weight_quant: WeightQuantizer,
                    input_quant: nn.Module | None = None, name: str = "") -> QuantMixin:
    """Make ``module`` (a conv or linear layer of any class, see :func:`weight_layer_kind`)
    quantized **in place** and return it.

    Its class becomes :func:`_quant_class` of its class, so every reference to it (shared
    modules included), its Parameters (same objects), buffers, hooks and other attributes stay;
    its own forward is kept (see :class:`_WrappedQuantMixin`). Raises ValueError naming the
    layer if it has no ``weight`` Parameter (e.g. already parametrized, or weight-normed).
    """
    label = name or type(module).__name__
    if isinstance(module, QuantMixin):
        raise ValueError(f"layer {label!r} is already quantized")
    if weight_layer_kind(module) is None:
        raise ValueError(f"layer {label!r} ({type(module).__name__}) is not a conv or linear "
                         "layer")
    w = module._parameters.get("weight")
    if not isinstance(w, nn.Parameter):
        raise ValueError(f"layer {label!r} ({type(module).__name__}) has no `weight` Parameter "
                         "(parametrized or weight-normed?)")
    module.__class__ = _quant_class(type(module))
    module._init_quant(weight_quant, input_quant, name)  # type: ignore[attr-defined]
    return module  # type: ignore[return-value]


# ---------------------------------------------------------------------- one pass per step


_BATCHED = ("lbw-exact", "lbw-approx")  # registry methods quantize_step computes in one pass


def _batchable(layer: QuantMixin) -> tuple | None:
    """Group key of a layer whose training-mode weight :func:`quantize_step` can compute in
    a one-pass quantizer (``lbw-exact`` or ``lbw-approx`` through the registry, per tensor or
    per channel along axis 0), else None. Layers share a pass only with equal parameters."""
    wq = layer.weight_quant
    if (type(wq) is not RegistryWeightQuant or wq.method not in _BATCHED or not layer.training
            or not layer.quant_enabled or layer._frozen is not None):
        return None
    pc = bool(getattr(wq.params, "per_channel", False))
    if pc and getattr(wq.params, "axis", 0) != 0:
        return None
    if wq.method == "lbw-approx":
        p = wq.params
        return (wq.method, p.bits, pc, layer.weight.device, p.mu_ratio, p.mu, p.partial_terms)
    return (wq.method, wq.params.bits, pc, layer.weight.device)


def _many(key: tuple, ws: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """The one-pass quantizer of a :func:`_batchable` group: ``lbw_exact_many`` or
    ``lbw_approx_many`` (bit-identical to the registry entry on each weight)."""
    import lowbit.quant as Q

    if key[0] == "lbw-exact":
        return Q.lbw_exact_many(ws, key[1], per_channel=key[2])
    _, bits, pc, _, mu_ratio, mu, partial_terms = key
    return Q.lbw_approx_many(ws, bits, mu=None if mu is None else [mu] * len(ws),
                           partial_terms=partial_terms, per_channel=pc,
                           mu_ratio=None if mu is not None else mu_ratio)


@torch.no_grad()
def quantize_step(model: nn.Module) -> int:
    """Quantize the weights of all of ``model``'s training-mode ``lbw-exact`` layers in one
    vectorised pass (:func:`lowbit.quant.lbw_exact_many`), and those of its ``lbw-approx``
    (lbw-mu) layers in another (:func:`lowbit.quant.pot.lbw_approx_many`, one per parameter
    set), bit-identical to each layer running its quantizer, and hand each layer its result
    for this step; returns the number of layers computed.

    :func:`lowbit.nn.prepare` registers this as a forward pre-hook of the model, so a QAT step
    pays one call for the whole model instead of one per layer (the per-call fixed cost
    dominated: see ``lowbit bench quantizers``). A layer uses the result only while its weight
    is unchanged (version counter, storage, quantizer state), so calling a submodule directly
    or stepping the optimizer in between falls back to the layer's own quantizer.
    """
    from lowbit.quant.registry import _pot_result

    groups: dict[tuple, list[QuantMixin]] = {}
    seen: set[int] = set()
    for m in model.modules():
        if not isinstance(m, QuantMixin) or id(m) in seen:
            continue
        seen.add(id(m))
        key = _batchable(m)
        if key is None or (m._step is not None and m._step[0] == m._key()):
            continue
        groups.setdefault(key, []).append(m)
    done = 0
    for key, layers in groups.items():
        bits, per_channel, device = key[1:4]
        with at_most_threads(_QUANT_THREADS, device):
            ws = [m.weight.detach() for m in layers]
            try:
                outs = _many(key, ws)
            except ValueError:  # rerun per layer: its error names the layer
                for m in layers:
                    m._run_quantizer()
                raise
        for m, (wq, s) in zip(layers, outs):
            # the registry's own result builder: the same QuantResult a layer would make
            res = _pot_result(wq, s if per_channel else int(s), bits, 0 if per_channel else None)
            m._step = (m._key(), res)
            done += 1
    return done


def _quantize_step_hook(module: nn.Module, args: tuple) -> None:
    if module.training:
        quantize_step(module)


def install_quantize_step(model: nn.Module) -> None:
    """Register :func:`quantize_step` as a forward pre-hook of ``model`` (once)."""
    if not any(h is _quantize_step_hook for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_quantize_step_hook)
