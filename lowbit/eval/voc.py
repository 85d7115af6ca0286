"""PASCAL VOC detection metric, vectorised, numerically identical to py-faster-rcnn's voc_eval.py.

Reference semantics kept exactly (``datasets/voc_eval.py`` of py-faster-rcnn):

* detections of a class are sorted by descending score with a *stable* sort
  (``np.argsort(-score, kind="stable")``: ties keep file / image order);
* each detection takes the ground truth box of its image with the largest IoU (first one on
  ties), IoU computed with the "+1 pixel" areas of VOC 1-based inclusive boxes;
* it is a hit when that IoU is *strictly* greater than the threshold; a hit on a difficult box
  is neither TP nor FP; a hit on a box already matched by a higher-scored detection is FP (the
  detection does not fall back to its second-best box); a miss is FP;
* ``rec = tp / npos`` with ``npos`` the non-difficult boxes, ``prec = tp / max(tp + fp, eps)``;
* AP is the VOC07 11-point interpolation (``metric="07"``) or the area under the monotone
  precision envelope (``metric="area"``, VOC2010+).

Vectorisation rests on one observation: the box a detection is compared with depends only on
the detection and its image, never on the matching order, so IoUs and arg-maxima are computed
for all detections at once, and "matched once" is "first occurrence of (image, box) in score
order" (:func:`numpy.unique` ``return_index``).

Differences, on purpose: a class without positive (non-difficult) ground truth has an
undefined AP, returned as ``nan``, listed in :attr:`VOCEvalResult.no_positives` and left out of
the mAP (the reference divides by zero there). A detection on an image outside the split is an
error naming the results file (the reference raises ``KeyError``).

Coordinates: the metric works on VOC 1-based inclusive boxes. Files already are; the in-memory
API (:func:`evaluate_voc`) converts internal 0-based continuous boxes with
:func:`lowbit.data.voc.internal_to_voc` in :func:`_to_voc` only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from lowbit._files import read_input_bytes
from lowbit.data.voc import (
    VOC_CLASSES,
    annotation_entries,
    internal_to_voc,
    read_classes,
    read_image_set,
    resolve_voc_folders,
)

__all__ = [
    "GroundTruth",
    "VOCEvalResult",
    "voc_ap",
    "voc_eval_class",
    "voc_match_class",
    "evaluate_arrays",
    "load_voc_ground_truth",
    "read_voc_results",
    "write_voc_results",
    "voc_eval_files",
    "evaluate_voc",
    "default_metric",
]

_EPS = np.finfo(np.float64).eps
_CHUNK = 1 << 21  # detection x box pairs per IoU block (bounds memory)


# ----------------------------------------------------------------------------- core
def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from recall/precision ``float64[D]`` in score order (``rec`` non-decreasing).

    ``use_07_metric``: mean over ``t in 0, 0.1, ..., 1`` of ``max(prec[rec >= t])`` (0 if none);
    otherwise the area under the precision envelope at the recall steps.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        # max(prec[rec >= t]) is a suffix maximum because rec is sorted
        sufmax = np.maximum.accumulate(prec[::-1])[::-1] if prec.size else prec
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            k = int(np.searchsorted(rec, t, side="left"))
            p = sufmax[k] if k < rec.size else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _pad_by_image(
    boxes: np.ndarray, difficult: np.ndarray, image: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth ``[N]`` -> per image ``[n_images, G, ...]`` keeping the original order."""
    order = np.argsort(image, kind="stable")
    image = image[order]
    counts = np.bincount(image, minlength=n_images)
    g = int(counts.max()) if counts.size else 0
    starts = np.cumsum(counts) - counts
    slot = np.arange(image.size) - starts[image]
    pb = np.zeros((n_images, g, 4), dtype=np.float64)
    pd = np.zeros((n_images, g), dtype=bool)
    pv = np.zeros((n_images, g), dtype=bool)
    pb[image, slot] = boxes[order]
    pd[image, slot] = difficult[order]
    pv[image, slot] = True
    return pb, pd, pv


def voc_match_class(
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    gt_image: np.ndarray,
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    iou_thresh: float = 0.5,
    n_images: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The matching of one class (arguments as :func:`voc_eval_class`).

    Returns:
        ``(order, tp, fp, npos)``: ``order`` ``int64[D]`` the score order (stable), ``tp`` and
        ``fp`` ``bool[D]`` the decision of each detection *in score order* (a hit on a difficult
        box is neither), ``npos`` the non-difficult boxes.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_difficult = np.asarray(gt_difficult, dtype=bool).reshape(-1)
    gt_image = np.asarray(gt_image, dtype=np.int64).reshape(-1)
    det_image = np.asarray(det_image, dtype=np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    if n_images is None:
        n_images = int(max(gt_image.max(initial=-1), det_image.max(initial=-1))) + 1
    npos = int((~gt_difficult).sum())

    order = np.argsort(-det_scores, kind="stable")
    img = det_image[order]
    bb = det_boxes[order]
    d = img.size
    tp = np.zeros(d, dtype=bool)
    fp = np.ones(d, dtype=bool)
    pb, pd, pv = _pad_by_image(gt_boxes, gt_difficult, gt_image, n_images)
    g = pb.shape[1]
    if d and g:
        ovmax = np.full(d, -np.inf)  # a detection on an image without boxes of the class: miss
        jmax = np.zeros(d, dtype=np.int64)
        todo = np.flatnonzero(pv[img, 0])  # images with at least one box of the class
        step = max(1, _CHUNK // g)
        with np.errstate(divide="ignore", invalid="ignore"):
            for s in range(0, todo.size, step):
                k = todo[s : s + step]
                b = bb[k, None, :]
                gb = pb[img[k]]
                # same operations, same order as the reference: bit-identical overlaps
                ixmin = np.maximum(gb[..., 0], b[..., 0])
                iymin = np.maximum(gb[..., 1], b[..., 1])
                ixmax = np.minimum(gb[..., 2], b[..., 2])
                iymax = np.minimum(gb[..., 3], b[..., 3])
                iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
                ih = np.maximum(iymax - iymin + 1.0, 0.0)
                inters = iw * ih
                uni = (
                    (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
                    + (gb[..., 2] - gb[..., 0] + 1.0) * (gb[..., 3] - gb[..., 1] + 1.0)
                    - inters
                )
                ov = inters / uni
                ov[~pv[img[k]]] = -np.inf  # padding never wins the arg-max
                j = ov.argmax(axis=1)
                jmax[k] = j
                ovmax[k] = ov[np.arange(j.size), j]
        hit = ovmax > iou_thresh
        diff = pd[img, jmax]
        cand = np.flatnonzero(hit & ~diff)
        _, first = np.unique(img[cand] * g + jmax[cand], return_index=True)
        tp[cand[first]] = True
        fp = ~hit | (hit & ~diff & ~tp)
    return order, tp, fp, npos


def voc_eval_class(
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    gt_image: np.ndarray,
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
    n_images: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Evaluate one class. All boxes VOC 1-based inclusive ``[., 4]``.

    Args:
        gt_boxes, gt_difficult, gt_image: ``[N, 4]``, ``bool[N]``, ``int[N]`` image index of
            every ground-truth box of the class.
        det_image, det_scores, det_boxes: ``int[D]``, ``[D]``, ``[D, 4]``; ties in score keep
            this order.
    Returns:
        ``(rec, prec, ap, npos)``; ``rec``/``prec`` ``float64[D]`` in score order. With
        ``npos == 0`` ``rec`` and ``ap`` are ``nan``.
    """
    _, tp, fp, npos = voc_match_class(
        gt_boxes, gt_difficult, gt_image, det_image, det_scores, det_boxes, iou_thresh, n_images
    )
    d = tp.size
    fpc = np.cumsum(fp, dtype=np.float64)
    tpc = np.cumsum(tp, dtype=np.float64)
    prec = tpc / np.maximum(tpc + fpc, _EPS)
    if npos == 0:
        return np.full(d, np.nan), prec, math.nan, 0
    rec = tpc / float(npos)
    return rec, prec, voc_ap(rec, prec, use_07_metric), npos


@dataclass
class GroundTruth:
    """Ground truth of an image set, flattened, in VOC 1-based inclusive pixels.

    ``boxes`` ``float64[N, 4]``, ``labels`` ``int64[N]`` (index into ``classes``),
    ``difficult`` ``bool[N]``, ``image`` ``int64[N]`` (index into ``image_ids``).
    """

    image_ids: list[str]
    classes: tuple[str, ...]
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    image: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_ids)


@dataclass
class VOCEvalResult:
    """Per-class AP (``nan`` for a class without positives) and their mean over the others."""

    ap: dict[str, float]
    map: float
    metric: str
    iou_thresh: float
    npos: dict[str, int] = field(default_factory=dict)
    num_dets: dict[str, int] = field(default_factory=dict)

    @property
    def no_positives(self) -> list[str]:
        """Classes without non-difficult ground truth (AP undefined, not in the mAP)."""
        return [c for c, n in self.npos.items() if n == 0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"mAP", "AP": {class: ap}, "metric", "iou", "no_positives", ...}``;
        undefined values are ``None``."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "mAP": clean(self.map),
            "AP": {c: clean(v) for c, v in self.ap.items()},
            "metric": self.metric,
            "iou": self.iou_thresh,
            "no_positives": self.no_positives,
            "npos": dict(self.npos),
            "num_dets": dict(self.num_dets),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def format_table(self) -> str:
        """Human-readable per-class table."""
        w = max([len(c) for c in self.ap] + [5])
        lines = [f"{'class':<{w}}  {'AP':>7}  {'npos':>6}  {'dets':>7}"]
        for c, v in self.ap.items():
            ap = "    n/a" if math.isnan(v) else f"{v:7.4f}"
            lines.append(f"{c:<{w}}  {ap}  {self.npos.get(c, 0):>6}  {self.num_dets.get(c, 0):>7}")
        m = "n/a" if math.isnan(self.map) else f"{self.map:.4f}"
        lines.append(f"{'mAP':<{w}}  {m:>7}  (metric {self.metric}, IoU > {self.iou_thresh})")
        if self.no_positives:
            lines.append(
                f"note: no positive ground truth for {', '.join(self.no_positives)}: "
                "AP undefined, left out of the mAP"
            )
        return "\n".join(lines)


def _check_metric(metric: str) -> bool:
    if metric not in ("07", "area"):
        raise ValueError(f"metric must be '07' or 'area', got {metric!r}")
    return metric == "07"


def evaluate_arrays(
    gt: GroundTruth,
    dets: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric: str = "area",
    iou_thresh: float = 0.5,
) -> VOCEvalResult:
    """Evaluate every class of ``gt``; ``dets[label] = (image_index[D], scores[D], boxes[D, 4])``
    with VOC 1-based boxes (a class missing from ``dets`` has no detections)."""
    use07 = _check_metric(metric)
    aps: dict[str, float] = {}
    npos: dict[str, int] = {}
    ndet: dict[str, int] = {}
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))
    for c, name in enumerate(gt.classes):
        m = gt.labels == c
        di, ds, db = dets.get(c, empty)
        _, _, ap, n = voc_eval_class(
            gt.boxes[m], gt.difficult[m], gt.image[m], di, ds, db, iou_thresh, use07, gt.n_images
        )
        aps[name], npos[name], ndet[name] = ap, n, int(np.asarray(ds).size)
    defined = [v for v in aps.values() if not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else math.nan
    return VOCEvalResult(aps, mean, metric, float(iou_thresh), npos, ndet)


# ----------------------------------------------------------------------------- files
def default_metric(root: str | Path | Sequence[str | Path]) -> str:
    """``"07"`` for a VOC2007 folder (as py-faster-rcnn does for years before 2010), else
    ``"area"``."""
    roots = [root] if isinstance(root, str | Path) else list(root)
    return "07" if any("2007" in Path(r).resolve().name for r in roots) else "area"


def _default_classes(folder: Path) -> tuple[str, ...]:
    cfile = folder / "classes.txt"
    return read_classes(cfile) if cfile.is_file() else VOC_CLASSES


def load_voc_ground_truth(
    root: str | Path,
    split: str,
    classes: Sequence[str] | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> GroundTruth:
    """Read ``root/ImageSets/Main/<split>.txt`` and its annotations (VOC pixels, as in the
    files). Objects of classes not in ``classes`` are ignored, as the reference does.

    Annotations go through the JSON cache of :func:`lowbit.data.voc.load_voc_annotations`
    (``cache=False``: parse every file).
    """
    folder = resolve_voc_folders(root)[0]
    classes = tuple(classes) if classes is not None else _default_classes(folder)
    ids = read_image_set(folder, split)
    if cache:
        try:
            return _ground_truth(ids, classes, annotation_entries(folder, ids, True, cache_dir))
        except (TypeError, ValueError, KeyError, IndexError):
            pass  # a malformed (hand-edited) cache entry: parse every file instead
    return _ground_truth(ids, classes, annotation_entries(folder, ids, False))


def _ground_truth(ids: list[str], classes: tuple[str, ...], entries: list[list[Any]]
                  ) -> GroundTruth:
    """Flatten annotation entries (see :func:`lowbit.data.voc.annotation_entries`); raises
    ``TypeError``/``ValueError`` on malformed entries."""
    cidx = {c: i for i, c in enumerate(classes)}
    rows = [
        (i, cidx[o[0]], o[1], o[2], o[3], o[4], o[5])
        for i, e in enumerate(entries) for o in e[5] if o[0] in cidx
    ]  # fmt: skip
    a = np.array(rows, dtype=np.float64).reshape(-1, 7)
    if not np.isfinite(a).all() or any(type(o[5]) is not bool for e in entries for o in e[5]):
        raise ValueError("malformed annotation entry")
    return GroundTruth(
        ids, classes, a[:, 2:6].copy(), a[:, 1].astype(np.int64), a[:, 6] != 0,
        a[:, 0].astype(np.int64),
    )  # fmt: skip


def _bad_results_line(path: Path, lines: list[str]) -> ValueError:
    """The error for the first line of a results file that is not ``id score x1 y1 x2 y2``
    with finite numbers (1-based line numbers as an editor shows them)."""
    for k, line in enumerate(lines):
        r = line.split()
        if not r:
            continue
        if len(r) != 6:
            return ValueError(
                f"{path}: line {k + 1}: expected 'image_id score x1 y1 x2 y2', "
                f"got {len(r)} fields"
            )
        for tok in r[1:]:
            try:
                v = float(tok)
            except ValueError:
                return ValueError(f"{path}: line {k + 1}: not a number: {tok[:40]!r}")
            if not math.isfinite(v):
                return ValueError(f"{path}: line {k + 1}: not a finite number: {tok[:40]!r}")
    return ValueError(f"{path}: malformed results file")


def _line_of_row(path: Path, row: int) -> int:
    """1-based line number of the ``row``-th (0-based) non-blank line of a results file."""
    text = path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    seen = -1
    for k, line in enumerate(text.split("\n")):
        seen += bool(line.split())
        if seen == row:
            return k + 1
    return row + 1


def read_voc_results(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a results file (``image_id score x1 y1 x2 y2`` per line, VOC 1-based pixels).

    Returns ``(image_ids, scores float64[D], boxes float64[D, 4])`` in file order; blank lines
    are skipped. Any other line that is not six whitespace-separated fields with five finite
    numbers, or a file that is not UTF-8 text, is a ``ValueError`` naming the file and the
    line: nothing is ever loaded partially. Numbers are parsed as Python's ``float`` does (the
    reference's parse), so values are bit-identical.
    """
    path = Path(path)
    raw = read_input_bytes(path, "detections file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text") from None
    # universal newlines as the reference's text-mode open(); str.splitlines would also split
    # on \x0b, \x1c, \u2028..., which would shift the line numbers an editor shows
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not set(map(len, map(str.split, lines))) <= {0, 6}:  # C-speed loop over the lines
        raise _bad_results_line(path, lines)
    toks = text.split()  # = the rows' fields in order, as "\n" is whitespace too
    ids = toks[0::6]
    del toks[0::6]
    try:  # Python's float(), as the reference: bit-identical values
        vals = np.fromiter(map(float, toks), np.float64, len(toks)).reshape(-1, 5)
    except (ValueError, OverflowError):
        raise _bad_results_line(path, lines) from None
    if not np.isfinite(vals).all():
        raise _bad_results_line(path, lines)
    return ids, vals[:, 0].copy(), vals[:, 1:].copy()


def results_filename(split: str, cls: str, prefix: str = "comp4_det") -> str:
    """``comp4_det_<split>_<class>.txt`` (py-faster-rcnn's name without the salt)."""
    return f"{prefix}_{split}_{cls}.txt"


def voc_eval_files(
    root: str | Path,
    split: str,
    dets_dir: str | Path,
    classes: Sequence[str] | None = None,
    metric: str | None = None,
    iou_thresh: float = 0.5,
    prefix: str = "comp4_det",
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> VOCEvalResult:
    """Evaluate ``dets_dir/<prefix>_<split>_<class>.txt`` against a devkit folder.

    ``classes`` default to ``root/classes.txt`` or the 20 VOC names; ``metric`` defaults to
    :func:`default_metric`. Raises ``FileNotFoundError`` for a missing results file.
    ``cache``/``cache_dir``: the annotation cache (see :func:`load_voc_ground_truth`).
    """
    gt = load_voc_ground_truth(root, split, classes, cache=cache, cache_dir=cache_dir)
    metric = default_metric(root) if metric is None else metric
    _check_metric(metric)
    index = {iid: i for i, iid in enumerate(gt.image_ids)}
    dets = {}
    for c, name in enumerate(gt.classes):
        path = Path(dets_dir) / results_filename(split, name, prefix)
        ids, scores, boxes = read_voc_results(path)
        img = np.fromiter(map(index.get, ids, repeat(-1)), np.int64, len(ids))
        if (img < 0).any():
            k = int(np.flatnonzero(img < 0)[0])
            raise ValueError(
                f"{path}: line {_line_of_row(path, k)}: image {ids[k]!r} is not in image set "
                f"{split!r}"
            )
        dets[c] = (img, scores, boxes)
    return evaluate_arrays(gt, dets, metric, iou_thresh)


_SAFE = re.compile(r"^[^/\\\s]+$")


def write_voc_results(
    predictions: Sequence[Mapping[str, Any]],
    image_ids: Sequence[str],
    classes: Sequence[str],
    out_dir: str | Path,
    split: str,
    prefix: str = "comp4_det",
) -> list[Path]:
    """Write in-memory predictions (internal 0-based xyxy, 0-based labels) as VOC results files,
    one per class, lines in image order then prediction order, full float precision."""
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in classes]
    for iid, p in zip(image_ids, predictions):
        boxes, labels, scores = _to_voc(p)
        for b, lab, s in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            if not 0 <= lab < len(classes):
                raise ValueError(f"prediction label {lab} outside 0..{len(classes) - 1}")
            lines[lab].append(f"{iid} {s!r} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r}\n")
    paths = []
    for c, name in enumerate(classes):
        if not _SAFE.match(name):
            raise ValueError(f"class name {name!r} cannot be used in a file name")
        path = out / results_filename(split, name, prefix)
        path.write_text("".join(lines[c]))
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- in-memory
def _np(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch.Tensor; torch itself is never imported here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _to_voc(item: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one conversion of the in-memory API: internal boxes -> VOC 1-based pixels."""
    boxes = internal_to_voc(item["boxes"])
    labels = _np(item["labels"], np.int64).reshape(-1)
    scores = _np(item["scores"], np.float64).reshape(-1) if "scores" in item else None
    if scores is None:
        scores = np.zeros(labels.size)
    if not boxes.shape[0] == labels.size == scores.size:
        raise ValueError(
            f"boxes/labels/scores lengths differ: {boxes.shape[0]}, {labels.size}, {scores.size}"
        )
    return boxes, labels, scores


def ground_truth_arrays(ground_truth: Any, classes: Sequence[str] | None = None,
                        who: str = "ground truth") -> GroundTruth:
    """The flattened :class:`GroundTruth` (VOC 1-based boxes) of a dataset with
    ``eval_targets()`` (and ``classes``) or of a sequence of target dicts (internal 0-based
    ``boxes``, ``labels``, optional ``difficult`` and ``image_id``); ``classes`` overrides the
    dataset's; a :class:`GroundTruth` is returned as it is. ``who`` names the caller in the
    error raised when no class names are known."""
    if isinstance(ground_truth, GroundTruth):
        return ground_truth
    if hasattr(ground_truth, "eval_targets"):
        targets = ground_truth.eval_targets()
        classes = classes if classes is not None else getattr(ground_truth, "classes", None)
    else:
        targets = list(ground_truth)
    if classes is None:
        raise ValueError(f"{who}: pass classes= (the ground truth has no .classes)")
    gb, gl, gd, gi = [], [], [], []
    for i, t in enumerate(targets):
        b, lab, _ = _to_voc({"boxes": t["boxes"], "labels": t["labels"]})
        dif = t.get("difficult")
        gb.append(b)
        gl.append(lab)
        gd.append(np.zeros(lab.size, bool) if dif is None else _np(dif, bool).reshape(-1))
        gi.append(np.full(lab.size, i, np.int64))
    ids = [str(t.get("image_id", i)) for i, t in enumerate(targets)]
    return GroundTruth(
        ids, tuple(classes), _cat(gb, (0, 4), np.float64), _cat(gl, (0,), np.int64),
        _cat(gd, (0,), bool), _cat(gi, (0,), np.int64),
    )  # fmt: skip


def _cat(xs: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(xs) if xs else np.zeros(shape, dtype)


def prediction_arrays(predictions: Sequence[Mapping[str, Any]], gt: GroundTruth
                      ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per class ``c``: ``(image int64[D], score float64[D], box float64[D, 4])`` of one
    prediction dict per image of ``gt`` (internal 0-based xyxy ``boxes``, 0-based ``labels``,
    ``scores``), boxes in VOC 1-based pixels -- what :func:`evaluate_arrays` reads. Raises
    ValueError on a count mismatch or a label outside the classes."""
    if len(predictions) != gt.n_images:
        raise ValueError(f"{len(predictions)} predictions for {gt.n_images} images")
    db, dl, ds, di = [], [], [], []
    for i, p in enumerate(predictions):
        b, lab, sc = _to_voc(p)
        db.append(b)
        dl.append(lab)
        ds.append(sc)
        di.append(np.full(lab.size, i, np.int64))
    dlab, dimg = _cat(dl, (0,), np.int64), _cat(di, (0,), np.int64)
    dsc, dbox = _cat(ds, (0,), np.float64), _cat(db, (0, 4), np.float64)
    n_cls = len(gt.classes)
    bad = (dlab < 0) | (dlab >= n_cls)
    if bad.any():
        raise ValueError(
            f"prediction label {int(dlab[bad][0])} outside 0..{n_cls - 1} "
            "(labels are 0-based class indices, no background class)"
        )
    return {c: (dimg[dlab == c], dsc[dlab == c], dbox[dlab == c]) for c in range(n_cls)}


def evaluate_voc(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Any,
    classes: Sequence[str] | None = None,
    metric: str = "area",
    iou_thresh: float = 0.5,
) -> VOCEvalResult:
    """VOC metric of in-memory predictions.

    Args:
        predictions: one dict per image, in dataset order: ``boxes`` ``[K, 4]`` internal 0-based
            continuous xyxy (in the *original* image size), ``labels`` ``int64[K]`` 0-based
            class index, ``scores`` ``[K]``. Tensors or arrays.
        ground_truth: a dataset with ``eval_targets()`` (``VOCDetection``, ``COCODetection``)
            or a sequence of target dicts (``boxes``, ``labels``, optional ``difficult``).
        classes: class names; default ``ground_truth.classes``.
    """
    gt = ground_truth_arrays(ground_truth, classes, "evaluate_voc")
    return evaluate_arrays(gt, prediction_arrays(predictions, gt), metric, iou_thresh)
