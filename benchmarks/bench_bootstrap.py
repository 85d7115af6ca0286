"""Bootstrap interval of the VOC07 mAP: vectorised (lowbit.eval.intervals) vs the resample loop.

Synthetic set (the generator of ``bench_voc_eval.py``): ``--images`` images (2,000), ``--classes``
classes (10), 1-5 ground-truth boxes per image (20 % difficult), ``--dets`` detections per image
*per class* on average (default 2, i.e. 20 per image; a third of them jittered copies of the
class's boxes). Times, on the threads the process has:

* matching once (``match_arrays``),
* ``--boot`` resamples (1,000) of the mAP, all at once (``bootstrap_map``),
* the naive way for comparison: the point metric (``evaluate_arrays``, itself vectorised) re-run
  on ``--loop`` literal resamples (default 20; building the copies is not timed), scaled to
  ``--boot``; the two agree on those resamples.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bootstrap.py [--images 2000] [--dets 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_voc_eval import make_case  # noqa: E402

from lowbit.eval.intervals import (  # noqa: E402
    bootstrap_counts,
    bootstrap_map,
    map_samples,
    match_arrays,
)
from lowbit.eval.voc import GroundTruth, evaluate_arrays  # noqa: E402


def by_image(gt: GroundTruth, dets: dict) -> tuple[list, dict]:
    """Row indices of each image's boxes and, per class, of its detections."""

    def split(image: np.ndarray) -> list[np.ndarray]:
        order = np.argsort(image, kind="stable")
        return np.split(order, np.cumsum(np.bincount(image, minlength=gt.n_images))[:-1])

    return split(gt.image), {c: split(d[0]) for c, d in dets.items()}


def literal_resample(gt: GroundTruth, dets: dict, rows: tuple, idx: np.ndarray):
    """The resample as a new test set: image k of the resample is image idx[k]."""
    g_rows, d_rows = rows
    sel = np.concatenate([g_rows[i] for i in idx])
    new_img = np.repeat(np.arange(idx.size), [g_rows[i].size for i in idx])
    g = GroundTruth([str(k) for k in range(idx.size)], gt.classes, gt.boxes[sel], gt.labels[sel],
                    gt.difficult[sel], new_img)  # fmt: skip
    out = {}
    for c, (_, ds, db) in dets.items():
        per = d_rows[c]
        s = np.concatenate([per[i] for i in idx])
        out[c] = (np.repeat(np.arange(idx.size), [per[i].size for i in idx]), ds[s], db[s])
    return g, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dets", type=int, default=2, help="detections per image per class")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--loop", type=int, default=20, help="literal resamples timed for the loop")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised time")
    args = ap.parse_args()

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    load = os.getloadavg()
    gt, dets = make_case(args.images, args.classes, args.dets, seed=0)
    n_det = sum(d[0].size for d in dets.values())
    print(f"{args.images} images, {args.classes} classes, {gt.labels.size} boxes, {n_det} "
          f"detections; B = {args.boot}; OMP_NUM_THREADS={threads}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip

    t0 = time.perf_counter()
    m = match_arrays(gt, dets)
    t_match = time.perf_counter() - t0
    t_boot = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        iv = bootstrap_map(m, n_boot=args.boot, seed=0)
        t_boot.append(time.perf_counter() - t0)
    print(f"match once          {t_match:8.3f} s")
    print(f"bootstrap B={args.boot:<6}  {min(t_boot):8.3f} s (best of {args.repeat}; "
          f"target <= 2 s on one core)   mAP {iv.format()}")  # fmt: skip

    counts = bootstrap_counts(m.n_images, args.boot, 0)
    idx_all = np.random.default_rng(0).integers(0, m.n_images, (args.boot, m.n_images))
    rows = by_image(gt, dets)
    loop, t_loop = [], 0.0
    for k in range(args.loop):  # only the metric is timed, not building the copies
        case = literal_resample(gt, dets, rows, idx_all[k])
        t0 = time.perf_counter()
        loop.append(evaluate_arrays(*case, metric="07").map)
        t_loop += time.perf_counter() - t0
    t_loop = t_loop / args.loop * args.boot
    vec, _ = map_samples(m, counts[: args.loop])
    err = float(np.max(np.abs(np.array(loop) - vec)))
    print(f"point metric re-run {t_loop:8.3f} s for B={args.boot} (scaled from {args.loop}); "
          f"ratio {t_loop / min(t_boot):.0f}x; max |difference| on those {args.loop}: {err:.1e}")
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
