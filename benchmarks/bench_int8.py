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

``--profile``: onnxruntime's profiler, share of kernel time per operator type for FP32 and the
default int8 file. ``--layers K``: a single-layer QLinearConv-vs-Conv microbenchmark at the K
costliest conv shapes of each detector (same input, same weights, same session options).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_int8.py --threads 1 2 --profile --layers 6

Prints the thread count, onnxruntime version, the CPU's int8 instruction sets and the load
average before and after every block of measurements; ``--json FILE`` writes everything.
"""

from __future__ import annotations

import argparse
import copy
import json
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


def build(name: str, runs: Sequence[str], bits: int, out: Path
          ) -> tuple[Any, list[torch.Tensor], Path, Any]:
    """(prepared model, calibration batches, FP32 ONNX path, DetectorNetwork)."""
    from lowbit.bench.deploy import _model_and_images
    from lowbit.export.detect import DetectorNetwork, calibration_batches, export_detector_onnx
    from lowbit.nn import convert, prepare, quant_layers

    model, ims, source = _model_and_images(name, runs, 16)
    if not quant_layers(model):
        prepare(model, {"method": "lbw-exact", "bits": bits}).eval()
        convert(model)
    calib = calibration_batches(model, ims, len(ims), batch_size=8)
    fp32 = out / "fp32.onnx"
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


def bench_model(name: str, threads: Sequence[int], args: argparse.Namespace, root: Path
                ) -> dict[str, Any]:
    from lowbit.export.onnx import Int8Config, ort_session, quantize_onnx_int8

    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    model, calib, fp32, net = build(name, args.run, args.bits, out)
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
        res["layers"] = layer_bench(net, calib, args, out, threads)
    del model
    return res


def conv_shapes(net: torch.nn.Module, x: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """The ``k`` Conv2d layers of ``net`` with the most multiply-adds on input ``x``, and the
    stem conv (the first to run) if it is not among them: input, weight and output shapes and
    the ONNX Conv attributes."""
    found: list[dict[str, Any]] = []
    hooks = []
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            def hook(m: torch.nn.Conv2d, inp: Any, out: torch.Tensor, name: str = name) -> None:
                w = list(m.weight.shape)
                pad = list(m.padding) * 2 if not isinstance(m.padding, str) else [0] * 4
                found.append({"name": name, "x": list(inp[0].shape), "w": w,
                              "y": list(out.shape),
                              "attrs": {"strides": list(m.stride), "pads": pad,
                                        "dilations": list(m.dilation), "group": m.groups,
                                        "kernel_shape": w[2:]},
                              "macs": int(np.prod(out.shape)) * int(np.prod(w[1:]))})
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    top = sorted(found, key=lambda d: -d["macs"])[:k]
    stem = found[0]  # the first conv to run: the one on the RGB image
    return top if stem in top else [stem, *top]


def single_conv(path: Path, layer: dict[str, Any]) -> None:
    """A one-Conv FP32 ONNX file (random power-of-two weights, zero bias)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(0)
    w = (np.sign(g.standard_normal(layer["w"])) * 2.0 ** -g.integers(3, 7, layer["w"])
         ).astype(np.float32)
    b = np.zeros(layer["w"][0], np.float32)
    node = helper.make_node("Conv", ["input", "w", "b"], ["out"], **layer["attrs"])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, layer["x"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, layer["y"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def layer_bench(net: torch.nn.Module, calib: Sequence[torch.Tensor], args: argparse.Namespace,
                out: Path, threads: Sequence[int]) -> list[dict[str, Any]]:
    from lowbit.export.onnx import ort_session, quantize_onnx_int8

    rows = []
    layers = conv_shapes(net, calib[0][:1], args.layers)
    for t in threads:
        print(f"\n  single-layer Conv (FP32) vs QLinearConv (QDQ u8s8 per-channel), {t} "
              f"thread(s), load {load()}:")
        for i, layer in enumerate(layers):
            f32 = out / f"layer{i}.fp32.onnx"
            f8 = out / f"layer{i}.int8.onnx"
            single_conv(f32, layer)
            g = torch.Generator().manual_seed(i)
            xs = [torch.rand(layer["x"], generator=g) * 4 - 1 for _ in range(2)]
            quantize_onnx_int8(f32, f8, xs)
            feed = {"input": xs[0].numpy()}
            arms = {"fp32": (ort_session(f32, t, spinning=False), feed, 1),
                    "int8": (ort_session(f8, t, spinning=False), feed, 1)}
            ms = time_arms(arms, args.rounds, args.block * 2)
            gmacs = layer["macs"] / 1e9
            row = {"threads": t, "layer": layer["name"], "x": layer["x"], "w": layer["w"],
                   "stride": layer["attrs"].get("strides"), "gmacs": round(gmacs, 4),
                   "ms_fp32": round(ms["fp32"], 3), "ms_int8": round(ms["int8"], 3),
                   "int8_over_fp32": round(ms["int8"] / ms["fp32"], 3),
                   "gmacs_per_s_fp32": round(gmacs / ms["fp32"] * 1000, 1),
                   "gmacs_per_s_int8": round(gmacs / ms["int8"] * 1000, 1)}
            rows.append(row)
            print(f"    {layer['name']:<28} x{layer['x']} w{layer['w']} "
                  f"s{row['stride']}: fp32 {row['ms_fp32']:.3f} ms "
                  f"({row['gmacs_per_s_fp32']} GMAC/s), int8 {row['ms_int8']:.3f} ms "
                  f"({row['gmacs_per_s_int8']} GMAC/s), x{row['int8_over_fp32']:.3f}",
                  flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    import onnxruntime

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["rfcn_resnet18", "yolov3_tiny_darknet"])
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
    p.add_argument("--layers", type=int, default=0, metavar="K",
                   help="single-layer microbenchmark of the K costliest convs")
    p.add_argument("--out", default=None, help="folder for the ONNX files (default: tmp)")
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args(argv)
    if any(t < 1 for t in args.threads):
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    root = Path(args.out or tempfile.mkdtemp(prefix="lowbit-int8-bench-"))
    head = {"onnxruntime": onnxruntime.__version__, "cpu_int8_features": cpu_int8_features(),
            "cpu_count": os.cpu_count(), "threads": args.threads, "load_average": load(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(f"bench_int8: {json.dumps(head)}", flush=True)
    results = {"head": head}
    for name in args.models:
        results[name] = bench_model(name, args.threads, args, root)
    results["load_average_end"] = load()
    print(f"\nload average at end: {results['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(copy.deepcopy(results), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
