"""lowbit.detection: detection ops, backbones and detectors.

``create_model(name, num_classes, **kw)`` / ``list_models()`` build the registered detectors
(:mod:`lowbit.detection.models`); ops and backbones live in their sub-packages. Every detector
satisfies :class:`Detector` (:mod:`lowbit.detection.protocol`): ``transform``, ``forward_raw``,
``postprocess``, the traceable trunk and a :class:`DetectorSpec` that export and the studies
read.
"""

from lowbit.detection.protocol import Detector, DetectorSpec, require_detector
from lowbit.detection.registry import create_model, list_models, register_model

__all__ = [
    "Detector",
    "DetectorSpec",
    "create_model",
    "list_models",
    "register_model",
    "require_detector",
]
