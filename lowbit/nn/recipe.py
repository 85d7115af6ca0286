"""Quantization recipes: which layers :func:`lowbit.nn.prepare` swaps, with what, at how many bits.

A :class:`Recipe` is a validated dataclass (also built from a plain dict with
:meth:`Recipe.from_dict`; YAML parsing lives elsewhere). The default ``Recipe()`` is the
paper's setting: every ``Conv2d`` quantized by one weight quantizer at one bit-width
(``lbw-exact``; ``bits=None`` means the quantizer's own default, 4 for ``lbw-exact``), no
activation quantization.

Resolution order for a layer named ``name`` (a dotted ``named_modules`` name):

1. type filter ``layers`` (``"conv"`` = every convolution: ``nn.Conv1d/2d/3d``,
   ``nn.ConvTranspose1d/2d/3d`` and their subclasses; ``"linear"`` = ``nn.Linear`` and its
   subclasses);
2. ``include`` / ``exclude`` glob patterns (``fnmatch``) on the name;
3. the first/last-layer policy: ``first_layer`` / ``last_layer`` apply to the first and last
   ``Conv2d``/``Linear`` of the whole model in registration order (``named_modules`` order,
   which for the usual backbones and classifiers is the execution order), whatever ``layers``
   says: ``"quantize"`` (as the others), ``"float"`` (left in float) or an int bit-width;
4. ``overrides``: ``{pattern: {...}}`` applied in dict order (later entries win) with keys
   ``method``, ``bits``, ``params``, ``float`` (True keeps the layer float, False forces it
   quantized even if excluded above) and ``act`` (False: no input activation quantizer).

Weight methods are the entries of the method registry :mod:`lowbit.nn.methods`: the names of
:func:`lowbit.quant.list` plus ``"clip"`` (the clipping-based method: weights clamped to a
learnable clip during training, ``bits``-bit uniform post-training quantization from that clip)
and ``"inq-incremental"`` (Incremental Network Quantization: weights frozen on INQ's
power-of-two grid portion by portion while the rest re-train, :mod:`lowbit.nn.inq`; parameter
``portions``). ``"qn"`` means trainable Quantization Networks (soft staircase, learnable
alpha/beta) in a model. Each method's default and accepted bit-widths and its parameters are
those of its registry entry; :func:`check_method` validates against it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from lowbit.nn import methods as _methods
from lowbit.nn.methods import check_method
from lowbit.quant._common import check_bits
from lowbit.quant.uniform import CALIBRATORS

__all__ = [  # noqa: F822  (NN_METHODS comes from the module __getattr__)
    "ActRecipe", "LayerConfig", "Recipe", "NN_METHODS", "ACT_METHODS", "check_method"]


def __getattr__(name: str) -> Any:
    # NN_METHODS: the weight methods that exist only as trainable modules (not in the
    # quantizer registry), read from the method registry when asked for (its modules register
    # themselves on import, possibly after this one)
    if name == "NN_METHODS":
        return _methods.nn_only_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: activation quantizer kinds
ACT_METHODS = ("pact", "uniform", "clip", "qn")
ACT_POSITIONS = ("input", "after_relu")
#: where QN activation quantizers put their step positions (ActRecipe.bias_init)
QN_BIAS_INITS = ("kmeans", "uniform")
LAYER_TYPES = ("conv", "linear")
_OVERRIDE_KEYS = ("method", "bits", "params", "float", "act")

@dataclass
class ActRecipe:
    """Activation quantization of a recipe.

    ``method``: ``"pact"`` (clamp to a learnable clip, b-bit uniform, STE), ``"uniform"``
    (b-bit uniform with a range from calibration data, :func:`lowbit.nn.calibrate`; the first
    batch seen if never calibrated), ``"clip"`` (002: learnable clip during training, b-bit
    uniform quantization switched on after training by :func:`lowbit.nn.ptq_from_clips` /
    :func:`lowbit.nn.convert`), ``"qn"`` (Quantization Networks soft staircase, unsigned
    levels ``0..2**b-1``, learnable alpha/beta, biases by clustering the first batch).
    ``position``: ``"input"`` (each quantized layer's input) or ``"after_relu"`` (after every
    ``nn.ReLU``/``nn.ReLU6`` module whose name passes include/exclude). ``symmetric``: for
    ``uniform``, signed symmetric codes instead of affine. ``calibrator``: the range estimator
    of ``uniform`` (``minmax | percentile | mse | kl``). ``clip``: initial clip of
    ``pact``/``clip`` (None: from the first batch). ``bias_init``: where ``qn`` puts its
    step positions, ``"kmeans"`` (midpoints of a 1-D k-means of the data, as the paper's public
    code: non-uniform input thresholds for uniform output levels) or ``"uniform"`` (midpoints
    of the levels: the hard staircase is then b-bit uniform quantization of ``[0, max]``, an
    ordinary uint8 activation once deployed). ``outlier``: ``qn``'s range drops this share of
    the data at each end before setting ``beta`` (the public code's 1e-3; 0: the full min/max
    range -- on SSD-lite at 8 bits, post-training, 1e-3 cost 2.7 mAP points, 0 cost 0.2).
    """

    method: str = "uniform"
    bits: int = 8
    position: str = "input"
    symmetric: bool = False
    calibrator: str = "minmax"
    clip: float | None = None
    bias_init: str = "kmeans"
    outlier: float = 1e-3

    def __post_init__(self) -> None:
        if self.method not in ACT_METHODS:
            raise ValueError(f"act method must be one of {ACT_METHODS}, got {self.method!r}")
        check_bits(self.bits, 1 if self.method == "qn" else 2, 8, "act bits")
        if self.position not in ACT_POSITIONS:
            raise ValueError(f"act position must be one of {ACT_POSITIONS}, got {self.position!r}")
        if self.calibrator not in CALIBRATORS:
            raise ValueError(
                f"act calibrator must be one of {CALIBRATORS}, got {self.calibrator!r}"
            )
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"act clip must be > 0, got {self.clip}")
        if not 0.0 <= self.outlier < 0.5:
            raise ValueError(f"act outlier must be in [0, 0.5), got {self.outlier!r}")
        if self.bias_init not in QN_BIAS_INITS:
            raise ValueError(f"act bias_init must be one of {QN_BIAS_INITS}, got "
                             f"{self.bias_init!r}")


@dataclass(frozen=True)
class LayerConfig:
    """What :func:`lowbit.nn.prepare` does with one layer (the result of resolution)."""

    method: str
    bits: int
    params: dict[str, Any]
    act: bool


@dataclass
class Recipe:
    """How to quantize a model; see the module docstring for the resolution rules.

    Args:
        method: weight method name (:func:`lowbit.nn.methods.names`).
        bits: bit-width; None: the method's default.
        params: extra quantizer parameters (e.g. ``{"mu_ratio": 0.75}`` for ``lbw-approx``).
        layers: layer types to swap: ``"conv"`` and/or ``"linear"``.
        include, exclude: glob patterns on module names.
        first_layer, last_layer: ``"quantize" | "float" | int`` bit-width.
        overrides: ``{pattern: {"bits": 4, "method": ..., "params": {...}, "float": bool,
            "act": bool}}`` (mixed precision).
        act: activation quantization (:class:`ActRecipe` or its dict), None for none.
        min_coverage: :func:`lowbit.nn.prepare` raises ValueError, naming the layers left
            float, when less than this share (0..1) of the model's conv+linear weight elements
            is quantized. None: a warning below 0.9 (:data:`COVERAGE_WARN`).
    """

    method: str = "lbw-exact"
    bits: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    layers: tuple[str, ...] = ("conv",)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    first_layer: str | int = "quantize"
    last_layer: str | int = "quantize"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    act: ActRecipe | None = None
    min_coverage: float | None = None

    def __post_init__(self) -> None:
        if self.min_coverage is not None:
            mc = self.min_coverage
            if isinstance(mc, bool) or not isinstance(mc, (int, float)) or not 0 <= mc <= 1:
                raise ValueError(f"min_coverage must be a number in [0, 1], got {mc!r}")
        for name in ("layers", "include", "exclude"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            setattr(self, name, tuple(v))
        bad = [t for t in self.layers if t not in LAYER_TYPES]
        if bad or not self.layers:
            raise ValueError(
                f"layers must be a non-empty subset of {LAYER_TYPES}, got {self.layers}")
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a dict, got {type(self.params).__name__}")
        check_method(self.method, self.bits, self.params)
        for which in ("first_layer", "last_layer"):
            v = getattr(self, which)
            if isinstance(v, bool) or not (v in ("quantize", "float") or isinstance(v, int)):
                raise ValueError(f"{which} must be 'quantize', 'float' or an int, got {v!r}")
            if isinstance(v, int):
                check_method(self.method, v, self.params)
        if isinstance(self.act, dict):
            self.act = ActRecipe(**self.act)
        if self.act is not None and not isinstance(self.act, ActRecipe):
            raise ValueError(f"act must be an ActRecipe, a dict or None, got {self.act!r}")
        if not isinstance(self.overrides, dict):
            raise ValueError("overrides must be a dict {pattern: {...}}")
        for pat, ov in self.overrides.items():
            if not isinstance(ov, dict):
                raise ValueError(f"override {pat!r} must be a dict, got {ov!r}")
            unknown = sorted(set(ov) - set(_OVERRIDE_KEYS))
            if unknown:
                raise ValueError(f"override {pat!r}: unknown key(s) {unknown}; known: "
                                 f"{list(_OVERRIDE_KEYS)}")
            m = ov.get("method", self.method)
            p = ov.get("params", self.params if m == self.method else {})
            check_method(m, ov.get("bits", self.bits if m == self.method else None), p)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Build from a plain dict (e.g. parsed YAML); unknown keys raise ValueError."""
        if isinstance(d, Recipe):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"a recipe must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"recipe has no field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (round-trips through :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d["layers"], d["include"], d["exclude"] = list(self.layers), list(self.include), list(
            self.exclude)
        return d

    def replace(self, **kw: Any) -> Recipe:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ resolution

    def resolve(self, name: str, kind: str, first: bool = False, last: bool = False
                ) -> LayerConfig | None:
        """The :class:`LayerConfig` for layer ``name`` of type ``kind`` (``"conv"|"linear"``),
        or None to leave it float. ``first`` / ``last``: it is the model's first/last layer."""
        return self.explain(name, kind, first, last)[0]

    def explain(self, name: str, kind: str, first: bool = False, last: bool = False
                ) -> tuple[LayerConfig | None, str]:
        """:meth:`resolve` with the reason: ``(config, "")`` when quantized, else ``(None,
        reason)`` naming the rule that leaves the layer float (for the coverage report)."""
        reason = ""
        if kind not in self.layers:
            reason = f"recipe layers={list(self.layers)} leaves out {kind!r} layers"
        elif not _match(name, self.include):
            reason = f"matches no include pattern {list(self.include)}"
        else:
            hit = [p for p in self.exclude if _match(name, (p,))]
            if hit:
                reason = f"excluded by pattern {hit[0]!r}"
        quant = not reason
        method, bits, params, act = self.method, self.bits, dict(self.params), True
        for flag, policy, which in ((first, self.first_layer, "first_layer"),
                                    (last, self.last_layer, "last_layer")):
            if not flag or policy == "quantize":
                continue
            if policy == "float":
                quant, reason = False, f"{which}='float' (the model's {which.split('_')[0]} layer)"
            else:
                bits = int(policy)
        for pat, ov in self.overrides.items():
            if not _match(name, (pat,)):
                continue
            if "method" in ov and ov["method"] != method:
                method, params = ov["method"], {}
                bits = None
            if "params" in ov:
                params = dict(ov["params"])
            if "bits" in ov:
                bits = ov["bits"]
            if "float" in ov:
                quant = not ov["float"]
                reason = f"override {pat!r} sets float" if ov["float"] else ""
            if "act" in ov:
                act = bool(ov["act"])
        if not quant:
            return None, reason
        b = check_method(method, bits, params)
        return LayerConfig(method, b, params, act and self.act is not None), ""


def _match(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
