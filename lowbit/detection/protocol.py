"""The detector contract: what every lowbit detector offers, and what quantization, export and
the studies read off it instead of testing classes or inspecting signatures.

A detector is an ``nn.Module`` in three parts, only the middle one quantized
(:func:`lowbit.nn.prepare`) and exported::

    images (list of Tensor[3, H_i, W_i] in [0, 1])
        ──transform──>   batch Tensor[N, 3, H, W] (normalised, resized, padded), image_sizes
        ──forward_raw──> raw dict (the network's outputs + the geometry they refer to)
        ──postprocess──> per image {boxes float32[D, 4], labels int64[D], scores float32[D]}

Members (:class:`Detector`, checked with ``isinstance(model, Detector)``):

* ``transform``: ``transform(images, targets=None) -> (batch, image_sizes, targets)``, with
  ``transform.postprocess(detections, image_sizes, original_sizes)`` mapping boxes back
  (:class:`~lowbit.detection.models.transform.DetectorTransform`).
* ``num_classes``: foreground classes ``C`` (labels are 0-based foreground classes).
* ``forward_raw(batch, **kw) -> dict[str, Any]``: the network on a prepared batch; its keys are
  exactly ``detector_spec.raw_outputs`` (weight-dependent float tensors, or lists of them, in
  that order) and ``detector_spec.raw_geometry`` (anchors, proposals, sizes: what the outputs
  refer to). Its keyword arguments are exactly ``detector_spec.raw_kwargs``; each is also a key
  of the result, and passing a reference run's value back in pins that intermediate
  (two-stage: ``proposals``, so that two models' head outputs stay aligned RoI by RoI);
  ``image_sizes``, when accepted, is the transform's second output.
* ``postprocess(raw, ..., image_sizes=...)``: detections in the batch's pixel frame from a
  ``forward_raw`` dict, in float; ``model.postprocess(raw, image_sizes=sizes)`` works for every
  detector.
* ``forward_trunk(batch) -> tuple[Tensor, ...]``: the convolutional trunk, image to maps, as
  export and latency trace it; outputs named ``detector_spec.trunk_outputs``. Raises
  ``ValueError`` naming the class when the detector has no trunk (empty ``trunk_outputs``).
* ``postprocess_trunk(outputs, image_sizes, batch_hw)``: the detections from the trunk's
  outputs alone (float; ``batch_hw`` the prepared batch's ``(H, W)``), the same as
  ``postprocess(forward_raw(batch, ...), image_sizes=image_sizes)`` (``image_sizes`` also
  passed to ``forward_raw`` when it takes it); only for exportable detectors
  (``detector_spec.export_kind`` set), else ``ValueError`` naming the class.
* ``detector_spec``: a :class:`DetectorSpec`, declared once per class.

:func:`require_detector` is how consumers check the contract: it returns the spec, or raises
``ValueError`` naming the object's class and the members it lacks. :func:`export_spec` maps an
export kind (the ONNX files' ``lowbit_kind`` metadata) back to its declaration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = [
    "PROTOCOL_MEMBERS",
    "Detector",
    "DetectorSpec",
    "export_kinds",
    "export_spec",
    "require_detector",
]


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector class declares about its raw outputs and its exportable parts.

    Attributes:
        raw_outputs: keys of ``forward_raw``'s dict whose values are the network's outputs
            (float ``Tensor`` or list of them, depending on the weights), in the order
            sensitivity metrics compare them.
        raw_geometry: the other keys of ``forward_raw``'s dict (anchors, default boxes,
            proposals, strides, image sizes), which are not compared as outputs.
        raw_kwargs: the keyword arguments ``forward_raw`` takes besides ``batch``; each is a
            key of its result that can be passed back in (see the module docstring).
        trunk_outputs: names of ``forward_trunk``'s outputs, in order; empty when the detector
            has no traceable trunk.
        export_kind: set when the trunk is the whole network (``postprocess_trunk`` gives the
            detections): the kind ``lowbit export`` writes in the ONNX metadata
            (``"rfcn"``, ``"yolov3"``), and the ONNX outputs are ``trunk_outputs``. ``None``:
            not exportable (why: ``note``).
        dynamic_hw: the exported network takes any ``H, W`` (fully convolutional, as R-FCN's
            aspect-keeping resize needs); ``False`` for a fixed warp size (YOLOv3).
        int8: keyword overrides of :class:`lowbit.export.onnx.Int8Config` for this detector's
            int8 export (e.g. ``{"float_below_channels": 4}``).
        note: why the detector is not exportable or has no trunk (required then).
    """

    raw_outputs: tuple[str, ...]
    raw_geometry: tuple[str, ...] = ()
    raw_kwargs: tuple[str, ...] = ()
    trunk_outputs: tuple[str, ...] = ()
    export_kind: str | None = None
    dynamic_hw: bool = False
    int8: Mapping[str, Any] = field(default_factory=dict, hash=False)
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "int8", MappingProxyType(dict(self.int8)))  # read-only
        if not self.raw_outputs:
            raise ValueError("DetectorSpec needs at least one raw output")
        if set(self.raw_outputs) & set(self.raw_geometry):
            raise ValueError(f"keys both output and geometry: "
                             f"{sorted(set(self.raw_outputs) & set(self.raw_geometry))}")
        missing = set(self.raw_kwargs) - set(self.raw_outputs) - set(self.raw_geometry)
        if missing:
            raise ValueError(f"raw_kwargs {sorted(missing)} are not keys of forward_raw's dict")
        if self.export_kind is not None and not self.trunk_outputs:
            raise ValueError("an exportable detector needs trunk_outputs (its ONNX outputs)")
        if self.export_kind is None and not self.note:
            raise ValueError("a detector that is not exportable needs a note saying why")
        if self.export_kind is not None:
            known = _EXPORT_KINDS.setdefault(self.export_kind, self)
            if known != self:
                raise ValueError(f"export kind {self.export_kind!r} is already declared by "
                                 f"another spec: {known}")

    @property
    def has_trunk(self) -> bool:
        """``forward_trunk`` exists (latency can be measured on it)."""
        return bool(self.trunk_outputs)

    @property
    def exportable(self) -> bool:
        """``lowbit export`` can write the network (``export_kind`` is set)."""
        return self.export_kind is not None

    @property
    def onnx_outputs(self) -> tuple[str, ...]:
        """Output names of the exported network (``trunk_outputs`` of an exportable detector,
        else empty)."""
        return self.trunk_outputs if self.exportable else ()


#: every exportable spec declared so far, by ``export_kind`` (see :func:`export_spec`)
_EXPORT_KINDS: dict[str, DetectorSpec] = {}


def export_kinds() -> dict[str, DetectorSpec]:
    """``{export_kind: spec}`` of every exportable detector class (the built-in ones are
    imported first), sorted by kind."""
    from lowbit.detection.registry import list_models

    list_models()  # imports the built-in detector modules, which declare their specs
    return dict(sorted(_EXPORT_KINDS.items()))


def export_spec(kind: str) -> DetectorSpec:
    """The spec declaring ``export_kind == kind``; ``ValueError`` listing the known kinds."""
    kinds = export_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown detector export kind {kind!r}; known: {', '.join(kinds)}")
    return kinds[kind]


@runtime_checkable
class Detector(Protocol):
    """A lowbit detector (see the module docstring for each member's contract)."""

    detector_spec: DetectorSpec
    transform: nn.Module
    num_classes: int

    def forward_raw(self, batch: Tensor, **kwargs: Any) -> dict[str, Any]:
        """The network's raw outputs for a prepared ``Tensor[N, 3, H, W]`` batch."""
        ...

    def postprocess(self, raw_outputs: dict[str, Any], *args: Any,
                    **kwargs: Any) -> list[dict[str, Tensor]]:
        """Detections (batch pixels) from :meth:`forward_raw` outputs."""
        ...

    def forward_trunk(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The traceable trunk's outputs (named ``detector_spec.trunk_outputs``)."""
        ...

    def postprocess_trunk(self, outputs: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                          batch_hw: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Detections (batch pixels) from :meth:`forward_trunk`'s outputs."""
        ...


#: the members :func:`require_detector` checks, in the order it names missing ones
PROTOCOL_MEMBERS: tuple[str, ...] = (
    "detector_spec", "transform", "num_classes", "forward_raw", "postprocess", "forward_trunk",
    "postprocess_trunk",
)


def require_detector(obj: object, purpose: str = "") -> DetectorSpec:
    """``obj``'s :class:`DetectorSpec`; ``ValueError`` naming ``obj``'s class and the members of
    :class:`Detector` it lacks (or a ``detector_spec`` that is not a :class:`DetectorSpec`).

    Args:
        obj: the candidate detector.
        purpose: what needs the detector, prefixed to the message (e.g. ``"export"``).
    """
    prefix = f"{purpose}: " if purpose else ""
    name = type(obj).__name__
    missing = [m for m in PROTOCOL_MEMBERS if not hasattr(obj, m)]
    if missing:
        raise ValueError(f"{prefix}{name} is not a lowbit detector: it lacks "
                         f"{', '.join(missing)} (lowbit.detection.Detector)")
    spec = obj.detector_spec  # type: ignore[attr-defined]
    if not isinstance(spec, DetectorSpec):
        raise ValueError(f"{prefix}{name}.detector_spec is a {type(spec).__name__}, not a "
                         "lowbit.detection.DetectorSpec")
    return spec
