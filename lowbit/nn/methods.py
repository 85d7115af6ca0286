"""The catalogue of weight methods a :class:`lowbit.nn.Recipe` can name.

One :class:`NNMethod` per name, in one :class:`lowbit.registry.Registry`: the weight quantizer
module class, its parameter dataclass (whose ``bits`` default and ``BITS`` range are the
method's default and accepted bit-widths), the bytes it stores besides the codes, a one-line
description and the paper's title. Entries:

* every tensor quantizer of :mod:`lowbit.quant`'s registry, wrapped with the straight-through
  estimator by :class:`lowbit.nn.RegistryWeightQuant` (registered by
  :mod:`lowbit.nn.quantizers`), except ``"qn"``;
* ``"qn"``: trainable Quantization Networks, :class:`lowbit.nn.QNWeightQuant` (parameters of
  the registry's ``qn``: bits only);
* ``"clip"``: the clipping-based method, :class:`lowbit.nn.ClipWeightQuant`;
* ``"inq-incremental"``: Incremental Network Quantization, :class:`lowbit.nn.INQWeightQuant`
  (registered by :mod:`lowbit.nn.inq`).

This module imports neither the quantizer modules nor the layers: they register themselves
when imported, and importing :mod:`lowbit.nn` imports all of them. Lookups of an unknown name
raise ``ValueError`` listing the known ones (``unknown quantizer 'x'; known: ...``).

Bit-widths: :meth:`NNMethod.params` is where a method's bit-width is resolved (None -> the
default) and validated (by the parameter dataclass, through
:func:`lowbit.quant._common.check_bits`); :func:`lowbit.nn.recipe.check_method` and
:func:`lowbit.nn.make_weight_quantizer` go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lowbit.quant.registry as _quant
from lowbit.quant._common import ParamsBits
from lowbit.registry import Registry

__all__ = ["NNMethod", "METHODS", "register", "get", "names", "nn_only_names", "check_method",
           "build", "set_tensor_wrapper"]


def _construct(cls: type, bits: int | None, params: dict[str, Any]) -> Any:
    """Default factory: ``cls(bits, **params)`` (``cls(**params)`` for the default bits)."""
    return cls(**params) if bits is None else cls(bits, **params)


@dataclass(frozen=True)
class NNMethod(ParamsBits):
    """One weight method of the nn level.

    Attributes:
        name: the recipe name (``Recipe.method``).
        cls: the weight quantizer module class (a :class:`lowbit.nn.WeightQuantizer`).
        params_cls: the parameter dataclass (a ``bits`` field with the default bit-width, a
            ``BITS = (lo, hi)`` class attribute, validation in ``__post_init__``).
        description: one line on what it does.
        paper: the title of the paper it comes from ("" for a generic baseline).
        overhead: ``overhead(params, channels) -> bytes`` stored besides the codes (scales,
            zero points, level tables; 4 bytes each) for a weight with ``channels`` output
            channels, ``params`` an instance of ``params_cls``.
        factory: ``factory(bits | None, params_dict) -> module``; None: ``cls(bits, **params)``.
            Called with parameters :meth:`check_params` accepted; the module validates them
            (building its ``params_cls``).
        nn_only: True when the name is not a tensor quantizer of :mod:`lowbit.quant`.
    """

    name: str
    cls: type
    params_cls: type
    description: str
    paper: str
    overhead: Callable[[Any, int], int]
    factory: Callable[[int | None, dict[str, Any]], Any] | None = None
    nn_only: bool = True

    @property
    def param_names(self) -> tuple[str, ...]:
        """The parameters a recipe may give in ``params`` (every field but ``bits``)."""
        return tuple(f.name for f in dataclasses.fields(self.params_cls) if f.name != "bits")

    def check_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """``params`` as a dict; ValueError for ``bits`` or a name the method does not have."""
        params = dict(params or {})
        if "bits" in params:
            raise ValueError(f"method {self.name!r}: give bits as the recipe's `bits`, not in "
                             "params")
        bad = sorted(set(params) - set(self.param_names))
        if bad:
            raise ValueError(f"method {self.name!r} has no parameter(s) {bad}; known: "
                             f"{list(self.param_names)}")
        return params

    def params(self, bits: int | None = None, params: Mapping[str, Any] | None = None) -> Any:
        """The validated parameter dataclass for ``bits`` (None: the default) and ``params``.

        ValueError naming the method and the problem (e.g. ``bits must be in [2, 8], got 9``).
        """
        kw = self.check_params(params)
        if bits is not None:
            kw["bits"] = bits
        try:
            return self.params_cls(**kw)
        except ValueError as e:
            raise ValueError(f"method {self.name!r}: {e}") from e

    def build(self, bits: int | None = None, params: Mapping[str, Any] | None = None) -> Any:
        """A new weight quantizer module at ``bits`` (None: the default) with ``params``."""
        kw = self.check_params(params)
        make = self.factory or (lambda b, p: _construct(self.cls, b, p))
        try:
            return make(bits, kw)
        except ValueError as e:
            raise ValueError(f"method {self.name!r}: {e}") from e


#: every nn-level weight method by name (read it through :func:`get` / :func:`names`, which
#: first wrap the tensor quantizers registered since)
METHODS: Registry[NNMethod] = Registry("quantizer")

_wrapper: Callable[[_quant.QuantizerEntry], NNMethod] | None = None


def set_tensor_wrapper(wrap: Callable[[_quant.QuantizerEntry], NNMethod]) -> None:
    """Set how a :mod:`lowbit.quant` quantizer becomes an nn method (called once by
    :mod:`lowbit.nn.quantizers`, which owns :class:`lowbit.nn.RegistryWeightQuant`); every
    quantizer of that registry without an nn method of its own name is wrapped, including
    those registered later."""
    global _wrapper
    _wrapper = wrap
    _sync()


def _sync() -> None:
    if _wrapper is None:
        return
    for name in _quant.list_quantizers():
        if name not in METHODS:
            METHODS.register(name, _wrapper(_quant.get(name)))


def register(method: NNMethod) -> NNMethod:
    """Add ``method`` (ValueError if its name is taken)."""
    return METHODS.register(method.name, method)


def get(name: str) -> NNMethod:
    """The method named ``name``; ValueError listing the known names otherwise."""
    if name not in METHODS:
        _sync()
    return METHODS.get(name)


def names() -> list[str]:
    """Sorted names of every registered method."""
    _sync()
    return METHODS.names()


def nn_only_names() -> tuple[str, ...]:
    """Sorted names of the methods that exist only as modules (not tensor quantizers)."""
    return tuple(n for n, m in METHODS.items() if m.nn_only)


def check_method(method: str, bits: int | None, params: Mapping[str, Any] | None = None
                 ) -> int:
    """Validate a weight method with its bits/params; return the resolved bit-width.

    Raises ValueError naming the method and the problem (an unknown name lists the known ones).
    """
    return int(get(method).params(bits, params).bits)


def build(method: str, bits: int | None = None, params: Mapping[str, Any] | None = None
          ) -> Any:
    """The weight quantizer module of ``method`` (see :meth:`NNMethod.build`)."""
    return get(method).build(bits, params)
