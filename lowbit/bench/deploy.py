"""`lowbit bench deploy`: for R-FCN (``rfcn_resnet18``) and a single-stage detector
(``yolov3_tiny_darknet``), onnxruntime FP32 vs int8 QDQ latency of the exported network
(2 threads, the same prepared input, alternating blocks of FP32 / int8 runs in one process;
the ratio is the median over rounds of each round's int8 / FP32 block medians),
then PyTorch FP32 eager of the same network, the float post-processing time, and file sizes
(FP32 safetensors / packed raw, radix, zlib / ONNX FP32 / ONNX int8).

Models: a trained run (``runs=[RUN]``, matched by model name; its training images calibrate
int8) or, without one, the registered model with its initial weights (10 classes; constructor
keywords from ``model_kwargs``, e.g. ``{"yolov3_tiny_darknet": {"width": 0.5, "image_size":
416}}``, which a matching run overrides: the run's config wins) calibrated on uniform-noise
images ``Tensor[3, S, S]`` in ``[0, 1]`` with ``S`` the model's configured input size (its
registered size keyword, ``image_size`` / ``min_size``; 256 when that is unset). Weights are
post-training quantized (``lbw-exact``, ``bits``) unless the run already is. With
``profile=True`` the int8 and FP32 sessions are also run under onnxruntime's profiler and the
time per operator type is returned, with the operator types that stay float in the optimized
int8 graph.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from lowbit.export.detect import (
    DetectorNetwork,
    OnnxDetector,
    calibration_batches,
    export_detector_onnx,
    postprocess_outputs,
)
from lowbit.export.onnx import ort_session
from lowbit.export.packed import save_packed
from lowbit.nn import convert, prepare, quant_layers
from lowbit.runs import load_run
from lowbit.runtime import get_threads

DEFAULT_MODELS = ("rfcn_resnet18", "yolov3_tiny_darknet")
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def parse_model_kwargs(text: str) -> tuple[str, dict[str, Any]]:
    """``"MODEL:K=V[,K=V...]"`` -> ``(MODEL, {K: V})``. Each value is read as an int, else a
    float, else a bool (``true`` / ``false``, any case), else ``None`` (``none``), else kept as
    a string. Raises ``ValueError`` naming the offending text for an empty model name, an item
    without ``=``, an empty key or a key given twice (the model name is not checked here)."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ValueError(f"expected MODEL:KEY=VALUE[,KEY=VALUE...], got {text!r}")
    kwargs: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ValueError(f"expected KEY=VALUE with KEY a Python name, got {item!r} "
                             f"in {text!r}")
        if key in kwargs:
            raise ValueError(f"{key!r} given twice in {text!r}")
        kwargs[key] = _parse_value(val.strip())
    return name, kwargs


def _parse_value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return v


def input_side(name: str, model: torch.nn.Module, default: int = 256) -> int:
    """The square input side ``S`` of the registered model ``name`` as built: the value of its
    size keyword (:func:`lowbit.detection.registry.model_size_option`: ``image_size`` for
    YOLO / SSD, ``min_size`` for the two-stage detectors) in ``model.config``; ``default``
    when the model has none or it is unset (``min_size=None``: images keep their size)."""
    from lowbit.detection.registry import model_size_option

    opt = model_size_option(name)
    cfg = getattr(model, "config", None)
    val = cfg.get(opt) if opt and isinstance(cfg, dict) else None
    return int(val) if val else default


def _model_and_images(name: str, runs: Sequence[str], n_images: int,
                      model_kwargs: dict[str, Any] | None = None
                      ) -> tuple[torch.nn.Module, list[torch.Tensor], str]:
    """(model, ``n_images`` images ``Tensor[3, H, W]`` in [0, 1], description). A run of
    ``runs`` whose model is ``name`` wins (its config, its training images; ``model_kwargs``
    unused); else ``create_model(name, 10, **model_kwargs)`` with seed 0 and noise images of
    the model's input side (:func:`input_side`)."""
    for run in runs:
        cfg, task, model = load_run(run)
        if cfg.model.name == name:
            train_ds, _ = task.build_datasets(cfg)
            ims = [train_ds[i][0] for i in range(min(n_images, len(train_ds)))]
            return model, ims, f"run {run}"
    from lowbit.detection.registry import create_model

    torch.manual_seed(0)
    kw = dict(model_kwargs or {})
    model = create_model(name, 10, **kw).eval()
    side = input_side(name, model)
    g = torch.Generator().manual_seed(0)
    ims = [torch.rand(3, side, side, generator=g) for _ in range(n_images)]
    how = f"initial weights{', ' + _kwargs_text(kw) if kw else ''}, noise images"
    return model, ims, how


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


def alternating_blocks(s32: Any, feed32: dict[str, np.ndarray], s8: Any,
                       feed8: dict[str, np.ndarray], rounds: int, block: int
                       ) -> tuple[list[float], list[float], list[float]]:
    """Time an FP32 and an int8 onnxruntime session in alternating blocks: each round runs
    each session once untimed, then ``block`` timed runs, the session that goes first
    alternating by round. Returns ``(fp32 seconds per run, int8 seconds per run, per-round
    ratios int8 block median / FP32 block median)``, each in run order."""
    t32: list[float] = []
    t8: list[float] = []
    ratios: list[float] = []
    engines = (("fp32", s32, feed32, t32), ("int8", s8, feed8, t8))
    for r in range(rounds):
        got: dict[str, list[float]] = {}
        for key, sess, feed, acc in engines if r % 2 == 0 else engines[::-1]:
            sess.run(None, feed)
            got[key] = []
            for _ in range(block):
                t0 = time.perf_counter()
                sess.run(None, feed)
                got[key].append(time.perf_counter() - t0)
            acc.extend(got[key])
        ratios.append(float(np.median(got["int8"]) / np.median(got["fp32"])))
    return t32, t8, ratios


def _op_profile(path: str, feed: dict[str, np.ndarray], prefix: str, runs: int = 10
                ) -> dict[str, float]:
    """Share of kernel time per operator type over ``runs`` profiled runs."""
    s = ort_session(path, profile=prefix)
    for _ in range(runs):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    agg: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"]
    total = sum(agg.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(agg.items(), key=lambda kv: -kv[1])}


def _float_convs(path: str) -> list[str]:
    """Names of the Conv nodes of an int8 QDQ file that compute in float (their input is not
    a DequantizeLinear output; their weight may be, see ``Int8Config.float_conv_weights``)."""
    import onnx

    g = onnx.load(path).graph
    dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in g.node if n.op_type == "Conv" and n.input[0] not in dq]


def _optimized_ops(path: str, out: Path) -> dict[str, int]:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = get_threads()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return dict(collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node))


def bench_one(name: str, runs: Sequence[str] = (), bits: int = 4, iters: int = 20,
              out: Path | None = None, profile: bool = False, threads: int = 2,
              model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure one detector (see the module doc) with ``threads`` onnxruntime intra-op and
    PyTorch threads; ``model_kwargs``: constructor keywords when no run of ``runs`` is the
    model. Latencies are medians in ms; ``int8_over_fp32`` is the median of the
    per-round ratios (``int8_over_fp32_quartiles`` their quartiles), ``int8_over_fp32_of_medians``
    the ratio of the two overall medians. ``model_kwargs`` in the result: the keywords the
    model was built with (``{}`` for a run's model; those given are then under
    ``model_kwargs_ignored``)."""
    out = Path(out or tempfile.mkdtemp(prefix="lowbit-deploy-"))
    out.mkdir(parents=True, exist_ok=True)
    model, ims, source = _model_and_images(name, runs, 16, model_kwargs)
    from_run = source.startswith("run ")
    float_model = copy.deepcopy(model).eval() if not quant_layers(model) else None
    if float_model is not None:
        prepare(model, {"method": "lbw-exact", "bits": bits}).eval()
        convert(model)
        save_file({k: v.contiguous() for k, v in float_model.state_dict().items()},
                  str(out / "fp32.safetensors"))
    sizes = {c: save_packed(model, out / f"model.{c}.lbp", arch=None, coding=c)
             for c in ("raw", "radix", "zlib")}
    calib = calibration_batches(model, ims, len(ims), batch_size=8)
    rep = export_detector_onnx(model, out / "model.int8.onnx", calib[0][:1], calibration=calib,
                               fp32_path=out / "model.fp32.onnx")
    s32 = ort_session(rep["fp32_path"], threads, spinning=False)
    s8 = ort_session(rep["path"], threads, spinning=False)
    batch = calib[0][:1]
    feed = {"input": batch.numpy()}
    net = DetectorNetwork(float_model if float_model is not None else model).eval()
    det = OnnxDetector(rep["path"], model)
    _, im_sizes, _ = model.transform(ims[:1])
    hw = (int(batch.shape[-2]), int(batch.shape[-1]))
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    tpt: list[float] = []
    tpp: list[float] = []
    # Alternating blocks of runs with spin-waiting off, PyTorch timed afterwards: after a run,
    # onnxruntime's and PyTorch's worker threads spin-wait and steal the cores from whichever
    # thread pool runs next (interleaved single runs with spinning made int8 look 2.4x slower
    # and FP32 1.8x slower than alone). Each block starts with one untimed run. Short blocks,
    # the engine that goes first alternating by round, and the ratio taken per round (int8
    # block median / the adjacent FP32 block median, then the median over rounds): on a shared
    # machine the load changes within seconds, and a ratio of the two overall medians moved by
    # 0.6-0.9 between runs of this benchmark at load 4 on 2 cores.
    block = 2
    with torch.no_grad():
        for _ in range(2):
            s32.run(None, feed)
            s8.run(None, feed)
        raw8 = s8.run(None, feed)
        t32, t8, paired = alternating_blocks(s32, feed, s8, feed, max(3, iters // block), block)
        net(batch)
        for _ in range(max(3, iters // 2)):
            t0 = time.perf_counter()
            net(batch)
            tpt.append(time.perf_counter() - t0)
        outs = [torch.from_numpy(o) for o in raw8]
        for _ in range(max(3, iters // 2)):
            t0 = time.perf_counter()
            postprocess_outputs(det.model, outs, im_sizes, hw)
            tpp.append(time.perf_counter() - t0)

    def med(v: list[float]) -> float:
        return round(1000 * float(np.median(v)), 2)

    res: dict[str, Any] = {
        "model": f"{name} ({source}), input {hw[0]}x{hw[1]}, lbw-exact {bits}-bit, "
                 f"{threads} thread(s)",
        "model_kwargs": {} if from_run else dict(model_kwargs or {}),
        "input_hw": list(hw),
        "bytes_fp32_safetensors": (out / "fp32.safetensors").stat().st_size
        if float_model is not None else None,
        "bytes_packed_raw": sizes["raw"]["bytes"], "bytes_packed_radix": sizes["radix"]["bytes"],
        "bytes_packed_zlib": sizes["zlib"]["bytes"],
        "ratio_packed_raw": round(sizes["raw"]["ratio"], 2),
        "ratio_packed_radix": round(sizes["radix"]["ratio"], 2),
        "ratio_packed_zlib": round(sizes["zlib"]["ratio"], 2),
        "weight_ratio_packed_raw": round(sizes["raw"]["weight_ratio"], 2),
        "bytes_onnx_fp32": Path(rep["fp32_path"]).stat().st_size,
        "bytes_onnx_int8": Path(rep["path"]).stat().st_size,
        "ms_ort_fp32": med(t32), "ms_ort_int8": med(t8), "ms_torch_fp32": med(tpt),
        "ms_float_postprocess": med(tpp),
        "int8_over_fp32": round(float(np.median(paired)), 3),
        "int8_over_fp32_quartiles": [round(float(q), 3)
                                     for q in np.percentile(paired, [25, 75])],
        "int8_over_fp32_of_medians": round(med(t8) / med(t32), 3),
        "int8_config": rep["config"],
        "exact_pot_weights": f"{sum(v == 'pot-exact' for v in rep['weights'].values())}"
                             f"/{sum(v != 'float' for v in rep['weights'].values())} int8",
        "float_weights": sum(v == "float" for v in rep["weights"].values()),
        "float_convs": _float_convs(rep["path"]),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if from_run and model_kwargs:
        res["model_kwargs_ignored"] = dict(model_kwargs)
    if profile:
        ops = _optimized_ops(rep["path"], out / "model.int8.optimized.onnx")
        res["int8_optimized_ops"] = ops
        res["int8_float_ops"] = sorted(k for k in ops if not k.startswith("QLinear")
                                       and k not in _QUANT_OPS and not k.startswith("Nhwc")
                                       and k != "Transpose")
        res["int8_op_time"] = _op_profile(rep["path"], feed, str(out / "prof_int8"))
        res["fp32_op_time"] = _op_profile(rep["fp32_path"], feed, str(out / "prof_fp32"))
    return res


def run_deploy_bench(bits: int = 4, iters: int = 20, out_dir: str | None = None,
                     models: Sequence[str] = DEFAULT_MODELS, runs: Sequence[str] = (),
                     profile: bool = False, threads: int = 2,
                     model_kwargs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """:func:`bench_one` for each model; ``{model name: results}``. ``model_kwargs``:
    ``{model name: constructor keywords}``; a name that is not in ``models`` raises
    ``ValueError``."""
    model_kwargs = dict(model_kwargs or {})
    stray = sorted(set(model_kwargs) - set(models))
    if stray:
        raise ValueError(f"model keywords given for {', '.join(stray)}, not among the models "
                         f"timed ({', '.join(models)})")
    root = Path(out_dir or tempfile.mkdtemp(prefix="lowbit-deploy-"))
    return {name: bench_one(name, runs, bits, iters, root / name, profile, threads,
                            model_kwargs.get(name))
            for name in models}
