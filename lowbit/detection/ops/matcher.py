"""Matching predictions to ground truth, and balanced sampling of the matches.

Same semantics as torchvision's ``det_utils.Matcher`` and ``BalancedPositiveNegativeSampler``,
with two deliberate differences, both for images or ground truths that match nothing:

* no ground truth (``M = 0``) gives all ``BELOW_LOW_THRESHOLD`` instead of raising;
* the low-quality rule ignores a ground truth whose best quality is ``<= 0``: torchvision would
  otherwise re-match *every* prediction that has zero overlap with it.

Dtypes: the quality matrix may be any real dtype. Qualities are compared with the thresholds
in float32 (float64 for a float64 matrix) with the thresholds rounded to that dtype, exactly
as torchvision's float32 matcher does (a float32 IoU of ``0.7f`` matches a 0.7 threshold);
half types are upcast first, so a bfloat16 quality of 0.69921875 is below a 0.7 threshold
(in bfloat16 the two would round to the same value). A NaN quality counts as ``-inf``: it
never matches, not even as a low-quality match (``Tensor.max`` would otherwise pick the NaN
and make the prediction a positive).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BalancedPositiveNegativeSampler", "Matcher"]


class Matcher:
    """Assign each prediction (anchor, proposal) to at most one ground-truth box.

    Args:
        high_threshold: quality ``>= high`` matches the best ground truth.
        low_threshold: quality ``< low`` is ``BELOW_LOW_THRESHOLD`` (-1, background);
            ``low <= quality < high`` is ``BETWEEN_THRESHOLDS`` (-2, ignored).
        allow_low_quality_matches: also match, for every ground truth, the predictions that
            reach its highest quality (ties included) even if under ``high``; they get the
            index of the ground truth with which they have their own best quality (their
            argmax), as in torchvision.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self,
        high_threshold: float,
        low_threshold: float,
        allow_low_quality_matches: bool = False,
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match.

        Args:
            match_quality_matrix: ``Tensor[M, N]``, quality (usually IoU) of ground truth ``m``
                with prediction ``n``.

        Returns:
            ``Tensor[N]`` int64: the matched ground-truth index in ``[0, M)``, or -1 / -2.
            Ties in the argmax go to the lowest ground-truth index (``Tensor.max``'s choice).
        """
        m, n = match_quality_matrix.shape
        device = match_quality_matrix.device
        if m == 0:
            return torch.full((n,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=device)
        if n == 0:
            return torch.empty(0, dtype=torch.int64, device=device)
        if match_quality_matrix.is_floating_point():
            q = match_quality_matrix
            match_quality_matrix = torch.where(q.isnan(), torch.full_like(q, -math.inf), q)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        all_matches = matches.clone()
        vals = matched_vals if matched_vals.dtype == torch.float64 else matched_vals.float()
        below = vals < self.low_threshold
        between = (vals >= self.low_threshold) & (vals < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = match_quality_matrix.max(dim=1).values
            is_best = (match_quality_matrix == best_per_gt[:, None]) & (best_per_gt[:, None] > 0)
            preds = torch.nonzero(is_best.any(dim=0)).flatten()
            matches[preds] = all_matches[preds]
        return matches


class BalancedPositiveNegativeSampler:
    """Sample a fixed-size, positive-capped minibatch of predictions per image.

    Args:
        batch_size_per_image: total samples per image.
        positive_fraction: at most ``int(batch_size_per_image * positive_fraction)`` positives;
            negatives fill the rest (as many as there are).
        generator: optional ``torch.Generator`` for reproducible draws; permutations are drawn
            on the generator's device and moved to the labels' device.
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be >= 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.generator = generator

    def _choose(self, idx: Tensor, k: int) -> Tensor:
        if self.generator is not None:
            g = self.generator
            perm = torch.randperm(idx.numel(), generator=g, device=g.device)
        else:
            perm = torch.randperm(idx.numel())
        return idx[perm[:k].to(idx.device)]

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Sample.

        Args:
            labels: per image, ``Tensor[N_i]`` with ``>= 1`` positive, ``0`` negative and
                ``-1`` (or any negative value) ignored.

        Returns:
            ``(pos_masks, neg_masks)``: per image, bool ``Tensor[N_i]`` masks of the chosen
            positives and negatives (disjoint; at most ``batch_size_per_image`` in all).
        """
        pos_masks: list[Tensor] = []
        neg_masks: list[Tensor] = []
        for lab in labels:
            positive = torch.nonzero(lab >= 1).flatten()
            negative = torch.nonzero(lab == 0).flatten()
            num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
            num_neg = min(self.batch_size_per_image - num_pos, negative.numel())
            pos_mask = torch.zeros_like(lab, dtype=torch.bool)
            neg_mask = torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[self._choose(positive, num_pos)] = True
            neg_mask[self._choose(negative, num_neg)] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
