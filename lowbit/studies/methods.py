"""The method catalogue of the studies: every quantization method ``lowbit compare`` (and the other
studies) can run, with its kind, default bits, bit range, summary and paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from lowbit.quant._common import check_bits as check_width
from lowbit.registry import unknown_name
from lowbit.studies.mixed import plan_mixed

__all__ = [
    "Method", "METHODS", "OPT_IN", "DEFAULT_METHODS", "check_bits", "methods_markdown",
    "parse_methods",
]


@dataclass(frozen=True)
class Method:
    """A named quantization recipe of the comparison.

    ``kind``: ``"qat"`` (fine-tuned from FP32 with the budget), ``"ptq"`` (post-training,
    activation ranges calibrated on training images when ``calibrate``) or ``"datafree"``
    (weights only, no data). ``bits``: default bit-width; ``bit_range``: the widths it accepts
    (a requested width outside it falls back to ``bits``); both default to the recipe
    method's entry of :mod:`lowbit.nn.methods` (its parameter dataclass's ``BITS``), so a
    study row only sets them to differ on purpose (the ``qn`` rows default to 3 bits).
    ``recipe(bits)`` returns the :meth:`lowbit.nn.Recipe.from_dict` mapping. ``qn_phases``:
    Quantization Networks' training phases as shares of the QAT budget
    (``(("weights", 0.3), ...)``, turned into
    ``train.qn_phases`` in epochs); QN temperatures (T0 = 20 per epoch) and INQ's portions are
    driven by the engine for every row that has such quantizers
    (:class:`lowbit.train.quant_schedule.QuantClock`).
    ``penalty``: lambda of 002's extra loss term (``train.quant_penalty``) during QAT.
    ``svd_energy``: before quantizing, replace every ``nn.Linear`` by its truncated SVD keeping
    this share of the singular values' energy (002's compression of the fully connected head;
    a no-op for models without Linear layers, such as R-FCN). ``reevaluate``: the row's
    mAP must come from the converted model, not the training run's final evaluation (needed
    when training runs a relaxation, e.g. 002's clip-only forward, and the b-bit rounding
    only happens at conversion); every QAT row is now scored on its converted model (that
    is where its detections files come from; the run's own figure is ``train_final_mAP``),
    so the flag only remains part of the row's stamp. ``plan``: before QAT,
    ``plan(fp32_model, calib_batches, bits) -> (recipe dict, info)`` turns ``recipe(bits)``
    into the recipe that is trained (e.g. per-layer bits from a sensitivity analysis); the
    info lands in the row (cached under ``OUT/runs`` so a rerun does not measure again).
    """

    name: str
    kind: str
    summary: str
    paper: str
    recipe: Callable[[int], dict[str, Any]]
    bits: int | None = None
    bit_range: tuple[int, int] | None = None
    calibrate: bool = False
    qn_phases: tuple[tuple[str, float], ...] | None = None
    penalty: float = 0.0
    svd_energy: float | None = None
    reevaluate: bool = False
    plan: Callable[[nn.Module, list[list[Tensor]], int],
                   tuple[dict[str, Any], dict[str, Any]]] | None = None

    def __post_init__(self) -> None:
        # default width and range: the recipe method's entry in the nn method registry
        # (lowbit.nn.methods: the one place a method's bits are decided and validated), unless
        # this study row sets its own
        if self.bits is None or self.bit_range is None:
            from lowbit.nn import methods as nn_methods  # lowbit.nn registers every method

            entry = nn_methods.get(self.recipe(self.bits or 4)["method"])
            if self.bit_range is None:
                object.__setattr__(self, "bit_range", tuple(entry.bit_range))
            if self.bits is None:
                object.__setattr__(self, "bits", int(entry.default_bits))
        lo, hi = self.bit_range  # type: ignore[misc]
        check_width(self.bits, lo, hi, f"method {self.name!r}: default bits")

    def widths(self, requested: Sequence[int] | None) -> list[int]:
        """The bit-widths of this method's rows for a ``--bits`` request (None: default): the
        requested widths in ``bit_range``; when none is, the method's default width (a width no
        method accepts is refused by :func:`check_bits` before)."""
        if not requested:
            return [self.bits]
        ok = [b for b in requested if self.bit_range[0] <= b <= self.bit_range[1]]
        return sorted(set(ok)) or [self.bits]


def check_bits(bits: Sequence[int] | None, methods: Sequence[Method]) -> None:
    """ValueError naming any requested width that none of ``methods`` accepts (e.g. 0, 99)."""
    for b in bits or ():
        if not any(m.bit_range[0] <= b <= m.bit_range[1] for m in methods):
            lo = min(m.bit_range[0] for m in methods)
            hi = max(m.bit_range[1] for m in methods)
            raise ValueError(f"--bits {b}: no chosen method accepts it (widths {lo}..{hi})")


def _clip(b: int, learnable: bool) -> dict[str, Any]:
    """002's recipe: b-bit weights of every conv and fully connected layer from a (learnable or
    calibrated) clip, 8-bit activation clips initialised MSE-optimally."""
    return {"method": "clip", "bits": b, "params": {"learnable": learnable},
            "layers": ["conv", "linear"],
            "act": {"method": "clip", "bits": 8, "calibrator": "mse"}}


def _qn_a8(b: int, bias_init: str) -> dict[str, Any]:
    """QN weights at b bits + 8-bit QN activations over the data's min/max range."""
    return {"method": "qn", "bits": b,
            "act": {"method": "qn", "bits": 8, "bias_init": bias_init, "outlier": 0.0}}


def _plan_mixed(model: nn.Module, calib: list[list[Tensor]], bits: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    return plan_mixed(model, calib, bits)


def _plan_dorefa(model: nn.Module, calib: list[list[Tensor]], bits: int
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """DoReFa's recipe for this model: every Conv2d that no BatchNorm follows stays float
    (found by :func:`lowbit.nn.find_conv_bn_pairs`)."""
    from lowbit.nn import find_conv_bn_pairs

    paired = {c for c, _ in find_conv_bn_pairs(model)}
    loose = sorted(n for n, m in model.named_modules()
                   if isinstance(m, nn.Conv2d) and n not in paired)
    return ({"method": "dorefa", "bits": int(bits), "exclude": loose},
            {"dorefa_float_layers": loose})


_QN_A8_PHASES: tuple[tuple[str, float], ...] = (("weights", 0.3), ("activations", 0.3),
                                                ("both", 0.4))


#: Every method of the comparison, in table order. README lists this table.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lbw-exact", "qat",
           "power-of-two weights {0, +-2^(s-n+1..s)}, exact least-squares scale (Thm 2.1), "
           "projected SGD", "001 LBW-Net",
           lambda b: {"method": "lbw-exact", "bits": b}),
    Method("lbw-exact-ch", "qat",
           "lbw-exact with one power-of-two scale per output channel", "001 LBW-Net "
           "(per-channel variant)",
           lambda b: {"method": "lbw-exact", "bits": b, "params": {"per_channel": True}}),
    Method("lbw-mu", "qat",
           "LBW-Net's semi-analytical scheme with mu = 3/4 max|W|, 4 partial terms "
           "(eq. 2.8-2.9)", "001 LBW-Net",
           lambda b: {"method": "lbw-approx", "bits": b,
                      "params": {"mu_ratio": 0.75, "partial_terms": 4}}),
    Method("twn", "qat",
           "ternary {-a, 0, a}, threshold 0.7 mean|W|", "TWN",
           lambda b: {"method": "twn", "bits": 2}),
    Method("inq", "qat",
           "Incremental Network Quantization: per layer the largest-|w| 50%, 75%, 87.5%, 100% "
           "of the weights are frozen on INQ's power-of-two grid (exponents from max|W| at the "
           "start) in stages spread over the budget, the float rest re-trained in between; "
           "the last quarter trains only BN/biases", "INQ",
           lambda b: {"method": "inq-incremental", "bits": b}),
    Method("dorefa", "qat",
           "DoReFa weights (tanh, normalised to [-1, 1], uniform) on every conv followed by a "
           "BatchNorm; the convs without one (R-FCN's RPN and head, YOLO's and SSD's output "
           "convs) stay float: DoReFa drops each layer's scale, which only a following "
           "BatchNorm restores", "DoReFa-Net",
           lambda b: {"method": "dorefa", "bits": b}, plan=_plan_dorefa),
    Method("uniform-ptq", "ptq",
           "uniform symmetric per-channel min/max weights + uint8 min/max activations "
           "calibrated on training images", "002 baseline",
           lambda b: {"method": "uniform", "bits": b, "params": {"per_channel": True},
                      "layers": ["conv", "linear"],
                      "act": {"method": "uniform", "bits": 8, "calibrator": "minmax"}},
           calibrate=True),
    Method("uniform-ptq-tensor", "ptq",
           "uniform-ptq with one min/max range per weight tensor: 002's contrast without "
           "clipping at the clip methods' granularity (their weight clip is per tensor)",
           "002 baseline",
           lambda b: {"method": "uniform", "bits": b, "params": {"per_channel": False},
                      "layers": ["conv", "linear"],
                      "act": {"method": "uniform", "bits": 8, "calibrator": "minmax"}},
           calibrate=True),
    Method("clip-ptq", "ptq",
           "clipping-based PTQ: MSE-optimal weight clip and activation clips, b-bit uniform "
           "from the clip values (no clip training here)", "002",
           lambda b: _clip(b, learnable=False),
           calibrate=True),
    Method("clip-qat", "qat",
           "002 in full: fine-tune with learnable weight/activation clips and the extra loss "
           "term (lambda = 1, train.quant_penalty), then b-bit uniform from the clip values",
           "002",
           lambda b: _clip(b, learnable=True),
           penalty=1.0, reevaluate=True),
    Method("clip-ptq-svd", "ptq",
           "clip-ptq after replacing each fully connected layer by its truncated SVD (90% of "
           "the singular-value energy; 002's FC compression, Faster R-CNN's fc6/fc7)", "002",
           lambda b: _clip(b, learnable=False),
           calibrate=True, svd_energy=0.9),
    Method("qn", "qat",
           "Quantization Networks: soft staircase of sigmoids, learnable alpha/beta, "
           "temperature annealed (weights only)", "003",
           lambda b: {"method": "qn", "bits": b}, bits=3),
    Method("qn-a8", "qat",
           "Quantization Networks weights as `qn` plus 8-bit QN activations (a 255-sigmoid "
           "staircase, evaluated in a window around each value) at every quantized layer's "
           "input (range = min/max of the data: the public code's 0.1% outlier clipping cost "
           "2.7 mAP points on SSD), trained in 003's three phases over the budget: weights "
           "30%, activations 30% (weights held on their hard staircase), both 40%", "003",
           lambda b: _qn_a8(b, "kmeans"), bits=3, qn_phases=_QN_A8_PHASES),
    Method("qn-a8-uniform", "qat",
           "qn-a8 with the activation staircase's steps at the midpoints of uniform levels "
           "(bias_init uniform) instead of k-means: the hard staircase is plain 8-bit uniform "
           "quantization, deployable as uint8", "003 variant",
           lambda b: _qn_a8(b, "uniform"), bits=3, qn_phases=_QN_A8_PHASES),
    Method("kmeans-df", "datafree",
           "optimal 1-D clustering (k-means) of each layer's weights, no data", "004",
           lambda b: {"method": "kmeans", "bits": b}),
    Method("mixed", "qat",
           "LBW exact with per-layer bits in {2, 3, 4, 6, 8} (and b) chosen by sensitivity: "
           "each conv quantized alone, cost = relative MSE of the raw detector outputs against "
           "FP32 on 8 calibration images; exact DP minimising the summed cost within the conv "
           "weight memory of uniform b-bit LBW exact; then QAT", "001 + mixed precision",
           lambda b: {"method": "lbw-exact", "bits": b}, plan=_plan_mixed),
)}


#: ``clip-qat``, ``clip-ptq-svd``, ``qn-a8(-uniform)``, ``uniform-ptq-tensor`` and
#: ``lbw-exact-ch`` are opt-in (``--methods``): QAT runs on top of ``clip-ptq`` / ``qn``, the
#: SVD row only differs from ``clip-ptq`` on models with Linear layers, the per-tensor row is
#: 002's contrast, and the per-channel LBW row is a variant of ``lbw-exact``.
OPT_IN: tuple[str, ...] = ("clip-qat", "clip-ptq-svd", "qn-a8", "qn-a8-uniform",
                           "uniform-ptq-tensor", "lbw-exact-ch")


DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in OPT_IN)


def methods_markdown() -> str:
    """The method table as markdown (for README / ``lowbit compare --list``)."""
    lines = ["| method | kind | default bits | what | from |", "|---|---|---:|---|---|"]
    for m in METHODS.values():
        what = m.summary.replace("|", "\\|")
        lines.append(f"| `{m.name}` | {m.kind} | {m.bits} | {what} | {m.paper} |")
    return "\n".join(lines)


def parse_methods(names: str | Sequence[str] | None) -> list[Method]:
    """Methods by name (comma-separated or a list; None: the defaults); ValueError naming an
    unknown one with the known names."""
    if names is None:
        return [METHODS[n] for n in DEFAULT_METHODS]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if n not in METHODS:
            raise unknown_name("method", n, METHODS)
        out.append(METHODS[n])
    if not out:
        raise ValueError("no method given")
    return out


#: 003's three phases as shares of the QAT budget (``qn-a8`` rows)
