"""Bootstrap intervals of the VOC mAP against a slow oracle written here: every resample is
built literally (the drawn images copied, detections and boxes included, as a new test set) and
scored by a per-detection Python loop in the manner of py-faster-rcnn's ``voc_eval``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.eval.intervals import (
    bootstrap_counts,
    bootstrap_map,
    counts_from_indices,
    map_samples,
    match_arrays,
    match_files,
    match_voc,
    paired_bootstrap,
)
from lowbit.eval.voc import GroundTruth, evaluate_voc, write_voc_results


# ----------------------------------------------------------------------------- oracle
def loop_ap(rec: list[float], prec: list[float], use07: bool) -> float:
    if use07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ps = [p for r, p in zip(rec, prec) if r >= t]
            ap = ap + (max(ps) if ps else 0) / 11.0
        return ap
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
               if mrec[i + 1] != mrec[i])  # fmt: skip


def iou_plus1(a: list[float], b: list[float]) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1.0, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1.0, 0.0)
    inter = iw * ih
    ua = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
    return inter / (ua - inter)


def loop_map(images: list[dict], n_classes: int, use07: bool) -> float:
    """``images[i] = {"gt": [(cls, box, difficult)], "dets": [(cls, score, box)]}``."""
    aps = []
    for c in range(n_classes):
        gts = [[(b, d) for k, b, d in im["gt"] if k == c] for im in images]
        used = [[False] * len(g) for g in gts]
        npos = sum(1 for g in gts for _, d in g if not d)
        dets = [(s, i, b) for i, im in enumerate(images) for k, s, b in im["dets"] if k == c]
        dets.sort(key=lambda x: -x[0])  # scores are distinct in these tests
        tp, fp = [], []
        for _, i, b in dets:
            best, jbest = -math.inf, -1
            for j, (g, _) in enumerate(gts[i]):
                o = iou_plus1(b, g)
                if o > best:
                    best, jbest = o, j
            if best > 0.5:
                if gts[i][jbest][1]:
                    tp.append(0)
                    fp.append(0)
                elif not used[i][jbest]:
                    used[i][jbest] = True
                    tp.append(1)
                    fp.append(0)
                else:
                    tp.append(0)
                    fp.append(1)
            else:
                tp.append(0)
                fp.append(1)
        if npos == 0:
            continue
        tpc = np.cumsum(tp).astype(float)
        fpc = np.cumsum(fp).astype(float)
        rec = list(tpc / npos)
        prec = list(tpc / np.maximum(tpc + fpc, np.finfo(np.float64).eps))
        aps.append(loop_ap(rec, prec, use07))
    return float(np.mean(aps)) if aps else math.nan


# ----------------------------------------------------------------------------- cases
def random_images(rng: np.random.Generator, n: int, n_classes: int, jitter: float = 6.0):
    """Small images: 0-3 boxes, 20 % difficult, detections near boxes and at random places,
    distinct random scores."""
    images = []
    for _ in range(n):
        gt = []
        for _ in range(rng.integers(0, 4)):
            xy = rng.uniform(0, 80, 2)
            wh = rng.uniform(8, 40, 2)
            gt.append((int(rng.integers(n_classes)), [*xy, *(xy + wh)], bool(rng.random() < 0.2)))
        dets = []
        for k, b, _ in gt:
            for _ in range(rng.integers(0, 3)):  # duplicates -> FP after the first
                dets.append((k, 0.0, list(np.asarray(b) + rng.normal(0, jitter, 4))))
        for _ in range(rng.integers(0, 3)):
            xy = rng.uniform(0, 80, 2)
            dets.append((int(rng.integers(n_classes)), 0.0, [*xy, *(xy + rng.uniform(8, 40, 2))]))
        images.append({"gt": gt, "dets": dets})
    # distinct scores across the whole set
    all_dets = [d for im in images for d in im["dets"]]
    scores = rng.permutation(len(all_dets)) / max(len(all_dets), 1) + 0.001
    k = 0
    for im in images:
        im["dets"] = [(c, float(scores[k + j]), b) for j, (c, _, b) in enumerate(im["dets"])]
        k += len(im["dets"])
    return images


def to_arrays(images: list[dict], n_classes: int):
    names = tuple(f"c{k}" for k in range(n_classes))
    g = [(i, c, b, d) for i, im in enumerate(images) for c, b, d in im["gt"]]
    gt = GroundTruth(
        [f"im{i}" for i in range(len(images))], names,
        np.array([x[2] for x in g], float).reshape(-1, 4), np.array([x[1] for x in g], np.int64),
        np.array([x[3] for x in g], bool), np.array([x[0] for x in g], np.int64),
    )  # fmt: skip
    dets = {}
    for c in range(n_classes):
        d = [(i, s, b) for i, im in enumerate(images) for k, s, b in im["dets"] if k == c]
        dets[c] = (np.array([x[0] for x in d], np.int64), np.array([x[1] for x in d], float),
                   np.array([x[2] for x in d], float).reshape(-1, 4))  # fmt: skip
    return gt, dets


def resample(images: list[dict], idx: np.ndarray) -> list[dict]:
    return [images[i] for i in idx]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("metric", ["07", "area"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resamples_match_literal_copies(metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, n_classes = 14, 3
    images = random_images(rng, n, n_classes)
    gt, dets = to_arrays(images, n_classes)
    matched = match_arrays(gt, dets)
    idx = rng.integers(0, n, (25, n))
    idx[0] = np.arange(n)  # the unresampled set
    maps, _ = map_samples(matched, counts_from_indices(idx, n), metric)
    oracle = np.array([loop_map(resample(images, r), n_classes, metric == "07") for r in idx])
    np.testing.assert_array_equal(np.isnan(maps), np.isnan(oracle))
    np.testing.assert_allclose(maps, oracle, rtol=0, atol=1e-12)


def test_class_without_positives_in_a_resample_is_left_out() -> None:
    # class 1 lives on image 0 only; a resample without image 0 must average class 0 alone
    images = [
        {"gt": [(1, [0, 0, 20, 20], False)], "dets": [(1, 0.9, [0, 0, 20, 20])]},
        {"gt": [(0, [0, 0, 20, 20], False)], "dets": [(0, 0.8, [30, 30, 50, 50]),
                                                      (0, 0.7, [0, 0, 20, 20])]},
    ]  # fmt: skip
    gt, dets = to_arrays(images, 2)
    m = match_arrays(gt, dets)
    maps, aps = map_samples(m, np.array([[0, 2], [2, 0], [1, 1]]), "07")
    assert math.isnan(aps[0, 1]) and math.isnan(aps[1, 0])
    assert maps[0] == pytest.approx(loop_map([images[1]] * 2, 2, True))
    assert maps[1] == pytest.approx(1.0)
    assert maps[2] == pytest.approx(loop_map(images, 2, True))
    maps, _ = map_samples(m, np.zeros((1, 2), np.int32), "07")
    assert math.isnan(maps[0])


def _predictions(images: list[dict]) -> tuple[list[dict], list[dict]]:
    """In-memory form: internal 0-based continuous boxes are VOC boxes minus (1, 1, 0, 0)."""
    preds, targets = [], []
    shift = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)

    def boxes(bs: list) -> torch.Tensor:
        return torch.tensor(bs, dtype=torch.float64).reshape(-1, 4) - shift

    for i, im in enumerate(images):
        preds.append({
            "boxes": boxes([b for _, _, b in im["dets"]]),
            "labels": torch.tensor([c for c, _, _ in im["dets"]], dtype=torch.int64),
            "scores": torch.tensor([s for _, s, _ in im["dets"]], dtype=torch.float64),
        })  # fmt: skip
        targets.append({
            "boxes": boxes([b for _, b, _ in im["gt"]]),
            "labels": torch.tensor([c for c, _, _ in im["gt"]], dtype=torch.int64),
            "difficult": torch.tensor([d for _, _, d in im["gt"]], dtype=torch.bool),
            "image_id": f"im{i}",
        })  # fmt: skip
    return preds, targets


@pytest.mark.parametrize("metric", ["07", "area"])
def test_unresampled_estimate_equals_point_metric(metric: str) -> None:
    rng = np.random.default_rng(5)
    images = random_images(rng, 60, 4)
    preds, targets = _predictions(images)
    names = ("a", "b", "c", "d")
    point = evaluate_voc(preds, targets, names, metric=metric)
    m = match_voc(preds, targets, names)
    iv = bootstrap_map(m, n_boot=200, seed=3, metric=metric)
    assert iv.estimate == point.map  # exactly
    ones, _ = map_samples(m, np.ones((1, m.n_images), np.int32), metric)
    if metric == "07":
        assert ones[0] == point.map  # the vectorised path too, bit for bit
    else:
        assert ones[0] == pytest.approx(point.map, abs=1e-14)
    assert iv.lo < iv.hi  # 60 images: a real spread


def test_interval_is_the_percentile_of_the_oracle_resamples() -> None:
    rng = np.random.default_rng(7)
    n = 12
    images = random_images(rng, n, 2)
    gt, dets = to_arrays(images, 2)
    m = match_arrays(gt, dets)
    b, seed = 60, 11
    counts = bootstrap_counts(n, b, seed)
    # the seeded resamples are integers(0, n, (B, n)) of default_rng(seed)
    idx = np.random.default_rng(seed).integers(0, n, (b, n))
    np.testing.assert_array_equal(counts, counts_from_indices(idx, n))
    oracle = np.array([loop_map(resample(images, r), 2, True) for r in idx])
    iv = bootstrap_map(m, n_boot=b, seed=seed)
    ok = oracle[~np.isnan(oracle)]
    assert iv.n_undefined == int(np.isnan(oracle).sum())
    lo, hi = np.quantile(ok, [0.025, 0.975])
    assert iv.lo == pytest.approx(lo, abs=1e-12) and iv.hi == pytest.approx(hi, abs=1e-12)
    assert iv.estimate == pytest.approx(loop_map(images, 2, True), abs=1e-12)


def test_paired_difference_uses_the_same_resamples() -> None:
    rng = np.random.default_rng(9)
    n = 15
    images = random_images(rng, n, 3)
    # model b: same ground truth, noisier detections
    other = random_images(np.random.default_rng(9), n, 3, jitter=14.0)
    images_b = [{"gt": im["gt"], "dets": ob["dets"]} for im, ob in zip(images, other)]
    ma = match_arrays(*to_arrays(images, 3))
    mb = match_arrays(*to_arrays(images_b, 3))
    b, seed = 40, 2
    idx = np.random.default_rng(seed).integers(0, n, (b, n))
    diffs = np.array([loop_map(resample(images, r), 3, True)
                      - loop_map(resample(images_b, r), 3, True) for r in idx])  # fmt: skip
    iv = paired_bootstrap(ma, mb, n_boot=b, seed=seed)
    ok = diffs[~np.isnan(diffs)]
    lo, hi = np.quantile(ok, [0.025, 0.975])
    assert iv.lo == pytest.approx(lo, abs=1e-12) and iv.hi == pytest.approx(hi, abs=1e-12)
    assert iv.estimate == pytest.approx(
        loop_map(images, 3, True) - loop_map(images_b, 3, True), abs=1e-12
    )
    # explicit counts give the same interval
    iv2 = paired_bootstrap(ma, mb, counts=counts_from_indices(idx, n), seed=seed)
    assert (iv2.lo, iv2.hi) == (iv.lo, iv.hi)


def test_model_against_itself_is_zero() -> None:
    rng = np.random.default_rng(4)
    m = match_arrays(*to_arrays(random_images(rng, 40, 3), 3))
    for metric in ("07", "area"):
        iv = paired_bootstrap(m, m, n_boot=1000, seed=0, metric=metric)
        assert (iv.estimate, iv.lo, iv.hi) == (0.0, 0.0, 0.0)
        assert not iv.excludes_zero


def test_results_files_give_the_same_samples(tmp_path: Path) -> None:
    """Detections written in the VOC results format and re-read with a hand-written devkit
    give the same resampled mAPs as the in-memory path."""
    rng = np.random.default_rng(12)
    images = random_images(rng, 20, 2)
    for im in images:  # integer ground truth, inside a 200 x 200 image, for the XML files
        im["gt"] = [(c, [float(round(v)) + 1 for v in b], d) for c, b, d in im["gt"]]
    preds, targets = _predictions(images)
    names = ("a", "b")
    root = tmp_path / "kit"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/test.txt").write_text("".join(f"im{i}\n" for i in range(20)))
    for i, im in enumerate(images):
        objs = "".join(
            f"<object><name>{names[c]}</name><difficult>{int(d)}</difficult><bndbox>"
            f"<xmin>{int(b[0])}</xmin><ymin>{int(b[1])}</ymin><xmax>{int(b[2])}</xmax>"
            f"<ymax>{int(b[3])}</ymax></bndbox></object>"
            for c, b, d in im["gt"]
        )
        (root / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><filename>im{i}.jpg</filename><size><width>200</width>"
            f"<height>200</height><depth>3</depth></size>{objs}</annotation>"
        )
    write_voc_results(preds, [f"im{i}" for i in range(20)], names, tmp_path / "dets", "test")
    from_files = match_files(root, "test", tmp_path / "dets", names)
    in_memory = match_voc(preds, targets, names)
    counts = bootstrap_counts(20, 50, 1)
    a, _ = map_samples(from_files, counts)
    b, _ = map_samples(in_memory, counts)
    np.testing.assert_array_equal(a, b)
    oracle = [loop_map(resample(images, r), 2, True)
              for r in np.random.default_rng(1).integers(0, 20, (50, 20))]  # fmt: skip
    np.testing.assert_allclose(a, oracle, rtol=0, atol=1e-12)


def test_counts_from_indices_brute_force() -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 7, (5, 9))
    counts = counts_from_indices(idx, 7)
    for r in range(5):
        for i in range(7):
            assert counts[r, i] == sum(1 for x in idx[r] if x == i)
    assert (counts.sum(1) == 9).all()


def test_bad_input_raises() -> None:
    m = match_arrays(*to_arrays(random_images(np.random.default_rng(1), 5, 2), 2))
    with pytest.raises(ValueError, match="resample counts"):
        map_samples(m, np.ones((3, 4), np.int32))
    with pytest.raises(ValueError, match="metric"):
        bootstrap_map(m, n_boot=10, metric="12")
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_counts(5, 0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_map(m, n_boot=10, level=1.5)
    with pytest.raises(ValueError, match="resample index"):
        counts_from_indices(np.array([[0, 9]]), 5)
    empty = match_arrays(*to_arrays([{"gt": [], "dets": []}], 1))
    with pytest.raises(ValueError, match="undefined"):
        bootstrap_map(empty, n_boot=10)
    other = match_arrays(*to_arrays(random_images(np.random.default_rng(2), 6, 2), 2))
    with pytest.raises(ValueError, match="different images"):
        paired_bootstrap(m, other, n_boot=10)


def test_interval_table_pairs_every_model_with_the_reference() -> None:
    from lowbit.eval.intervals import format_ci, interval_table

    rng = np.random.default_rng(21)
    images = random_images(rng, 30, 2)
    other = random_images(np.random.default_rng(21), 30, 2, jitter=12.0)
    images_b = [{"gt": im["gt"], "dets": ob["dets"]} for im, ob in zip(images, other)]
    ma = match_arrays(*to_arrays(images, 2))
    mb = match_arrays(*to_arrays(images_b, 2))
    table = interval_table({"fp32": ma, "q": mb}, reference="fp32", n_boot=300, seed=4)
    assert "drop" not in table["fp32"]
    single = bootstrap_map(mb, n_boot=300, seed=4)
    assert table["q"]["mAP_ci"] == [single.lo, single.hi]
    pair = paired_bootstrap(ma, mb, n_boot=300, seed=4)
    assert table["q"]["drop_ci"] == [pair.lo, pair.hi]
    assert table["q"]["drop_excludes_zero"] == (pair.lo > 0 or pair.hi < 0)
    assert format_ci(0.4302, [0.411, 0.449]) == "43.02 [41.10, 44.90]"
    assert format_ci(-0.0027, [-0.01, 0.005], signed=True) == "-0.27 [-1.00, +0.50]"
    with pytest.raises(ValueError, match="reference"):
        interval_table({"q": mb}, reference="fp32")


def test_class_names_with_spaces_round_trip_through_results_files(tmp_path: Path) -> None:
    from lowbit.eval.intervals import file_class_names, ground_truth_arrays, match_results_dir

    names = ("traffic light", "a/b")
    assert file_class_names(names) == ["traffic_light", "a_b"]
    rng = np.random.default_rng(8)
    preds, targets = _predictions(random_images(rng, 12, 2))
    gt = ground_truth_arrays(targets, names)
    write_voc_results(preds, gt.image_ids, file_class_names(names), tmp_path, "test")
    counts = bootstrap_counts(12, 30, 0)
    a, _ = map_samples(match_results_dir(gt, tmp_path, "test"), counts)
    b, _ = map_samples(match_voc(preds, targets, names), counts)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="comp4_det_test_traffic_light.txt"):
        match_results_dir(gt, tmp_path / "missing", "test")


def test_resamples_are_computed_once_per_model_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second matching of the same detections with the same resamples is served from the
    memo (no AP computed again), as copies; other resamples or detections are computed."""
    import lowbit.eval.intervals as iv_mod

    rng = np.random.default_rng(21)
    images = random_images(rng, 30, 3)
    other = random_images(np.random.default_rng(21), 30, 3, jitter=9.0)
    m1 = match_arrays(*to_arrays(images, 3))
    m2 = match_arrays(*to_arrays(images, 3))  # the same detections matched again
    m3 = match_arrays(*to_arrays([{"gt": a["gt"], "dets": b["dets"]}
                                  for a, b in zip(images, other)], 3))
    assert m1.digest() == m2.digest() != m3.digest()
    counts = bootstrap_counts(30, 200, 5)
    calls = []
    real = iv_mod._class_ap
    monkeypatch.setattr(iv_mod, "_class_ap", lambda *a: calls.append(1) or real(*a))
    first, aps = map_samples(m1, counts)
    n_first = len(calls)
    assert n_first == 3
    first[:] = -1.0  # the caller's copy: the memo keeps its own
    again, aps2 = map_samples(m2, counts)
    assert len(calls) == n_first and np.array_equal(aps, aps2)
    iv_mod._SAMPLES_MEMO.clear()
    fresh, _ = map_samples(m1, counts)
    assert np.array_equal(again, fresh, equal_nan=True) and not (again == -1.0).any()
    map_samples(m1, bootstrap_counts(30, 200, 6))
    map_samples(m3, counts)
    assert len(calls) == n_first + 9
