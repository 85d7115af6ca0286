"""What makes onnxruntime's int8 faster than FP32 on this CPU: every option measured in one run.

For R-FCN (``rfcn_resnet18``) and YOLOv3-tiny (``yolov3_tiny_darknet``) with lbw-exact 4-bit
weights (initial weights, 10 classes, noise images of 256 x 256 through the model's transform;
or a trained run with ``--run``), the FP32 network is exported once, then quantized by
lowbit's int8 export (:func:`lowbit.export.onnx.quantize_onnx_int8`) with each
:class:`~lowbit.export.onnx.Int8Config` variant:

    QDQ vs QOperator, per-channel vs per-tensor weights, u8s8 vs u8u8 vs s8s8, reduce_range,
    YOLO's LeakyReLU left float (no Q/DQ around it), the stem / thin convs left float (with
    FP32 weights, or int8 weights behind a DequantizeLinear: ``float_conv_weights="int8"``)

and every file runs in onnxruntime at the graph optimisation levels basic / extended / all,
with the layout transformers (``NchwcTransformer`` for FP32, ``NhwcTransformer`` for int8)
switched off, and at batch 1 and 4. All sessions of one model and thread count are timed in
interleaved blocks in this process (spin-waiting off, each block starts with an untimed run);
the figure is the median ms per image and its ratio to FP32 (level all, same batch, same
threads). Each int8 variant's raw outputs are checked against the PyTorch network with the
tolerance of tests/export/test_detect.py (every map within 8% of its largest magnitude).

``--models`` entries take constructor keywords as ``lowbit bench deploy --model-kwargs`` does
(``yolov3_tiny_darknet:width=0.5,image_size=416``; the same model may appear with different
keywords).

``--profile``: onnxruntime's profiler, share of kernel time per operator type for FP32 and the
default int8 file.

``--layers all`` (or ``K``: the K shapes with the most multiply-adds times count): a
single-layer QLinearConv-vs-Conv microbenchmark at every distinct conv shape of each detector
(input C x H x W, weight, stride, padding, BatchNorm after it). Each layer is the detector's own
converted conv (lbw-exact weights) with its BatchNorm, exported alone by lowbit's int8 export
(``export_onnx_int8`` with the detector's default ``Int8Config``, so YOLO's 3-channel stem stays
a float conv with int8 weights, as in the full export), calibrated on that layer's real input
activations (``--layer-images`` images). The FP32 file takes and returns float; the int8 file
has its boundary QuantizeLinear / DequantizeLinear removed, so it takes and returns uint8 as the
conv does inside the int8 network (its session runs ``Transpose -> QLinearConv -> Transpose``,
the FP32 one ``ReorderInput -> Conv -> ReorderOutput``: both pay a layout change a chain of
layers in the full graph pays once). FP32 and int8 sessions alternate in blocks of ``--block``
runs for ``--rounds`` rounds (each block after an untimed run, the engine that goes first
alternating, spinning off); int8/FP32 is the median of the per-round ratios. Per thread count a
markdown table, with the weighted total: the sum over all convs of the network (each shape's
median ms times its count). ``--layers-only`` skips the whole-network measurements.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_int8.py --threads 1 2 --profile --layers 6
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_int8.py --threads 1 --layers all \
        --layers-only --models yolov3_tiny_darknet yolov3_tiny_darknet:width=1.0,image_size=416

Prints the thread count, onnxruntime version, the CPU's int8 instruction sets and the load
average before and after every block of measurements; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def cpu_int8_features() -> list[str]:
    """The CPU flags that decide onnxruntime's int8 GEMM kernel (Linux /proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return [platform.processor() or "unknown"]
    want = ["avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"]
    return [f for f in want if f in flags]


def load() -> float:
    return round(os.getloadavg()[0], 2)


VARIANTS: dict[str, dict[str, Any]] = {
    "qdq/per-channel/u8s8": {},
    "qdq/per-tensor/u8s8": {"per_channel": False},
    "qdq/per-channel/u8u8": {"weights": "u8"},
    "qdq/per-channel/s8s8": {"activations": "s8"},
    "qdq/per-channel/u8s8/reduce-range": {"reduce_range": True},
    "qoperator/per-channel/u8s8": {"quant_format": "qoperator"},
    "qdq/per-channel/u8s8/float LeakyRelu": {"float_ops": ("LeakyRelu",)},
    "qdq/per-channel/u8s8/float stem": {"float_below_channels": 4},
    "qdq/per-channel/u8s8/float stem (int8 weights)": {"float_below_channels": 4,
                                                       "float_conv_weights": "int8"},
    "qoperator/per-channel/u8s8/float stem (int8 weights)": {
        "quant_format": "qoperator", "float_below_channels": 4, "float_conv_weights": "int8"},
    "qdq/per-channel/u8s8/float thin convs (< 16 channels)": {"float_below_channels": 16},
}

SESSION_VARIANTS: dict[str, dict[str, Any]] = {
    "all": {},
    "extended": {"opt_level": "extended"},
    "basic": {"opt_level": "basic"},
    "all, no layout transformer": {"disabled_optimizers": ("NchwcTransformer",
                                                           "NhwcTransformer")},
}


def build(name: str, runs: Sequence[str], bits: int, out: Path,
          model_kwargs: dict[str, Any] | None = None, export: bool = True
          ) -> tuple[Any, list[torch.Tensor], Path, Any]:
    """(prepared model, calibration batches, FP32 ONNX path, DetectorNetwork); the model as
    ``lowbit bench deploy`` builds it (``model_kwargs``: constructor keywords).
    ``export=False``: no whole-network export (the path is returned but not written)."""
    from lowbit.bench.deploy import _model_and_images
    from lowbit.export.detect import DetectorNetwork, calibration_batches, export_detector_onnx
    from lowbit.nn import convert, prepare, quant_layers

    model, ims, source = _model_and_images(name, runs, 16, model_kwargs)
    if not quant_layers(model):
        prepare(model, {"method": "lbw-exact", "bits": bits}).eval()
        convert(model)
    calib = calibration_batches(model, ims, len(ims), batch_size=8)
    fp32 = out / "fp32.onnx"
    if not export:
        print(f"  {name}: {source}, input {tuple(calib[0].shape[-2:])}", flush=True)
        return model, calib, fp32, DetectorNetwork(model).eval()
    rep = export_detector_onnx(model, out / "default.int8.onnx", calib[0][:1],
                               calibration=calib, fp32_path=fp32)
    print(f"  {name}: {source}, input {tuple(calib[0].shape[-2:])}, default int8 "
          f"{rep['config']}, weights {sorted(set(rep['weights'].values()))}", flush=True)
    return model, calib, fp32, DetectorNetwork(model).eval()


def max_rel_error(sess: Any, ref: Sequence[torch.Tensor], batch: torch.Tensor) -> float:
    """Largest ``max|int8 - torch| / max|torch|`` over the network's outputs."""
    outs = sess.run(None, {"input": batch.numpy()})
    return max(float(np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max())
               for o, r in zip(outs, ref))


def time_arms(arms: dict[str, tuple[Any, dict[str, np.ndarray], int]], rounds: int,
              block: int, stat: str = "median", clock: str = "wall") -> dict[str, float]:
    """Median (or ``stat="min"``: fastest) ms per image of each arm ``name -> (session, feed,
    batch size)``, timed in interleaved blocks (arm order rotated every round).
    ``clock="thread"``: the calling thread's CPU time (``time.thread_time``) instead of wall
    time -- at 1 onnxruntime thread every kernel runs on the calling thread, so this leaves
    out the time the scheduler gives to other processes on a shared machine."""
    tick = time.thread_time if clock == "thread" else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            sess, feed, n = arms[k]
            sess.run(None, feed)
            for _ in range(block):
                t0 = tick()
                sess.run(None, feed)
                times[k].append((tick() - t0) / n)
    f = np.min if stat == "min" else np.median
    return {k: 1000.0 * float(f(v)) for k, v in times.items()}


def bench_model(spec: str, threads: Sequence[int], args: argparse.Namespace, root: Path
                ) -> dict[str, Any]:
    """Every measurement for one ``--models`` entry ``NAME[:KEY=VALUE,...]``."""
    from lowbit.bench.deploy import parse_model_kwargs
    from lowbit.export.onnx import Int8Config, ort_session, quantize_onnx_int8

    name, kwargs = parse_model_kwargs(spec) if ":" in spec else (spec, {})
    out = root / "".join(c if c.isalnum() or c in "._-" else "_" for c in spec)
    out.mkdir(parents=True, exist_ok=True)
    model, calib, fp32, net = build(name, args.run, args.bits, out, kwargs,
                                    export=not args.layers_only)
    if args.layers_only:
        return {"layers": layer_bench(spec, net, model, calib, args, out, threads)}
    files = {"fp32": fp32, "lowbit default": out / "default.int8.onnx"}
    errors: dict[str, float] = {}
    x1 = calib[0][:1]
    with torch.no_grad():
        ref = net(x1)
    errors["lowbit default"] = round(max_rel_error(ort_session(files["lowbit default"], 1),
                                                   ref, x1), 4)
    for label, kw in VARIANTS.items():
        if "LeakyRelu" in label and not name.startswith("yolo"):
            continue
        if args.variants and label != "qdq/per-channel/u8s8" and \
                not any(v in label for v in args.variants):
            continue
        f = out / (label.replace("/", "_").replace(" ", "-") + ".onnx")
        quantize_onnx_int8(fp32, f, calib, Int8Config(**kw))
        files[label] = f
        errors[label] = round(max_rel_error(ort_session(f, 1), ref, x1), 4)
    res: dict[str, Any] = {"max_rel_error": errors, "threads": {}}
    batches = {1: x1, 4: calib[0][:4]}
    for t in threads:
        torch.set_num_threads(t)
        arms: dict[str, tuple[Any, dict[str, np.ndarray], int]] = {}
        for label, f in files.items():
            sv = SESSION_VARIANTS if label in ("fp32", "qdq/per-channel/u8s8") and \
                not args.variants else {"all": {}}
            for sname, skw in sv.items():
                sess = ort_session(f, t, spinning=False, **skw)
                bs = (1, 4) if sname == "all" and label in ("fp32", "qdq/per-channel/u8s8") \
                    and not args.variants else (1,)
                for b in bs:
                    arms[f"{label} | {sname} | batch {b}"] = (
                        sess, {"input": batches[b].numpy()}, b)
        l0 = load()
        clock = args.clock if t == 1 else "wall"
        ms = time_arms(arms, args.rounds, args.block, args.stat, clock)
        l1 = load()
        rows = {}
        for k, v in ms.items():
            b = k.rsplit("batch ", 1)[1]
            base = ms[f"fp32 | all | batch {b}"]
            rows[k] = {"ms_per_image": round(v, 2), "over_fp32_all": round(v / base, 3)}
        res["threads"][t] = {"load_average": [l0, l1], "arms": rows}
        res["threads"][t]["clock"] = clock
        print(f"\n  [{name}] {t} thread(s), load average {l0} -> {l1}, {args.stat} ms per "
              f"image ({clock} clock) and ratio to FP32 (level all, same batch) in one run:")
        for k, r in rows.items():
            lab = k.split(" | ")[0]
            err = f"  max rel err {errors[lab]:.4f}" if lab in errors else ""
            print(f"    {k:<58} {r['ms_per_image']:8.2f} ms/img  x{r['over_fp32_all']:.3f}"
                  f"{err}", flush=True)
    if args.profile:
        from lowbit.bench.deploy import _op_profile, _optimized_ops

        feed = {"input": x1.numpy()}
        res["profile"] = {
            "fp32": _op_profile(str(fp32), feed, str(out / "prof_fp32")),
            "int8": _op_profile(str(files["qdq/per-channel/u8s8"]), feed,
                                str(out / "prof_int8")),
            "int8_optimized_ops": _optimized_ops(str(files["qdq/per-channel/u8s8"]),
                                                 out / "int8.optimized.onnx"),
        }
        print(f"\n  [{name}] profile, share of kernel time per op type (1 run of 10, "
              f"2 threads; load {load()}):")
        for k in ("fp32", "int8"):
            print(f"    {k}: " + ", ".join(f"{o} {v:.3f}" for o, v in
                                           list(res["profile"][k].items())[:8]))
        print(f"    int8 optimized graph ops: {res['profile']['int8_optimized_ops']}")
    if args.layers:
        res["layers"] = layer_bench(spec, net, model, calib, args, out, threads)
    del model
    return res


def conv_layers(net: torch.nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Every Conv2d of ``net`` (plain or lowbit's quantized ``QuantConv2d``) in the order it
    runs on the batch ``x`` (``Tensor[N, 3, H, W]``), grouped by shape: one entry per distinct
    (input ``C x H x W``, weight ``[O, C/g, kh, kw]``, strides, pads, dilations, group,
    batch norm after it or not), with ``count`` (how many convs of the net have it), ``name``
    (the first to run), the module and the BatchNorm2d that reads its output (or None), its
    input on ``x`` (``Tensor[N, C, H, W]``: the activations the full export calibrates on),
    output shape, ONNX Conv attributes and multiply-adds per image."""
    found: list[dict[str, Any]] = []
    outs: dict[int, dict[str, Any]] = {}
    hooks = []
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            def hook(m: torch.nn.Conv2d, inp: Any, out: torch.Tensor, name: str = name) -> None:
                w = list(m.weight.shape)
                pad = list(m.padding) * 2 if not isinstance(m.padding, str) else [0] * 4
                d = {"name": name, "module": m, "bn": None, "input": inp[0].detach(),
                     "x": list(inp[0].shape[1:]), "w": w, "y": list(out.shape[1:]),
                     "attrs": {"strides": list(m.stride), "pads": pad,
                               "dilations": list(m.dilation), "group": m.groups,
                               "kernel_shape": w[2:]},
                     "macs": int(np.prod(out.shape[1:])) * int(np.prod(w[1:]))}
                found.append(d)
                outs[id(out)] = d
            hooks.append(mod.register_forward_hook(hook))
        elif isinstance(mod, torch.nn.BatchNorm2d):
            def bn_hook(m: torch.nn.Module, inp: Any, out: torch.Tensor) -> None:
                d = outs.get(id(inp[0]))
                if d is not None and d["bn"] is None:
                    d["bn"] = m
            hooks.append(mod.register_forward_hook(bn_hook))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    groups: dict[str, dict[str, Any]] = {}
    for d in found:
        key = json.dumps([d["x"], d["w"], d["attrs"], d["bn"] is not None])
        if key in groups:
            groups[key]["count"] += 1
            groups[key]["names"].append(d["name"])
        else:
            groups[key] = {**d, "count": 1, "names": [d["name"]]}
    return list(groups.values())


def _strip_boundary_qdq(path: Path) -> tuple[float, int] | None:
    """Make a single-conv QDQ file take and return uint8 as the conv does inside the network:
    drop the QuantizeLinear on the graph input (the input becomes its uint8 output, same
    shape) and the DequantizeLinear on the graph output. Returns the input's (scale, zero
    point), or None when the input is not quantized (a conv the config leaves float)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    q_in = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    if len(q_in) != 1:
        return None
    qn = q_in[0]
    scale, zp = float(inits[qn.input[1]]), int(inits[qn.input[2]])
    dims = [d.dim_value or d.dim_param for d in g.input[0].type.tensor_type.shape.dim]
    new_in = helper.make_tensor_value_info(qn.output[0], TensorProto.UINT8, dims)
    g.node.remove(qn)
    del g.input[:]
    g.input.extend([new_in])
    out = g.output[0]
    dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == out.name]
    if len(dq) == 1:
        odims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
        new_out = helper.make_tensor_value_info(dq[0].input[0], TensorProto.UINT8, odims)
        g.node.remove(dq[0])
        del g.output[:]
        g.output.extend([new_out])
    onnx.save(m, str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return scale, zp


def single_layer_files(layer: dict[str, Any], cfg: Any, out: Path, tag: str
                       ) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray],
                                  str]:
    """The layer alone (its converted conv and the BatchNorm after it, folded by the export)
    exported by lowbit's int8 export (:func:`lowbit.export.onnx.export_onnx_int8`, Int8Config
    ``cfg``: the detector's default) calibrated on the layer's real input batch; the FP32
    intermediate is the FP32 file. The int8 file then takes / returns uint8
    (:func:`_strip_boundary_qdq`). Returns (FP32 path, int8 path, FP32 feed ``{name:
    float32[1, C, H, W]}``, int8 feed (uint8, quantized with the file's input scale), the
    weight report of the conv: ``pot-exact`` / ``ort`` / ``float``...)."""
    from lowbit.export.onnx import export_onnx_int8

    mods = [copy.deepcopy(layer["module"])]
    if layer["bn"] is not None:
        mods.append(copy.deepcopy(layer["bn"]))
    single = torch.nn.Sequential(*mods).eval()
    f32, f8 = out / f"{tag}.fp32.onnx", out / f"{tag}.int8.onnx"
    x = layer["input"]
    rep = export_onnx_int8(single, x[:1], f8, [x], config=cfg, fp32_path=f32)
    feed32 = {"input": x[:1].numpy()}
    q = _strip_boundary_qdq(f8)
    if q is None:
        feed8 = feed32
    else:
        scale, zp = q
        import onnx

        name = onnx.load(str(f8)).graph.input[0].name
        feed8 = {name: np.clip(np.round(x[:1].numpy() / scale) + zp, 0, 255).astype(np.uint8)}
    wrep = ",".join(sorted(set(rep["weights"].values()))) or "?"
    return f32, f8, feed32, feed8, wrep


def paired_ratio(s32: Any, feed32: dict[str, np.ndarray], s8: Any,
                 feed8: dict[str, np.ndarray], rounds: int, block: int
                 ) -> tuple[float, float, float, list[float]]:
    """FP32 and int8 sessions timed in alternating blocks of ``block`` runs (each block after
    one untimed run, the engine that goes first alternating by round), as
    ``lowbit bench deploy`` does (:func:`lowbit.bench.deploy.alternating_blocks`). Returns
    (FP32 median ms, int8 median ms, median over rounds of int8 block median / FP32 block
    median, that ratio's quartiles)."""
    from lowbit.bench.deploy import alternating_blocks

    t32, t8, ratios = alternating_blocks(s32, feed32, s8, feed8, rounds, block)
    q = [round(float(v), 3) for v in np.percentile(ratios, [25, 75])]
    return (1000 * float(np.median(t32)), 1000 * float(np.median(t8)),
            float(np.median(ratios)), q)


def layer_bench(label: str, net: torch.nn.Module, model: Any, calib: Sequence[torch.Tensor],
                args: argparse.Namespace, out: Path, threads: Sequence[int]
                ) -> list[dict[str, Any]]:
    """Single-layer Conv (FP32) vs QLinearConv (int8) at every distinct conv shape of the
    detector (``--layers all``; ``--layers K``: the K shapes with the most multiply-adds per
    image summed over their layers), each layer exported alone by lowbit's int8 export with
    the detector's default config, timed per thread count with :func:`paired_ratio`; prints a
    markdown table per thread count with the weighted total (sum over all convs of the net:
    each shape's median ms x its count)."""
    from lowbit.export.detect import default_int8
    from lowbit.export.onnx import ort_session

    cfg = default_int8(model)
    layers = conv_layers(net, calib[0][:args.layer_images])
    if args.layers != "all":
        layers = sorted(layers, key=lambda d: -d["macs"] * d["count"])[:int(args.layers)]
    files = []
    for i, layer in enumerate(layers):
        files.append(single_layer_files(layer, cfg, out, f"layer{i}"))
        layer["input"] = None  # free the activations
    rows: list[dict[str, Any]] = []
    for t in threads:
        l0 = load()
        tab = []
        for layer, (f32, f8, feed32, feed8, wrep) in zip(layers, files):
            s32 = ort_session(f32, t, spinning=False)
            s8 = ort_session(f8, t, spinning=False)
            ms32, ms8, ratio, quart = paired_ratio(s32, feed32, s8, feed8, args.rounds,
                                                   args.block)
            del s32, s8
            tab.append({"threads": t, "layer": layer["name"], "count": layer["count"],
                        "int8_conv": feed8 is not feed32,
                        "layers": layer["names"], "x": layer["x"], "w": layer["w"],
                        "stride": layer["attrs"]["strides"], "bn_folded": layer["bn"] is not None,
                        "int8_weights": wrep, "mmacs": round(layer["macs"] / 1e6, 2),
                        "ms_fp32": round(ms32, 4), "ms_int8": round(ms8, 4),
                        "int8_over_fp32": round(ratio, 3), "quartiles": quart})
        l1 = load()
        tot32 = sum(r["ms_fp32"] * r["count"] for r in tab)
        tot8 = sum(r["ms_int8"] * r["count"] for r in tab)
        n = sum(r["count"] for r in tab)
        print(f"\n  [{label}] single layer: Conv (FP32, float in/out) vs int8 QDQ "
              f"({cfg.label}; uint8 in/out, fused to QLinearConv), {t} thread(s), "
              f"median ms of {args.rounds} rounds x {args.block} runs per engine, int8/FP32 = "
              f"median of per-round ratios [quartiles]; load average {l0} -> {l1}, "
              f"onnxruntime spinning off\n")
        print("  | layer (x count) | input C×H×W | weight | stride | MMAC | FP32 ms | int8 ms "
              "| int8/FP32 |")
        print("  |---|---|---|---|---:|---:|---:|---|")
        for r in tab:
            flt = "" if r["int8_conv"] else " (float conv)"
            print(f"  | {r['layer']} (×{r['count']}){flt} | {'×'.join(map(str, r['x']))} | "
                  f"{'×'.join(map(str, r['w']))} | {r['stride'][0]} | {r['mmacs']} | "
                  f"{r['ms_fp32']:.3f} | {r['ms_int8']:.3f} | {r['int8_over_fp32']:.3f} "
                  f"[{r['quartiles'][0]:.2f}, {r['quartiles'][1]:.2f}] |")
        print(f"  | **weighted total** ({n} convs, {len(tab)} shapes) | | | | "
              f"{sum(r['mmacs'] * r['count'] for r in tab):.0f} | {tot32:.3f} | {tot8:.3f} | "
              f"**{tot8 / tot32:.3f}** |", flush=True)
        rows.extend(tab)
        rows.append({"threads": t, "layer": "weighted total", "count": n,
                     "ms_fp32": round(tot32, 3), "ms_int8": round(tot8, 3),
                     "int8_over_fp32": round(tot8 / tot32, 3), "load_average": [l0, l1]})
    return rows


def _layers_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None
    if k < 0:
        raise argparse.ArgumentTypeError(f"expected K >= 0, got {text!r}")
    return k


def main(argv: Sequence[str] | None = None) -> int:
    import onnxruntime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["rfcn_resnet18", "yolov3_tiny_darknet"],
                   metavar="NAME[:KEY=VALUE,...]",
                   help="detectors, each with optional constructor keywords as `lowbit bench "
                        "deploy --model-kwargs` takes them, e.g. "
                        "yolov3_tiny_darknet:width=0.5,image_size=416")
    p.add_argument("--run", nargs="*", default=[], metavar="RUN")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    p.add_argument("--block", type=int, default=3, help="timed runs per arm per round")
    p.add_argument("--variants", nargs="*", default=[],
                   help="only the int8 variants whose label contains one of these (plus the "
                        "default; no session / batch variants)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="per-arm statistic (min is the sturdier one on a loaded machine)")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="thread: CPU time of the calling thread at 1 thread (other thread "
                        "counts stay wall-clock); sturdier on a shared machine")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--layers", type=_layers_arg, default=0, metavar="K|all",
                   help="single-layer Conv vs QLinearConv microbenchmark at every distinct conv "
                        "shape of each detector (all) or the K costliest (multiply-adds x "
                        "count), at each --threads, with --rounds x --block runs")
    p.add_argument("--layers-only", action="store_true",
                   help="only the single-layer microbenchmark (no whole-network export, "
                        "variants or profile); needs --layers")
    p.add_argument("--layer-images", type=int, default=4,
                   help="images whose activations calibrate each single layer (default 4)")
    p.add_argument("--out", default=None, help="folder for the ONNX files (default: tmp)")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    # onnxruntime's quantizer logs "Please consider pre-processing" once per file
    logging.getLogger().setLevel(logging.ERROR)
    if args.layers_only and not args.layers:
        p.error("--layers-only needs --layers K or --layers all")
    for spec in args.models:
        if ":" in spec:
            from lowbit.bench.deploy import parse_model_kwargs

            try:
                parse_model_kwargs(spec)
            except ValueError as exc:
                p.error(f"--models: {exc}")
    if any(t < 1 for t in args.threads):
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    root = Path(args.out or tempfile.mkdtemp(prefix="lowbit-int8-bench-"))
    head = {"onnxruntime": onnxruntime.__version__, "cpu_int8_features": cpu_int8_features(),
            "cpu_count": os.cpu_count(), "threads": args.threads, "load_average": load(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(f"bench_int8: {json.dumps(head)}", flush=True)
    results = {"head": head}
    for spec in args.models:
        results[spec] = bench_model(spec, args.threads, args, root)
    results["load_average_end"] = load()
    print(f"\nload average at end: {results['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(copy.deepcopy(results), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
