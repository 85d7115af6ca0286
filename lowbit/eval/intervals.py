"""Bootstrap confidence intervals on the VOC mAP and on paired mAP differences.

The statistic is the VOC mAP of :mod:`lowbit.eval.voc` (VOC07 11-point by default, or the
VOC2010+ area), computed on *resamples of the test images*: a resample draws ``n`` images with
replacement from the ``n`` test images and is represented by its vector of per-image
multiplicities ``counts int[n]`` (an image drawn twice counts twice: its detections enter the
precision/recall curve twice and its positives count twice in ``npos``).

Vectorisation (one matching, all resamples at once):

* Matching happens within an image, so the TP / FP / ignored decision of every detection is the
  same in every resample. :func:`lowbit.eval.voc.voc_match_class` makes it once (the very code of
  the point metric: same IoU, same stable score order, same "difficult" rule); detections that
  hit a difficult box are ignored, as in the point metric.
* Per class, in score order, the precision envelope is attained at TP positions (after a FP the
  precision only falls), so the AP needs the cumulated TP and FP *weights* at the TP positions
  only: ``tpc = cumsum(counts[:, img_tp])`` and the FP weights between consecutive TPs, one
  sparse product ``counts @ S`` with ``S[image, segment]`` the number of FPs of ``image`` in the
  segment. Everything after is ``[T, B]`` arrays with ``T`` the TP count of the class.
* ``prec = tpc / max(tpc + fpc, eps)`` and ``rec = tpc / npos`` are the point metric's formulas
  on the same integers, so on the unresampled set (every count 1) the 11-point AP is
  bit-identical to :func:`lowbit.eval.voc.voc_ap` (the area metric equals it to rounding, the
  sum being grouped differently).

Conventions:

* A class with no positive (non-difficult) box in a resample has an undefined AP there and is
  left out of that resample's mean, as the point metric leaves out a class without positives.
  A resample in which no class has a positive has no mAP: it is dropped and counted in
  :attr:`Interval.n_undefined` (only possible on tiny test sets).
* The interval is the percentile bootstrap: the ``(1 - level) / 2`` and ``(1 + level) / 2``
  quantiles (numpy's default linear interpolation) of the resampled statistic; the estimate is
  the statistic on the full set.
* Paired differences (:func:`paired_bootstrap`) evaluate both models on the *same* resamples:
  the resamples depend only on ``(n_images, n_boot, seed)``, so two runs bootstrapped with the
  same seed at different times are paired. ``a - b`` with ``a`` the reference gives the drop.
* Ties: the copies of a drawn image sit where the image's detections sit in the full set's
  stable score order (the point metric on a literal copy of the resample can order detections
  of *equal* score on different images differently; with distinct scores the two agree).
* Units: mAP and differences are fractions (0..1), like :class:`lowbit.eval.voc.VOCEvalResult`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from lowbit.eval.voc import (
    GroundTruth,
    _check_metric,
    ground_truth_arrays,
    load_voc_ground_truth,
    prediction_arrays,
    read_voc_results,
    results_filename,
    voc_ap,
    voc_match_class,
)

__all__ = [
    "MatchedSet",
    "Interval",
    "match_arrays",
    "match_voc",
    "match_files",
    "match_results_dir",
    "ground_truth_arrays",
    "file_class_names",
    "interval_table",
    "format_ci",
    "bootstrap_counts",
    "counts_from_indices",
    "map_samples",
    "bootstrap_map",
    "paired_bootstrap",
    "DEFAULT_BOOT",
]

DEFAULT_BOOT = 1000
_EPS = np.finfo(np.float64).eps
_THRESH = np.arange(0.0, 1.1, 0.1)  # the point metric's recall thresholds, same floats


@dataclass
class _ClassMatch:
    img_tp: np.ndarray  # int64[T] image of each TP, score order
    fp_sparse: sparse.csr_matrix  # [T, n] FP count of image in segment t (before TP t)
    rec_pt: np.ndarray  # unweighted rec over all detections (point metric), float64[D]
    prec_pt: np.ndarray


@dataclass
class MatchedSet:
    """One model's detections matched once against the ground truth.

    ``positives`` ``int64[C, n_images]``: non-difficult boxes of class ``c`` on each image;
    ``num_dets`` detections per class; per-class TP/FP structure is internal.
    """

    classes: tuple[str, ...]
    image_ids: list[str]
    positives: np.ndarray
    num_dets: list[int]
    iou_thresh: float
    _per_class: list[_ClassMatch]
    _digest: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    def digest(self) -> bytes:
        """A hash of everything the resampled APs depend on (two matchings of the same
        detections and ground truth have the same digest); cached."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=20)
            h.update(repr((self.classes, self.num_dets, self.iou_thresh)).encode())
            h.update("\0".join(self.image_ids).encode())
            h.update(np.ascontiguousarray(self.positives, dtype=np.int64).tobytes())
            for cm in self._per_class:
                fp = cm.fp_sparse
                for a in (cm.img_tp, fp.data, fp.indices, fp.indptr, cm.rec_pt, cm.prec_pt):
                    h.update(np.ascontiguousarray(a).tobytes())
                h.update(repr(fp.shape).encode())
            self._digest = h.digest()
        return self._digest

    def point(self, metric: str = "07") -> tuple[float, dict[str, float]]:
        """``(mAP, {class: AP})`` on the full set with :func:`lowbit.eval.voc.voc_ap` (the
        point metric itself); undefined APs are ``nan`` and left out of the mean."""
        use07 = _check_metric(metric)
        aps: dict[str, float] = {}
        for name, cm, npos in zip(self.classes, self._per_class, self.positives.sum(1)):
            aps[name] = math.nan if npos == 0 else voc_ap(cm.rec_pt, cm.prec_pt, use07)
        defined = [v for v in aps.values() if not math.isnan(v)]
        return (float(np.mean(defined)) if defined else math.nan), aps


def match_arrays(
    gt: GroundTruth,
    dets: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_thresh: float = 0.5,
) -> MatchedSet:
    """Match ``dets[label] = (image_index int[D], scores [D], boxes [D, 4])`` (VOC 1-based
    inclusive boxes, as :func:`lowbit.eval.voc.evaluate_arrays`) against ``gt``."""
    n = gt.n_images
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
    per_class: list[_ClassMatch] = []
    positives = np.zeros((len(gt.classes), n), dtype=np.int64)
    num_dets: list[int] = []
    for c in range(len(gt.classes)):
        m = gt.labels == c
        np.add.at(positives[c], gt.image[m][~gt.difficult[m]], 1)
        di, ds, db = dets.get(c, empty)
        di = np.asarray(di, dtype=np.int64).reshape(-1)
        if di.size and (di.min() < 0 or di.max() >= n):
            raise ValueError(f"class {gt.classes[c]!r}: detection image index outside 0..{n - 1}")
        order, tp, fp, npos = voc_match_class(
            gt.boxes[m], gt.difficult[m], gt.image[m], di, ds, db, iou_thresh, n
        )
        img = di[order]
        tpc = np.cumsum(tp, dtype=np.float64)
        fpc = np.cumsum(fp, dtype=np.float64)
        prec = tpc / np.maximum(tpc + fpc, _EPS)
        rec = tpc / float(npos) if npos else np.full(tp.size, np.nan)
        # FP segments: segment t holds the FPs ranked before TP t (FPs after the last TP never
        # touch a TP position, so they never touch the AP)
        seg = np.cumsum(tp) - tp  # TPs ranked before each detection
        t_count = int(tp.sum())
        keep = fp & (seg < t_count)
        fps = sparse.csr_matrix(
            (np.ones(int(keep.sum())), (seg[keep], img[keep])), shape=(t_count, n)
        )
        fps.sum_duplicates()
        per_class.append(_ClassMatch(img[tp], fps, rec, prec))
        num_dets.append(int(di.size))
    return MatchedSet(
        tuple(gt.classes), list(gt.image_ids), positives, num_dets, float(iou_thresh), per_class
    )


def match_voc(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Any,
    classes: Sequence[str] | None = None,
    iou_thresh: float = 0.5,
) -> MatchedSet:
    """:func:`match_arrays` for the in-memory inputs of :func:`lowbit.eval.voc.evaluate_voc`:
    one prediction dict per image (internal 0-based xyxy ``boxes [K, 4]``, 0-based ``labels``,
    ``scores``), ground truth a dataset with ``eval_targets()`` or a list of target dicts
    (or an already flattened :class:`lowbit.eval.voc.GroundTruth`)."""
    gt = ground_truth if isinstance(ground_truth, GroundTruth) else ground_truth_arrays(
        ground_truth, classes)  # fmt: skip
    dets = prediction_arrays(predictions, gt)
    return match_arrays(gt, dets, iou_thresh)


def file_class_names(classes: Sequence[str]) -> list[str]:
    """Class names as they appear in results file names: whitespace and path separators become
    ``_`` (COCO's ``traffic light`` -> ``traffic_light``); VOC names are unchanged."""
    return [re.sub(r"[\s/\\]", "_", str(c)) for c in classes]


def match_results_dir(
    gt: GroundTruth,
    dets_dir: str | Path,
    split: str = "test",
    iou_thresh: float = 0.5,
    prefix: str = "comp4_det",
) -> MatchedSet:
    """:func:`match_arrays` for the VOC results files ``dets_dir/<prefix>_<split>_<class>.txt``
    (one per class of ``gt``, named by :func:`file_class_names`; image ids as
    ``gt.image_ids``). ValueError naming the file for a
    missing file or an image outside ``gt``."""
    index = {iid: i for i, iid in enumerate(gt.image_ids)}
    dets = {}
    for c, name in enumerate(file_class_names(gt.classes)):
        path = Path(dets_dir) / results_filename(split, name, prefix)
        if not path.is_file():
            raise ValueError(f"{path}: detections file not found")
        ids, scores, boxes = read_voc_results(path)
        img = np.array([index.get(i, -1) for i in ids], dtype=np.int64)
        if (img < 0).any():
            k = int(np.flatnonzero(img < 0)[0])
            raise ValueError(f"{path}: line {k + 1}: image {ids[k]!r} is not in split {split!r}")
        dets[c] = (img, scores, boxes)
    return match_arrays(gt, dets, iou_thresh)


def match_files(
    root: str | Path,
    split: str,
    dets_dir: str | Path,
    classes: Sequence[str] | None = None,
    iou_thresh: float = 0.5,
    prefix: str = "comp4_det",
) -> MatchedSet:
    """:func:`match_arrays` for VOC results files ``dets_dir/<prefix>_<split>_<class>.txt``
    against the devkit at ``root`` (arguments as :func:`lowbit.eval.voc.voc_eval_files`)."""
    gt = load_voc_ground_truth(root, split, classes)
    return match_results_dir(gt, dets_dir, split, iou_thresh, prefix)


# ----------------------------------------------------------------------------- resamples
def counts_from_indices(indices: np.ndarray, n_images: int) -> np.ndarray:
    """Resample indices ``int[B, n]`` (image drawn at each of ``n`` draws) -> multiplicities
    ``int32[B, n_images]``."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"resample indices must be [B, n], got shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_images):
        raise ValueError(f"resample index outside 0..{n_images - 1}")
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n_images + idx).ravel()
    return np.bincount(flat, minlength=b * n_images).reshape(b, n_images).astype(np.int32)


def bootstrap_counts(n_images: int, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> np.ndarray:
    """Multiplicities ``int32[n_boot, n_images]`` of ``n_boot`` resamples of ``n_images``
    images with replacement, from ``numpy.random.default_rng(seed)`` (indices drawn as
    ``integers(0, n, (n_boot, n))``): a function of ``(n_images, n_boot, seed)`` only."""
    if n_images < 1:
        raise ValueError(f"bootstrap: need at least one image, got {n_images}")
    if n_boot < 1:
        raise ValueError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return counts_from_indices(rng.integers(0, n_images, (n_boot, n_images)), n_images)


def _class_ap(cm: _ClassMatch, pos: np.ndarray, counts_t: np.ndarray, use07: bool) -> np.ndarray:
    """AP ``float64[B]`` of one class under the resamples ``counts_t int32[n, B]``."""
    b = counts_t.shape[1]
    has = np.flatnonzero(pos)
    npos = pos[has].astype(np.float64) @ counts_t[has].astype(np.float64)  # exact integers
    ap = np.zeros(b)
    t = cm.img_tp.size
    if t:
        tpc = np.cumsum(counts_t[cm.img_tp], axis=0, dtype=np.int64)  # [T, B]
        fpc = np.cumsum(np.asarray(cm.fp_sparse @ counts_t), axis=0)  # exact small integers
        tpf = tpc.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = tpf / np.maximum(tpf + fpc, _EPS)
            rec = tpf / npos
        env = np.maximum.accumulate(prec[::-1], axis=0)[::-1]  # precision envelope
        cols = np.arange(b)
        if use07:
            for thr in _THRESH:
                k = (rec < thr).sum(axis=0)  # first TP position with rec >= thr
                p = np.where(k < t, env[np.minimum(k, t - 1), cols], 0.0)
                ap = ap + p / 11.0
        else:
            drec = np.diff(rec, axis=0, prepend=0.0)
            ap = (drec * env).sum(axis=0)
    ap[npos == 0] = np.nan
    return ap


#: map_samples results by (matching digest, resamples digest, metric): a study that asks for
#: the same model's resamples several times (a table, then paired claims) computes them once
_SAMPLES_MEMO: OrderedDict[tuple[bytes, bytes, bool], tuple[np.ndarray, np.ndarray]] = (
    OrderedDict())
_MEMO_SIZE = 32


def map_samples(
    matched: MatchedSet, counts: np.ndarray, metric: str = "07"
) -> tuple[np.ndarray, np.ndarray]:
    """mAP ``float64[B]`` and APs ``float64[B, C]`` under the resamples ``counts
    int[B, n_images]`` (``nan`` = undefined: no positive in that resample). The last
    ``_MEMO_SIZE`` results are kept (keyed by :meth:`MatchedSet.digest` and a hash of
    ``counts``) and returned as copies when asked again."""
    use07 = _check_metric(metric)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != matched.n_images:
        raise ValueError(
            f"resample counts must be [B, {matched.n_images}], got shape {counts.shape}"
        )
    if (counts < 0).any():
        raise ValueError("resample counts must be >= 0")
    counts_t = np.ascontiguousarray(counts.T, dtype=np.int32)
    key = (matched.digest(),
           hashlib.blake2b(counts_t.tobytes() + repr(counts_t.shape).encode(),
                           digest_size=20).digest(), use07)
    hit = _SAMPLES_MEMO.get(key)
    if hit is not None:
        _SAMPLES_MEMO.move_to_end(key)
        return hit[0].copy(), hit[1].copy()
    maps, aps = _map_samples(matched, counts_t, use07)
    _SAMPLES_MEMO[key] = (maps.copy(), aps.copy())
    while len(_SAMPLES_MEMO) > _MEMO_SIZE:
        _SAMPLES_MEMO.popitem(last=False)
    return maps, aps


def _map_samples(matched: MatchedSet, counts_t: np.ndarray,
                 use07: bool) -> tuple[np.ndarray, np.ndarray]:
    aps = np.stack(
        [
            _class_ap(cm, matched.positives[c], counts_t, use07)
            for c, cm in enumerate(matched._per_class)
        ],
        axis=1,
    ) if matched._per_class else np.zeros((counts_t.shape[1], 0))  # fmt: skip
    defined = ~np.isnan(aps)
    k = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        maps = np.where(defined, aps, 0.0).sum(axis=1) / k
    maps[k == 0] = np.nan
    return maps, aps


# ----------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """A statistic on the full set with its percentile bootstrap interval (fractions)."""

    estimate: float
    lo: float
    hi: float
    level: float
    n_boot: int
    seed: int
    metric: str
    n_undefined: int = 0

    @property
    def half_width(self) -> float:
        """``(hi - lo) / 2``."""
        return (self.hi - self.lo) / 2.0

    @property
    def excludes_zero(self) -> bool:
        """The interval lies strictly on one side of 0."""
        return self.lo > 0.0 or self.hi < 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate, "lo": self.lo, "hi": self.hi,
            "half_width": self.half_width, "level": self.level, "n_boot": self.n_boot,
            "seed": self.seed, "metric": self.metric, "n_undefined": self.n_undefined,
            "excludes_zero": self.excludes_zero,
        }  # fmt: skip

    def format(self, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
        """``"43.02 [41.10, 44.90]"`` (in points with ``scale=100``)."""
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        e, lo, hi = (f.format(v * scale) for v in (self.estimate, self.lo, self.hi))
        return f"{e} [{lo}, {hi}]"


def _interval(est: float, samples: np.ndarray, level: float, n_boot: int, seed: int,
              metric: str) -> Interval:  # fmt: skip
    ok = samples[~np.isnan(samples)]
    if math.isnan(est) or ok.size == 0:
        raise ValueError("bootstrap: no class has a positive ground-truth box: mAP undefined")
    q = np.quantile(ok, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(est), float(q[0]), float(q[1]), level, n_boot, seed, metric,
                    int(samples.size - ok.size))  # fmt: skip


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level must be in (0, 1), got {level}")


def bootstrap_map(
    matched: MatchedSet,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    metric: str = "07",
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> Interval:
    """mAP on the full set with its ``level`` percentile bootstrap interval over test images.

    ``counts`` ``int[B, n_images]`` replaces the seeded resamples (explicit multiplicities, e.g.
    from :func:`counts_from_indices`); ``n_boot`` is then ``B``.
    """
    _check_level(level)
    if counts is None:
        counts = bootstrap_counts(matched.n_images, n_boot, seed)
    est, _ = matched.point(metric)
    samples, _ = map_samples(matched, counts, metric)
    return _interval(est, samples, level, int(counts.shape[0]), seed, metric)


def paired_bootstrap(
    a: MatchedSet,
    b: MatchedSet,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    metric: str = "07",
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> Interval:
    """``mAP(a) - mAP(b)`` with its paired percentile interval: both on the same resamples.

    ``a`` the reference (FP32) and ``b`` the quantized model give the *drop* (positive = worse).
    Both must be matched on the same images in the same order.
    """
    _check_level(level)
    if a.image_ids != b.image_ids or a.classes != b.classes:
        raise ValueError("paired bootstrap: the two models were evaluated on different images "
                         "or classes")  # fmt: skip
    if counts is None:
        counts = bootstrap_counts(a.n_images, n_boot, seed)
    ea, _ = a.point(metric)
    eb, _ = b.point(metric)
    sa, _ = map_samples(a, counts, metric)
    sb, _ = map_samples(b, counts, metric)
    return _interval(ea - eb, sa - sb, level, int(counts.shape[0]), seed, metric)


def interval_table(
    matched: Mapping[str, MatchedSet],
    reference: str | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
    metric: str = "07",
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Intervals of several models on the same test images, all on the *same* resamples.

    Returns ``{name: {"mAP", "mAP_ci": [lo, hi], "mAP_half_width", and, for every model but
    ``reference`` when it is given, "drop" = mAP(reference) - mAP(name), "drop_ci",
    "drop_half_width", "drop_excludes_zero"}}`` (fractions) plus ``"n_undefined"``.
    """
    _check_level(level)
    if not matched:
        return {}
    if reference is not None and reference not in matched:
        raise ValueError(f"intervals: reference {reference!r} is not among {list(matched)}")
    first = next(iter(matched.values()))
    for name, m in matched.items():
        if m.image_ids != first.image_ids or m.classes != first.classes:
            raise ValueError(f"intervals: {name!r} was evaluated on other images or classes")
    counts = bootstrap_counts(first.n_images, n_boot, seed)
    samples = {k: map_samples(m, counts, metric)[0] for k, m in matched.items()}
    points = {k: m.point(metric)[0] for k, m in matched.items()}
    out: dict[str, dict[str, Any]] = {}
    for k in matched:
        iv = _interval(points[k], samples[k], level, n_boot, seed, metric)
        row: dict[str, Any] = {"mAP": iv.estimate, "mAP_ci": [iv.lo, iv.hi],
                               "mAP_half_width": iv.half_width, "n_undefined": iv.n_undefined}
        if reference is not None and k != reference:
            d = _interval(points[reference] - points[k], samples[reference] - samples[k], level,
                          n_boot, seed, metric)  # fmt: skip
            row.update({"drop": d.estimate, "drop_ci": [d.lo, d.hi],
                        "drop_half_width": d.half_width, "drop_excludes_zero": d.excludes_zero})
        out[k] = row
    return out


def format_ci(est: float | None, ci: Sequence[float] | None, signed: bool = False,
              scale: float = 100.0, digits: int = 2) -> str:
    """``"43.02 [41.10, 44.90]"`` from a fraction and its interval (``"-"`` when missing)."""
    if est is None:
        return "-"
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = f.format(est * scale)
    if ci is None:
        return text
    return f"{text} [{f.format(ci[0] * scale)}, {f.format(ci[1] * scale)}]"
