"""lowbit.detection: detection ops, backbones and detectors.

``create_model(name, num_classes, **kw)`` / ``list_models()`` build the registered detectors
(:mod:`lowbit.detection.models`); ops and backbones live in their sub-packages.
"""

from lowbit.detection.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
