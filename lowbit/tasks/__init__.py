"""Training tasks: the layer above :mod:`lowbit.train` (the engine) and :mod:`lowbit.detection`.

Each module registers its task with :func:`lowbit.train.tasks.register_task` on import:
``classify-digits`` (:mod:`lowbit.tasks.digits`) and ``detect`` (:mod:`lowbit.tasks.detect`).
The engine's registry imports this package once, before its first lookup.
:mod:`lowbit.tasks.pretrain` pretrains a detector's backbone on digit/background crops (an
offline stand-in for ImageNet weights; ``lowbit pretrain`` and the demo's first phase).
"""

from lowbit.tasks import detect, digits  # noqa: F401  (registration on import)

__all__ = ["detect", "digits"]
