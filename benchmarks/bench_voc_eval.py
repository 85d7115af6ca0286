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

``--end-to-end`` times whole processes instead, as a user waits for them: a devkit of
``--images`` XML annotations (default 5,000, 1-5 boxes each, 20 classes) and 20 results files
holding ``--e2e-dets`` detections in all (default 100,000) are written to a temporary folder;
then, in interleaved rounds (median of ``--rounds``), one subprocess each of

* ``plain cold``: py-faster-rcnn's ``voc_eval.py`` as written (ElementTree parse of every
  annotation, one Python step per detection) for all classes, its ``annots.pkl`` deleted
  first: the first class parses and pickles, the others load the pickle (its first run);
* ``plain warm``: the same with ``annots.pkl`` already written (its later runs);
* ``lowbit cold``: ``python -m lowbit.cli voc-eval --json --exact`` with an empty cache;
* ``lowbit warm``: the same with its annotation cache written by the previous run.

All four must print bit-identical APs. Printed: seconds per variant, ratios plain / lowbit,
thread settings, the bytecode setting and the load average before and after.

Bytecode: the subprocesses run as from an installed package, whose modules are compiled once
(pip writes ``.pyc`` files at install): ``PYTHONDONTWRITEBYTECODE`` is dropped from their
environment and ``PYTHONPYCACHEPREFIX`` points into the temporary folder (nothing is written
to the source tree), warmed by one untimed run of each command. py-faster-rcnn's script runs
as ``__main__`` and is compiled every time either way, as it would be for its users.
``--no-bytecode-cache`` keeps the caller's setting instead (with ``PYTHONDONTWRITEBYTECODE=1``
lowbit's modules are then compiled from source in every run).

    .venv/bin/python benchmarks/bench_voc_eval.py --end-to-end [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


# ----------------------------------------------------------------------------- end to end
PLAIN = r"""
# py-faster-rcnn lib/datasets/voc_eval.py (Ross Girshick, MIT licence), logic unchanged:
# argv: devkit split dets_dir classes(comma) use07 [cachefile]
import json, os, pickle, sys
import xml.etree.ElementTree as ET
import numpy as np


def parse_rec(filename):
    tree = ET.parse(filename)
    objects = []
    for obj in tree.findall("object"):
        obj_struct = {}
        obj_struct["name"] = obj.find("name").text
        obj_struct["difficult"] = int(obj.find("difficult").text)
        bbox = obj.find("bndbox")
        obj_struct["bbox"] = [int(bbox.find("xmin").text), int(bbox.find("ymin").text),
                              int(bbox.find("xmax").text), int(bbox.find("ymax").text)]
        objects.append(obj_struct)
    return objects


def voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def voc_eval(detpath, annopath, imagesetfile, classname, cachefile, ovthresh=0.5,
             use_07_metric=False):
    with open(imagesetfile) as f:
        lines = f.readlines()
    imagenames = [x.strip() for x in lines]
    if cachefile is None or not os.path.isfile(cachefile):
        recs = {}
        for imagename in imagenames:
            recs[imagename] = parse_rec(annopath.format(imagename))
        if cachefile is not None:
            with open(cachefile, "wb") as f:
                pickle.dump(recs, f)
    else:
        with open(cachefile, "rb") as f:
            recs = pickle.load(f)
    class_recs = {}
    npos = 0
    for imagename in imagenames:
        R = [obj for obj in recs[imagename] if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R])
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}
    with open(detpath.format(classname)) as f:
        lines = f.readlines()
    splitlines = [x.strip().split(" ") for x in lines]
    image_ids = [x[0] for x in splitlines]
    confidence = np.array([float(x[1]) for x in splitlines])
    BB = np.array([[float(z) for z in x[2:]] for x in splitlines])
    sorted_ind = np.argsort(-confidence, kind="stable")  # lowbit's tie order (see module doc)
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
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
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
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, voc_ap(rec, prec, use_07_metric)


root, split, dets, classes, use07 = sys.argv[1:6]
cache = sys.argv[6] if len(sys.argv) > 6 else None
aps = {}
for c in classes.split(","):
    _, _, ap = voc_eval(os.path.join(dets, "comp4_det_" + split + "_{:s}.txt"),
                        os.path.join(root, "Annotations", "{:s}.xml"),
                        os.path.join(root, "ImageSets", "Main", split + ".txt"), c, cache,
                        0.5, use07 == "1")
    aps[c] = float(ap)
print(json.dumps(aps))
"""


def write_devkit(folder: Path, n_images: int, n_classes: int, n_dets: int, seed: int = 0
                 ) -> tuple[str, ...]:
    """A VOC devkit folder with ``n_images`` annotations and ``n_dets`` detections in all
    (results files ``comp4_det_test_<class>.txt`` in ``folder/dets``). Returns the classes."""
    rng = np.random.default_rng(seed)
    names = tuple(f"c{k}" for k in range(n_classes))
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "dets").mkdir()
    ids = [f"{i:06d}" for i in range(n_images)]
    (folder / "ImageSets" / "Main" / "test.txt").write_text("".join(i + "\n" for i in ids))
    gts: list[tuple[int, int, list[int]]] = []
    for i, iid in enumerate(ids):
        objs = []
        for _ in range(int(rng.integers(1, 6))):
            c = int(rng.integers(0, n_classes))
            x1, y1 = (int(v) for v in rng.integers(1, 300, 2))
            x2, y2 = x1 + int(rng.integers(10, 190)), y1 + int(rng.integers(10, 170))
            d = int(rng.random() < 0.2)
            gts.append((i, c, [x1, y1, x2, y2]))
            objs.append(
                f"  <object>\n    <name>{names[c]}</name>\n    <pose>Unspecified</pose>\n"
                f"    <truncated>0</truncated>\n    <difficult>{d}</difficult>\n"
                f"    <bndbox>\n      <xmin>{x1}</xmin>\n      <ymin>{y1}</ymin>\n"
                f"      <xmax>{x2}</xmax>\n      <ymax>{y2}</ymax>\n    </bndbox>\n"
                "  </object>\n")
        (folder / "Annotations" / f"{iid}.xml").write_text(
            f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{iid}.jpg</filename>\n"
            "  <size>\n    <width>500</width>\n    <height>500</height>\n"
            "    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n"
            + "".join(objs) + "</annotation>\n")
    per = n_dets // n_classes
    for c, name in enumerate(names):
        own = [g for g in gts if g[1] == c]
        lines = []
        for k in range(per):
            if own and k % 3 == 0:  # a third near this class's boxes, on their images
                i, _, b = own[int(rng.integers(0, len(own)))]
                bb = np.array(b, float) + rng.normal(0, 8, 4)
            else:
                i = int(rng.integers(0, n_images))
                xy = rng.uniform(1, 400, 2)
                bb = np.concatenate([xy, xy + rng.uniform(10, 200, 2)])
            bb = np.round(bb, 1)
            lines.append(f"{ids[i]} {rng.random():.3f} {bb[0]:.1f} {bb[1]:.1f} "
                         f"{bb[2]:.1f} {bb[3]:.1f}\n")
        (folder / "dets" / f"comp4_det_test_{name}.txt").write_text("".join(lines))
    return names


def end_to_end(args: argparse.Namespace) -> None:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-voc-e2e-") as tmp:
        work = Path(tmp)
        kit = work / "kit"
        t0 = time.perf_counter()
        names = write_devkit(kit, args.images, args.classes, args.e2e_dets)
        plain = work / "plain_voc_eval.py"
        plain.write_text(PLAIN)
        print(f"devkit: {args.images} annotations, {args.classes} classes, {args.e2e_dets:,} "
              f"detections (written in {time.perf_counter() - t0:.1f} s)")
        use07 = "1" if args.metric == "07" else "0"
        pkl = work / "annots.pkl"
        cache = work / "lowbit-cache"
        py = sys.executable
        base = [py, str(plain), str(kit), "test", str(kit / "dets"), ",".join(names), use07]
        low = [py, "-m", "lowbit.cli", "voc-eval", "--root", str(kit), "--split", "test",
               "--dets", str(kit / "dets"), "--classes", ",".join(names), "--metric",
               args.metric, "--json", "--exact",
               "--cache-dir", str(cache)]
        env = dict(os.environ)
        if args.no_bytecode_cache:
            bytecode = ("caller's setting, PYTHONDONTWRITEBYTECODE="
                        f"{env.get('PYTHONDONTWRITEBYTECODE', 'unset')}")
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
            bytecode = "cached, as an installed package (PYTHONPYCACHEPREFIX in the temp folder)"
        variants = {
            "plain cold": (base + [str(pkl)], "cold"),
            "plain warm": (base + [str(pkl)], None),
            "lowbit cold": (low, "cold"),
            "lowbit warm": (low, None),
        }
        # untimed: writes annots.pkl, the lowbit cache and (if cached) both bytecode caches
        subprocess.run(base + [str(pkl)], check=True, capture_output=True, env=env)
        subprocess.run(low, check=True, capture_output=True, env=env)
        times: dict[str, list[float]] = {k: [] for k in variants}
        aps: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, (cmd, mode) in variants.items():
                if mode == "cold":
                    pkl.unlink(missing_ok=True)
                    for f in cache.glob("*.json"):
                        f.unlink()
                t = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode:
                    raise SystemExit(f"{name} failed: {r.stderr.strip()[-2000:]}")
                times[name].append(time.perf_counter() - t)
                out = json.loads(r.stdout)
                got = out["AP"] if "AP" in out else out
                if name in aps and aps[name] != got:
                    raise SystemExit(f"{name}: APs changed between rounds")
                aps[name] = got
        ref = aps["plain cold"]
        same = all(a == ref for a in aps.values())  # exact float equality, every class
        load1 = os.getloadavg()
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"OMP_NUM_THREADS={threads}, {os.cpu_count()} CPUs, load average before "
              f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after "
              f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; median of {args.rounds} rounds")
        print(f"bytecode: {bytecode}")
        for k, v in med.items():
            print(f"  {k:<12} {v:7.3f} s   (all: {' '.join(f'{x:.2f}' for x in times[k])})")
        print(f"APs bit-identical across all four: {same}")
        cold = med["plain cold"] / med["lowbit cold"]
        warm = med["plain warm"] / med["lowbit warm"]
        print(f"ratio plain cold / lowbit cold (first runs):  {cold:.2f}x")
        print(f"ratio plain warm / lowbit warm (later runs):  {warm:.2f}x")
        if not same:
            raise SystemExit("APs differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--dets", type=int, default=100, help="detections per image per class")
    ap.add_argument("--loop-images", type=int, default=100)
    ap.add_argument("--full-loop", action="store_true", help="time the loop on the full set")
    ap.add_argument("--metric", choices=("07", "area"), default="area")
    ap.add_argument("--end-to-end", action="store_true",
                    help="time whole processes: lowbit voc-eval vs py-faster-rcnn's script")
    ap.add_argument("--e2e-dets", type=int, default=100_000,
                    help="--end-to-end: detections in all (default 100,000)")
    ap.add_argument("--rounds", type=int, default=5, help="--end-to-end: interleaved rounds")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="--end-to-end: keep the caller's PYTHONDONTWRITEBYTECODE (default: "
                    "bytecode cached in the temp folder, as for an installed package)")
    args = ap.parse_args()
    if args.end_to_end:
        end_to_end(args)
        return

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
