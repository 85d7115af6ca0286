"""The demo's R-FCN in the default (NCHW) and the channels-last (NHWC) memory format, one process.

Times, per image, a training step (forward + backward + SGD, batch 4, random weights, the
stem and layer1 frozen as in the demo) and an inference pass (batch 4), on real images of the
built-in digits devkit (generated into a temporary folder: 8 train / 4 test images, 256 px),
for FP32 and for 4-bit LBW QAT (``lbw-exact``). The two layouts alternate round by round and
the median of the rounds is kept, so the printed ratio NHWC / NCHW comes from one run.
Prints a table, the thread count and the load average before and after:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_channels_last.py --threads 1 [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    import torch

    from lowbit.data import VOCDetection
    from lowbit.data.digits import generate_digits
    from lowbit.detection import create_model
    from lowbit.nn import prepare

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        generate_digits(root, train=8, test=4, size=256, seed=0, workers=1)
        train = VOCDetection(root, "trainval")
        test = VOCDetection(root, "test")
        samples = [train[i] for i in range(4)]
        test_images = [test[i][0] for i in range(4)]
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]

    torch.manual_seed(0)
    fp32 = create_model("rfcn_resnet18", 10, width=0.5, k=3, freeze_at=2)
    q4 = prepare(copy.deepcopy(fp32), {"method": "lbw-exact", "bits": 4})
    variants = {}
    for name, model in (("fp32", fp32), ("lbw-exact 4-bit", q4)):
        for layout in ("NCHW", "NHWC"):
            m = copy.deepcopy(model)
            if layout == "NHWC":
                m.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-6)
            variants[(name, layout)] = (m, opt)

    def train_step(key: tuple[str, str]) -> float:
        m, opt = variants[key]
        m.train()
        t = time.perf_counter()
        loss = sum(m(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return (time.perf_counter() - t) / len(images)

    def infer(key: tuple[str, str]) -> float:
        m, _ = variants[key]
        m.eval()
        t = time.perf_counter()
        with torch.no_grad():
            m(test_images)
        return (time.perf_counter() - t) / len(test_images)

    for key in variants:  # warm-up (oneDNN primitive caches)
        train_step(key)
        infer(key)
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for key in variants:
            times.setdefault((*key, "train step"), []).append(train_step(key))
            times.setdefault((*key, "inference"), []).append(infer(key))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for name in ("fp32", "lbw-exact 4-bit"):
        for what in ("train step", "inference"):
            a, b = med[(name, "NCHW", what)], med[(name, "NHWC", what)]
            rows.append({"model": name, "what": what, "nchw_ms_per_image": 1e3 * a,
                         "nhwc_ms_per_image": 1e3 * b, "ratio_nhwc_nchw": b / a})
    info = {"threads": args.threads, "rounds": args.rounds, "load_before": load0,
            "load_after": os.getloadavg(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({"rows": rows, **info}, indent=2))
        return 0
    print("| model | | NCHW ms/image | NHWC ms/image | NHWC / NCHW |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['what']} | {r['nchw_ms_per_image']:.1f} | "
              f"{r['nhwc_ms_per_image']:.1f} | {r['ratio_nhwc_nchw']:.3f} |")
    print(f"threads {args.threads}, median of {args.rounds} alternating rounds, load average "
          f"before {load0[0]:.2f} after {info['load_after'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
