"""Per-layer against per-channel power-of-two scales (LBW, ``lbw-exact``) after the same QAT,
beside torchao PARQ's ternary and uniform quantizers (an optional peer, skipped when torchao is
not installed: ``pip install -e ".[parq]"``).

Task: scikit-learn's 8x8 digits (1,347 train / 450 test, the split of ``lowbit bench digits``).
Models: the digits CNN of ``lowbit bench digits`` (:class:`lowbit.tasks.digits.DigitsCNN`,
``layout="pooled"``, width 16; ``digits-wN`` for width N) and pytorchcv's ``resnet20_cifar10``
(1 input channel, adaptive final pooling; the ``zoo`` extra). Results and their commands:
docs/per_channel.md.

For each model and seed: FP32 training from ``torch.manual_seed(seed)`` (SGD Nesterov 0.9,
cosine learning rate, batch 64, weight decay 5e-4), then every quantized row starts from that
FP32 model and runs the same QAT (same epochs, learning rate, schedule and batch order, seed + 1):

* ``lbw-layer-b``: ``lbw-exact`` at b bits, one power-of-two exponent per layer (projected SGD:
  float weights trained through the quantized forward);
* ``lbw-ch-b``: the same with ``per_channel=True`` (one exponent per output channel);
* ``parq-ternary``: PARQ ``QuantOptimizer`` with ``LSBQuantizer(optimal=True)`` at
  ``quant_bits=0`` (least-squares ternary ``{0, +-a_c}``, one float ``a_c`` per output channel),
  hard-quantization prox map (``ProxHardQuant``: the straight-through / projected-SGD analogue),
  quantization targets updated every step;
* ``parq-unif-b``: the same with ``UnifQuantizer()`` (2^b uniform symmetric levels per output
  channel) at b bits.

Only conv weights are quantized in every row (the classifier, BatchNorm and biases stay float:
the paper's recipe, as ``lowbit bench digits``). Test accuracy (%) of the final model, mean +-
sample sd over seeds. Single-threaded; prints the thread count and the load average.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_per_channel.py [--seeds 3]
[--models digits,digits-w4,resnet20] [--quick] [--json out.json]``; ``--seed-list 1`` runs
chosen seeds (one process each), ``--merge a.json b.json`` prints their joint table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.bench.digits import LAYOUT, DigitsConfig, accuracy, bench_split
from lowbit.bench.digits import train as _digits_train
from lowbit.nn import prepare
from lowbit.tasks.digits import DigitsCNN

BITS = (2, 3, 4)


def _have_parq() -> bool:
    try:
        import torchao.prototype.parq  # noqa: F401
    except Exception:  # torchao absent, or its import fails against this torch
        return False
    return True


def build_model(name: str) -> nn.Module:
    """``digits``: the bench's DigitsCNN (``layout="pooled"``) at width 16; ``digits-wN``: at
    width N (e.g. ``digits-w4``, where quantization costs more); ``resnet20``: pytorchcv
    resnet20_cifar10 for 1x8x8 digits."""
    if name == "digits":
        return DigitsCNN(width=16, layout=LAYOUT)
    if name.startswith("digits-w") and name[len("digits-w"):].isdigit():
        return DigitsCNN(width=int(name[len("digits-w"):]), layout=LAYOUT)
    if name == "resnet20":
        from pytorchcv.model_provider import get_model

        m = get_model("resnet20_cifar10", pretrained=False, in_channels=1, in_size=(8, 8),
                      num_classes=10)
        m.features.final_pool = nn.AdaptiveAvgPool2d(1)
        return m
    raise ValueError(f"bench_per_channel: unknown model {name!r} (digits, digits-wN, resnet20)")


def _conv_weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]


def _sgd_groups(model: nn.Module, quant: list[nn.Parameter], bits: int | None
                ) -> list[dict[str, Any]]:
    ids = {id(p) for p in quant}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if bits is None:
        return [{"params": list(model.parameters())}]
    return [{"params": rest}, {"params": quant, "quant_bits": bits}]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int,
          make_opt: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None,
          batch: int = 64, wd: float = 5e-4) -> nn.Module:
    """SGD (Nesterov 0.9, weight decay ``wd``) with a per-step cosine learning rate; the batch
    order comes from ``seed``. ``make_opt(model, lr)`` replaces the optimizer (PARQ). The loop
    is :func:`lowbit.bench.digits.train`'s."""
    cfg = DigitsConfig(batch=batch, weight_decay=wd)
    return _digits_train(model, x, y, epochs, lr, cfg, seed, desc="bench_per_channel",
                         make_opt=make_opt)


def _parq_opt(kind: str, bits: int) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    from torchao.prototype.parq import (
        LSBQuantizer,
        ProxHardQuant,
        QuantOptimizer,
        UnifQuantizer,
    )

    def make(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        quant = _conv_weights(model)
        b = 0 if kind == "ternary" else bits
        base = torch.optim.SGD(_sgd_groups(model, quant, b), lr=lr, momentum=0.9,
                               nesterov=True, weight_decay=5e-4)
        q = LSBQuantizer(optimal=True) if kind == "ternary" else UnifQuantizer()
        return QuantOptimizer(base, q, ProxHardQuant(), quant_period=1, quant_per_channel=True)

    return make


def rows(parq: bool, parq_uniform: bool = True) -> list[str]:
    out = ["fp32"] + [f"lbw-layer-{b}" for b in BITS] + [f"lbw-ch-{b}" for b in BITS]
    if parq:
        out += ["parq-ternary"] + ([f"parq-unif-{b}" for b in BITS] if parq_uniform else [])
    return out


def run_model(name: str, seeds: list[int], fp32_epochs: int, qat_epochs: int, lr: float,
              qat_lr: float, parq: bool, log: Callable[[str], None],
              parq_uniform: bool = True) -> dict[str, list[float]]:
    """``{row: [test accuracy per seed]}`` for model ``name``."""
    xtr, ytr, xte, yte = bench_split(0)
    res: dict[str, list[float]] = {r: [] for r in rows(parq, parq_uniform)}
    for seed in seeds:
        torch.manual_seed(seed)
        fp32 = train(build_model(name), xtr, ytr, fp32_epochs, lr, seed)
        res["fp32"].append(accuracy(fp32, xte, yte))
        for row in list(res)[1:]:
            t0 = time.perf_counter()
            m = copy.deepcopy(fp32)
            if row.startswith("lbw-"):
                bits = int(row.rsplit("-", 1)[1])
                params = {"per_channel": True} if row.startswith("lbw-ch") else {}
                prepare(m, {"method": "lbw-exact", "bits": bits, "params": params,
                            "min_coverage": 0.9})
                train(m, xtr, ytr, qat_epochs, qat_lr, seed + 1)
            else:
                kind = "ternary" if row == "parq-ternary" else "unif"
                bits = 0 if kind == "ternary" else int(row.rsplit("-", 1)[1])
                train(m, xtr, ytr, qat_epochs, qat_lr, seed + 1, make_opt=_parq_opt(kind, bits))
            acc = accuracy(m, xte, yte)
            res[row].append(acc)
            log(f"{name} seed {seed} {row}: {acc:.2f}% ({time.perf_counter() - t0:.1f} s)")
        log(f"{name} seed {seed} fp32: {res['fp32'][-1]:.2f}%")
    return res


def _ms(v: list[float]) -> str:
    if len(v) < 2:
        return f"{v[0]:.2f}" if v else "-"
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def table(results: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: one row per quantizer row, one column per model, mean ± sd (%)."""
    names = list(results)
    all_rows = list(dict.fromkeys(r for res in results.values() for r in res))
    lines = ["| row | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in all_rows:
        lines.append(f"| {r} | " + " | ".join(_ms(results[n].get(r, [])) for n in names) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, dict[str, list[float]]]) -> list[str]:
    """The target: per-channel 2-bit LBW within 0.5 point of PARQ's ternary (mean)."""
    out = []
    for n, res in results.items():
        if "parq-ternary" not in res or not res["parq-ternary"]:
            continue
        d = statistics.mean(res["lbw-ch-2"]) - statistics.mean(res["parq-ternary"])
        ok = d >= -0.5
        out.append(f"{n}: lbw-ch-2 - parq-ternary = {d:+.2f} points: target "
                   f"{'met' if ok else 'NOT met'} (within 0.5)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    ap.add_argument("--seed-list", default=None,
                    help="comma-separated seeds instead (to run seeds in separate processes)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="print the table of earlier --json outputs (seeds concatenated)")
    ap.add_argument("--models", default="digits,resnet20")
    ap.add_argument("--quick", action="store_true", help="fewer epochs (12 FP32, 6 QAT)")
    ap.add_argument("--fp32-epochs", type=int, default=None, help="override (default 30)")
    ap.add_argument("--qat-epochs", type=int, default=None, help="override (default 15)")
    ap.add_argument("--no-parq", action="store_true", help="skip the torchao PARQ rows")
    ap.add_argument("--no-parq-uniform", action="store_true",
                    help="of the PARQ rows, run only the ternary one")
    ap.add_argument("--json", default=None, help="write the per-seed results here")
    args = ap.parse_args(argv)
    if args.merge:
        return _merge(args.merge)
    torch.set_num_threads(1)
    seeds = ([int(v) for v in args.seed_list.split(",")] if args.seed_list
             else list(range(args.seeds)))
    fp32_epochs, qat_epochs = (12, 6) if args.quick else (30, 15)
    fp32_epochs = args.fp32_epochs if args.fp32_epochs is not None else fp32_epochs
    qat_epochs = args.qat_epochs if args.qat_epochs is not None else qat_epochs
    if fp32_epochs < 1 or qat_epochs < 1:
        raise ValueError(f"bench_per_channel: epochs must be >= 1, got FP32 {fp32_epochs}, "
                         f"QAT {qat_epochs}")
    parq = not args.no_parq and _have_parq()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load = os.getloadavg()
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; PARQ "
          f"{'on' if parq else 'absent (pip install -e .[parq])'}; epochs FP32 {fp32_epochs}, "
          f"QAT {qat_epochs}; seeds {seeds}")
    t0 = time.perf_counter()
    results = {}
    for name in args.models.split(","):
        results[name] = run_model(name, seeds, fp32_epochs, qat_epochs, 0.1,
                                  0.02, parq, log, not args.no_parq_uniform)
    load = os.getloadavg()
    print(table(results))
    for line in verdict(results):
        print(line)
    print(f"{time.perf_counter() - t0:.0f} s in all; load average at end "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "seeds": seeds, "fp32_epochs": fp32_epochs,
                       "qat_epochs": qat_epochs, "parq": parq}, f, indent=1)
    return 0


def _merge(paths: list[str]) -> int:
    results: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        for name, res in d["results"].items():
            print(f"{path}: {name} seeds {d.get('seeds')} epochs FP32 {d['fp32_epochs']} QAT "
                  f"{d['qat_epochs']}")
            for row, accs in res.items():
                results.setdefault(name, {}).setdefault(row, []).extend(accs)
    print(table(results))
    for line in verdict(results):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
