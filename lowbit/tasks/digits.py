"""Built-in task ``classify-digits``: a small CNN on scikit-learn's 8x8 handwritten digits.

Data (``data.kind: sklearn-digits``, bundled with scikit-learn, no download): the 1,797 images of
``sklearn.datasets.load_digits``, scaled from 0..16 to 0..1 as ``Tensor[1, 8, 8]`` float32.
The split is fixed: a stratified 80/20 split with its own seed (``data.kwargs.split_seed``,
default 0), independent of the training seed, so every run evaluates on the same 359 images.

Model ``digits-cnn`` (kwargs ``width`` = 16, ``norm`` = ``"bn"`` | ``"none"``, ``dropout`` = 0):
conv3x3(1→w) → conv3x3 s2 (w→2w, 4x4) → conv3x3 s2 (2w→4w, 2x2) → global average → dropout →
linear(4w→classes); BatchNorm + ReLU after each conv (no BN with ``norm: none``: use that for
CPU multi-process runs, where BatchNorm statistics are per process). Metric: top-1 accuracy
(``main``) and mean cross-entropy on the test set.
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

__all__ = ["DigitsCNN", "ClassifyDigitsTask", "load_sklearn_digits"]


class DigitsCNN(nn.Module):
    """Three-conv classifier for ``Tensor[N, 1, 8, 8]`` → logits ``Tensor[N, num_classes]``."""

    def __init__(
        self, num_classes: int = 10, width: int = 16, norm: str = "bn", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if norm not in ("bn", "none"):
            raise ValueError(f"model.kwargs.norm={norm!r}: must be 'bn' or 'none'")
        if width < 1:
            raise ValueError(f"model.kwargs.width={width!r}: must be >= 1")
        if not 0 <= dropout < 1:
            raise ValueError(f"model.kwargs.dropout={dropout!r}: must be in [0, 1)")
        chans = [1, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, stride in enumerate((1, 2, 2)):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride, 1, bias=norm == "none"))
            if norm == "bn":
                layers.append(nn.BatchNorm2d(chans[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x: Tensor[N, 1, 8, 8]``."""
        x = self.features(x).mean(dim=(2, 3))
        return self.fc(self.dropout(x))


def load_sklearn_digits(split_seed: int = 0, test_fraction: float = 0.2) -> tuple[
    TensorDataset, TensorDataset
]:
    """``(train, test)`` TensorDatasets of ``(Tensor[1, 8, 8] in [0, 1], label int64)``.

    Stratified: per class, a ``default_rng(split_seed)`` permutation puts the first
    ``round(test_fraction * count)`` images in the test split.
    """
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"data.kwargs.test_fraction={test_fraction!r}: must be in (0, 1)")
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
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
        """``DigitsCNN(num_classes=model.num_classes or 10, **model.kwargs)``."""
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
        """The fixed sklearn-digits split (``data.kind`` must be ``sklearn-digits``)."""
        if cfg.data.kind != "sklearn-digits":
            raise ValueError(
                f"data.kind={cfg.data.kind!r}: task classify-digits needs sklearn-digits"
            )
        kw = dict(cfg.data.kwargs)
        unknown = set(kw) - {"split_seed", "test_fraction"}
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
