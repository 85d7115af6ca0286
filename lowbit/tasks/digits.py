"""Built-in task ``classify-digits``: a small CNN on scikit-learn's 8x8 handwritten digits.

This module holds lowbit's one digits network (:class:`DigitsCNN`) and its one loader of
scikit-learn's digits (:func:`load_sklearn_digits`); the training task and the benchmarks
(``lowbit bench digits``, ``benchmarks/bench_per_channel.py``) both use them.

Data (``data.kind: sklearn-digits``, bundled with scikit-learn, no download): the 1,797 images of
``sklearn.datasets.load_digits``, scaled from 0..16 to 0..1 as ``Tensor[1, 8, 8]`` float32.
The split is fixed: a stratified 80/20 split with its own seed (``data.kwargs.split_seed``,
default 0), independent of the training seed, so every run evaluates on the same 359 images
(``data.kwargs.splitter: sklearn`` selects the benchmarks' split instead, see
:func:`load_sklearn_digits`).

Model ``digits-cnn`` (kwargs ``width`` = 16, ``norm`` = ``"bn"`` | ``"none"``, ``dropout`` = 0,
``layout`` = ``"strided"`` | ``"pooled"``): the default ``strided`` layout is
conv3x3(1→w) → conv3x3 s2 (w→2w, 4x4) → conv3x3 s2 (2w→4w, 2x2) → global average → dropout →
linear(4w→classes); BatchNorm + ReLU after each conv (no BN with ``norm: none``: use that for
CPU multi-process runs, where BatchNorm statistics are per process). ``pooled`` is the
benchmarks' network (see :class:`DigitsCNN`). Metric: top-1 accuracy (``main``) and mean
cross-entropy on the test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lowbit.config import ExperimentConfig
from lowbit.train.tasks import register_task

__all__ = ["DigitsCNN", "ClassifyDigitsTask", "load_sklearn_digits", "DIGITS_LAYOUTS",
           "DIGITS_SPLITTERS"]

#: :class:`DigitsCNN` layouts: the training task's (default) and the benchmarks'.
DIGITS_LAYOUTS: tuple[str, ...] = ("strided", "pooled")
#: :func:`load_sklearn_digits` splitters: the training task's (default) and the benchmarks'.
DIGITS_SPLITTERS: tuple[str, ...] = ("per-class", "sklearn")


class DigitsCNN(nn.Module):
    """Small CNN for ``Tensor[N, 1, 8, 8]`` (pixels in [0, 1]) → logits ``Tensor[N, num_classes]``.

    Every conv is 3x3 with padding 1, followed by BatchNorm (``norm="bn"``; the conv then has
    no bias) or nothing (``norm="none"``; the conv has a bias), then ReLU. Two layouts
    (``w = width``):

    * ``"strided"`` (default; the ``classify-digits`` task): three convs, 1→w (8x8), w→2w
      stride 2 (4x4), 2w→4w stride 2 (2x2); ``features`` is ``[conv, bn, relu] * 3`` (in-place
      ReLU), global average in ``forward``; ``fc`` is linear(4w→classes). Width 16: 23 k conv
      weights.
    * ``"pooled"`` (``lowbit bench digits``, ``benchmarks/bench_per_channel.py``): four convs,
      1→w, w→w, 2x2 max-pool, w→2w, 2w→2w, then ``AdaptiveAvgPool2d(1)`` and ``Flatten`` as the
      last two entries of ``features``; ``fc`` is linear(2w→classes). Width 16: 16,272 conv
      weights.

    In both, ``dropout`` (``nn.Dropout``, identity at 0) sits between the pooled features and
    ``fc``.
    """

    def __init__(
        self, num_classes: int = 10, width: int = 16, norm: str = "bn", dropout: float = 0.0,
        layout: str = "strided",
    ) -> None:
        super().__init__()
        if norm not in ("bn", "none"):
            raise ValueError(f"model.kwargs.norm={norm!r}: must be 'bn' or 'none'")
        if width < 1:
            raise ValueError(f"model.kwargs.width={width!r}: must be >= 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.kwargs.dropout={dropout!r}: must be in [0, 1)")
        if layout not in DIGITS_LAYOUTS:
            raise ValueError(
                f"model.kwargs.layout={layout!r}: must be one of {', '.join(DIGITS_LAYOUTS)}"
            )

        def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            out: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none")]
            if norm == "bn":
                out.append(nn.BatchNorm2d(cout))
            out.append(nn.ReLU(inplace=layout == "strided"))
            return out

        w = width
        layers: list[nn.Module] = []
        if layout == "strided":
            for cin, cout, stride in ((1, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)):
                layers += block(cin, cout, stride)
            out_ch = 4 * w
        else:
            layers += [*block(1, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w),
                       *block(2 * w, 2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            out_ch = 2 * w
        self.layout = layout
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(out_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``Tensor[N, num_classes]`` for ``x: Tensor[N, 1, 8, 8]``."""
        x = self.features(x)
        if self.layout == "strided":
            x = x.mean(dim=(2, 3))
        return self.fc(self.dropout(x))

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}"


def load_sklearn_digits(
    split_seed: int = 0, test_fraction: float = 0.2, splitter: str = "per-class"
) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` TensorDatasets of ``(Tensor[1, 8, 8] float32 in [0, 1], label int64)``.

    Pixels are scikit-learn's 0..16 values divided by 16 (exact). Both splits are stratified
    by class and depend only on ``split_seed`` and ``test_fraction``:

    * ``splitter="per-class"`` (default; the ``classify-digits`` task): per class, a
      ``numpy.random.default_rng(split_seed)`` permutation puts the first
      ``round(test_fraction * count)`` images in the test split; both splits keep
      scikit-learn's image order (1,438 train / 359 test at 0.2).
    * ``splitter="sklearn"`` (the benchmarks, at ``test_fraction=0.25``: 1,347 / 450):
      ``sklearn.model_selection.train_test_split(test_size=test_fraction,
      random_state=split_seed, stratify=labels)``, images in the shuffled order it returns.
    """
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"data.kwargs.test_fraction={test_fraction!r}: must be in (0, 1)")
    if splitter not in DIGITS_SPLITTERS:
        raise ValueError(
            f"data.kwargs.splitter={splitter!r}: must be one of {', '.join(DIGITS_SPLITTERS)}"
        )
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    if splitter == "sklearn":
        from sklearn.model_selection import train_test_split

        itr, ite = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                    random_state=split_seed, stratify=d.target)
        tr, te = torch.from_numpy(itr), torch.from_numpy(ite)
    else:
        rng = np.random.default_rng(split_seed)
        test_mask = np.zeros(len(y), dtype=bool)
        for c in np.unique(d.target):
            idx = np.flatnonzero(d.target == c)
            idx = idx[rng.permutation(len(idx))]
            test_mask[idx[: int(round(test_fraction * len(idx)))]] = True
        tr, te = torch.from_numpy(~test_mask), torch.from_numpy(test_mask)
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])


@register_task("classify-digits")
class ClassifyDigitsTask:
    """Image classification of 8x8 digits (see module docstring)."""

    name = "classify-digits"
    model_names: tuple[str, ...] = ("digits-cnn",)

    def build_model(self, cfg: ExperimentConfig) -> nn.Module:
        """``DigitsCNN(num_classes=model.num_classes or 10, **model.kwargs)`` (``width``, ``norm``,
        ``dropout``, ``layout``)."""
        if cfg.model.name not in self.model_names:
            raise ValueError(
                f"model.name={cfg.model.name!r}: task classify-digits builds "
                f"{', '.join(self.model_names)}"
            )
        try:
            return DigitsCNN(num_classes=cfg.model.num_classes or 10, **cfg.model.kwargs)
        except TypeError as exc:
            raise ValueError(f"model.kwargs={cfg.model.kwargs!r}: {exc}") from None

    def build_datasets(self, cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
        """The fixed sklearn-digits split (``data.kind`` must be ``sklearn-digits``;
        ``data.kwargs``: ``split_seed``, ``test_fraction``, ``splitter`` of
        :func:`load_sklearn_digits`)."""
        if cfg.data.kind != "sklearn-digits":
            raise ValueError(
                f"data.kind={cfg.data.kind!r}: task classify-digits needs sklearn-digits"
            )
        kw = dict(cfg.data.kwargs)
        unknown = set(kw) - {"split_seed", "test_fraction", "splitter"}
        if unknown:
            raise ValueError(f"data.kwargs.{sorted(unknown)[0]}: unknown for sklearn-digits")
        return load_sklearn_digits(**kw)

    def collate_fn(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[
        torch.Tensor, torch.Tensor
    ]:
        """``(images Tensor[N, 1, 8, 8], labels Tensor[N])``."""
        xs, ys = zip(*samples)
        return torch.stack(xs), torch.stack(ys)

    def train_step_loss(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy; logs the batch accuracy."""
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.detach().argmax(1) == y).float().mean().item()
        return loss, {"acc": acc}

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """Top-1 accuracy (``main``, ``accuracy``) and mean cross-entropy (``loss``)."""
        correct, total, loss_sum = 0, 0, 0.0
        device = next(model.parameters()).device
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            total += int(y.numel())
        acc = correct / max(total, 1)
        return {"main": acc, "accuracy": acc, "loss": loss_sum / max(total, 1)}
