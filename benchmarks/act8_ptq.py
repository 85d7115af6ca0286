"""8-bit activations alone, post-training, on a trained detector: how much each activation
quantizer's range and step placement costs, with the weights left in float.

    .venv/bin/python benchmarks/act8_ptq.py RUN [--calib-images 32] [--threads 2]

For every variant the FP32 run's model is prepared with 8-bit activation quantizers at every
conv's input (weights not quantized), calibrated on ``--calib-images`` training images and
evaluated on the whole test split (VOC07 mAP). Variants: uniform min/max (``act.method:
uniform``) and Quantization Networks' staircase (``qn``) with ``bias_init`` kmeans / uniform and
``outlier`` 1e-3 (the public code's) / 1e-4 / 0, all measured in this one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import lowbit.nn as L
from lowbit.runs import evaluate, fp32_model, load_base, train_images

VARIANTS = [("uniform min/max", {"method": "uniform", "bits": 8, "calibrator": "minmax"})] + [
    (f"qn {bi}, outlier {o:g}", {"method": "qn", "bits": 8, "bias_init": bi, "outlier": o})
    for bi in ("uniform", "kmeans") for o in (1e-3, 1e-4, 0.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished FP32 detector run folder")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.run, Path(tmp), progress=False)
        calib = train_images(base, args.calib_images)
        fp = evaluate(base, fp32_model(base))["main"]
        print(f"| activations (8 bits, weights float) | mAP | drop |\n|---|---:|---:|\n"
              f"| none (FP32) | {100 * fp:.2f}% | |", flush=True)
        for name, act in VARIANTS:
            m = L.prepare(fp32_model(base), {"method": "uniform", "bits": 8, "act": act}).eval()
            for _, layer in L.quant_layers(m):
                layer.quant_enabled = False  # activations only
            L.calibrate(m, [(list(b), None) for b in calib])
            got = evaluate(base, m)["main"]
            print(f"| {name} | {100 * got:.2f}% | {100 * (fp - got):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
