"""ONNX export: FP32 network and an int8 QDQ model whose weights are lowbit's values.

* :func:`export_onnx` — ``torch.onnx.export(..., dynamo=False)``, opset 17. The network only:
  a detector's post-processing stays in PyTorch float. Quantized layers export their frozen
  weight values as FP32 initializers; activation fake-quantizers are switched off while
  exporting (the FP32 file is the float network; the int8 file does activation quantization).
* :func:`export_onnx_int8` — ``onnxruntime.quantization.quantize_static`` with an
  :class:`Int8Config` (default: QDQ format, activations uint8 calibrated with min/max on the
  given batches, weights int8 symmetric per output channel: "u8s8", the combination
  onnxruntime's x86 kernels run fastest; docs/deployment.md has the per-option measurements),
  then every weight whose slices along its channel axis (0 for Conv / Gemm, 1 for
  ConvTranspose) are signed powers of two times a per-slice factor (lowbit's "pot" layers, per
  tensor or per channel, with the BatchNorm the exporter folds into them) is re-quantized
  exactly: ``scale[o] = top[o] * 2**-6`` with ``top[o]`` the slice's largest magnitude, so
  ``value / scale = +-2**(6 - d)`` is an exact int8 for every magnitude within ``2**6`` of the
  largest (all codes for bits <= 4: ``n <= 4`` magnitudes; for 5-8-bit LBW the magnitudes
  below ``2**(e_max-6)`` round to 0 or +-1: ``pot-inexact``). The FP32 intermediate the
  quantizer reads goes to a temporary folder (deleted) unless ``fp32_path`` is given.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lowbit.nn.act import QNActQuant, UniformActQuant

__all__ = ["export_onnx", "export_onnx_int8", "quantize_onnx_int8", "Int8Config", "DEFAULT_INT8",
           "ort_session", "run_onnx", "OPSET", "OPT_LEVELS"]

OPSET = 17


@contextlib.contextmanager
def _acts_off(model: nn.Module) -> Iterator[None]:
    mods = [m for m in model.modules() if isinstance(m, (UniformActQuant, QNActQuant))]
    old = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m, e in zip(mods, old):
            m.enabled = e


def export_onnx(
    model: nn.Module, example: Tensor, path: str | os.PathLike[str], *,
    output_names: Sequence[str] | None = None, dynamic_batch: bool = True,
    dynamic_hw: bool = False, metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``model`` (eval mode; ``model(example)`` returns a Tensor or tuple of Tensors)
    to FP32 ONNX at ``path``; checks it with ``onnx.checker``. Input name ``"input"``
    (``Tensor[N, C, H, W]`` float32), outputs ``output_names`` (default ``out0, out1, ...``).
    ``dynamic_hw``: input and outputs also take any ``H, W`` (fully convolutional networks);
    ``metadata``: strings stored in the file's ``metadata_props``."""
    import onnx

    model = model.eval()
    with torch.no_grad(), _acts_off(model):
        out = model(example)
        n_out = len(out) if isinstance(out, (tuple, list)) else 1
        names = list(output_names or [f"out{i}" for i in range(n_out)])
        dims = ({0: "batch"} if dynamic_batch else {}) | (
            {2: "height", 3: "width"} if dynamic_hw else {})
        axes = {k: dict(dims) for k in ["input", *names]} if dims else None
        if axes and dynamic_hw:  # output maps have their own (strided) sizes
            for k in names:
                axes[k] = {**({0: "batch"} if dynamic_batch else {}),
                           2: f"{k}_height", 3: f"{k}_width"}
        torch.onnx.export(model, (example,), str(path), input_names=["input"],
                          output_names=names, opset_version=OPSET, dynamic_axes=axes,
                          dynamo=False)
    m = onnx.load(str(path))
    if metadata:
        _set_metadata(m, metadata)
        onnx.save(m, str(path))
    onnx.checker.check_model(m, full_check=True)
    return Path(path)


def _set_metadata(model: Any, metadata: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX ModelProto."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(k), str(v)


class _Reader:
    """onnxruntime CalibrationDataReader over a list of ``Tensor[N, C, H, W]`` batches."""

    def __init__(self, batches: Sequence[Tensor]) -> None:
        self._it = iter([{"input": b.detach().float().cpu().numpy()} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _exact_pot(values: np.ndarray, per_row: bool, axis: int = 0
               ) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``(int8 codes, scale, exact)`` when every slice along ``axis`` (0 for Conv / Gemm
    weights, 1 for ConvTranspose; the whole tensor if not ``per_row``) is a multiple
    ``f * (+-2**-d)`` of its largest magnitude ``f`` (a power-of-two weight, per tensor or per
    channel ``2**s_c``, possibly with a folded BatchNorm factor per output channel); None
    otherwise. ``scale`` is ``float32[C]`` (per row) or 0-dim."""
    v = np.moveaxis(values.astype(np.float64), axis, 0)
    rows = v.reshape(v.shape[0], -1) if per_row else v.reshape(1, -1)
    top = np.abs(rows).max(axis=1, keepdims=True)
    if np.any(top == 0) or not np.all(np.isfinite(top)):
        return None
    mant, _ = np.frexp(rows / top)
    if not np.all((np.abs(mant) == 0.5) | (rows == 0)):
        return None
    scale = top[:, 0] * 2.0 ** -6
    q = np.round(rows / scale[:, None])
    exact = bool(np.array_equal(q * scale[:, None], rows))
    codes = np.moveaxis(np.clip(q, -127, 127).astype(np.int8).reshape(v.shape), 0, axis)
    return codes, scale.astype(np.float32) if per_row else scale[:1].reshape(()), exact


def _constants_to_initializers(model: Any) -> None:
    """Move ``Constant`` tensors (non-persistent buffers such as ``frozen_weight``) into graph
    initializers so that the quantizer sees them as weights."""
    from onnx import helper

    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and \
                node.attribute[0].name == "value":
            t = helper.get_attribute_value(node.attribute[0])
            t.name = node.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _unshare_initializers(model: Any) -> None:
    """Give every node input that reads an initializer its own copy.

    ``torch.onnx.export`` deduplicates equal initializers (e.g. all-zero conv biases) and
    routes them through ``Identity`` nodes or shares one tensor between convs. The quantizer
    then sees a bias that is not an initializer (it leaves it float, and onnxruntime cannot
    fuse ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``), or quantizes a
    shared bias with one conv's scale. Here ``Identity(initializer)`` becomes an initializer
    and each extra reader of a shared initializer gets a renamed copy.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = numpy_helper.to_array(inits[node.input[0]])
            new = numpy_helper.from_array(t.copy(), node.output[0])
            model.graph.initializer.append(new)
            inits[new.name] = new
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    seen: set[str] = set()
    for k, node in enumerate(model.graph.node):
        for j, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]).copy(),
                                               f"{name}__{k}_{j}")
                model.graph.initializer.append(copy)
                node.input[j] = copy.name
            seen.add(name)


@dataclass(frozen=True)
class Int8Config:
    """How :func:`export_onnx_int8` quantizes (onnxruntime ``quantize_static`` options).

    * ``quant_format``: ``"qdq"`` (QuantizeLinear / DequantizeLinear pairs that onnxruntime
      fuses into ``QLinearConv`` ...) or ``"qoperator"`` (``QLinearConv`` written directly).
    * ``per_channel``: one weight scale per output channel (axis 0; axis 1 for ConvTranspose)
      instead of one per tensor. lowbit's power-of-two weights are exact either way only when
      the row factors agree, so per channel is what keeps folded-BatchNorm weights exact.
    * ``activations`` / ``weights``: ``"u8"`` or ``"s8"``. ``u8`` activations with ``s8``
      weights ("u8s8") are what onnxruntime's x86 int8 GEMM (VNNI ``vpdpbusd``) multiplies
      natively; ``u8u8`` weights carry a zero point of 128 and are never written as exact
      powers of two (the report says ``"ort"``).
    * ``reduce_range``: 7-bit weights (onnxruntime's advice for CPUs without VNNI, against
      ``vpmaddubsw`` saturation); lowbit's exact codes need 8 bits, so they are rewritten as
      ``ort`` values when it is set.
    * ``float_ops``: operator types left in float (no Q/DQ around them), e.g. ``("LeakyRelu",)``.
      (onnxruntime fuses ``DQ -> LeakyRelu -> Q`` into ``QLinearLeakyRelu`` all the same.)
    * ``float_below_channels``: Convs with fewer input channels per group than this (the stem
      conv on the RGB image) stay float, together with the Relu / LeakyRelu / Clip that alone
      reads their output (fused into the float conv); 0 quantizes every conv. Measured here
      (docs/deployment.md): YOLOv3-tiny's 3x3 stem conv on 3 channels ran 1.6x slower as
      QLinearConv than as a float conv and was a third of the int8 time; R-FCN's 7x7 stem
      is better left int8 (see :func:`lowbit.export.detect.default_int8`).
    * ``float_conv_weights``: how the convs that ``float_below_channels`` leaves float store
      their weight: ``"float"`` (an FP32 initializer) or ``"int8"`` (int8 codes -- lowbit's
      exact power-of-two codes where the weight allows it, else symmetric per output channel
      -- read through a ``DequantizeLinear``; the conv still computes in float). With
      ``"int8"`` onnxruntime's ``NchwcTransformer``, which only blocks convs whose weight is a
      constant float initializer (it does not constant-fold ``DequantizeLinear``), leaves the
      conv in plain NCHW (a ``FusedConv`` with its activation): YOLOv3-tiny's 3 -> 8-channel
      stem otherwise ran NCHWc-blocked to 16 channels (half of them padding) and needed a
      ``ReorderOutput`` back to NCHW before its ``QuantizeLinear`` (measured: 1.3 + 0.5 ms
      against 1.0 ms as a NCHW ``FusedConv``, 1 thread).
    """

    quant_format: str = "qdq"
    per_channel: bool = True
    activations: str = "u8"
    weights: str = "s8"
    reduce_range: bool = False
    float_ops: tuple[str, ...] = ()
    float_below_channels: int = 0
    float_conv_weights: str = "float"

    def __post_init__(self) -> None:
        if self.quant_format not in ("qdq", "qoperator"):
            raise ValueError(f"Int8Config: quant_format {self.quant_format!r} is not "
                             "'qdq' or 'qoperator'")
        for k in ("activations", "weights"):
            if getattr(self, k) not in ("u8", "s8"):
                raise ValueError(f"Int8Config: {k} {getattr(self, k)!r} is not 'u8' or 's8'")
        if self.float_conv_weights not in ("float", "int8"):
            raise ValueError(f"Int8Config: float_conv_weights {self.float_conv_weights!r} is "
                             "not 'float' or 'int8'")
        if self.float_below_channels < 0:
            raise ValueError("Int8Config: float_below_channels must be >= 0, got "
                             f"{self.float_below_channels}")
        object.__setattr__(self, "float_ops", tuple(self.float_ops))

    @property
    def label(self) -> str:
        """Short name, e.g. ``qdq/per-channel/u8s8``."""
        parts = [self.quant_format, "per-channel" if self.per_channel else "per-tensor",
                 self.activations + self.weights]
        if self.reduce_range:
            parts.append("reduce-range")
        if self.float_ops:
            parts.append("float " + "+".join(self.float_ops))
        if self.float_below_channels:
            parts.append(f"float convs < {self.float_below_channels} channels" +
                         (" (int8 weights)" if self.float_conv_weights == "int8" else ""))
        return "/".join(parts)


#: lowbit's int8 export default for a plain network (detectors: :func:`lowbit.export.detect.
#: default_int8`): QDQ, per channel, u8s8 -- the fastest generic choice measured by
#: ``benchmarks/bench_int8.py`` on an AVX-512 VNNI CPU (docs/deployment.md)
DEFAULT_INT8 = Int8Config()

# QOperator nodes with a constant weight: (x_scale, weight, weight_scale, bias) input indices
_QOP_WEIGHT_INPUTS = {"QLinearConv": (1, 3, 4, 8), "QGemm": (1, 3, 4, 6)}


def export_onnx_int8(
    model: nn.Module, example: Tensor, path: str | os.PathLike[str],
    calibration: Sequence[Tensor], *, output_names: Sequence[str] | None = None,
    dynamic_hw: bool = False, metadata: dict[str, str] | None = None,
    config: Int8Config | None = None, fp32_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Export an int8 ONNX model to ``path`` (see the module doc).

    ``calibration``: batches ``Tensor[N, C, H, W]`` (e.g. from the run's dataset) for the
    activation ranges. ``config``: :class:`Int8Config` (default :data:`DEFAULT_INT8`).
    The FP32 intermediate that onnxruntime's quantizer reads (the float network with
    constants turned into unshared initializers) is written to ``fp32_path`` when given and
    kept there; otherwise to a temporary folder that is deleted before returning.

    Returns ``{"path", "fp32_path" (str or None), "config" (its label), "weights":
    {initializer: "pot-exact" | "pot-inexact" | "ort" | "float"}}`` ("float": the FP32 weight
    of a conv left float, ``float_conv_weights="float"``); the file passes ``onnx.checker``
    and loads in onnxruntime CPU.
    """
    import tempfile

    import onnx

    cfg = config or DEFAULT_INT8
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="lowbit-int8-") as tmp:
        fp32 = Path(fp32_path) if fp32_path is not None else Path(tmp) / "model.fp32.onnx"
        if fp32.resolve() == path.resolve():
            raise ValueError(f"{path}: fp32_path must differ from the int8 output path")
        export_onnx(model, example, fp32, output_names=output_names, dynamic_hw=dynamic_hw,
                    metadata=metadata)
        fp_model = onnx.load(str(fp32))
        _constants_to_initializers(fp_model)
        _unshare_initializers(fp_model)
        onnx.save(fp_model, str(fp32))
        report = quantize_onnx_int8(fp32, path, calibration, cfg, metadata=metadata)
    return {"path": str(path), "fp32_path": str(fp32) if fp32_path is not None else None,
            "config": cfg.label, "weights": report}


def quantize_onnx_int8(
    fp32_path: str | os.PathLike[str], path: str | os.PathLike[str],
    calibration: Sequence[Tensor], config: Int8Config | None = None, *,
    metadata: dict[str, str] | None = None,
) -> dict[str, str]:
    """Quantize the FP32 ONNX file ``fp32_path`` (input ``"input"``, initializers unshared as
    :func:`export_onnx_int8` prepares them) to ``path`` with ``config``, then rewrite every
    int8 weight whose slices along its channel axis are powers of two times a per-slice factor
    as exact codes (see the module doc) and make the int32 biases consistent with the new
    weight scales. Returns ``{initializer: "pot-exact" | "pot-inexact" | "ort" | "float"}``."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    cfg = config or DEFAULT_INT8
    fp_model = onnx.load(str(fp32_path))
    fp_inits = {i.name: numpy_helper.to_array(i) for i in fp_model.graph.initializer}
    excluded = [n.name for n in fp_model.graph.node if n.op_type in cfg.float_ops]
    float_weights = _thin_convs(fp_model, fp_inits, cfg.float_below_channels, excluded)
    # grouped ConvTranspose: onnxruntime's per-channel quantizer gives its weight [C_in,
    # C_out/g, kh, kw] C_out/g scales along axis 1 and then fails on the C_out bias; one scale
    # per tensor is what it can do
    overrides = {n.input[1]: [{"symmetric": True}] for n in fp_model.graph.node
                 if n.op_type == "ConvTranspose" and n.input[1] in fp_inits
                 and _attr(n, "group", 1) > 1} if cfg.per_channel else {}
    qt = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    quantize_static(
        str(fp32_path), str(path), _Reader(calibration),
        quant_format=QuantFormat.QDQ if cfg.quant_format == "qdq" else QuantFormat.QOperator,
        activation_type=qt[cfg.activations], weight_type=qt[cfg.weights],
        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
        nodes_to_exclude=excluded,
        extra_options={"WeightSymmetric": True, **({"TensorQuantOverrides": overrides}
                                                   if overrides else {})})
    q = onnx.load(str(path))
    report: dict[str, str] = {}
    if cfg.weights == "s8" and not cfg.reduce_range:
        _rewrite_pot_weights(q, fp_inits, report)
    else:
        report.update({name.removesuffix("_quantized"): "ort" for name in
                       (i.name for i in q.graph.initializer)
                       if name.removesuffix("_quantized") in fp_inits
                       and name.endswith("_quantized") and fp_inits[
                           name.removesuffix("_quantized")].ndim >= 2})
    if cfg.float_conv_weights == "int8":
        _dequantized_float_weights(q, fp_inits, float_weights, report)
    else:
        report.update({w: "float" for w in float_weights})
    if cfg.quant_format == "qdq":
        _requantize_biases(q, fp_inits)
    _shapes_of_quantized(q)
    if metadata:
        _set_metadata(q, metadata)
    onnx.save(q, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return report


# activations after a float stem conv that stay float with it (fused into the float conv) while
# they are its output's only reader. A MaxPool is not among them: onnxruntime's QDQ propagation
# moves the QuantizeLinear above it anyway, and the uint8 MaxPool then stays NCHW and breaks the
# NHWC chain of QLinear ops (R-FCN: 4 extra Transposes, 0.63x FP32 instead of 0.42x)
_STEM_TAIL = ("Relu", "LeakyRelu", "Clip")


def _attr(node: Any, name: str, default: Any) -> Any:
    """Attribute ``name`` of an ONNX node (``default`` when absent)."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


def _thin_convs(fp_model: Any, inits: dict[str, np.ndarray], below: int, excluded: list[str]
                ) -> list[str]:
    """Append to ``excluded`` the names of Conv nodes whose weight ``[O, C/g, kh, kw]`` has
    ``C/g < below`` and of the chain of :data:`_STEM_TAIL` ops that alone read such a conv's
    output; return those convs' weight names."""
    if below <= 0:
        return []
    consumers: dict[str, list[Any]] = {}
    for n in fp_model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    weights = []
    for n in fp_model.graph.node:
        if n.op_type != "Conv" or n.input[1] not in inits or inits[n.input[1]].ndim < 3:
            continue
        if inits[n.input[1]].shape[1] >= below:
            continue
        excluded.append(n.name)
        weights.append(n.input[1])
        out = n.output[0]
        while len(nxt := consumers.get(out, [])) == 1 and nxt[0].op_type in _STEM_TAIL:
            excluded.append(nxt[0].name)
            out = nxt[0].output[0]
    return weights


def _rewrite_pot_weights(q: Any, fp_inits: dict[str, np.ndarray], report: dict[str, str]
                         ) -> None:
    """Replace onnxruntime's int8 weights by lowbit's exact power-of-two codes where the FP32
    weight allows it (QDQ: ``DequantizeLinear(w_quantized, w_scale, 0, axis)``; QOperator:
    the weight inputs of ``QLinearConv`` / ``QGemm``, whose int32 bias is re-scaled here)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in q.graph.initializer}

    def rewrite(qname: str, sname: str, axis: int) -> bool:
        base = qname.removesuffix("_quantized")
        if base not in fp_inits or inits[qname].data_type != onnx.TensorProto.INT8:
            return False
        per_row = numpy_helper.to_array(inits[sname]).size > 1
        got = _exact_pot(fp_inits[base], per_row, axis)
        if got is None:
            report[base] = "ort"
            return False
        codes, scale, exact = got
        inits[qname].CopyFrom(numpy_helper.from_array(codes, qname))
        inits[sname].CopyFrom(numpy_helper.from_array(np.asarray(scale, dtype=np.float32),
                                                      sname))
        report[base] = "pot-exact" if exact else "pot-inexact"
        return True

    for node in q.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            axis = next((helper.get_attribute_value(a) for a in node.attribute
                         if a.name == "axis"), 1)
            ndim = len(inits[node.input[0]].dims)
            rewrite(node.input[0], node.input[1], axis % ndim if ndim else 0)
        elif node.op_type in _QOP_WEIGHT_INPUTS:
            ix, iw, isc, ib = _QOP_WEIGHT_INPUTS[node.op_type]
            if node.input[iw] not in inits or not rewrite(node.input[iw], node.input[isc], 0):
                continue
            if len(node.input) > ib and node.input[ib] in inits:
                bname = node.input[ib]
                bias = fp_inits.get(bname.removesuffix("_quantized"))
                x_scale = numpy_helper.to_array(inits[node.input[ix]]).astype(np.float64)
                w_scale = numpy_helper.to_array(inits[node.input[isc]]).astype(np.float64)
                if bias is not None:
                    bq = _bias_codes(bias, x_scale.reshape(()) * w_scale, node.name)
                    inits[bname].CopyFrom(numpy_helper.from_array(bq, bname))


def _shapes_of_quantized(q: Any) -> None:
    """Let every ``Shape`` node that reads a ``DequantizeLinear`` output read the quantized
    tensor instead (same dimensions), and drop the ``DequantizeLinear`` nodes left unread.

    The quantizer puts a ``DequantizeLinear`` (one per reader, "duplicated") before the
    ``Shape`` nodes with which a dynamic-batch export computes ``Resize`` sizes (YOLOv3's
    upsampling to the skip connection's size); onnxruntime then materialised those float
    tensors, and ``Transpose`` nodes of their NHWC uint8 sources back to NCHW, only to read the
    shapes (4 ``DequantizeLinear`` + 4 ``Transpose`` in YOLOv3-tiny). On the quantized tensor
    onnxruntime reads the shape of the NHWC tensor with a ``Gather`` of its dimensions."""
    prod = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        src = prod.get(n.input[0]) if n.op_type == "Shape" else None
        if src is not None and src.op_type == "DequantizeLinear":
            n.input[0] = src.input[0]
    used = {i for n in q.graph.node for i in n.input} | {o.name for o in q.graph.output}
    dead = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
            and not any(o in used for o in n.output)]
    for n in dead:
        q.graph.node.remove(n)


def _dequantized_float_weights(q: Any, fp_inits: dict[str, np.ndarray], names: Sequence[str],
                               report: dict[str, str]) -> None:
    """Store the float convs' weights ``names`` (FP32 initializers of ``q``) as int8 codes
    with one scale per output channel, read by a ``DequantizeLinear`` (axis 0) inserted before
    each conv: lowbit's exact power-of-two codes (``report``: ``"pot-exact"`` /
    ``"pot-inexact"``) where :func:`_exact_pot` finds them, else ``round(w / s)`` with
    ``s = max|row| / 127`` (``"ort"``). See :class:`Int8Config` ``float_conv_weights``."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in q.graph.initializer}
    readers: dict[str, int] = {}
    for n in q.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    nodes = list(q.graph.node)
    for name in names:
        if name not in inits or readers.get(name, 0) != 1:
            report[name] = "float"
            continue
        k, conv = next((k, n) for k, n in enumerate(nodes)
                       if len(n.input) > 1 and n.input[1] == name)
        w = fp_inits[name]
        got = _exact_pot(w, True, 0)
        if got is not None:
            codes, scale, exact = got
            report[name] = "pot-exact" if exact else "pot-inexact"
        else:
            rows = w.astype(np.float64).reshape(w.shape[0], -1)
            top = np.abs(rows).max(axis=1)
            scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
            codes = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127
                            ).astype(np.int8)
            report[name] = "ort"
        qn, sn, zn = f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"
        q.graph.initializer.remove(inits[name])
        q.graph.initializer.extend([
            numpy_helper.from_array(codes, qn),
            numpy_helper.from_array(np.asarray(scale, np.float32).reshape(-1), sn),
            numpy_helper.from_array(np.zeros(codes.shape[0], np.int8), zn)])
        dq = helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_dequantized"],
                              name=f"{conv.name}_weight_DequantizeLinear", axis=0)
        conv.input[1] = dq.output[0]
        q.graph.node.insert(k, dq)
        nodes.insert(k, dq)


def _bias_codes(bias: np.ndarray, b_scale: np.ndarray, where: str) -> np.ndarray:
    """``round(bias / b_scale)`` as int32 (0 where the scale is 0); ValueError naming
    ``where`` on int32 overflow."""
    b_scale = np.broadcast_to(b_scale.astype(np.float32).astype(np.float64), bias.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        bq = np.where(b_scale > 0, np.round(bias.astype(np.float64) / b_scale), 0)
    if np.abs(bq).max(initial=0) >= 2 ** 31:
        raise ValueError(f"{where}: bias overflows int32 at scale {float(np.min(b_scale)):.3g}")
    return bq.astype(np.int32)


def _requantize_biases(q: Any, fp_inits: dict[str, np.ndarray]) -> None:
    """Make every int32 conv bias consistent with its (possibly rewritten) weight scale:
    ``bias_scale = x_scale * w_scale`` and ``bias_q = round(bias / bias_scale)``.

    onnxruntime fuses ``DQ(x), DQ(w), DQ(b) -> Conv -> Q`` into ``QLinearConv`` only when the
    bias scale is the product of the input and weight scales (QLinearConv has no bias scale);
    after the power-of-two rewrite of ``w_scale`` the quantizer's bias scale no longer is, and
    the convs stayed float (DequantizeLinear -> Conv), slower than FP32.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in q.graph.initializer}
    prod = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3:
            continue
        dqs = [prod.get(i) for i in node.input[:3]]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dqs):
            continue
        dx, dw, db = dqs
        if not all(n in inits for n in (dx.input[1], dw.input[1], db.input[0], db.input[1])):
            continue
        x_scale = numpy_helper.to_array(inits[dx.input[1]]).astype(np.float64)
        w_scale = numpy_helper.to_array(inits[dw.input[1]]).astype(np.float64)
        base = db.input[0].removesuffix("_quantized")
        bias = fp_inits.get(base)
        if bias is None or x_scale.size != 1:
            continue
        b_scale = (x_scale.reshape(()) * w_scale).astype(np.float32)
        b_scale = np.broadcast_to(b_scale, bias.shape).copy() if b_scale.size > 1 else b_scale
        bq = _bias_codes(bias, b_scale, f"conv {node.name!r}: bias {base!r}")
        inits[db.input[0]].CopyFrom(numpy_helper.from_array(bq, db.input[0]))
        sc = inits[db.input[1]]
        sc.CopyFrom(numpy_helper.from_array(b_scale.reshape(
            numpy_helper.to_array(sc).shape).astype(np.float32), db.input[1]))


#: ``ort_session(opt_level=...)`` names -> onnxruntime GraphOptimizationLevel member names
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT",
              "all": "ORT_ENABLE_ALL"}


def ort_session(path: str | os.PathLike[str], threads: int | None = None,
                profile: str | None = None,
                spinning: bool = True, opt_level: str = "all",
                disabled_optimizers: Sequence[str] = ()) -> Any:
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads (default
    :func:`lowbit.runtime.get_threads`: the verb's ``--threads``, else torch's count).

    ``spinning=False`` stops the worker threads from spin-waiting after each run (onnxruntime's
    ``session.intra_op.allow_spinning``): needed when two sessions alternate in one process,
    where one session's spinning threads steal the cores from the other (measured here: an
    int8 R-FCN trunk ran 2.4x slower interleaved with a spinning FP32 session).
    ``opt_level``: a key of :data:`OPT_LEVELS` (graph optimisation level; ``"all"`` includes
    the layout transforms: NCHWc blocking of float convs, NHWC for ``QLinearConv``).
    ``disabled_optimizers``: onnxruntime transformer names to switch off, e.g.
    ``("NchwcTransformer",)``."""
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise ValueError(f"ort_session: opt_level {opt_level!r} is not one of "
                         f"{sorted(OPT_LEVELS)}")
    if threads is None:
        from lowbit.runtime import get_threads

        threads = get_threads()
    if threads < 1:
        raise ValueError(f"ort_session: threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    kw = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], **kw)


def run_onnx(session: Any, x: Tensor) -> list[np.ndarray]:
    """Outputs of ``session`` on ``x`` (``Tensor[N, C, H, W]``) as float numpy arrays."""
    return session.run(None, {"input": x.detach().float().cpu().numpy()})
