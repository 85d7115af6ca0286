"""lowbit.quant: weight quantizers as pure functions on tensors, and their registry.

Families: power-of-two (:mod:`~lowbit.quant.pot`: LBW exact / ternary / mu, INQ; LBW exact per
channel with ``lbw_exact_channels`` and for a whole model in one pass with ``lbw_exact_many``),
scaled sign (:mod:`~lowbit.quant.ternary`: TWN, binary), uniform
(:mod:`~lowbit.quant.uniform`: calibrated uniform, DoReFa), Quantization Networks
(:mod:`~lowbit.quant.sigmoid`), data-free non-uniform
(:mod:`~lowbit.quant.cluster`: k-means, log). ``get(name)`` / ``list()`` name them for configs.
The uniform quantizer function is exported as ``uniform_quantize`` so that the submodule
``lowbit.quant.uniform`` stays reachable as an attribute.
"""

from lowbit.quant.cluster import kmeans_1d, kmeans_quantize, log_quantize
from lowbit.quant.pot import (
    inq,
    lbw_approx,
    lbw_approx_many,
    lbw_errors,
    lbw_exact,
    lbw_exact_channels,
    lbw_exact_many,
    lbw_ternary_sorted,
    pot_round,
)
from lowbit.quant.registry import QuantizerEntry, QuantResult, get, list_quantizers, quantize
from lowbit.quant.sigmoid import hard_staircase, init_biases, soft_staircase
from lowbit.quant.ternary import binary, twn
from lowbit.quant.uniform import calibrate, dorefa, fake_quant
from lowbit.quant.uniform import uniform as uniform_quantize

list = list_quantizers  # noqa: A001  (the issue's `lowbit.quant.list()`)

__all__ = [
    "QuantResult",
    "QuantizerEntry",
    "binary",
    "calibrate",
    "dorefa",
    "fake_quant",
    "get",
    "hard_staircase",
    "init_biases",
    "inq",
    "kmeans_1d",
    "kmeans_quantize",
    "lbw_approx",
    "lbw_approx_many",
    "lbw_errors",
    "lbw_exact",
    "lbw_exact_channels",
    "lbw_exact_many",
    "lbw_ternary_sorted",
    "list",
    "list_quantizers",
    "log_quantize",
    "pot_round",
    "quantize",
    "soft_staircase",
    "twn",
    "uniform_quantize",
]
