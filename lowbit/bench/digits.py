"""``lowbit bench digits``: quantization-aware training on real data (scikit-learn's digits).

scikit-learn bundles 1,797 real 8x8 handwritten digits (no download). A fixed stratified
split (1,347 train / 450 test, ``random_state=0``: :func:`bench_split`) and fixed seeds make
every row reproducible on one machine. A small CNN (:class:`~lowbit.tasks.digits.DigitsCNN`,
``layout="pooled"``, width 16) is trained in FP32; every quantized row starts from that warm
start:

* ``lbw-exact`` QAT at 2, 4, 6 bits and ``lbw-approx`` at 4, 6 bits (projected SGD, every
  conv, classifier in float: the paper's recipe), TWN, Quantization Networks ternary (soft
  staircase, ``T = T0 * epoch``);
* uniform 8-bit PTQ (weights per channel, activations calibrated on training batches, every
  conv and the classifier);
* clipping-based 8-bit (002): fine-tune with clipped weights and activations, then 8-bit PTQ
  from the clip values, with and without the quantization-drop penalty; the same at 4 bits,
  where the drop is large enough to show the penalty's effect;
* mixed precision: per-layer sensitivity (post-training lbw-exact at 2/3/4/5/6/8 bits, drop
  of the training loss), bits assigned under the weight memory of the 4-bit (and the 3-bit)
  lbw-exact model, then QAT.

Each row reports test accuracy and the weight memory (:func:`lowbit.nn.weight_memory`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lowbit.nn.layers import quant_layers
from lowbit.nn.mixed import assign_bits, sensitivity
from lowbit.nn.surgery import prepare, ptq_from_clips, weight_memory
from lowbit.nn.training import QNSchedule, calibrate, quant_penalty
from lowbit.tasks.digits import DigitsCNN, load_sklearn_digits

__all__ = ["DigitsConfig", "SPLIT", "LAYOUT", "bench_split", "run_digits_bench",
           "format_digits_bench", "train", "accuracy", "ROWS"]

#: The benchmarks' split of :func:`lowbit.tasks.digits.load_sklearn_digits` (1,347 train /
#: 450 test; scikit-learn's ``train_test_split``), shared with benchmarks/bench_per_channel.py.
SPLIT: dict[str, Any] = {"test_fraction": 0.25, "splitter": "sklearn"}
#: The benchmarks' :class:`~lowbit.tasks.digits.DigitsCNN` layout (four convs, max-pool).
LAYOUT = "pooled"


@dataclass
class DigitsConfig:
    """Training settings (SGD, Nesterov momentum 0.9, cosine learning rate, batch 64)."""

    fp32_epochs: int = 30
    qat_epochs: int = 15
    lr: float = 0.1
    qat_lr: float = 0.02
    weight_decay: float = 5e-4
    batch: int = 64
    width: int = 16
    seed: int = 0
    qn_t0: float = 20.0
    penalty: float = 10.0
    threads: int = 1  # the model is tiny: more threads only add synchronisation


def bench_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The benchmarks' split as tensors ``(x_train [1347,1,8,8], y_train [1347], x_test
    [450,1,8,8], y_test [450])``, pixels in [0, 1], labels int64: :data:`SPLIT` of
    :func:`lowbit.tasks.digits.load_sklearn_digits` with ``split_seed=seed``."""
    tr, te = load_sklearn_digits(seed, **SPLIT)
    return (*tr.tensors, *te.tensors)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in percent (eval mode; restores the mode)."""
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean()) * 100.0
    model.train(was)
    return acc


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, cfg: DigitsConfig,
          seed: int, hook: Callable[[nn.Module, float], None] | None = None,
          penalty: float = 0.0, desc: str = "",
          make_opt: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None
          ) -> nn.Module:
    """SGD (Nesterov) with a per-step cosine learning rate; ``hook(model, epoch_float)`` runs
    before every step (QN temperature); ``penalty`` adds :func:`quant_penalty`;
    ``make_opt(model, lr)`` replaces the optimizer (e.g. torchao PARQ's; the cosine rate is set
    on every one of its param groups)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if make_opt is None:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                              momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = make_opt(model, lr)
    n = x.shape[0]
    steps_per = math.ceil(n / cfg.batch)
    total = epochs * steps_per
    model.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(steps_per):
            idx = perm[i * cfg.batch:(i + 1) * cfg.batch]
            if hook is not None:
                hook(model, step / steps_per)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if penalty:
                loss = loss + quant_penalty(model, penalty)
            if not torch.isfinite(loss):
                raise ValueError(f"{desc}: loss became non-finite at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    return model


def _mem(model: nn.Module) -> dict[str, Any]:
    m = weight_memory(model)
    return {"weight_bytes": m["total_bytes"], "quantized_bytes": m["quantized_bytes"],
            "fp32_bytes": m["fp32_bytes"], "compression": m["compression"]}


# rows: name -> (recipe dict or None, kind)
ROWS: tuple[str, ...] = (
    "fp32", "lbw-exact-6", "lbw-exact-4", "lbw-exact-2", "lbw-approx-6", "lbw-approx-4", "twn",
    "qn-ternary", "uniform-8-ptq", "clip-8", "clip-8+penalty", "clip-4", "clip-4+penalty",
    "mixed@4bit-size", "mixed@3bit-size",
)

_QAT = {
    "lbw-exact-6": {"method": "lbw-exact", "bits": 6},
    "lbw-exact-4": {"method": "lbw-exact", "bits": 4},
    "lbw-exact-2": {"method": "lbw-exact", "bits": 2},
    "lbw-approx-6": {"method": "lbw-approx", "bits": 6, "params": {"partial_terms": 4}},
    "lbw-approx-4": {"method": "lbw-approx", "bits": 4, "params": {"partial_terms": 4}},
    "twn": {"method": "twn", "bits": 2},
}


def _clip_recipe(bits: int) -> dict[str, Any]:
    return {"method": "clip", "bits": bits, "layers": ("conv", "linear"),
            "act": {"method": "clip", "bits": bits}}


@torch.no_grad()
def _clip_effect(m: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """What the 8/4-bit step after clipping-based training changes: accuracy of the float
    (clipped) model, of weights-only PTQ, and the KL divergence of the full PTQ model's
    predictions from the float model's (mean over the test set, nats)."""
    out = {"float_clip_acc": accuracy(m, x, y),
           "weight_rel_err": float(quant_penalty(m, 1.0)) / max(len(quant_layers(m)), 1)}
    m.eval()
    p_float = F.log_softmax(m(x), 1)
    q = copy.deepcopy(m)
    for _, layer in quant_layers(q):
        layer.weight_quant.quantize = True
        layer.invalidate()
    out["ptq_weights_only_acc"] = accuracy(q, x, y)
    ptq_from_clips(q)
    p_q = F.log_softmax(q(x), 1)
    out["ptq_kl"] = float(F.kl_div(p_q, p_float, log_target=True, reduction="batchmean"))
    return out


def _run_row(name: str, fp32: nn.Module, data: tuple[Tensor, ...], cfg: DigitsConfig,
             ctx: dict[str, Any]) -> dict[str, Any]:
    xtr, ytr, xte, yte = data
    seed = cfg.seed + 1
    m = copy.deepcopy(fp32)
    extra: dict[str, Any] = {}
    if name == "fp32":
        pass
    elif name in _QAT:
        prepare(m, _QAT[name])
        extra["ptq_acc"] = accuracy(m, xte, yte)  # the warm start quantized, before QAT
        train(m, xtr, ytr, cfg.qat_epochs, cfg.qat_lr, cfg, seed, desc=name)
    elif name == "qn-ternary":
        prepare(m, {"method": "qn", "bits": 2})
        sched = QNSchedule(t0=cfg.qn_t0)
        train(m, xtr, ytr, cfg.qat_epochs, cfg.qat_lr, cfg, seed,
              hook=lambda mod, ep: sched.apply(mod, ep), desc=name)
        extra["final_T"] = sched.temperature(cfg.qat_epochs - 1)
    elif name == "uniform-8-ptq":
        prepare(m, {"method": "uniform", "bits": 8, "params": {"per_channel": True},
                    "layers": ("conv", "linear"), "act": {"method": "uniform", "bits": 8}})
        calibrate(m, (xtr[i:i + 256] for i in range(0, xtr.shape[0], 256)))
    elif name.startswith("clip-"):
        bits = int(name.split("-")[1].split("+")[0])
        lam = cfg.penalty if name.endswith("+penalty") else 0.0
        prepare(m, _clip_recipe(bits))
        train(m, xtr, ytr, cfg.qat_epochs, cfg.qat_lr, cfg, seed, penalty=lam, desc=name)
        extra.update(_clip_effect(m, xte, yte))
        extra["lambda"] = lam
        ptq_from_clips(m)
    elif name.startswith("mixed@"):
        ref_bits = int(name[len("mixed@")])
        ref = prepare(copy.deepcopy(fp32), {"method": "lbw-exact", "bits": ref_bits})
        budget = weight_memory(ref)["quantized_bytes"]

        def neg_loss(mod: nn.Module) -> float:
            with torch.no_grad():
                return -float(F.cross_entropy(mod(xtr), ytr))

        sens = sensitivity(fp32, neg_loss, {"method": "lbw-exact"}, bits=(2, 3, 4, 5, 6, 8))
        recipe = assign_bits(sens, budget)
        prepare(m, recipe)
        train(m, xtr, ytr, cfg.qat_epochs, cfg.qat_lr, cfg, seed, desc=name)
        extra["budget_bytes"] = budget
        extra["bits"] = {k: v["bits"] for k, v in recipe.overrides.items()}
    else:
        raise ValueError(f"unknown digits row {name!r}; known: {', '.join(ROWS)}")
    row = {"name": name, "test_acc": accuracy(m, xte, yte), **_mem(m), **extra}
    ctx[name] = m
    return row


def run_digits_bench(json_out: bool = False, quick: bool = False,
                     rows: tuple[str, ...] | None = None, progress: bool = True,
                     cfg: DigitsConfig | None = None, verbose: bool = True,
                     return_models: bool = False) -> dict[str, Any]:
    """Train FP32 then every quantized row from it; print a table (or JSON) and return
    ``{"config", "n_train", "n_test", "rows": [{"name", "test_acc", "weight_bytes",
    "quantized_bytes", "fp32_bytes", "compression", ...}], "seconds"}``.

    ``quick``: fewer epochs (20 FP32, 8 QAT). ``rows``: a subset of :data:`ROWS` (``fp32`` is
    always trained as the warm start). ``return_models``: add ``"models": {row: nn.Module}``.
    Runs with ``cfg.threads`` intra-op threads (default 1), restored afterwards.
    """
    cfg = cfg or (DigitsConfig(fp32_epochs=20, qat_epochs=8) if quick else DigitsConfig())
    names = tuple(rows) if rows is not None else ROWS
    bad = [r for r in names if r not in ROWS]
    if bad:
        raise ValueError(f"unknown digits row(s) {bad}; known: {', '.join(ROWS)}")
    nthreads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        res = _run(names, cfg, json_out, progress, verbose)
    finally:
        torch.set_num_threads(nthreads)
    if not return_models:
        res.pop("models")
    return res


def _run(names: tuple[str, ...], cfg: DigitsConfig, json_out: bool, progress: bool,
         verbose: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = bench_split(cfg.seed)
    xtr, ytr = data[0], data[1]
    torch.manual_seed(cfg.seed)
    fp32 = DigitsCNN(width=cfg.width, layout=LAYOUT)
    train(fp32, xtr, ytr, cfg.fp32_epochs, cfg.lr, cfg, cfg.seed, desc="fp32")
    ctx: dict[str, Any] = {}
    out_rows = []
    for name in tqdm(names, desc="digits", disable=not progress, leave=False):
        out_rows.append(_run_row(name, fp32, data, cfg, ctx))
    res = {"config": cfg.__dict__.copy(), "n_train": int(xtr.shape[0]),
           "n_test": int(data[2].shape[0]), "rows": out_rows,
           "seconds": time.perf_counter() - t0, "models": ctx}
    if verbose:
        printable = {k: v for k, v in res.items() if k != "models"}
        print(json.dumps(printable, indent=2) if json_out else format_digits_bench(res))
    return res


def format_digits_bench(res: dict[str, Any]) -> str:
    """Markdown table of :func:`run_digits_bench`'s result."""
    base = next((r["test_acc"] for r in res["rows"] if r["name"] == "fp32"), None)
    lines = ["| row | test acc % | vs FP32 | before QAT % | weights (bytes) | "
             "quantized layers (bytes) | x smaller |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        d = "" if base is None else f"{r['test_acc'] - base:+.2f}"
        pre = f"{r['ptq_acc']:.2f}" if "ptq_acc" in r else ""
        lines.append(f"| {r['name']} | {r['test_acc']:.2f} | {d} | {pre} | {r['weight_bytes']} | "
                     f"{r['quantized_bytes']} | {r['compression']:.2f} |")
    lines.append(f"\n{res['n_train']} train / {res['n_test']} test digits; "
                 f"{res['seconds']:.1f} s in all")
    for r in res["rows"]:
        if r["name"].startswith("clip-"):
            lines.append(
                f"{r['name']} (lambda={r['lambda']:g}): float-clip {r['float_clip_acc']:.2f} -> "
                f"weights-only PTQ {r['ptq_weights_only_acc']:.2f} -> PTQ {r['test_acc']:.2f}; "
                f"mean relative weight error {r['weight_rel_err']:.2e}, "
                f"KL(float || PTQ) {r['ptq_kl']:.2e}")
        if r["name"].startswith("mixed"):
            lines.append(f"{r['name']}: budget {r['budget_bytes']} B, bits {r['bits']}")
    return "\n".join(lines)
