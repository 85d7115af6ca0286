"""Second-stage heads: the network part that maps (feature map, proposals) to raw outputs.

Every head here is called as ``head(feature, proposals)`` with ``feature`` ``Tensor[N, C, H,
W]`` and ``proposals`` a list of per-image ``Tensor[R_i, 4]`` boxes in input-image pixels, and
returns ``(class_logits Tensor[R, C + 1], box_deltas Tensor[R, 4] or Tensor[R, 4 (C + 1)])``
for the ``R = sum R_i`` proposals in order. Column 0 of the logits is background.

* :class:`RFCNHead` (R-FCN, Dai et al. 2016): fully convolutional, no fully connected layer.
  A 1x1 "new" conv reduces the dimension, 1x1 convs give ``(C + 1) k^2`` position-sensitive
  score maps and ``4 k^2`` (class-agnostic) or ``4 (C + 1) k^2`` box maps, PSRoI pooling
  reads bin ``(i, j)`` from its own group of maps, and *voting* averages the ``k x k`` bins.
* :class:`FasterRCNNHead`: RoIAlign, :class:`TwoMLPHead` (``fc6``, ``fc7``: the layers SVD
  compression targets) and :class:`FastRCNNPredictor` (``cls_score``, ``bbox_pred``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lowbit.detection.ops import RoIAlign, convert_to_roi_format, ps_roi_pool

__all__ = ["FastRCNNPredictor", "FasterRCNNHead", "RFCNHead", "TwoMLPHead"]


def _rois(proposals: Sequence[Tensor], like: Tensor) -> Tensor:
    """Per-image boxes → ``Tensor[R, 5]`` ``(batch_idx, x1, y1, x2, y2)`` on ``like``'s device."""
    if len(proposals) == 0:
        return like.new_zeros((0, 5))
    return convert_to_roi_format([p.to(like.device, torch.float32) for p in proposals])


class RFCNHead(nn.Module):
    """R-FCN's position-sensitive head.

    Args:
        in_channels: channels of the (stride-16, dilated layer4) feature.
        num_classes: foreground classes ``C`` (the maps have ``C + 1`` classes with background).
        k: bins per side of the position-sensitive grid (7 in the paper).
        reduce_dim: channels of the 1x1 "new" conv (1024 in the paper for ResNet's 2048).
        class_agnostic: ``4 k^2`` box maps (one box for all classes) instead of
            ``4 (C + 1) k^2``.
        spatial_scale: ``1 / stride`` of the feature.

    Module names: ``conv_new``, ``rfcn_cls``, ``rfcn_bbox`` (the Caffe reference's
    ``conv_new_1``, ``rfcn_cls``, ``rfcn_bbox``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        k: int = 7,
        reduce_dim: int = 1024,
        class_agnostic: bool = True,
        spatial_scale: float = 1.0 / 16,
    ) -> None:
        super().__init__()
        if k < 1 or reduce_dim < 1 or num_classes < 1:
            raise ValueError(f"RFCNHead: need k, reduce_dim, num_classes >= 1, got {k}, "
                             f"{reduce_dim}, {num_classes}")  # fmt: skip
        self.k = int(k)
        self.num_classes = int(num_classes)
        self.class_agnostic = bool(class_agnostic)
        self.spatial_scale = float(spatial_scale)
        box_groups = 1 if class_agnostic else num_classes + 1
        self.conv_new = nn.Conv2d(in_channels, reduce_dim, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.rfcn_cls = nn.Conv2d(reduce_dim, (num_classes + 1) * k * k, kernel_size=1)
        self.rfcn_bbox = nn.Conv2d(reduce_dim, 4 * box_groups * k * k, kernel_size=1)
        # He init for the "new" conv (the reference draws N(0, 0.01)): with std 0.01 twice in
        # a row (conv_new, rfcn_cls) the backbone gets almost no gradient from the head, and a
        # detector trained from scratch barely learns to classify (measured on the digits).
        nn.init.kaiming_normal_(self.conv_new.weight, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.rfcn_cls.weight, std=0.01)
        nn.init.normal_(self.rfcn_bbox.weight, std=0.001)
        for conv in (self.conv_new, self.rfcn_cls, self.rfcn_bbox):
            nn.init.zeros_(conv.bias)

    def score_maps(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """The fully convolutional part: ``[N, (C+1) k^2, H, W]`` and ``[N, 4 G k^2, H, W]``
        (``G = 1`` class-agnostic, else ``C + 1``)."""
        t = self.relu(self.conv_new(feature))
        return self.rfcn_cls(t), self.rfcn_bbox(t)

    def pool(self, cls_maps: Tensor, bbox_maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """PSRoI pooling + average voting: ``rois`` ``Tensor[R, 5]`` → ``[R, C + 1]``,
        ``[R, 4 G]``."""
        cls = ps_roi_pool(cls_maps, rois, self.k, self.spatial_scale).mean(dim=(2, 3))
        box = ps_roi_pool(bbox_maps, rois, self.k, self.spatial_scale).mean(dim=(2, 3))
        return cls, box

    def forward(self, feature: Tensor, proposals: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        cls_maps, bbox_maps = self.score_maps(feature)
        return self.pool(cls_maps, bbox_maps, _rois(proposals, feature))

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, num_classes={self.num_classes}, class_agnostic={self.class_agnostic}, "
            f"spatial_scale={self.spatial_scale}"
        )


class TwoMLPHead(nn.Module):
    """Flatten, ``fc6`` + ReLU, ``fc7`` + ReLU (torchvision's names).

    Args:
        in_features: ``C * P * Q`` of the pooled RoI features.
        representation_size: width of ``fc6`` and ``fc7`` (1024 in torchvision).
    """

    def __init__(self, in_features: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[R, C, P, Q]`` → ``Tensor[R, representation_size]``."""
        return self.relu(self.fc7(self.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """``cls_score`` (``C + 1`` logits) and ``bbox_pred`` (``4`` or ``4 (C + 1)`` deltas)."""

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool = False):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 if class_agnostic else 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class FasterRCNNHead(nn.Module):
    """RoIAlign → :class:`TwoMLPHead` → :class:`FastRCNNPredictor`.

    Args:
        in_channels: channels of the pooled feature.
        num_classes: foreground classes ``C``.
        pool_size: RoIAlign output ``P x P`` (7).
        spatial_scale: ``1 / stride`` of the feature (1/16).
        sampling_ratio: RoIAlign points per bin side (2, as detectron2).
        representation_size: width of ``fc6`` / ``fc7``.
        class_agnostic: one box for all classes instead of one per class.

    Module names: ``box_roi_pool``, ``box_head.fc6``, ``box_head.fc7``,
    ``box_predictor.cls_score``, ``box_predictor.bbox_pred``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool_size: int = 7,
        spatial_scale: float = 1.0 / 16,
        sampling_ratio: int = 2,
        representation_size: int = 1024,
        class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        self.box_roi_pool = RoIAlign(pool_size, spatial_scale, sampling_ratio, aligned=True)
        self.box_head = TwoMLPHead(in_channels * pool_size * pool_size, representation_size)
        self.box_predictor = FastRCNNPredictor(representation_size, num_classes, class_agnostic)

    def forward(self, feature: Tensor, proposals: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x = self.box_roi_pool(feature, _rois(proposals, feature))
        return self.box_predictor(self.box_head(x))
