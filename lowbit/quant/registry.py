"""One registry naming every weight quantizer, each with a validated parameter dataclass.

``get(name)`` returns a :class:`QuantizerEntry`; calling it quantizes a tensor and returns a
:class:`QuantResult` that carries the values plus what export needs (scale, exponent, levels);
integer codes are computed on demand by :meth:`QuantResult.codes` so training pays nothing
for them.

Code conventions per ``kind``:

* ``"pot"``: ``code in [-n, n]``; ``value = sign(code) * scale * 2**(|code| - n)``, 0 for code 0
  (``scale = 2**s`` for LBW/INQ, a real ``alpha`` for the log quantizer).
* ``"uniform"``: ``value = (code - zero_point) * scale`` (TWN, binary, DoReFa are uniform
  grids with ``zero_point = 0``).
* ``"table"``: ``value = levels[code]`` (k-means).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from lowbit.quant import cluster, pot, ternary, uniform
from lowbit.quant._common import (
    ParamsBits,
    broadcast_channel,
    check_params_bits,
)
from lowbit.quant.uniform import CALIBRATORS
from lowbit.registry import Registry

__all__ = ["QuantResult", "QuantizerEntry", "register", "get", "list_quantizers", "quantize"]


@dataclass
class QuantResult:
    """A quantized tensor and the data that rebuilds it from integer codes.

    ``values``: the quantized tensor (input's shape/dtype/device). ``scale``: 0-dim or
    ``Tensor[C]`` along ``axis``. ``exponent``: LBW/INQ's ``s`` (``scale == 2**s``): a Python
    int per tensor, or ``Tensor[C]`` int64 per channel (then ``axis`` is set and ``scale`` is
    ``Tensor[C]`` float64 ``== 2**s_c``).
    ``levels``: ``Tensor[K]`` or ``Tensor[C, K]`` for ``kind == "table"``.
    """

    values: Tensor
    kind: str
    bits: int
    scale: Tensor
    zero_point: Tensor | None = None
    exponent: int | Tensor | None = None
    levels: Tensor | None = None
    axis: int | None = None

    def _bc(self, v: Tensor) -> Tensor:
        v = v.to(device=self.values.device)
        if self.axis is None or v.dim() == 0:
            return v
        return broadcast_channel(v, self.values, self.axis)

    def codes(self) -> Tensor:
        """Integer codes (int32) with :meth:`decode` ``(codes) == values`` (see module doc)."""
        v = self.values.double()
        if self.kind == "pot":
            n = pot.pot_levels_count(self.bits)
            sc = self._bc(self.scale.double())
            safe = torch.where(sc > 0, sc, torch.ones_like(sc))
            _, e = torch.frexp(v.abs() / safe)  # |v|/scale = 2**(|c| - n) exactly
            e = e.to(torch.int32)
            mag = torch.where(v != 0, e - 1 + n, torch.zeros_like(e))
            return (torch.sign(v).to(torch.int32) * mag).to(torch.int32)
        if self.kind == "uniform":
            sc = self._bc(self.scale.double())
            zp = self._bc(self.zero_point.double()) if self.zero_point is not None else 0.0
            return torch.round(v / sc + zp).to(torch.int32)
        if self.kind == "table":
            assert self.levels is not None
            lv = self.levels.double().to(v.device)
            if lv.dim() == 1:
                return cluster.nearest_level(v, lv)[1].to(torch.int32)
            rows = v.movedim(self.axis, 0)
            flat = rows.reshape(rows.shape[0], -1)
            c = torch.stack([cluster.nearest_level(r, lr)[1] for r, lr in zip(flat, lv)])
            return c.reshape(rows.shape).movedim(0, self.axis).to(torch.int32)
        raise ValueError(f"unknown kind {self.kind!r}")

    def decode(self, codes: Tensor) -> Tensor:
        """Rebuild values (``values``'s dtype) from integer codes."""
        c = codes.to(device=self.values.device)
        if self.kind == "pot":
            n = pot.pot_levels_count(self.bits)
            sc = self._bc(self.scale.double())
            mag = torch.ldexp(sc * torch.ones_like(c, dtype=torch.float64), (c.abs() - n).double())
            out = torch.where(c != 0, torch.sign(c).double() * mag, torch.zeros_like(mag))
        elif self.kind == "uniform":
            sc = self._bc(self.scale.double())
            zp = self._bc(self.zero_point.double()) if self.zero_point is not None else 0.0
            out = (c.double() - zp) * sc
        else:
            assert self.levels is not None
            lv = self.levels.double().to(c.device)
            if lv.dim() == 1:
                out = lv[c.long()]
            else:
                rows = c.movedim(self.axis, 0).reshape(lv.shape[0], -1).long()
                out = torch.gather(lv, 1, rows).reshape(c.movedim(self.axis, 0).shape)
                out = out.movedim(0, self.axis)
        return out.to(self.values.dtype)


# ---------------------------------------------------------------- parameter dataclasses
#
# Each dataclass is the one place its quantizer's bit-widths are written: the ``bits`` field's
# default is the default width, the class attribute ``BITS = (lo, hi)`` the accepted range, and
# ``__post_init__`` checks ``bits`` against it with ``check_params_bits`` (-> ``check_bits``).


def _check_axis(self) -> None:
    if isinstance(self.axis, bool) or not isinstance(self.axis, int):
        raise ValueError(f"axis must be an int, got {self.axis!r}")
    if not isinstance(self.per_channel, bool):
        raise ValueError(f"per_channel must be a bool, got {self.per_channel!r}")


@dataclass
class PotParams:
    """bits in [2, 8] (LBW's ``n = 2**(bits-2)`` magnitudes); ``per_channel``: one exponent
    per slice along ``axis`` (0: output channels of conv/linear weights)."""

    BITS: ClassVar[tuple[int, int]] = (2, 8)

    bits: int = 4
    per_channel: bool = False
    axis: int = 0

    def __post_init__(self) -> None:
        check_params_bits(self)
        _check_axis(self)


@dataclass
class LbwApproxParams:
    """bits in [2, 8]; ``mu_ratio``: mu as a fraction of max|W| (paper: 0.75); ``mu``: absolute
    mu (overrides the ratio); ``partial_terms``: truncate (2.9)'s sums (paper: 4);
    ``per_channel``: one mu (``mu_ratio * max|W_c|``) and one s per slice along ``axis``."""

    BITS: ClassVar[tuple[int, int]] = (2, 8)

    bits: int = 6
    mu_ratio: float = 0.75
    mu: float | None = None
    partial_terms: int | None = None
    per_channel: bool = False
    axis: int = 0

    def __post_init__(self) -> None:
        check_params_bits(self)
        _check_axis(self)
        if not self.mu_ratio > 0:
            raise ValueError(f"mu_ratio must be > 0, got {self.mu_ratio}")
        if self.mu is not None and not self.mu > 0:
            raise ValueError(f"mu must be > 0, got {self.mu}")
        if self.partial_terms is not None and self.partial_terms < 1:
            raise ValueError(f"partial_terms must be >= 1, got {self.partial_terms}")


@dataclass
class TwnParams:
    """``delta_factor``: threshold = delta_factor * mean|W| (TWN: 0.7). bits is fixed at 2.
    ``per_channel``: one threshold and one alpha per slice along ``axis``."""

    BITS: ClassVar[tuple[int, int]] = (2, 2)
    BITS_WHAT: ClassVar[str] = "twn is ternary: bits"

    delta_factor: float = 0.7
    bits: int = 2
    per_channel: bool = False
    axis: int = 0

    def __post_init__(self) -> None:
        _check_axis(self)
        check_params_bits(self)
        if not self.delta_factor > 0:
            raise ValueError(f"delta_factor must be > 0, got {self.delta_factor}")


@dataclass
class TernaryParams:
    """The paper's sorted ternary formula (bits fixed at 2)."""

    BITS: ClassVar[tuple[int, int]] = (2, 2)
    BITS_WHAT: ClassVar[str] = "lbw-ternary is ternary: bits"

    bits: int = 2

    def __post_init__(self) -> None:
        check_params_bits(self)


@dataclass
class QnParams:
    """Quantization Networks' hard staircase used post-training: ``bits`` in [1, 8] signed
    integer levels, ``beta = q_max / max|W|``, biases from k-means of ``beta W``, ``alpha`` the
    least-squares output scale for those codes."""

    BITS: ClassVar[tuple[int, int]] = (1, 8)

    bits: int = 2

    __post_init__ = check_params_bits


@dataclass
class BinaryParams:
    """Binary weights (bits fixed at 1)."""

    BITS: ClassVar[tuple[int, int]] = (1, 1)
    BITS_WHAT: ClassVar[str] = "binary: bits"

    bits: int = 1

    __post_init__ = check_params_bits


@dataclass
class DorefaParams:
    """bits in [1, 8]."""

    BITS: ClassVar[tuple[int, int]] = (1, 8)

    bits: int = 4

    __post_init__ = check_params_bits


@dataclass
class UniformParams:
    """Uniform b-bit weights: symmetric or affine, per tensor or per channel (``axis``), with a
    calibrator in ``minmax | percentile | mse | kl``."""

    BITS: ClassVar[tuple[int, int]] = (2, 8)

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    axis: int = 0
    method: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        check_params_bits(self)
        if self.method not in CALIBRATORS:
            raise ValueError(f"method must be one of {CALIBRATORS}, got {self.method!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")


@dataclass
class KmeansParams:
    """bits in [1, 8] (2**bits centroids), per tensor or per channel."""

    BITS: ClassVar[tuple[int, int]] = (1, 8)

    bits: int = 4
    per_channel: bool = False
    axis: int = 0
    exact_max: int = 1024

    __post_init__ = check_params_bits


@dataclass
class LogParams:
    """bits in [2, 8]; power-of-two levels times a real scale max|W|."""

    BITS: ClassVar[tuple[int, int]] = (2, 8)

    bits: int = 4
    per_channel: bool = False
    axis: int = 0

    __post_init__ = check_params_bits


# ---------------------------------------------------------------- the registry


@dataclass
class QuantizerEntry(ParamsBits):
    """A named quantizer: ``entry(w, **params) -> QuantResult``.

    ``params_cls`` is its parameter dataclass: :attr:`default_bits` and :attr:`bit_range` are
    read from it (the ``bits`` field's default and its ``BITS`` class attribute). ``paper``:
    the title of the paper the method comes from ("" for a generic baseline).
    """

    name: str
    params_cls: type
    fn: Callable[[Tensor, Any], QuantResult]
    description: str
    family: str = field(default="")
    paper: str = field(default="")

    def params(self, **kw: Any) -> Any:
        """Build and validate this quantizer's parameter dataclass."""
        names = {f.name for f in dataclasses.fields(self.params_cls)}
        unknown = set(kw) - names
        if unknown:
            raise ValueError(
                f"quantizer {self.name!r} has no parameter(s) {sorted(unknown)}; "
                f"known: {sorted(names)}"
            )
        return self.params_cls(**kw)

    def __call__(self, w: Tensor, params: Any = None, **kw: Any) -> QuantResult:
        p = params if params is not None else self.params(**kw)
        return self.fn(w, p)


_REGISTRY: Registry[QuantizerEntry] = Registry("quantizer")


def register(entry: QuantizerEntry) -> QuantizerEntry:
    """Add an entry; raises ValueError on a duplicate name."""
    return _REGISTRY.register(entry.name, entry)


def get(name: str) -> QuantizerEntry:
    """The entry named ``name``; ValueError listing the known names otherwise."""
    return _REGISTRY.get(name)


def list_quantizers() -> list[str]:
    """Sorted names of every registered quantizer."""
    return _REGISTRY.names()


def quantize(name: str, w: Tensor, **params: Any) -> QuantResult:
    """Shorthand for ``get(name)(w, **params)``."""
    return get(name)(w, **params)


def _scalar(v: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64, device=like.device)


def _pot_result(wq: Tensor, s: int | Tensor, bits: int, axis: int | None = None
                ) -> QuantResult:
    if isinstance(s, Tensor):  # per channel: scale[c] == 2**s[c] exactly
        scale = pot.exact_pow2(s.to(device=wq.device, dtype=torch.int64))
        return QuantResult(wq, "pot", bits, scale, exponent=s, axis=axis)
    return QuantResult(wq, "pot", bits, _scalar(2.0**s, wq), exponent=s)


def _axis(p: Any) -> int | None:
    return p.axis if p.per_channel else None


def _lbw_exact(w: Tensor, p: PotParams) -> QuantResult:
    if p.per_channel:
        wq, s = pot.lbw_exact_channels(w, p.bits, p.axis)
        return _pot_result(wq, s, p.bits, p.axis)
    wq, s = pot.lbw_exact(w, p.bits)
    return _pot_result(wq, s, p.bits)


def _lbw_approx(w: Tensor, p: LbwApproxParams) -> QuantResult:
    # mu = mu_ratio * max|W| (per channel max|W_c|) rounded in w's dtype, unless mu is given
    wq, s = pot.lbw_approx(w, p.bits, mu=p.mu, partial_terms=p.partial_terms,
                           per_channel=p.per_channel, axis=p.axis,
                           mu_ratio=p.mu_ratio if p.mu is None else None)
    return _pot_result(wq, s, p.bits, _axis(p))


def _lbw_ternary(w: Tensor, p: TernaryParams) -> QuantResult:
    wq, s = pot.lbw_ternary_sorted(w)
    return _pot_result(wq, s, 2)


def _inq(w: Tensor, p: PotParams) -> QuantResult:
    wq, s = pot.inq(w, p.bits, per_channel=p.per_channel, axis=p.axis)
    return _pot_result(wq, s, p.bits, _axis(p))


def _twn(w: Tensor, p: TwnParams) -> QuantResult:
    wq, alpha = ternary.twn(w, p.delta_factor, per_channel=p.per_channel, axis=p.axis)
    a = alpha.double()
    return QuantResult(wq, "uniform", 2, torch.where(a > 0, a, torch.ones_like(a)),
                       _scalar(0, wq), axis=_axis(p))


def _binary(w: Tensor, p: BinaryParams) -> QuantResult:
    wq, alpha = ternary.binary(w)
    a = alpha.double()
    return QuantResult(wq, "uniform", 1, torch.where(a > 0, a, torch.ones_like(a)), _scalar(0, wq))


def _dorefa(w: Tensor, p: DorefaParams) -> QuantResult:
    wq = uniform.dorefa(w, p.bits)
    # 2q - 1 with q = i / L, L = 2**k - 1  ->  value = (2i - L) / L: odd codes, scale 1/L
    scale = _scalar(1.0 / ((1 << p.bits) - 1), wq)
    return QuantResult(wq, "uniform", p.bits, scale, _scalar(0, wq))


def _uniform(w: Tensor, p: UniformParams) -> QuantResult:
    wq, scale, zp = uniform.uniform(
        w, p.bits, p.symmetric, p.per_channel, p.axis, p.method, percentile=p.percentile
    )
    return QuantResult(
        wq, "uniform", p.bits, scale.double(), zp.double(), axis=p.axis if p.per_channel else None
    )


def _kmeans(w: Tensor, p: KmeansParams) -> QuantResult:
    wq, levels = cluster.kmeans_quantize(w, p.bits, p.per_channel, p.axis, p.exact_max)
    return QuantResult(
        wq, "table", p.bits, _scalar(1.0, wq), levels=levels,
        axis=p.axis if p.per_channel else None,
    )


def _log(w: Tensor, p: LogParams) -> QuantResult:
    wq, alpha = cluster.log_quantize(w, p.bits, p.per_channel, p.axis)
    a = alpha.double()
    return QuantResult(
        wq, "pot", p.bits, torch.where(a > 0, a, torch.ones_like(a)),
        axis=p.axis if p.per_channel else None,
    )


def _qn(w: Tensor, p: QnParams) -> QuantResult:
    from lowbit.quant import sigmoid

    lv = sigmoid.levels_for_bits(p.bits).double()
    x = w.detach().double()
    amax = float(x.abs().max()) if x.numel() else 0.0
    beta = float(lv[-1]) / amax if amax > 0 else 1.0
    biases = sigmoid.init_biases(x, lv, beta).double() if x.numel() else (lv[1:] + lv[:-1]) / 2
    q = sigmoid.hard_staircase(x, lv, biases, alpha=1.0, beta=beta)
    qq = float((q * q).sum())
    alpha = float((q * x).sum()) / qq if qq > 0 else 1.0 / beta  # least-squares output scale
    return QuantResult((alpha * q).to(w.dtype), "table", p.bits, _scalar(alpha, w),
                       levels=lv * alpha)


_LBW = ("Quantization and Training of Low Bit-Width Convolutional Neural Networks for Object "
        "Detection")
_INQ = "Incremental Network Quantization: Towards Lossless CNNs with Low-Precision Weights"
_BEQ = "Bit Efficient Quantization for Deep Neural Networks"

for _e in (
    QuantizerEntry("lbw-exact", PotParams, _lbw_exact,
                   "LBW-Net exact least-squares power-of-two (O(N), any b)", "pot", _LBW),
    QuantizerEntry("lbw-approx", LbwApproxParams, _lbw_approx,
                   "LBW-Net semi-analytical scheme with mu (eq. 2.8-2.9)", "pot", _LBW),
    QuantizerEntry("lbw-ternary", TernaryParams, _lbw_ternary,
                   "LBW-Net ternary formula by sorting (eq. 2.6-2.7), reference", "pot", _LBW),
    QuantizerEntry("inq", PotParams, _inq,
                   "INQ power-of-two rounding, exponent range from max|W|", "pot", _INQ),
    QuantizerEntry("twn", TwnParams, _twn, "Ternary Weight Networks (0.7 mean|W|)", "ternary",
                   "Ternary Weight Networks"),
    QuantizerEntry("binary", BinaryParams, _binary, "Binary weights, scale mean|W|", "ternary",
                   "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks"),
    QuantizerEntry("dorefa", DorefaParams, _dorefa, "DoReFa-Net weights (tanh + uniform)",
                   "uniform", "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks "
                   "with Low Bitwidth Gradients"),
    QuantizerEntry("uniform", UniformParams, _uniform,
                   "Uniform b-bit, symmetric/affine, per tensor/channel, calibrated", "uniform"),
    QuantizerEntry("kmeans", KmeansParams, _kmeans,
                   "Optimal 1-D k-means levels (data-free, 004)", "cluster", _BEQ),
    QuantizerEntry("qn", QnParams, _qn,
                   "Quantization Networks hard staircase, k-means biases (post-training)", "qn",
                   "Quantization Networks"),
    QuantizerEntry("log", LogParams, _log, "Logarithmic: power-of-two levels x real scale",
                   "cluster", _BEQ),
):
    register(_e)
