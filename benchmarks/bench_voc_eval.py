"""Vectorised VOC metric vs a py-faster-rcnn-style per-detection Python loop.

Synthetic set: ``--images`` images (default 5,000), ``--classes`` classes (20), 1-5 ground-truth
boxes per image (20 % difficult), and on average ``--dets`` detections per image *per class*
(100): two thirds on random images at random places, one third jittered copies of the class's
ground truth on their images. 5,000 x 20 x 100 = 10 M detections.

By default the loop is timed on the first ``--loop-images`` images only (100, i.e. ~1/50 of the
detections) and scaled linearly to the full size -- its cost is one Python step per detection,
so it is linear in the detection count; ``--full-loop`` times it on everything (about a minute
on one core). The vectorised evaluator is timed on the full set, and also on the subset
(same-size ratio); on the subset (or full set) both must give the same APs.

    .venv/bin/python benchmarks/bench_voc_eval.py [--images 5000] [--dets 100] [--full-loop]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowbit.eval.voc import GroundTruth, evaluate_arrays, voc_ap


def make_case(n_images: int, n_classes: int, n_dets: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_gt = rng.integers(1, 6, n_images)
    image = np.repeat(np.arange(n_images), n_gt)
    n = image.size
    xy = rng.uniform(1, 400, (n, 2))
    wh = rng.uniform(10, 200, (n, 2))
    boxes = np.round(np.concatenate([xy, xy + wh], 1))
    labels = rng.integers(0, n_classes, n)
    difficult = rng.random(n) < 0.2
    ids = [f"{i:06d}" for i in range(n_images)]
    names = tuple(f"c{k}" for k in range(n_classes))
    gt = GroundTruth(ids, names, boxes, labels, difficult, image)
    dets = {}
    per_class = n_images * n_dets
    for c in range(n_classes):
        img = rng.integers(0, n_images, per_class)
        xy = rng.uniform(1, 400, (per_class, 2))
        b = np.concatenate([xy, xy + rng.uniform(10, 200, (per_class, 2))], 1)
        gi = np.flatnonzero(labels == c)
        if gi.size:  # a third are jittered copies of this class's boxes, on their images
            k = rng.choice(gi, per_class // 3)
            b[: k.size] = boxes[k] + rng.normal(0, 8, (k.size, 4))
            img[: k.size] = image[k]
        dets[c] = (img, rng.random(per_class), b)
    return gt, dets


def loop_eval(gt: GroundTruth, dets: dict, iou: float, use07: bool) -> dict[str, float]:
    """py-faster-rcnn voc_eval: one Python iteration per detection."""
    aps = {}
    for c, name in enumerate(gt.classes):
        class_recs = {}
        npos = 0
        m = gt.labels == c
        for i in range(gt.n_images):
            sel = m & (gt.image == i)
            difficult = gt.difficult[sel]
            class_recs[i] = {"bbox": gt.boxes[sel], "difficult": difficult,
                             "det": [False] * int(sel.sum())}
            npos += int((~difficult).sum())
        image_ids, confidence, BB = dets[c]
        sorted_ind = np.argsort(-confidence, kind="stable")
        BB = BB[sorted_ind, :]
        image_ids = [image_ids[x] for x in sorted_ind]
        nd = len(image_ids)
        tp = np.zeros(nd)
        fp = np.zeros(nd)
        for d in range(nd):
            R = class_recs[image_ids[d]]
            bb = BB[d, :].astype(float)
            ovmax = -np.inf
            BBGT = R["bbox"].astype(float)
            if BBGT.size > 0:
                ixmin = np.maximum(BBGT[:, 0], bb[0])
                iymin = np.maximum(BBGT[:, 1], bb[1])
                ixmax = np.minimum(BBGT[:, 2], bb[2])
                iymax = np.minimum(BBGT[:, 3], bb[3])
                iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
                ih = np.maximum(iymax - iymin + 1.0, 0.0)
                inters = iw * ih
                uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                       + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                       - inters)
                overlaps = inters / uni
                ovmax = np.max(overlaps)
                jmax = np.argmax(overlaps)
            if ovmax > iou:
                if not R["difficult"][jmax]:
                    if not R["det"][jmax]:
                        tp[d] = 1.0
                        R["det"][jmax] = 1
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp = np.cumsum(fp)
        tp = np.cumsum(tp)
        rec = tp / float(npos) if npos else np.full(nd, np.nan)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[name] = voc_ap(rec, prec, use07) if npos else float("nan")
    return aps


def subset(gt: GroundTruth, dets: dict, n: int):
    m = gt.image < n
    sub_gt = GroundTruth(gt.image_ids[:n], gt.classes, gt.boxes[m], gt.labels[m],
                         gt.difficult[m], gt.image[m])
    sub = {}
    for c, (img, s, b) in dets.items():
        k = img < n
        sub[c] = (img[k], s[k], b[k])
    return sub_gt, sub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--dets", type=int, default=100, help="detections per image per class")
    ap.add_argument("--loop-images", type=int, default=100)
    ap.add_argument("--full-loop", action="store_true", help="time the loop on the full set")
    ap.add_argument("--metric", choices=("07", "area"), default="area")
    args = ap.parse_args()

    t0 = time.perf_counter()
    gt, dets = make_case(args.images, args.classes, args.dets)
    total = sum(d[1].size for d in dets.values())
    print(f"synthetic: {args.images} images x {args.classes} classes x {args.dets} dets "
          f"= {total:,} detections, {gt.labels.size:,} GT boxes "
          f"(built in {time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    full = evaluate_arrays(gt, dets, args.metric)
    t_vec = time.perf_counter() - t0
    print(f"vectorised, full set:   {t_vec:8.2f} s   mAP {full.map:.6f}")

    n_loop = args.images if args.full_loop else min(args.loop_images, args.images)
    sgt, sdets = subset(gt, dets, n_loop)
    n_sub = sum(d[1].size for d in sdets.values())
    t0 = time.perf_counter()
    sub_vec = evaluate_arrays(sgt, sdets, args.metric)
    t_vec_sub = time.perf_counter() - t0
    t0 = time.perf_counter()
    sub_loop = loop_eval(sgt, sdets, 0.5, args.metric == "07")
    t_loop_sub = time.perf_counter() - t0
    worst = max(abs(sub_vec.ap[c] - sub_loop[c]) for c in gt.classes
                if not np.isnan(sub_loop[c]))
    scale = total / n_sub
    t_loop = t_loop_sub * scale
    print(f"subset: first {n_loop} images, {n_sub:,} detections "
          f"(1/{scale:.0f}); max |AP diff| vectorised vs loop = {worst:.1e}")
    print(f"loop, subset:           {t_loop_sub:8.2f} s   ({1e6 * t_loop_sub / n_sub:.1f} us/det)")
    print(f"vectorised, subset:     {t_vec_sub:8.2f} s   same-size ratio "
          f"{t_loop_sub / t_vec_sub:.1f}x")
    print(f"loop, full (scaled x{scale:.0f}): {t_loop:8.1f} s")
    print(f"ratio loop / vectorised at {args.images}x{args.classes}x{args.dets}: "
          f"{t_loop / t_vec:.1f}x")


if __name__ == "__main__":
    main()
