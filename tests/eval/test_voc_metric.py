"""The vectorised VOC metric against a loop-based re-implementation of py-faster-rcnn's
``voc_eval.py`` written here (the oracle), on random cases and hand-made corner cases."""

from __future__ import annotations

import math
import tempfile
import xml.etree.ElementTree as StdET
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.eval.voc import (
    GroundTruth,
    evaluate_arrays,
    evaluate_voc,
    read_voc_results,
    voc_ap,
    voc_eval_class,
    voc_eval_files,
    write_voc_results,
)


# ----------------------------------------------------------------------------- oracle
def ref_voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """py-faster-rcnn ``voc_ap``, verbatim in behaviour."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return float(ap)


def ref_voc_eval_recs(
    recs: dict[str, list[dict]],
    imagenames: list[str],
    det_lines: list[str],
    classname: str,
    ovthresh: float = 0.5,
    use_07_metric: bool = False,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """py-faster-rcnn ``voc_eval`` after its annotation parsing: one Python step per detection.

    The only change: ``np.argsort(-confidence, kind="stable")`` (the reference's default
    quicksort leaves the order of tied scores unspecified).
    """
    class_recs = {}
    npos = 0
    for imagename in imagenames:
        R = [obj for obj in recs[imagename] if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R])
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}

    splitlines = [x.strip().split(" ") for x in det_lines]
    image_ids = [x[0] for x in splitlines]
    confidence = np.array([float(x[1]) for x in splitlines])
    BB = np.array([[float(z) for z in x[2:]] for x in splitlines]).reshape(-1, 4)

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
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes
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
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = ref_voc_ap(rec, prec, use_07_metric)
    return rec, prec, ap, int(npos)


def ref_parse_rec(filename: Path) -> list[dict]:
    """py-faster-rcnn ``parse_rec`` (stdlib XML, int boxes)."""
    tree = StdET.parse(filename)
    objects = []
    for obj in tree.findall("object"):
        bbox = obj.find("bndbox")
        objects.append({
            "name": obj.find("name").text,
            "difficult": int(obj.find("difficult").text),
            "bbox": [int(bbox.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")],
        })  # fmt: skip
    return objects


def ref_voc_eval_files(
    root: Path, split: str, dets: Path, classname: str, ovthresh: float, use07: bool
) -> tuple[float, int]:
    names = [x.strip() for x in (root / "ImageSets/Main" / f"{split}.txt").read_text().split()]
    recs = {n: ref_parse_rec(root / "Annotations" / f"{n}.xml") for n in names}
    lines = (dets / f"comp4_det_{split}_{classname}.txt").read_text().splitlines()
    _, _, ap, npos = ref_voc_eval_recs(recs, names, lines, classname, ovthresh, use07)
    return ap, npos


# ----------------------------------------------------------------------------- random cases
CLASSES = ("cat", "dog", "cow")


def random_case(rng: np.random.Generator, n_images: int = 6, size: int = 40) -> tuple:
    """Random GT (ints, VOC pixels) and detections with duplicates, ties, difficult objects,
    images without objects, and -- often -- a class without positives."""
    names = [f"{i:04d}" for i in range(n_images)]
    no_pos = CLASSES[int(rng.integers(len(CLASSES)))] if rng.random() < 0.5 else None
    recs: dict[str, list[dict]] = {}
    for n in names:
        objs = []
        for _ in range(int(rng.integers(0, 5))):
            x1, y1 = (int(v) for v in rng.integers(1, size - 4, 2))
            x2 = int(rng.integers(x1, min(size, x1 + 20) + 1))
            y2 = int(rng.integers(y1, min(size, y1 + 20) + 1))
            cls = CLASSES[int(rng.integers(len(CLASSES)))]
            diff = int(rng.random() < 0.25 or cls == no_pos)
            objs.append({"name": cls, "difficult": diff, "bbox": [x1, y1, x2, y2]})
        recs[n] = objs
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.3, 0.7])  # few values: many ties
    lines: dict[str, list[str]] = {c: [] for c in CLASSES}
    for n in names:
        for o in recs[n]:
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (a duplicate) detections
                u = rng.random()
                if u < 0.6:
                    jitter = rng.integers(-1, 2, 4)
                elif u < 0.85:
                    jitter = rng.integers(-3, 4, 4)
                else:
                    jitter = rng.normal(0, 2, 4)
                b = np.array(o["bbox"], dtype=np.float64) + jitter
                lines[o["name"]].append((n, float(rng.choice(scores)), b))
        for _ in range(int(rng.integers(0, 4))):  # background detections
            x1, y1 = rng.integers(1, size - 4, 2)
            b = np.array([x1, y1, x1 + rng.integers(0, 15), y1 + rng.integers(0, 15)], float)
            lines[CLASSES[int(rng.integers(3))]].append((n, float(rng.choice(scores)), b))
    out = {}
    for c, items in lines.items():
        order = rng.permutation(len(items))
        out[c] = [
            f"{items[k][0]} {items[k][1]!r} " + " ".join(repr(float(v)) for v in items[k][2])
            for k in order
        ]
    return names, recs, out


def to_arrays(names, recs, lines) -> tuple[GroundTruth, dict]:
    idx = {n: i for i, n in enumerate(names)}
    boxes, labels, diff, image = [], [], [], []
    for n in names:
        for o in recs[n]:
            boxes.append(o["bbox"])
            labels.append(CLASSES.index(o["name"]))
            diff.append(bool(o["difficult"]))
            image.append(idx[n])
    gt = GroundTruth(
        names, CLASSES, np.array(boxes, float).reshape(-1, 4), np.array(labels, np.int64),
        np.array(diff, bool), np.array(image, np.int64),
    )  # fmt: skip
    dets = {}
    for c, cls in enumerate(CLASSES):
        rows = [ln.split() for ln in lines[cls]]
        dets[c] = (
            np.array([idx[r[0]] for r in rows], np.int64),
            np.array([float(r[1]) for r in rows]),
            np.array([[float(v) for v in r[2:]] for r in rows]).reshape(-1, 4),
        )
    return gt, dets


def check_against_oracle(names, recs, lines, iou: float, use07: bool) -> None:
    gt, dets = to_arrays(names, recs, lines)
    result = evaluate_arrays(gt, dets, "07" if use07 else "area", iou)
    for c, cls in enumerate(CLASSES):
        rrec, rprec, rap, rnpos = ref_voc_eval_recs(recs, names, lines[cls], cls, iou, use07)
        m = gt.labels == c
        rec, prec, ap, npos = voc_eval_class(
            gt.boxes[m], gt.difficult[m], gt.image[m], *dets[c], iou, use07, len(names)
        )
        assert npos == rnpos
        np.testing.assert_allclose(prec, rprec, rtol=0, atol=1e-12)
        if rnpos == 0:
            assert math.isnan(ap) and math.isnan(result.ap[cls]) and cls in result.no_positives
        else:
            np.testing.assert_allclose(rec, rrec, rtol=0, atol=1e-12)
            assert abs(ap - rap) <= 1e-6 and abs(result.ap[cls] - rap) <= 1e-6
    defined = [v for v in result.ap.values() if not math.isnan(v)]
    if defined:
        assert result.map == pytest.approx(float(np.mean(defined)), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    iou=st.sampled_from([0.5, 0.3, 0.7, 0.0]),
    use07=st.booleans(),
)
def test_matches_reference_loop_on_random_cases(seed: int, iou: float, use07: bool) -> None:
    names, recs, lines = random_case(np.random.default_rng(seed))
    check_against_oracle(names, recs, lines, iou, use07)


def test_matches_reference_on_larger_case() -> None:
    rng = np.random.default_rng(123)
    names, recs, lines = random_case(rng, n_images=60, size=80)
    for use07 in (False, True):
        check_against_oracle(names, recs, lines, 0.5, use07)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), use07=st.booleans())
def test_files_match_reference_files(tmp_path: Path, seed: int, use07: bool) -> None:
    """Whole file path: our XML/results reader + metric vs the oracle's parse_rec + loop."""
    names, recs, lines = random_case(np.random.default_rng(seed), n_images=5)
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    write_devkit(root, names, recs)
    dets = root / "dets"
    dets.mkdir()
    for c in CLASSES:
        (dets / f"comp4_det_test_{c}.txt").write_text("".join(ln + "\n" for ln in lines[c]))
    result = voc_eval_files(root, "test", dets, classes=CLASSES, metric="07" if use07 else "area")
    for c in CLASSES:
        rap, npos = ref_voc_eval_files(root, "test", dets, c, 0.5, use07)
        assert result.npos[c] == npos
        if npos:
            assert abs(result.ap[c] - rap) <= 1e-6
        else:
            assert math.isnan(result.ap[c])


def write_devkit(root: Path, names, recs, size: int = 80) -> None:
    """A devkit written by hand (independent of lowbit's XML writer)."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Main/test.txt").write_text("".join(n + "\n" for n in names))
    for n in names:
        objs = "".join(
            f"<object><name>{o['name']}</name><difficult>{o['difficult']}</difficult>"
            f"<bndbox><xmin>{o['bbox'][0]}</xmin><ymin>{o['bbox'][1]}</ymin>"
            f"<xmax>{o['bbox'][2]}</xmax><ymax>{o['bbox'][3]}</ymax></bndbox></object>"
            for o in recs[n]
        )
        (root / "Annotations" / f"{n}.xml").write_text(
            f"<annotation><filename>{n}.jpg</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>3</depth></size>{objs}</annotation>"
        )


# ----------------------------------------------------------------------------- corner cases
def one_class(gt_boxes, gt_diff, det_img, det_scores, det_boxes, iou=0.5, use07=False):
    n = len(gt_boxes)
    return voc_eval_class(
        np.array(gt_boxes, float).reshape(-1, 4), np.array(gt_diff, bool), np.zeros(n, np.int64),
        np.array(det_img, np.int64), np.array(det_scores, float),
        np.array(det_boxes, float).reshape(-1, 4), iou, use07, 1,
    )  # fmt: skip


def test_overlap_test_is_strict() -> None:
    # GT area (+1 convention) 100, detection 50 inside it: IoU exactly 0.5
    gt = [[1, 1, 10, 10]]
    det = [[1, 1, 10, 5]]
    assert one_class(gt, [False], [0], [0.9], det, iou=0.5)[2] == 0.0
    assert one_class(gt, [False], [0], [0.9], det, iou=0.4999)[2] == 1.0


def test_second_detection_on_a_box_is_false_positive() -> None:
    rec, prec, ap, npos = one_class([[1, 1, 10, 10]], [False], [0, 0], [0.9, 0.8],
                                    [[1, 1, 10, 10], [1, 1, 10, 10]])
    np.testing.assert_array_equal(prec, [1.0, 0.5])
    assert npos == 1 and ap == 1.0


def test_no_fallback_to_second_best_box() -> None:
    # both detections' best box is A; the second one overlaps B > 0.5 too but is still FP
    gt = [[1, 1, 10, 10], [2, 1, 11, 10]]
    rec, prec, ap, npos = one_class(gt, [False, False], [0, 0], [0.9, 0.8],
                                    [[1, 1, 10, 10], [1, 1, 10, 10]])
    np.testing.assert_array_equal(rec, [0.5, 0.5])
    np.testing.assert_array_equal(prec, [1.0, 0.5])


def test_difficult_neither_tp_nor_fp() -> None:
    rec, prec, ap, npos = one_class([[1, 1, 10, 10], [20, 20, 30, 30]], [True, False],
                                    [0, 0], [0.9, 0.8], [[1, 1, 10, 10], [20, 20, 30, 30]])
    assert npos == 1
    np.testing.assert_array_equal(prec, [0.0, 1.0])  # 0 / eps at the difficult one
    assert ap == 1.0


def test_ties_keep_input_order() -> None:
    gt = [[1, 1, 10, 10]]
    a = one_class(gt, [False], [0, 0], [0.5, 0.5], [[30, 30, 40, 40], [1, 1, 10, 10]])
    b = one_class(gt, [False], [0, 0], [0.5, 0.5], [[1, 1, 10, 10], [30, 30, 40, 40]])
    np.testing.assert_array_equal(a[1], [0.0, 0.5])
    np.testing.assert_array_equal(b[1], [1.0, 0.5])
    assert a[2] == 0.5 and b[2] == 1.0


def test_no_positives_and_no_detections() -> None:
    rec, prec, ap, npos = one_class([[1, 1, 5, 5]], [True], [0], [0.3], [[1, 1, 5, 5]])
    assert npos == 0 and math.isnan(ap)
    with np.errstate(all="raise"):  # no division by zero anywhere
        _, _, ap2, npos2 = one_class([[1, 1, 5, 5]], [False], [], [], [])
    assert npos2 == 1 and ap2 == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0


def test_no_positives_reported_and_left_out_of_map() -> None:
    gt = GroundTruth(["a"], ("x", "y"), np.array([[1.0, 1, 5, 5], [1, 1, 9, 9]]),
                     np.array([0, 1]), np.array([False, True]), np.array([0, 0]))
    dets = {0: (np.array([0]), np.array([0.5]), np.array([[1.0, 1, 5, 5]]))}
    r = evaluate_arrays(gt, dets, "area")
    assert r.ap["x"] == 1.0 and math.isnan(r.ap["y"]) and r.map == 1.0
    assert r.no_positives == ["y"]
    d = r.to_dict()
    assert d["AP"]["y"] is None and d["mAP"] == 1.0 and d["no_positives"] == ["y"]
    assert "no positive ground truth for y" in r.format_table()


def test_voc_ap_matches_reference_on_random_curves() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = int(rng.integers(0, 30))
        tp = rng.random(d) < 0.5
        npos = int(rng.integers(max(1, tp.sum()), tp.sum() + 5))
        tpc = np.cumsum(tp).astype(float)
        rec = tpc / npos
        prec = tpc / np.maximum(np.arange(1, d + 1), 1)
        for use07 in (True, False):
            ref = ref_voc_ap(rec, prec, use07)
            assert voc_ap(rec, prec, use07) == pytest.approx(ref, abs=1e-12)


def test_bad_metric_rejected() -> None:
    gt = GroundTruth([], ("x",), np.zeros((0, 4)), np.zeros(0, int), np.zeros(0, bool),
                     np.zeros(0, int))
    with pytest.raises(ValueError, match="metric"):
        evaluate_arrays(gt, {}, "11pt")


# ----------------------------------------------------------------------------- in-memory API
def _targets_and_preds(seed: int = 0):
    rng = np.random.default_rng(seed)
    names, recs, lines = random_case(rng, n_images=8)
    targets, preds = [], []
    for n in names:
        b = np.array([o["bbox"] for o in recs[n]], float).reshape(-1, 4)
        b[:, :2] -= 1  # VOC 1-based inclusive -> internal 0-based continuous
        targets.append({
            "boxes": torch.tensor(b, dtype=torch.float32),
            "labels": torch.tensor([CLASSES.index(o["name"]) for o in recs[n]], dtype=torch.int64),
            "difficult": torch.tensor([bool(o["difficult"]) for o in recs[n]]),
            "image_id": n,
        })  # fmt: skip
        k = int(rng.integers(0, 6))
        pb = torch.tensor(rng.uniform(0, 30, (k, 2)), dtype=torch.float32)
        pb = torch.cat([pb, pb + torch.tensor(rng.uniform(1, 15, (k, 2)), dtype=torch.float32)], 1)
        if len(b):  # some near-perfect predictions
            pb = torch.cat([pb, torch.tensor(b, dtype=torch.float32) + 0.5])
        labels = torch.tensor(rng.integers(0, 3, k).tolist()
                              + [CLASSES.index(o["name"]) for o in recs[n]], dtype=torch.int64)
        scores = torch.tensor(rng.choice([0.2, 0.4, 0.6], len(labels)), dtype=torch.float32)
        preds.append({"boxes": pb, "labels": labels, "scores": scores})
    return names, recs, targets, preds


def test_in_memory_equals_results_files(tmp_path: Path) -> None:
    names, recs, targets, preds = _targets_and_preds(3)
    write_devkit(tmp_path / "kit", names, recs)
    paths = write_voc_results(preds, names, CLASSES, tmp_path / "dets", "test")
    assert [p.name for p in paths] == [f"comp4_det_test_{c}.txt" for c in CLASSES]
    for metric in ("07", "area"):
        mem = evaluate_voc(preds, targets, CLASSES, metric=metric)
        files = voc_eval_files(tmp_path / "kit", "test", tmp_path / "dets", CLASSES, metric)
        assert mem.to_dict() == files.to_dict()
        for c in CLASSES:  # and both equal the oracle on the written files
            rap, npos = ref_voc_eval_files(tmp_path / "kit", "test", tmp_path / "dets", c, 0.5,
                                           metric == "07")
            if npos:
                assert abs(mem.ap[c] - rap) <= 1e-6


def test_in_memory_conversion_is_voc_plus_one() -> None:
    # internal [0, 0, 10, 10] covers pixels 1..10 in VOC: +1 area = 100, same as continuous
    t = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    p = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0]]), "labels": torch.tensor([0]),
          "scores": torch.tensor([1.0])}]
    assert evaluate_voc(p, t, ["x"], iou_thresh=0.5).map == 0.0  # IoU exactly 0.5: strict
    assert evaluate_voc(p, t, ["x"], iou_thresh=0.49).map == 1.0


def test_in_memory_rejects_bad_labels_and_lengths() -> None:
    t = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    p = [{"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([3]),
          "scores": torch.tensor([1.0])}]
    with pytest.raises(ValueError, match="label 3"):
        evaluate_voc(p, t, ["x", "y"])
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        evaluate_voc(p * 2, t, ["x", "y"])
    with pytest.raises(ValueError, match="classes="):
        evaluate_voc(p, t)


# ----------------------------------------------------------------------------- bad files
def test_results_file_errors_name_the_file(tmp_path: Path) -> None:
    names, recs, _ = random_case(np.random.default_rng(1), n_images=3)
    write_devkit(tmp_path, names, recs)
    dets = tmp_path / "dets"
    dets.mkdir()
    with pytest.raises(FileNotFoundError, match="comp4_det_test_cat.txt"):
        voc_eval_files(tmp_path, "test", dets, CLASSES)
    for c in CLASSES:
        (dets / f"comp4_det_test_{c}.txt").write_text("")
    (dets / "comp4_det_test_dog.txt").write_text("0000 0.5 1 2 3\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_dog.txt: line 1"):
        voc_eval_files(tmp_path, "test", dets, CLASSES)
    (dets / "comp4_det_test_dog.txt").write_text("0000 0.5 1 2 3 4\nzzzz 0.5 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_dog.txt: line 2: image 'zzzz'"):
        voc_eval_files(tmp_path, "test", dets, CLASSES)
    (dets / "comp4_det_test_dog.txt").write_text("0000 high 1 2 3 4\n")
    with pytest.raises(ValueError, match="comp4_det_test_dog.txt: line 1: not a number: 'high'"):
        read_voc_results(dets / "comp4_det_test_dog.txt")
