"""The packed container: a self-describing safetensors file of bit-packed integer codes.

Layout (one ``.safetensors`` file, no pickle):

* metadata ``format = "lowbit-packed"``, ``version = "2"``, ``checksum`` (below), ``header`` =
  JSON with
  ``model`` (``{"config": <resolved ExperimentConfig dict>}`` or ``{"arch": <caller's dict>}``)
  and ``layers``: per quantized layer ``{kind, method, bits, width, offset, shape, numel,
  coding, nbytes, exponent, axis, params}`` (``exponent``: the per-tensor ``s``, null when
  per-channel; ``params``: the quantizer's parameters besides ``bits``, when known);
* ``q.<layer>.codes``: ``uint8[nbytes]``, the codes as unsigned fields of ``width`` bits
  (``field = code - offset``), packed LSB first: field ``i`` occupies stream bits
  ``[i*width, (i+1)*width)``, stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``; the last
  byte is zero-padded. ``coding`` ``"raw"`` stores the stream as is, ``"zlib"`` / ``"lzma"``
  its compressed bytes (chosen per layer only when smaller); ``"radix"`` is a fixed-rate
  (not entropy) code for fields that use fewer than ``2**width`` values: groups of ``group``
  fields ``f_0 .. f_{g-1}`` become one word ``sum f_i * radix**i`` of ``word =
  bit_length(radix**group - 1)`` bits, words packed LSB first as above, the last group padded
  with zero fields (e.g. 4-bit LBW: 9 values, 5 fields in 16 bits = 3.2 bits per weight;
  6-bit: 33 values, 12 fields in 61 bits = 5.08 bits); also chosen only when smaller;
* ``q.<layer>.scale`` (float64, 0-dim or ``[C]``), ``q.<layer>.zero_point``,
  ``q.<layer>.levels`` when the :class:`~lowbit.quant.QuantResult` has them;
  ``q.<layer>.exponent`` (int64 ``[C]``) for per-channel power-of-two scales
  (``scale[c] == 2**exponent[c]``, checked on load);
* ``f.<key>``: every other ``state_dict`` entry (BN, biases, unquantized layers, activation
  ranges) in its own dtype.

``checksum`` is ``"sha256:<hex>"``, the SHA-256 of the whole file (length prefix, JSON header
with its padding, and every tensor byte) computed with the digest's 64 hex digits replaced by
``-``. :func:`load_packed` verifies it before reading anything else, so any changed byte --
a weight code, a scale, a layer's bits in the header -- is refused with a ValueError naming
the file. Version "1" files (no checksum) still load.

Power-of-two codes ``c in [-n, n]`` (``n = 2**(bits-2)``) are stored with ``offset = -n``,
i.e. ``c + n in [0, 2n]``, which fits ``bits`` bits (sign and exponent index in one field).
Uniform / table codes use ``offset = min(code)``; ``width`` is ``bits`` unless the codes span
more (DoReFa's odd codes need ``bits + 1``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import math
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from lowbit.nn import (
    QuantMixin,
    make_weight_quantizer,
    quant_layers,
    quantize_module,
    weight_layer_kind,
)
from lowbit.nn.act import QNActQuant
from lowbit.nn.quantizers import RegistryWeightQuant
from lowbit.quant import pot
from lowbit.quant.registry import QuantResult

__all__ = ["FORMAT", "VERSION", "pack_bits", "unpack_bits", "save_packed", "load_packed",
           "read_packed_header", "packed_layer_sizes"]

FORMAT = "lowbit-packed"
VERSION = "2"
_READABLE_VERSIONS = ("1", "2")
_DIGEST_PLACEHOLDER = "sha256:" + "-" * 64
CODINGS = ("raw", "radix", "zlib", "lzma")
_MAX_WORD = 63


# ------------------------------------------------------------------------- bit packing


def pack_bits(fields: Tensor | np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers ``fields[N]`` (each ``< 2**width``) into ``uint8[ceil(N*width/8)]``,
    LSB first (see the module doc). ValueError if a field does not fit."""
    if not 1 <= width <= _MAX_WORD:
        raise ValueError(f"width must be in [1, {_MAX_WORD}], got {width}")
    f = np.asarray(fields.cpu() if isinstance(fields, Tensor) else fields).reshape(-1)
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= (1 << width)):
        raise ValueError(f"fields out of range for {width} bits: [{f.min()}, {f.max()}]")
    bits = ((f[:, None] >> np.arange(width, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_bits(data: np.ndarray | bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` fields of ``width`` bits as ``int64[count]``."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8) if isinstance(data, bytes) else data
    need = math.ceil(count * width / 8)
    if buf.size != need:
        raise ValueError(f"packed stream has {buf.size} bytes, expected {need} "
                         f"({count} fields x {width} bits)")
    bits = np.unpackbits(buf, bitorder="little")[: count * width].reshape(count, width)
    return (bits.astype(np.int64) << np.arange(width, dtype=np.int64)).sum(axis=1)


def radix_layout(radix: int) -> tuple[int, int]:
    """``(group, word)`` of the densest radix packing of fields in ``[0, radix)``: ``group``
    fields per ``word``-bit word, ``word = bit_length(radix**group - 1) <= 63``, minimising
    ``word / group`` (smallest ``group`` on ties)."""
    if radix < 2:
        return 1, 1
    best = (1, (radix - 1).bit_length())
    g = 2
    while (radix ** g - 1).bit_length() <= _MAX_WORD:
        w = (radix ** g - 1).bit_length()
        if w * best[0] < best[1] * g:
            best = (g, w)
        g += 1
    return best


def radix_pack(fields: np.ndarray, radix: int) -> np.ndarray:
    """Pack ``fields[N]`` (each in ``[0, radix)``) as described in the module doc."""
    group, word = radix_layout(radix)
    f = np.asarray(fields, dtype=np.int64).reshape(-1)
    if f.size and (f.min() < 0 or f.max() >= radix):
        raise ValueError(f"fields out of range for radix {radix}: [{f.min()}, {f.max()}]")
    pad = (-f.size) % group
    f = np.concatenate([f, np.zeros(pad, dtype=np.int64)]).reshape(-1, group)
    words = np.zeros(f.shape[0], dtype=np.int64)
    for i in range(group - 1, -1, -1):  # Horner: f_0 + radix (f_1 + radix (...))
        words = words * radix + f[:, i]
    return pack_bits(words, word)


def radix_unpack(data: np.ndarray, radix: int, count: int) -> np.ndarray:
    """Inverse of :func:`radix_pack`: ``count`` fields as ``int64[count]``."""
    group, word = radix_layout(radix)
    words = unpack_bits(data, word, math.ceil(count / group))
    out = np.empty((words.size, group), dtype=np.int64)
    for i in range(group):
        out[:, i] = words % radix
        words = words // radix
    return out.reshape(-1)[:count]


def _encode(stream: np.ndarray, coding: str) -> tuple[bytes, str]:
    raw = stream.tobytes()
    if coding == "raw":
        return raw, "raw"
    comp = zlib.compress(raw, 9) if coding == "zlib" else lzma.compress(raw, preset=9)
    return (comp, coding) if len(comp) < len(raw) else (raw, "raw")


def _decode(data: bytes, coding: str, where: str) -> np.ndarray:
    try:
        if coding == "zlib":
            data = zlib.decompress(data)
        elif coding == "lzma":
            data = lzma.decompress(data)
        elif coding != "raw":
            raise ValueError(f"unknown coding {coding!r}")
    except (zlib.error, lzma.LZMAError) as exc:
        raise ValueError(f"{where}: corrupt {coding} stream ({exc})") from None
    return np.frombuffer(data, dtype=np.uint8)


# ------------------------------------------------------------------------- save


def _offset_width(res: QuantResult, codes: Tensor) -> tuple[int, int]:
    if res.kind == "pot":
        return -pot.pot_levels_count(res.bits), res.bits
    lo = int(codes.min()) if codes.numel() else 0
    hi = int(codes.max()) if codes.numel() else 0
    if res.kind == "uniform" and res.zero_point is not None and lo >= 0:
        lo = 0  # affine grids: keep the stored field equal to the code
    return lo, max(res.bits, max(hi - lo, 1).bit_length())


def _layer_entry(name: str, layer: QuantMixin, coding: str
                 ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    res = layer.frozen
    if res is None:
        raise ValueError(f"layer {name!r} is not converted; call lowbit.nn.convert first")
    codes = res.codes()
    if not torch.equal(res.decode(codes), res.values):
        raise ValueError(f"layer {name!r}: its codes do not reproduce the frozen weight exactly")
    offset, width = _offset_width(res, codes)
    fields = (codes.reshape(-1).long() - offset).cpu().numpy()
    stream = pack_bits(fields, width)
    radix = 2 * pot.pot_levels_count(res.bits) + 1 if res.kind == "pot" else \
        int(fields.max()) + 1 if fields.size else 1
    extra: dict[str, Any] = {}
    if coding == "radix":
        rad = radix_pack(fields, radix)
        if rad.size < stream.size:
            data, used = rad.tobytes(), "radix"
            extra = {"radix": radix}
        else:
            data, used = stream.tobytes(), "raw"
    else:
        data, used = _encode(stream, coding)
    tensors: dict[str, Tensor] = {
        f"q.{name}.codes": torch.frombuffer(bytearray(data), dtype=torch.uint8),
        f"q.{name}.scale": res.scale.detach().double().cpu().contiguous(),
    }
    if res.zero_point is not None:
        tensors[f"q.{name}.zero_point"] = res.zero_point.detach().double().cpu().contiguous()
    if res.levels is not None:
        tensors[f"q.{name}.levels"] = res.levels.detach().double().cpu().contiguous()
    exponent = res.exponent
    if isinstance(exponent, Tensor):  # per-channel power-of-two exponents
        tensors[f"q.{name}.exponent"] = exponent.detach().to(torch.int64).cpu().contiguous()
        exponent = None
    entry = {
        "kind": res.kind, "method": layer.method, "bits": int(res.bits), "width": width,
        "offset": offset, "shape": list(res.values.shape), "numel": res.values.numel(),
        "dtype": str(res.values.dtype).removeprefix("torch."), "coding": used,
        "nbytes": len(data), "raw_nbytes": int(stream.size), "exponent": exponent,
        "axis": res.axis, "layer": weight_layer_kind(layer),
        **_params_entry(layer), **extra,
    }
    return entry, tensors


def _params_entry(layer: QuantMixin) -> dict[str, Any]:
    """``{"params": {...}}``: the registry quantizer's parameters besides bits (JSON types)."""
    wq = getattr(layer, "weight_quant", None)
    params = getattr(wq, "params", None)
    if not isinstance(wq, RegistryWeightQuant) or not dataclasses.is_dataclass(params):
        return {}
    d = {k: v for k, v in dataclasses.asdict(params).items() if k != "bits"}
    try:
        json.dumps(d)
    except (TypeError, ValueError):
        return {}
    return {"params": d}


def _with_checksum(blob: bytes) -> bytes:
    """Replace the digest placeholder in ``blob``'s header by the SHA-256 of ``blob``."""
    ph = _DIGEST_PLACEHOLDER.encode()
    (n,) = struct.unpack("<Q", blob[:8])
    pos = blob.find(ph, 8, 8 + n)
    if pos < 0 or blob.find(ph, pos + 1, 8 + n) >= 0:
        raise RuntimeError("packed writer: checksum placeholder not found exactly once")
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return blob[:pos] + digest.encode() + blob[pos + len(ph):]


def _verify_checksum(p: Path, blob: bytes, n: int, value: Any) -> None:
    """ValueError naming ``p`` unless ``value`` is the digest of ``blob`` (see module doc)."""
    if not isinstance(value, str) or len(value) != len(_DIGEST_PLACEHOLDER) or \
            not value.startswith("sha256:"):
        raise ValueError(f"{p}: packed file has no valid checksum (corrupt header)")
    enc = value.encode()
    pos = blob.find(enc, 8, 8 + n)
    if pos < 0 or blob.find(enc, pos + 1, 8 + n) >= 0:
        raise ValueError(f"{p}: packed file checksum field is corrupt")
    ph = _DIGEST_PLACEHOLDER.encode()
    actual = hashlib.sha256(blob[:pos] + ph + blob[pos + len(enc):]).hexdigest()
    if "sha256:" + actual != value:
        raise ValueError(f"{p}: checksum mismatch: the packed file is corrupt or was modified "
                         f"(stored {value[7:19]}..., computed {actual[:12]}...)")


def save_packed(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    config: dict[str, Any] | None = None,
    arch: dict[str, Any] | None = None,
    coding: str = "raw",
) -> dict[str, Any]:
    """Write a converted model (:func:`lowbit.nn.convert`) as a packed container.

    ``config``: the resolved experiment config dict (``lowbit.config.config_to_dict``) that
    :func:`load_packed` rebuilds the model from; or ``arch``: any JSON dict handed back to the
    caller's builder at load time. ``coding``: ``"raw"`` | ``"zlib"`` | ``"lzma"`` (zero-run /
    entropy coding of each layer's packed stream). Written to a temp file then renamed.

    Returns ``{"path", "bytes" (file size), "codes_bytes", "float_bytes", "fp32_bytes"
    (4 bytes x every state_dict float element, quantized weights included), "ratio"
    (fp32_bytes / bytes), "weight_ratio" (4 bytes x quantized weight elements / codes_bytes:
    the papers' "weight memory saving"), "layers"}``.
    """
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    layers = quant_layers(model)
    if not layers:
        raise ValueError("model has no quantized layer: prepare + convert it first")
    entries: dict[str, Any] = {}
    tensors: dict[str, Tensor] = {}
    qkeys: set[str] = set()
    for name, layer in layers:
        e, t = _layer_entry(name, layer, coding)
        entries[name] = e
        tensors.update(t)
        qkeys.add(f"{name}.weight")
    fp32 = 0
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            fp32 += 4 * value.numel()
        if key in qkeys:
            continue
        tensors[f"f.{key}"] = value.detach().cpu().contiguous().clone()
    header = {"model": {"config": config} if config is not None else {"arch": arch},
              "layers": entries}
    blob = st_save(tensors, metadata={"format": FORMAT, "version": VERSION,
                                      "checksum": _DIGEST_PLACEHOLDER,
                                      "header": json.dumps(header)})
    blob = _with_checksum(blob)
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, p)
    codes_bytes = sum(e["nbytes"] for e in entries.values())
    return {"path": str(p), "bytes": len(blob), "codes_bytes": codes_bytes,
            "float_bytes": sum(t.numel() * t.element_size() for k, t in tensors.items()
                               if k.startswith("f.")),
            "fp32_bytes": fp32, "ratio": fp32 / len(blob),
            "weight_ratio": 4 * sum(e["numel"] for e in entries.values()) / max(codes_bytes, 1),
            "layers": entries}


def packed_layer_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the packed code streams of a converted model per coding (no file written)."""
    out = {c: 0 for c in CODINGS}
    for name, layer in quant_layers(model):
        for c in CODINGS:
            out[c] += _layer_entry(name, layer, c)[0]["nbytes"]
    return out


# ------------------------------------------------------------------------- load


def read_packed_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """``(header, file bytes)``; ValueError naming the file when it is not a valid container
    or its checksum does not match (see the module doc)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: packed file not found")
    blob = p.read_bytes()
    if len(blob) < 8:
        raise ValueError(f"{p}: truncated packed file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{p}: truncated packed file (header says {n} bytes)")
    try:
        meta = json.loads(blob[8:8 + n]).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"{p}: not a lowbit packed file (unreadable header)") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: not a lowbit packed file (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if meta.get("version") not in _READABLE_VERSIONS:
        raise ValueError(f"{p}: unsupported packed version {meta.get('version')!r}")
    if meta.get("version") != "1":
        _verify_checksum(p, blob, n, meta.get("checksum"))
    try:
        header = json.loads(meta["header"])
        header["layers"]  # noqa: B018 - presence check
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{p}: corrupt packed header JSON") from None
    return header, blob


def _result_for(p: Path, name: str, e: dict[str, Any], t: dict[str, Tensor]) -> QuantResult:
    where = f"{p}: layer {name!r}"
    try:
        kind, bits, width, offset = e["kind"], int(e["bits"]), int(e["width"]), int(e["offset"])
        shape, numel = [int(s) for s in e["shape"]], int(e["numel"])
        dtype = getattr(torch, e.get("dtype", "float32"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(f"{where}: incomplete layer header") from None
    if math.prod(shape) != numel or not 1 <= bits <= 8 or not bits <= width <= 16:
        raise ValueError(f"{where}: inconsistent shape/bits/width ({shape}, {bits}, {width})")
    if kind == "pot" and (width != bits or offset != -pot.pot_levels_count(bits)):
        raise ValueError(f"{where}: power-of-two codes need width == bits == {bits} and "
                         f"offset {-pot.pot_levels_count(bits)} (got {width}, {offset})")
    key = f"q.{name}.codes"
    if key not in t:
        raise ValueError(f"{where}: codes tensor {key!r} missing")
    coding = e.get("coding", "raw")
    try:
        if coding == "radix":
            radix = int(e["radix"])
            if not 2 <= radix <= 1 << width:
                raise ValueError(f"radix {radix} does not fit {width}-bit fields")
            fields = radix_unpack(np.frombuffer(t[key].numpy().tobytes(), dtype=np.uint8),
                                  radix, numel)
        else:
            fields = unpack_bits(_decode(t[key].numpy().tobytes(), coding, where), width, numel)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: {exc} (bits mismatch or truncated stream)") from None
    codes = torch.from_numpy(fields + offset).to(torch.int32).reshape(shape)
    if kind == "pot" and numel and int(codes.abs().max()) > pot.pot_levels_count(bits):
        raise ValueError(f"{where}: power-of-two code out of range for {bits} bits")
    exponent = e.get("exponent")
    scale = t[f"q.{name}.scale"]
    if f"q.{name}.exponent" in t:
        exponent = t[f"q.{name}.exponent"]
        if kind != "pot" or exponent.dtype != torch.int64 or exponent.shape != scale.shape \
                or not torch.equal(pot.exact_pow2(exponent), scale.double()):
            raise ValueError(f"{where}: per-channel exponents do not match the scales "
                             "(scale[c] must be 2**exponent[c])")
    res = QuantResult(torch.empty(shape, dtype=dtype), kind, bits, scale,
                      t.get(f"q.{name}.zero_point"), exponent,
                      t.get(f"q.{name}.levels"), e.get("axis"))
    if kind == "table" and res.levels is not None and numel and \
            int(codes.max()) >= res.levels.shape[-1]:
        raise ValueError(f"{where}: table code out of range ({res.levels.shape[-1]} levels)")
    res.values = res.decode(codes)
    return res


def _install_frozen(layer: QuantMixin, res: QuantResult) -> None:
    """Make ``layer`` frozen at ``res`` as :meth:`QuantMixin.freeze` does (without running the
    weight quantizer, whose output on the decoded weight need not be ``res`` again)."""
    values = res.values.to(layer.weight.device).contiguous()
    with torch.no_grad():
        layer.weight.copy_(values)
    layer.register_buffer("frozen_weight", values, persistent=False)  # type: ignore[attr-defined]
    res.values = layer.frozen_weight  # type: ignore[attr-defined]
    layer._frozen = res
    layer.invalidate()


def _swap_to_quant(model: nn.Module, name: str, e: dict[str, Any]) -> QuantMixin:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    mod = getattr(parent, child)
    if isinstance(mod, QuantMixin):
        return mod
    if weight_layer_kind(mod) is None:
        raise ValueError(f"layer {name!r} is a {type(mod).__name__}, not a conv/linear layer")
    params = e.get("params")
    wq = make_weight_quantizer(e["method"], int(e["bits"]),
                               params if isinstance(params, dict) else None)
    # in place, as prepare does: subclasses keep their own forward, shared modules stay shared
    return quantize_module(mod, wq, name=name)


def load_packed(
    path: str | os.PathLike[str],
    builder: Callable[[dict[str, Any] | None], nn.Module] | None = None,
) -> nn.Module:
    """Rebuild the converted model written by :func:`save_packed` (eval mode, CPU).

    Files with a config are rebuilt with :func:`lowbit.train.build_model`; otherwise
    ``builder(arch)`` must return the model (float or prepared: plain Conv2d / Linear layers
    named in the file are swapped for quantized ones). The returned model's quantized layers
    are frozen at the decoded codes, so its outputs equal the saved converted model's exactly.
    ValueError naming the file when it is truncated, has a wrong header or format, or its
    codes do not match their bit-width.
    """
    p = Path(path)
    header, blob = read_packed_header(p)
    try:
        t = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{p}: corrupt or truncated packed file ({exc})") from None
    spec = header.get("model") or {}
    if builder is not None:
        model = builder(spec.get("arch"))
    elif spec.get("config") is not None:
        from lowbit.config import config_from_dict
        from lowbit.train import build_model

        model = build_model(config_from_dict(spec["config"]))[1]
    else:
        raise ValueError(f"{p}: no config inside; pass builder= to rebuild the model")
    qlayers = {}
    for name, e in header["layers"].items():
        try:
            qlayers[name] = _swap_to_quant(model, name, e)
        except AttributeError:
            raise ValueError(f"{p}: layer {name!r} does not exist in the rebuilt model") from None
    fstate = {k[2:]: v for k, v in t.items() if k.startswith("f.")}
    missing, unexpected = model.load_state_dict(fstate, strict=False)
    qkeys = {f"{n}.weight" for n in qlayers}
    missing = [k for k in missing if k not in qkeys]
    if missing or unexpected:
        raise ValueError(f"{p}: does not fit the rebuilt model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    for name, layer in qlayers.items():
        res = _result_for(p, name, header["layers"][name], t)
        if tuple(res.values.shape) != tuple(layer.weight.shape):
            raise ValueError(f"{p}: layer {name!r} shape {tuple(res.values.shape)} does not fit "
                             f"the model's {tuple(layer.weight.shape)}")
        layer.qname = layer.qname or name
        _install_frozen(layer, res)
    for m in model.modules():
        if isinstance(m, QNActQuant):
            m.hard = True
    return model.eval()
