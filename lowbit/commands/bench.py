"""`lowbit bench <what>`: speed/accuracy measurements that print ratios measured in one run."""

from __future__ import annotations

import argparse
import json


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return vals


def _quantizers(args: argparse.Namespace) -> int:
    from lowbit.bench.quantizers import (
        format_model_pass_bench,
        format_quantizer_bench,
        run_model_pass_bench,
        run_quantizer_bench,
    )

    for b in args.model_bits:
        if not 2 <= b <= 8:
            raise ValueError(f"--model-bits must be in [2, 8], got {b}")
    out: dict = {}
    if not args.model_only:
        out["quantizers"] = run_quantizer_bench(repeats=args.repeats, progress=not args.json)
    out["model_pass"] = run_model_pass_bench(threads=args.model_threads, bits=args.model_bits,
                                             repeats=args.repeats, progress=not args.json)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        if "quantizers" in out:
            print(format_quantizer_bench(out["quantizers"]) + "\n")
        print(format_model_pass_bench(out["model_pass"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (quantizers, qat, digits, deploy)",
        description="Benchmarks. Each prints ratios measured within one run.",
    )
    bsub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    q = bsub.add_parser(
        "quantizers",
        help="time every quantizer on ResNet-50-shaped weights vs one abs().max() pass",
        description="Full-model pass of each weight quantizer over ResNet-50's 25.5 M weights "
        "(real per-layer shapes, random values), against one abs().max() pass and the paper's "
        "sort-based ternary formula, in the same run; then the whole-model LBW pass "
        "(lbw_exact once per layer vs lbw_exact_many once for all layers, per tensor and per "
        "channel) at each of --model-threads, ratios to abs().max() measured in the same run.",
    )
    q.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median kept)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--model-only", action="store_true",
                   help="only the whole-model comparison (lbw_exact per layer vs lbw_exact_many "
                   "per tensor / per channel vs abs().max(), clone, sort, torch fake-quant)")
    q.add_argument("--model-threads", type=_int_list, default=(1, 2), metavar="T[,T...]",
                   help="thread counts of the whole-model comparison, all measured in this one "
                   "run (default 1,2)")
    q.add_argument("--model-bits", type=_int_list, default=(2, 4, 6), metavar="B[,B...]",
                   help="bit-widths of the whole-model comparison (default 2,4,6)")
    q.set_defaults(func=_quantizers)
    add_bench_subcommands(bsub)
    add_deploy_bench(bsub)


def _model_kwargs_arg(text: str) -> tuple[str, dict]:
    """``--model-kwargs MODEL:K=V[,K=V...]``: parsed (:func:`lowbit.bench.deploy.
    parse_model_kwargs`), the model name checked against the registry and the keywords against
    its constructor (the model is built on the ``meta`` device: no memory, no weights)."""
    import torch

    from lowbit.bench.deploy import parse_model_kwargs
    from lowbit.detection.registry import create_model, list_models

    try:
        name, kwargs = parse_model_kwargs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name not in list_models():
        raise argparse.ArgumentTypeError(
            f"unknown model {name!r} in {text!r}; known: {', '.join(list_models())}")
    try:
        with torch.device("meta"):
            create_model(name, 10, **kwargs)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return name, kwargs


def _bench(args: argparse.Namespace) -> int:
    from lowbit.bench.deploy import run_deploy_bench

    kwargs: dict[str, dict] = {}
    for name, kw in args.model_kwargs:
        kwargs.setdefault(name, {}).update(kw)
    res = run_deploy_bench(bits=args.bits, iters=args.iters, out_dir=args.out,
                           models=args.models, runs=args.run, profile=args.profile,
                           threads=args.threads, model_kwargs=kwargs)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for name, r in res.items():
            print(f"[{name}]")
            print("\n".join(f"  {k}: {v}" for k, v in r.items()))
    return 0


def add_deploy_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `lowbit bench deploy` to the `bench` verb's subparsers."""
    p = bench_subparsers.add_parser(
        "deploy", help="onnxruntime FP32 vs int8 latency, PyTorch eager, file sizes",
        description="For each detector: onnxruntime FP32 vs int8 QDQ latency of the exported "
                    "network (2 threads, same input, alternating blocks, one process), PyTorch "
                    "FP32 eager, float post-processing time, and FP32 / packed / ONNX file sizes.")
    p.add_argument("--models", nargs="+", default=["rfcn_resnet18", "yolov3_tiny_darknet"],
                   metavar="MODEL",
                   help="detectors to export and time: rfcn_* or yolov3_* names of "
                        "lowbit.detection.list_models() (default: %(default)s)")
    p.add_argument("--run", nargs="*", default=[], metavar="RUN",
                   help="trained run folders; used for the model of the same name (else the "
                        "model's initial weights on noise images)")
    p.add_argument("--model-kwargs", type=_model_kwargs_arg, action="append", default=[],
                   metavar="MODEL:KEY=VALUE[,KEY=VALUE...]",
                   help="constructor keywords of one of --models, e.g. "
                        "yolov3_tiny_darknet:width=0.5,image_size=416 (repeatable; values read "
                        "as int, float, true/false, none, else a string); the noise images take "
                        "the model's input size and the results record the keywords. With a "
                        "--run of that model the run's config wins and these are ignored")
    p.add_argument("--profile", action="store_true",
                   help="onnxruntime profiler: time per operator type, ops left float")
    p.add_argument("--bits", type=int, default=4, help="lbw-exact bits for FP32 runs")
    p.add_argument("--threads", type=int, default=2,
                   help="onnxruntime intra-op and PyTorch threads (2 as the issue asks; on an "
                        "oversubscribed machine 1 avoids spin-wait collapse)")
    p.add_argument("--iters", type=int, default=20,
                   help="timed forward passes per engine and model, after warm-up, in "
                        "alternating blocks (default: %(default)s)")
    p.add_argument("--out", default=None, help="folder for the exported files (default: tmp)")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON instead of the per-model listing")
    p.set_defaults(func=_bench)


def _digits(args: argparse.Namespace) -> int:
    from lowbit.bench.digits import run_digits_bench

    run_digits_bench(json_out=args.json, quick=args.quick, progress=not args.json)
    return 0


def _qat(args: argparse.Namespace) -> int:
    from lowbit.bench.qat import run_qat_bench

    run_qat_bench(json_out=args.json, quick=args.quick, steps=args.steps,
                  input_size=args.input_size, batch=args.batch, method=args.method,
                  bits=args.bits, progress=not args.json, threads=args.threads)
    return 0


def add_bench_subcommands(bench_sub: argparse._SubParsersAction) -> None:
    """Add the ``digits`` and ``qat`` sub-verbs to ``lowbit bench``'s sub-parsers."""
    d = bench_sub.add_parser(
        "digits",
        help="QAT on scikit-learn's real 8x8 digits: FP32 vs LBW/TWN/QN/PTQ/clipping/mixed",
        description="Train a small CNN on scikit-learn's 1,797 bundled handwritten digits "
        "(fixed split and seeds) in FP32, then from that warm start: lbw-exact QAT at 2/4/6 "
        "bits, lbw-approx at 4/6, TWN, Quantization Networks ternary, uniform 8-bit PTQ, "
        "clipping-based 8-bit (and 4-bit) with/without the quantization-drop penalty, and a "
        "mixed-precision recipe at the 4-bit model's weight size. Prints test accuracy and "
        "weight memory per row.",
    )
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("--quick", action="store_true", help="fewer epochs (smoke run)")
    d.set_defaults(func=_digits)
    q = bench_sub.add_parser(
        "qat",
        help="training-step time of lbw-exact 6-bit QAT vs FP32 on a ResNet-18-shaped model",
        description="Mean step time (forward, backward, SGD) of a ResNet-18-shaped classifier "
        "at batch 16 with every conv under lbw-exact 6-bit vs FP32, steps alternating in one "
        "run; prints both and their ratio (target <= 1.10).",
    )
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--quick", action="store_true", help="4 steps at input 64 (smoke run)")
    q.add_argument("--steps", type=int, default=12, help="timed steps per model")
    q.add_argument("--input-size", type=int, default=144, help="input height = width")
    q.add_argument("--batch", type=int, default=16, help="batch size")
    q.add_argument("--method", default="lbw-exact", help="weight quantizer (registry name)")
    q.add_argument("--bits", type=int, default=6, help="bit-width")
    q.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    q.set_defaults(func=_qat)
