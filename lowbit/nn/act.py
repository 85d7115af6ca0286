"""Activation quantizers as modules.

* :class:`UniformActQuant` covers three recipes:

  - ``mode="uniform"``: b-bit uniform fake quantization of a range ``[lo, hi]`` from
    calibration data (:func:`lowbit.nn.calibrate`) or, never calibrated, from the first batch;
    affine codes ``[0, 2**b - 1]`` (``symmetric=False``, zero point ``round(-lo/scale)``) or
    signed symmetric codes;
  - ``mode="pact"``: PACT: ``clamp(x, 0, c)`` (``[-c, c]`` when the first batch has negative
    values) with a learnable clip ``c`` (gradient 1 where ``x`` is clipped), then b-bit uniform
    with scale ``c / (2**b - 1)`` (``c / (2**(b-1) - 1)`` signed) and straight-through rounding;
  - ``mode="clip"``: the clipping-based method (002): the PACT clamp while training in float
    (:attr:`~UniformActQuant.quantize` False), b-bit uniform from the clip value once switched
    on (:func:`lowbit.nn.ptq_from_clips`, :func:`lowbit.nn.convert`).

* :class:`QNActQuant`: Quantization Networks activations: ``alpha * sum_i s_i sigmoid(T (beta x
  - b_i))`` over unsigned levels ``0..2**b-1``; learnable alpha/beta; biases by clustering.

Rounding is ``torch.round`` (half to even); every forward keeps the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowbit.nn.quantizers import adopt_saved_shapes
from lowbit.quant.sigmoid import init_biases, levels_for_bits, soft_stairs
from lowbit.quant.uniform import calibrate as _calibrate
from lowbit.quant.uniform import fake_quant, qrange, range_to_qparams

__all__ = ["UniformActQuant", "QNActQuant", "ActObserver"]

ACT_MODES = ("uniform", "pact", "clip")


class ActObserver:
    """Collects activation statistics: exact running min/max plus a random subsample
    (at most ``max_samples`` values, ``per_batch`` from each call) for the calibrators that
    need a distribution (percentile, mse, kl) and for QN's clustering."""

    def __init__(self, max_samples: int = 1 << 20, per_batch: int = 1 << 16, seed: int = 0):
        self.max_samples, self.per_batch = max_samples, per_batch
        self.gen = torch.Generator().manual_seed(seed)
        self.lo = float("inf")
        self.hi = float("-inf")
        self.samples: list[Tensor] = []
        self.count = 0

    def update(self, x: Tensor) -> None:
        v = x.detach().reshape(-1).float()
        if v.numel() == 0:
            return
        if not bool(torch.isfinite(v).all()):
            raise ValueError("activation contains NaN/Inf during calibration")
        mn, mx = torch.aminmax(v)
        self.lo, self.hi = min(self.lo, float(mn)), max(self.hi, float(mx))
        if v.numel() > self.per_batch:
            idx = torch.randint(v.numel(), (self.per_batch,), generator=self.gen).to(v.device)
            v = v[idx]
        self.samples.append(v.cpu())
        self.count += v.numel()
        if self.count > 2 * self.max_samples:
            self._shrink()

    def _shrink(self) -> None:
        allv = torch.cat(self.samples)
        idx = torch.randperm(allv.numel(), generator=self.gen)[: self.max_samples]
        self.samples, self.count = [allv[idx]], int(min(self.max_samples, allv.numel()))

    def values(self) -> Tensor:
        if not self.samples:
            raise ValueError("no activation was observed")
        if self.count > self.max_samples:
            self._shrink()
        return torch.cat(self.samples)


class UniformActQuant(nn.Module):
    """b-bit uniform activation quantizer (``mode``: ``uniform`` | ``pact`` | ``clip``).

    Args:
        bits: 2..8. mode: see the module docstring. symmetric: ``uniform`` only.
        calibrator: range estimator for ``uniform`` and for the first-batch initialisation
            (``minmax | percentile | mse | kl``).
        clip: initial clip for ``pact``/``clip`` (None: from the first batch).
    Shapes: any input; output has its shape and dtype. Attributes ``enabled`` (False: the
    identity), ``observing`` (True: collect statistics, return the input; see
    :func:`lowbit.nn.calibrate`), ``quantize`` (False: clamp only).
    """

    def __init__(self, bits: int = 8, mode: str = "uniform", symmetric: bool = False,
                 calibrator: str = "minmax", clip: float | None = None) -> None:
        super().__init__()
        if mode not in ACT_MODES:
            raise ValueError(f"mode must be one of {ACT_MODES}, got {mode!r}")
        qrange(bits, symmetric)  # validates bits
        self.bits, self.mode = int(bits), mode
        self.symmetric, self.calibrator = symmetric, calibrator
        self.learnable = mode in ("pact", "clip")
        if self.learnable:
            self.clip = nn.Parameter(torch.tensor(float(clip) if clip else 1.0))
            self.register_buffer("signed", torch.tensor(False))
        else:
            self.register_buffer("lo", torch.tensor(0.0))
            self.register_buffer("hi", torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(clip is not None and self.learnable))
        self.enabled = True
        self.observing = False
        self.quantize = mode != "clip"
        self.observer: ActObserver | None = None
        self.qname = ""

    # ------------------------------------------------------------------ ranges

    def _err(self, msg: str) -> ValueError:
        return ValueError(f"activation quantizer {self.qname!r}: {msg}" if self.qname else msg)

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Set the clip range (for ``pact``/``clip``: ``c = max(hi, -lo)``, signed if lo < 0)."""
        if not (torch.isfinite(torch.tensor([lo, hi])).all()):
            raise self._err(f"non-finite range ({lo}, {hi})")
        if self.learnable:
            self.signed.fill_(lo < 0)
            c = max(hi, -lo) if lo < 0 else hi
            self.clip.fill_(c if c > 0 else 1.0)
        else:
            self.lo.fill_(min(lo, 0.0))
            self.hi.fill_(max(hi, 0.0))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _range_from(self, x: Tensor) -> tuple[float, float]:
        v = x.detach().reshape(-1).float()
        if self.calibrator == "minmax" or v.numel() < 2:
            return float(v.min()), float(v.max())
        lo, hi = _calibrate(v, self.bits, self.symmetric, self.calibrator)
        if self.calibrator == "kl" and not self.symmetric:
            lo = torch.clamp(lo, min=float(v.min()))
        return float(lo), float(hi)

    def qparams(self) -> tuple[Tensor, Tensor, int, int]:
        """``(scale, zero_point, qmin, qmax)`` of the current range (0-dim float tensors)."""
        if self.learnable:
            signed = bool(self.signed)
            qmin, qmax = qrange(self.bits, signed)
            c = self.clip.detach()
            if not bool(torch.isfinite(c)) or float(c) <= 0:
                raise self._err(f"clip must be finite and > 0, got {float(c)}")
            return c / qmax, torch.zeros_like(c), qmin, qmax
        qmin, qmax = qrange(self.bits, self.symmetric)
        scale, zp = range_to_qparams(self.lo, self.hi, self.bits, self.symmetric)
        return scale, zp, qmin, qmax

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.observing:
            if self.observer is None:
                self.observer = ActObserver()
            self.observer.update(x)
            return x
        if not bool(self.initialized):
            self.set_range(*self._range_from(x))
        if self.learnable:
            c = self.clip.to(x.dtype)
            xc = torch.minimum(x, c)
            xc = torch.maximum(xc, -c) if bool(self.signed) else torch.clamp(xc, min=0)
            if not self.quantize:
                return xc
            scale, zp, qmin, qmax = self.qparams()
            q = fake_quant(xc.detach(), scale, zp, qmin, qmax)
            return xc + (q - xc).detach()
        scale, zp, qmin, qmax = self.qparams()
        lo, hi = self.lo.to(x.dtype), self.hi.to(x.dtype)
        xc = torch.minimum(torch.maximum(x, lo), hi)
        q = fake_quant(xc.detach(), scale, zp, qmin, qmax)
        return xc + (q - xc).detach()

    @torch.no_grad()
    def finish_observing(self) -> None:
        """Set the range from the collected statistics (calibration) and stop observing."""
        obs, self.observer, self.observing = self.observer, None, False
        if obs is None or obs.count == 0:
            raise self._err("calibration saw no activations (is it on the forward path?)")
        if self.calibrator == "minmax":
            lo, hi = obs.lo, obs.hi
        else:
            v = obs.values()
            lo_t, hi_t = _calibrate(v, self.bits, self.symmetric, self.calibrator)
            lo, hi = float(lo_t), float(hi_t)
            if self.calibrator == "kl" and not self.symmetric:
                lo = max(lo, obs.lo)
        self.set_range(lo, hi)

    def extra_repr(self) -> str:
        if self.learnable:
            rng = f"clip={self.clip.item():.4g}"
        else:
            rng = f"range=[{float(self.lo):.4g}, {float(self.hi):.4g}]"
        return f"mode={self.mode!r}, bits={self.bits}, {rng}, quantize={self.quantize}"


class QNActQuant(nn.Module):
    """Quantization Networks activation quantizer.

    ``y = alpha * (sum_i s_i sigmoid(T (beta x - b_i)) - o)``, levels ``0..2**b-1`` (signed
    ``levels_for_bits(b)`` if the first batch has negative values), ``o = -q_0``. Initialised
    from the first batch (or :func:`lowbit.nn.calibrate`) as the paper's public code: the range
    ``[lo, hi]`` drops the ``outlier`` fraction at each end, ``beta = q_max / hi``,
    ``alpha = 1 / beta``, biases the midpoints of a k-means of ``beta x`` (``bias_init=
    "kmeans"``) or of neighbouring levels (``"uniform"``: the hard staircase is then b-bit
    uniform quantization, ``alpha * clamp(round(beta x), q_0, q_max)``). Training mode: soft
    staircase at ``temperature`` (forward) with the gradient of temperature
    ``backward_temperature`` (default 1 as the public code; None: exact), both evaluated by
    the windowed :func:`lowbit.quant.sigmoid.soft_stairs` (only the biases within ``17 / T`` of
    ``beta x`` are computed, so 8 bits costs a few passes, not 255). Eval mode or
    :attr:`hard`: the hard staircase (a point on a bias goes up). Shapes: any input; output
    has its shape and dtype (half types computed in float32).
    """

    def __init__(self, bits: int = 2, backward_temperature: float | None = 1.0,
                 outlier: float = 1e-3, bias_init: str = "kmeans") -> None:
        super().__init__()
        if bias_init not in ("kmeans", "uniform"):
            raise ValueError(f"bias_init must be 'kmeans' or 'uniform', got {bias_init!r}")
        self.bias_init = bias_init
        self.bits = int(bits)
        self.register_buffer("levels", levels_for_bits(bits, signed=False))
        self.register_buffer("biases", (self.levels[1:] + self.levels[:-1]) / 2)
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(1.0))
        self.backward_temperature = backward_temperature
        self.outlier = outlier
        self.enabled = True
        self.observing = False
        self.hard = False
        self.observer: ActObserver | None = None
        self.qname = ""

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Initialise levels' sign, beta, alpha and the biases from activation samples."""
        v = x.detach().reshape(-1).float().cpu()
        if v.numel() > (1 << 16):
            v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:1 << 16]]
        if v.numel() == 0:
            raise ValueError(f"activation quantizer {self.qname!r}: no data to initialise from")
        signed = bool(v.min() < 0)
        self.levels = levels_for_bits(self.bits, signed=signed).to(self.levels.device)
        if v.numel() > 10 and self.outlier > 0:
            lo, hi = torch.quantile(v, torch.tensor([self.outlier, 1 - self.outlier])).tolist()
            v = v.clamp(lo, hi)
        amax = float(v.abs().max())
        qmax = float(self.levels[-1])
        beta = qmax / amax if amax > 0 else 1.0
        self.beta.fill_(beta)
        self.alpha.fill_(1.0 / beta)
        if self.bias_init == "uniform":
            lv = self.levels
            self.biases = ((lv[1:] + lv[:-1]) / 2).float()
        else:
            self.biases = init_biases(v, self.levels.cpu(), beta).to(self.levels.device)
        self.initialized.fill_(True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kw) -> None:
        # the levels' sign (and so their count) is chosen from the first data: a signed input
        # has 2**b - 1 levels, an unsigned one 2**b
        adopt_saved_shapes(self, state_dict, prefix, ("levels", "biases"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    def finish_observing(self) -> None:
        obs, self.observer, self.observing = self.observer, None, False
        if obs is None or obs.count == 0:
            raise ValueError(f"activation quantizer {self.qname!r}: calibration saw no data")
        self.init_from(obs.values())

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.observing:
            if self.observer is None:
                self.observer = ActObserver()
            self.observer.update(x)
            return x
        if not bool(self.initialized):
            self.init_from(x)
        if not (torch.isfinite(self.alpha) and torch.isfinite(self.beta)):
            raise ValueError(f"activation quantizer {self.qname!r}: alpha/beta non-finite")
        steps = (self.levels[1:] - self.levels[:-1]).to(x.dtype)
        o = float(-self.levels[0])
        z = self.beta.to(x.dtype) * x
        if self.training and not self.hard:
            t = float(self.temperature)
            tb = t if self.backward_temperature is None else float(self.backward_temperature)
            y = soft_stairs(z, self.biases, steps, t, tb)
        else:
            idx = torch.bucketize(z.detach().contiguous(), self.biases.to(x.dtype), right=True)
            cum = torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])
            y = cum[idx]
            return self.alpha.detach().to(x.dtype) * (y - o)
        return self.alpha.to(x.dtype) * (y - o)

    def extra_repr(self) -> str:
        return (f"mode='qn', bits={self.bits}, T={float(self.temperature):g}, "
                f"bias_init={self.bias_init!r}")
