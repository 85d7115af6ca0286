"""ONNX export: FP32 network and an int8 QDQ model whose weights are lowbit's values.

* :func:`export_onnx` — ``torch.onnx.export(..., dynamo=False)``, opset 17. The network only:
  a detector's post-processing stays in PyTorch float. Quantized layers export their frozen
  weight values as FP32 initializers; activation fake-quantizers are switched off while
  exporting (the FP32 file is the float network; the int8 file does activation quantization).
* :func:`export_onnx_int8` — ``onnxruntime.quantization.quantize_static`` (QDQ format,
  per-tensor, activations uint8 calibrated with min/max on the given batches, weights int8
  symmetric, per output channel), then every weight whose rows are signed powers of two
  times a per-channel factor (lowbit's "pot" layers, with the BatchNorm the exporter folds
  into them) is re-quantized exactly: ``scale[o] = top[o] * 2**-6`` with ``top[o]`` the
  row's largest magnitude, so ``value / scale = +-2**(6 - d)`` is an exact int8 for every
  magnitude within ``2**6`` of the largest (all codes for bits <= 4: ``n <= 4`` magnitudes;
  for 5-8-bit LBW the magnitudes below ``2**(e_max-6)`` round to 0 or +-1: ``pot-inexact``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lowbit.nn.act import QNActQuant, UniformActQuant

__all__ = ["export_onnx", "export_onnx_int8", "ort_session", "run_onnx", "OPSET"]

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


def _exact_pot(values: np.ndarray, per_row: bool) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``(int8 codes, scale, exact)`` when every row (axis 0; the whole tensor if not
    ``per_row``) is a multiple ``f * (+-2**-d)`` of its largest magnitude ``f`` (a power-of-two
    weight, possibly with a folded BatchNorm factor per output channel); None otherwise."""
    v = values.astype(np.float64)
    rows = v.reshape(v.shape[0], -1) if per_row else v.reshape(1, -1)
    top = np.abs(rows).max(axis=1, keepdims=True)
    if np.any(top == 0):
        return None
    mant, _ = np.frexp(rows / top)
    if not np.all((np.abs(mant) == 0.5) | (rows == 0)):
        return None
    scale = top[:, 0] * 2.0 ** -6
    q = np.round(rows / scale[:, None])
    exact = bool(np.array_equal(q * scale[:, None], rows))
    codes = np.clip(q, -127, 127).astype(np.int8).reshape(values.shape)
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


def export_onnx_int8(
    model: nn.Module, example: Tensor, path: str | os.PathLike[str],
    calibration: Sequence[Tensor], *, output_names: Sequence[str] | None = None,
    dynamic_hw: bool = False, metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Export an int8 QDQ ONNX model to ``path`` (see the module doc).

    ``calibration``: batches ``Tensor[N, C, H, W]`` (e.g. from the run's dataset) for the
    activation ranges. Returns ``{"path", "fp32_path", "weights": {initializer: "pot-exact" |
    "pot-inexact" | "ort"}}``; the file passes ``onnx.checker`` and loads in onnxruntime CPU.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    path = Path(path)
    fp32 = path.with_name(path.stem + ".fp32.onnx")
    export_onnx(model, example, fp32, output_names=output_names, dynamic_hw=dynamic_hw,
                metadata=metadata)
    fp_model = onnx.load(str(fp32))
    _constants_to_initializers(fp_model)
    _unshare_initializers(fp_model)
    onnx.save(fp_model, str(fp32))
    fp_inits = {i.name: numpy_helper.to_array(i) for i in fp_model.graph.initializer}
    quantize_static(str(fp32), str(path), _Reader(calibration), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, extra_options={"WeightSymmetric": True})
    q = onnx.load(str(path))
    inits = {i.name: i for i in q.graph.initializer}
    report: dict[str, str] = {}
    for node in q.graph.node:
        # weights: DequantizeLinear(w_quantized, w_scale, w_zero_point) of an FP32 initializer
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        qname = node.input[0]
        base = qname.removesuffix("_quantized")
        if base not in fp_inits or inits[qname].data_type != onnx.TensorProto.INT8:
            continue
        sname = node.input[1]
        per_row = numpy_helper.to_array(inits[sname]).size > 1
        got = _exact_pot(fp_inits[base], per_row)
        if got is None:
            report[base] = "ort"
            continue
        codes, scale, exact = got
        inits[qname].CopyFrom(numpy_helper.from_array(codes, qname))
        inits[sname].CopyFrom(numpy_helper.from_array(
            np.asarray(scale, dtype=np.float32), sname))
        report[base] = "pot-exact" if exact else "pot-inexact"
    _requantize_biases(q, fp_inits)
    if metadata:
        _set_metadata(q, metadata)
    onnx.save(q, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return {"path": str(path), "fp32_path": str(fp32), "weights": report}


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
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
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
        with np.errstate(divide="ignore", invalid="ignore"):
            bq = np.where(b_scale > 0, np.round(bias.astype(np.float64) / b_scale), 0)
        if np.abs(bq).max(initial=0) >= 2 ** 31:
            raise ValueError(f"conv {node.name!r}: bias {base!r} overflows int32 at scale "
                             f"{float(np.min(b_scale)):.3g}")
        inits[db.input[0]].CopyFrom(numpy_helper.from_array(bq.astype(np.int32), db.input[0]))
        sc = inits[db.input[1]]
        sc.CopyFrom(numpy_helper.from_array(b_scale.reshape(
            numpy_helper.to_array(sc).shape).astype(np.float32), db.input[1]))


def ort_session(path: str | os.PathLike[str], threads: int = 2, profile: str | None = None,
                spinning: bool = True):
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads.

    ``spinning=False`` stops the worker threads from spin-waiting after each run (onnxruntime's
    ``session.intra_op.allow_spinning``): needed when two sessions alternate in one process,
    where one session's spinning threads steal the cores from the other (measured here: an
    int8 R-FCN trunk ran 2.4x slower interleaved with a spinning FP32 session)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: Tensor) -> list[np.ndarray]:
    """Outputs of ``session`` on ``x`` (``Tensor[N, C, H, W]``) as float numpy arrays."""
    return session.run(None, {"input": x.detach().float().cpu().numpy()})
