"""The ``detect`` task: what :mod:`lowbit.train`'s engine needs to train a detector.

Config mapping (sections of :class:`lowbit.config.ExperimentConfig`):

* ``model.name``: any :func:`lowbit.detection.list_models` entry; ``model.num_classes``
  (default: the data set's class count); ``model.kwargs`` go to
  :func:`lowbit.detection.create_model` (``RFCNConfig`` / ``FasterRCNNConfig`` /
  ``SSDConfig`` / ``YOLOv3Config`` fields).
  ``data.image_size``, when set, is the detector's input size unless ``model.kwargs`` sets it:
  ``min_size`` (shorter image side) of R-FCN / Faster R-CNN, ``image_size`` (the fixed square
  input side) of SSD / YOLOv3 (YOLOv3 needs a multiple of 32); see
  :func:`lowbit.detection.registry.model_size_option`.
* ``data.kind: digits``: the built-in devkit at ``data.root``, written there with
  :func:`lowbit.data.digits.generate_digits` if missing (``data.kwargs``: ``train``,
  ``test``, ``size``, ``seed``, ``min_objects``, ``max_objects``, ``attempts`` of the
  generator). Its splits are ``trainval`` / ``test``
  (``data.train_split: train``, the config default, is read as ``trainval``).
* ``data.kind: voc``: :class:`lowbit.data.voc.VOCDetection` at ``data.root``; ``data.kwargs``:
  ``train_years`` / ``test_years`` (e.g. ``[2007, 2012]`` and ``[2007]`` with a VOCdevkit root:
  the paper's 07+12 → 07 test), ``classes``. Splits are ``data.train_split`` /
  ``data.test_split`` as named in ``ImageSets/Main``.
* ``data.kwargs.hflip``: random horizontal flip in training (default on for VOC, off for the
  digits, which are not mirror-symmetric).

Batches are ``(images, targets)``: a list of ``Tensor[3, H_i, W_i]`` in ``[0, 1]`` and the
dataset's target dicts; the detector normalises, resizes and pads inside (its transform).
``train_step_loss`` is the sum of the detector's loss dict; ``evaluate`` is the VOC mAP at IoU
0.5 with the VOC07 11-point metric (``main``; ``mAP_area`` is the VOC2010+ area metric).

Registration: the class registers itself as ``"detect"`` with
:func:`lowbit.train.tasks.register_task` when :mod:`lowbit.tasks` is imported (the task
registry imports that package before its first lookup).
``model.task: lowbit.tasks.detect:DetectTask`` names it directly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lowbit.data.transforms import RandomHorizontalFlip, collate_detection
from lowbit.data.voc import VOCDetection
from lowbit.detection import list_models
from lowbit.detection.registry import create_model, model_size_option
from lowbit.eval.voc import evaluate_voc
from lowbit.train.tasks import register_task

__all__ = ["DetectTask"]

_DIGITS_GEN_KEYS = ("train", "test", "size", "seed", "min_objects", "max_objects", "attempts")


def _has_devkit(root: Path, splits: tuple[str, ...]) -> bool:
    return all((root / "ImageSets" / "Main" / f"{s}.txt").is_file() for s in splits)


def _infer_num_classes(cfg: Any) -> int:
    """Class count without building the data sets: ``data.kwargs.classes``, else the devkit's
    ``classes.txt``, else 10 (digits) or the 20 VOC classes."""
    from lowbit.data.digits import DIGIT_CLASSES
    from lowbit.data.voc import VOC_CLASSES, read_classes

    classes = cfg.data.kwargs.get("classes")
    if classes:
        return len(classes)
    root = Path(str(cfg.data.root))
    years = cfg.data.kwargs.get("train_years")
    folder = root / f"VOC{years[0]}" if years else root
    if (folder / "classes.txt").is_file():
        return len(read_classes(folder / "classes.txt"))
    return len(DIGIT_CLASSES) if cfg.data.kind == "digits" else len(VOC_CLASSES)


class _RegisteredDetectors:
    """``DetectTask.model_names`` (on the class and on instances): the detection registry's
    names, ``tuple(lowbit.detection.list_models())``, looked up at every access."""

    def __get__(self, obj: object, owner: type | None = None) -> tuple[str, ...]:
        return tuple(list_models())


@register_task("detect")
class DetectTask:
    """Object detection with the two-stage (and other registered) detectors; see the module
    docstring."""

    name = "detect"
    #: every detector in :func:`lowbit.detection.list_models`, read at each access (a detector
    #: registered later is claimed too); sorted.
    model_names = _RegisteredDetectors()

    def __init__(self) -> None:
        self._num_classes: int | None = None

    # ------------------------------------------------------------------ data
    def build_datasets(self, cfg: Any) -> tuple[Dataset, Dataset]:
        """``(train, test)`` VOC-format data sets for ``cfg.data`` (see module docstring)."""
        d = cfg.data
        kw = dict(d.kwargs)
        hflip = bool(kw.pop("hflip", d.kind == "voc"))
        if d.kind == "digits":
            # the devkit's splits are trainval/test; the config default "train" means trainval
            train_split = "trainval" if d.train_split == "train" else d.train_split
            test_split = d.test_split
            gen = {k: kw.pop(k) for k in _DIGITS_GEN_KEYS if k in kw}
            if kw:
                raise ValueError(f"data.kwargs.{sorted(kw)[0]}: unknown for data.kind=digits")
            root = Path(str(d.root))
            from lowbit.data.digits import SCENE_DEFAULTS, generate_digits, is_current_devkit

            # scene arguments the config leaves out are the standard scenes', so a dense
            # devkit on disk is not taken for a standard one
            args = {**SCENE_DEFAULTS, **{k: gen[k] for k in _DIGITS_GEN_KEYS if k in gen}}
            if not _has_devkit(root, ("trainval", "test")):
                generate_digits(root, workers=1, **gen)
            elif not is_current_devkit(root, **args):
                # written by an older generator version, or with other sizes than this config
                # asks for: a cached devkit must not silently stand in for the data asked for
                print(f"note: {root}: the digits devkit there is from another generator version "
                      "or other arguments; writing it anew", file=sys.stderr)
                generate_digits(root, workers=1, **gen)
            train_args: dict[str, Any] = {"root": root, "split": train_split}
            test_args: dict[str, Any] = {"root": root, "split": test_split}
        elif d.kind == "voc":
            train_years = kw.pop("train_years", None)
            test_years = kw.pop("test_years", None)
            classes = kw.pop("classes", None)
            if kw:
                raise ValueError(f"data.kwargs.{sorted(kw)[0]}: unknown for data.kind=voc")
            train_split = d.train_split
            ty = [str(y) for y in train_years] if train_years else None
            sy = [str(y) for y in test_years] if test_years else None
            train_args = {"root": d.root, "split": train_split, "years": ty, "classes": classes}
            test_args = {"root": d.root, "split": d.test_split, "years": sy, "classes": classes}
        else:
            raise ValueError(f"data.kind={d.kind!r}: task detect needs 'digits' or 'voc'")
        transforms = RandomHorizontalFlip(0.5) if hflip else None
        train = VOCDetection(**train_args, transforms=transforms)
        test = VOCDetection(**test_args)
        if train.classes != test.classes:
            raise ValueError(f"{d.root}: train and test class lists differ")
        self._num_classes = len(train.classes)
        return train, test

    # ------------------------------------------------------------------ model
    def build_model(self, cfg: Any) -> nn.Module:
        """``create_model(model.name, num_classes, **model.kwargs)``; ``data.image_size`` sets
        the model's size keyword (:func:`~lowbit.detection.registry.model_size_option`:
        ``min_size`` for the two-stage detectors, ``image_size`` for SSD / YOLOv3) unless
        ``model.kwargs`` sets it. A size the model rejects raises ``ValueError`` naming
        ``data.image_size``."""
        num_classes = cfg.model.num_classes or self._num_classes or _infer_num_classes(cfg)
        kw = dict(cfg.model.kwargs)
        size = cfg.data.image_size
        key = model_size_option(cfg.model.name)
        if size is not None and key is None:
            raise ValueError(
                f"data.image_size={size}: model {cfg.model.name!r} takes no input-size option; "
                f"leave data.image_size unset"
            )
        if size is None or key in kw:
            model = create_model(cfg.model.name, int(num_classes), **kw)
        else:
            kw[key] = int(size)
            try:
                model = create_model(cfg.model.name, int(num_classes), **kw)
            except ValueError as e:
                if key not in str(e):
                    raise
                raise ValueError(f"data.image_size={size} (model option {key}): {e}") from e
        model.name = cfg.model.name
        return model

    # ------------------------------------------------------------------ steps
    def collate_fn(self, samples: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[
        list[torch.Tensor], list[dict[str, Any]]
    ]:
        """``(list of Tensor[3, H_i, W_i], list of target dicts)`` (no padding: the detector
        batches)."""
        return collate_detection(samples, pad=False)  # type: ignore[return-value]

    def train_step_loss(
        self, model: nn.Module, batch: tuple[list[torch.Tensor], list[dict[str, Any]]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum of the detector's losses; logs each loss term."""
        images, targets = batch
        losses = model(images, targets)
        loss = torch.stack([v for v in losses.values()]).sum()
        return loss, {k: float(v.detach()) for k, v in losses.items()}

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """VOC mAP at IoU 0.5 on the whole test set: ``main`` = ``mAP`` (VOC07 11-point),
        ``mAP_area`` (VOC2010+), and ``AP_<class>`` (07 metric)."""
        preds: list[dict[str, torch.Tensor]] = []
        for images, _ in loader:
            out = model(images)
            preds.extend({k: v.detach().cpu() for k, v in d.items()} for d in out)
        ds = loader.dataset
        r07 = evaluate_voc(preds, ds, metric="07")
        rarea = evaluate_voc(preds, ds, metric="area")
        out = {"main": float(r07.map), "mAP": float(r07.map), "mAP_area": float(rarea.map)}
        out.update({f"AP_{c}": float(v) for c, v in r07.ap.items()})
        return out
