"""lowbit.nn: quantized layers, model surgery and quantization-aware training.

* layers: :class:`QuantConv2d`, :class:`QuantLinear` and, for any other conv / linear class
  (1d/2d/3d, transposed, subclasses with their own forward), :func:`quantize_module` (float
  weight = the Parameter, quantized forward, straight-through gradient: LBW-Net's projected SGD
  with any optimizer);
* coverage: :func:`coverage` (what prepare quantized, what it left float and why);
* activation quantizers: :class:`UniformActQuant` (uniform / PACT / clipping), :class:`QNActQuant`;
* surgery: :func:`prepare` (from a :class:`Recipe`), :func:`convert` (frozen codes),
  :func:`describe`, :func:`weight_memory`, :func:`fold_bn`, :func:`svd_compress`;
* training: :class:`QNSchedule` (Quantization Networks temperature and phases),
  :func:`quant_penalty` (extra loss against the quantization drop), :func:`calibrate`
  (post-training activation ranges), :func:`ptq_from_clips` (002's 8-bit step);
* mixed precision: :func:`sensitivity`, :func:`assign_bits`;
* INQ: :class:`INQWeightQuant` (incremental partition onto a power-of-two grid, recipe method
  ``"inq-incremental"``) and :class:`INQSchedule` (training progress -> portion);
* methods: :mod:`lowbit.nn.methods`, the one registry of recipe weight methods (module class,
  parameter dataclass, default bits, bit range, overhead, paper); the quantizer modules
  register themselves when imported below, so every method is known once ``lowbit.nn`` is.
"""

from lowbit.nn.act import QNActQuant, UniformActQuant
from lowbit.nn.coverage import CoverageReport, CoverageWarning, coverage
from lowbit.nn.fold import find_conv_bn_pairs, fold_bn
from lowbit.nn.inq import INQParams, INQSchedule, INQWeightQuant, inq_portion
from lowbit.nn.layers import (
    QuantConv2d,
    QuantLinear,
    QuantMixin,
    channel_axis,
    quant_layers,
    quantize_module,
    quantize_step,
    weight_layer_kind,
)
from lowbit.nn.mixed import Sensitivity, assign_bits, sensitivity
from lowbit.nn.quantizers import (
    ClipParams,
    ClipWeightQuant,
    QNWeightQuant,
    RegistryWeightQuant,
    WeightQuantizer,
    make_weight_quantizer,
)
from lowbit.nn.recipe import ActRecipe, LayerConfig, Recipe
from lowbit.nn.surgery import (
    LayerTable,
    act_quantizers,
    convert,
    describe,
    layer_bytes,
    prepare,
    ptq_from_clips,
    weight_memory,
)
from lowbit.nn.svd import SVDLinear, svd_compress
from lowbit.nn.training import QNSchedule, calibrate, quant_penalty

__all__ = [
    "ActRecipe",
    "ClipParams",
    "ClipWeightQuant",
    "CoverageReport",
    "CoverageWarning",
    "INQParams",
    "INQSchedule",
    "INQWeightQuant",
    "LayerConfig",
    "LayerTable",
    "QNActQuant",
    "QNSchedule",
    "QNWeightQuant",
    "QuantConv2d",
    "QuantLinear",
    "QuantMixin",
    "Recipe",
    "RegistryWeightQuant",
    "SVDLinear",
    "Sensitivity",
    "UniformActQuant",
    "WeightQuantizer",
    "act_quantizers",
    "assign_bits",
    "calibrate",
    "channel_axis",
    "convert",
    "coverage",
    "describe",
    "find_conv_bn_pairs",
    "fold_bn",
    "inq_portion",
    "layer_bytes",
    "make_weight_quantizer",
    "prepare",
    "ptq_from_clips",
    "quant_layers",
    "quant_penalty",
    "quantize_module",
    "quantize_step",
    "sensitivity",
    "svd_compress",
    "weight_layer_kind",
    "weight_memory",
]
