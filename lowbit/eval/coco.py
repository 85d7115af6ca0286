"""COCO box metric (AP@[.5:.95] and friends) through faster-coco-eval or pycocotools.

Neither package is a hard dependency: :func:`coco_backend` imports whichever is installed
(faster-coco-eval first) and otherwise raises ``ImportError`` saying what to install.
Predictions are internal 0-based continuous xyxy boxes with 0-based labels; they become COCO
``[x, y, w, h]`` with category ids in :func:`coco_results` only.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["coco_backend", "coco_results", "evaluate_coco", "evaluate_coco_files", "STAT_NAMES"]

STAT_NAMES = (
    "mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def coco_backend() -> tuple[Any, Any, str]:
    """``(COCO, COCOeval, name)`` from faster-coco-eval, else pycocotools.

    Raises ``ImportError`` with the install hint when neither is available.
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster, "faster-coco-eval"
    except ImportError:
        pass
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval, "pycocotools"
    except ImportError:
        pass
    raise ImportError(
        "the COCO metric needs faster-coco-eval or pycocotools: "
        "pip install faster-coco-eval  (or: pip install pycocotools)"
    )


def _np(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch.Tensor; torch itself is never imported here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def coco_results(
    predictions: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    cat_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO results list from per-image predictions.

    ``predictions[i]`` (``boxes`` ``[K, 4]`` internal xyxy, ``labels`` ``int64[K]`` 0-based,
    ``scores`` ``[K]``) belongs to COCO image ``image_ids[i]``; label ``l`` is category
    ``cat_ids[l]``.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(image_ids)} images")
    out: list[dict[str, Any]] = []
    for img_id, p in zip(image_ids, predictions):
        b = _np(p["boxes"], np.float64).reshape(-1, 4)
        labels = _np(p["labels"], np.int64).reshape(-1)
        scores = _np(p["scores"], np.float64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= len(cat_ids)):
            raise ValueError(f"prediction label outside 0..{len(cat_ids) - 1}")
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        for k in range(labels.size):
            out.append({
                "image_id": int(img_id),
                "category_id": int(cat_ids[labels[k]]),
                "bbox": [float(v) for v in xywh[k]],
                "score": float(scores[k]),
            })  # fmt: skip
    return out


def _run(gt_json: dict[str, Any] | str | Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    COCO, COCOeval, name = coco_backend()
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt_json, dict):
            gt = COCO()
            gt.dataset = gt_json
            gt.createIndex()
        else:
            gt = COCO(str(gt_json))
        out: dict[str, Any] = {"backend": name}
        if not results:
            out.update({k: 0.0 for k in STAT_NAMES})
            out["AP"] = {}
            return out
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats[: len(STAT_NAMES)]]
    out.update(dict(zip(STAT_NAMES, stats)))
    per_class: dict[str, float | None] = {}
    prec = ev.eval.get("precision") if isinstance(ev.eval, dict) else None
    if prec is not None:
        prec = np.asarray(prec)  # [T, R, K, A, M]; area "all", last maxDets
        names = {c["id"]: c.get("name", str(c["id"])) for c in gt.dataset["categories"]}
        for k, cid in enumerate(ev.params.catIds):
            p = prec[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[names[cid]] = float(p.mean()) if p.size else None
    out["AP"] = per_class
    return out


def evaluate_coco(predictions: Sequence[Mapping[str, Any]], dataset: Any) -> dict[str, Any]:
    """COCO box metric of in-memory predictions on a :class:`lowbit.data.coco.COCODetection`.

    Returns ``{"mAP": AP@[.5:.95], "AP50", "AP75", "APs", ..., "AR100", ..., "AP": {class: AP},
    "backend": name}``. ``predictions`` are in dataset order, boxes in original image pixels.
    """
    results = coco_results(predictions, dataset.image_ids, dataset.cat_ids)
    return _run(dataset.ann_file, results)


def evaluate_coco_files(ann_file: str | Path, results_file: str | Path) -> dict[str, Any]:
    """COCO box metric of a results JSON (list of ``{image_id, category_id, bbox, score}``)."""
    for p in (ann_file, results_file):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: file not found")
    try:
        results = json.loads(Path(results_file).read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{results_file}: malformed JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{results_file}: malformed JSON: not UTF-8 text") from None
    except RecursionError:
        raise ValueError(f"{results_file}: malformed JSON: nested too deeply") from None
    if not isinstance(results, list):
        raise ValueError(f"{results_file}: a COCO results file is a JSON list")
    out = _run(ann_file, results)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
