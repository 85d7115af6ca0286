"""Two-stage detectors: R-FCN and Faster R-CNN on ResNet backbones.

API as torchvision: ``model(images, targets)`` → dict of losses in train mode, ``model(images)``
→ list of ``dict(boxes, labels, scores)`` in eval mode; ``labels`` are 0-based foreground
classes both ways (background is 0 only inside the detector). Build by name with
:func:`lowbit.detection.create_model`. The network / float split is described in
:mod:`lowbit.detection.models.generalized_rcnn`.
"""

from lowbit.detection.models.config import FasterRCNNConfig, RFCNConfig, TwoStageConfig
from lowbit.detection.models.faster_rcnn import FasterRCNN, build_faster_rcnn
from lowbit.detection.models.generalized_rcnn import TwoStageDetector
from lowbit.detection.models.heads import FasterRCNNHead, FastRCNNPredictor, RFCNHead, TwoMLPHead
from lowbit.detection.models.postprocess import PostprocessParams, postprocess_detections
from lowbit.detection.models.rfcn import RFCN, build_rfcn
from lowbit.detection.models.roi_heads import RoIHeads, fast_rcnn_loss
from lowbit.detection.models.rpn import RegionProposalNetwork, RPNHead
from lowbit.detection.models.transform import DetectorTransform, SSDTransform, validate_targets

__all__ = [
    "RFCN",
    "DetectorTransform",
    "FastRCNNPredictor",
    "FasterRCNN",
    "FasterRCNNConfig",
    "FasterRCNNHead",
    "PostprocessParams",
    "RFCNConfig",
    "RFCNHead",
    "RPNHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "SSDTransform",
    "TwoMLPHead",
    "TwoStageConfig",
    "TwoStageDetector",
    "build_faster_rcnn",
    "build_rfcn",
    "fast_rcnn_loss",
    "postprocess_detections",
    "validate_targets",
]
