"""Detector export: the network part of a detector as a plain ``Tensor -> tuple`` module, the
calibration batches of a run's own dataset, and a runtime that runs an exported ONNX network in
onnxruntime and then lowbit's float post-processing.

What goes into the ONNX graph (the "network") and what stays in PyTorch float:

* R-FCN (:class:`~lowbit.detection.models.rfcn.RFCN`): backbone, RPN head (3x3 conv, 1x1
  objectness / deltas) and the R-FCN head's fully convolutional part (``conv_new``,
  ``rfcn_cls``, ``rfcn_bbox``). Outputs ``objectness [N, A, H/16, W/16]``, ``rpn_deltas
  [N, 4A, H/16, W/16]``, ``cls_maps [N, (C+1) k^2, H/16, W/16]``, ``bbox_maps [N, 4 G k^2,
  H/16, W/16]``; ``H, W`` dynamic. In float afterwards: anchors, proposal decoding + NMS
  (:meth:`RegionProposalNetwork.filter_proposals`), PSRoI pooling + voting
  (:meth:`RFCNHead.pool`), box decoding + per-class NMS (:meth:`TwoStageDetector.postprocess`).
  R-FCN has no fully connected layer, so every weight is inside the graph.
* YOLOv3 (:class:`~lowbit.detection.models.yolov3.YOLOv3`): backbone, neck, head. Outputs
  ``out_s8, out_s16, out_s32`` ``[N, 3 (5 + C), S/s, S/s]``; decode + per-class NMS in float
  (:meth:`YOLOv3.postprocess`).

Faster R-CNN is refused (its fc6 / fc7 run after RoIAlign on proposals, so the network is not
a single ``image -> maps`` graph); SSD is not wired yet (its default boxes need the source map
sizes, which the concatenated outputs do not carry).

Nothing here tests classes: every detector declares what export takes in its
:class:`~lowbit.detection.DetectorSpec` (:mod:`lowbit.detection.protocol`): the network is its
``forward_trunk``, exportable when ``export_kind`` is set, the ONNX outputs are its
``onnx_outputs``, ``dynamic_hw`` says whether ``H, W`` stay dynamic, ``int8`` its
:class:`~lowbit.export.onnx.Int8Config` overrides, and ``postprocess_trunk`` the float
post-processing of the network's outputs.

Post-processing inside the ONNX graph (``NonMaxSuppression``) is not offered: lowbit's
per-class NMS keeps the ``topk_candidates`` best boxes per class *before* NMS and the
``detections_per_img`` best after it, ties resolved by ``torch.topk`` / torchvision ``nms``;
ONNX ``NonMaxSuppression`` has no per-class pre-NMS top-k and its tie order is unspecified, so
an in-graph version would not give the same detections as the PyTorch model, which is the
contract this module tests. The float post-processing costs a few milliseconds on CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lowbit.detection.protocol import (
    Detector,
    DetectorSpec,
    export_kinds,
    export_spec,
    require_detector,
)

if TYPE_CHECKING:
    from lowbit.export.onnx import Int8Config

__all__ = ["DetectorNetwork", "OnnxDetector", "calibration_batches", "detector_kind",
           "default_int8",
           "export_detector_onnx",
           "postprocess_outputs", "OUTPUT_NAMES"]

#: ``{export kind: ONNX output names}``, read (lazily) from the detectors' declarations
#: (:func:`lowbit.detection.protocol.export_kinds`)
OUTPUT_NAMES: dict[str, tuple[str, ...]]


def __getattr__(name: str) -> Any:
    if name == "OUTPUT_NAMES":
        return {k: spec.onnx_outputs for k, spec in export_kinds().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_int8(kind: str | DetectorSpec | nn.Module) -> Int8Config:
    """lowbit's int8 configuration for a detector (its export kind ``"rfcn"`` / ``"yolov3"``,
    its :class:`~lowbit.detection.DetectorSpec` or the detector): QDQ, per-channel, u8s8, no
    reduce_range, with the detector's declared ``int8`` overrides -- the fastest measured by
    ``benchmarks/bench_int8.py`` that keeps the accuracy checks of
    tests/export/test_detect.py. YOLOv3 declares ``float_below_channels=4`` (its stem conv, 3
    input channels, 3x3, and its LeakyReLU stay float: 0.44-0.57x FP32 instead of 0.67-0.83x
    at 1 thread); R-FCN nothing (its 7x7 stem stays int8: float, it breaks onnxruntime's NHWC
    chain, 0.52-0.63x instead of 0.39-0.42x). docs/deployment.md. ``ValueError`` for an
    unknown kind or a non-detector."""
    from lowbit.export.onnx import Int8Config

    if isinstance(kind, str):
        spec = export_spec(kind)
    elif isinstance(kind, DetectorSpec):
        spec = kind
    else:
        spec = require_detector(kind, "default_int8")
    return Int8Config(**spec.int8)


def detector_kind(model: nn.Module) -> str | None:
    """The declared ``export_kind`` (``"rfcn"`` / ``"yolov3"``) of an exportable detector, None
    for a non-detector (an object without the :class:`~lowbit.detection.Detector` protocol,
    e.g. a classifier). ValueError naming the class, with the detector's own reason, for
    detectors that cannot be exported."""
    if not isinstance(model, Detector):
        return None
    spec = model.detector_spec
    if spec.export_kind is None:
        raise ValueError(f"{type(model).__name__}: {spec.note}")
    return spec.export_kind


def _exportable(model: nn.Module, purpose: str) -> DetectorSpec:
    """``model``'s spec; ValueError naming the class when it is not an exportable detector."""
    spec = require_detector(model, purpose)
    if spec.export_kind is None:
        raise ValueError(f"{type(model).__name__}: {spec.note}")
    return spec


class DetectorNetwork(nn.Module):
    """The exportable network of a detector: ``forward(batch Tensor[N, 3, H, W])`` (already
    normalised / padded by ``model.transform``) returns the raw maps of
    ``model.forward_trunk``, named by its spec's ``onnx_outputs`` (see the module doc). Shares
    ``model``'s modules. ValueError naming the class for a non-detector (and the members it
    lacks) or a detector that is not exportable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.spec = _exportable(model, "export")
        self.kind: str = self.spec.export_kind  # type: ignore[assignment]
        self.detector = model

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.onnx_outputs

    def forward(self, batch: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.detector.forward_trunk(batch))


@torch.no_grad()
def postprocess_outputs(
    model: nn.Module, outputs: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
    batch_hw: tuple[int, int],
) -> list[dict[str, Tensor]]:
    """Float post-processing of the raw network outputs (in the spec's ``onnx_outputs`` order):
    ``model.postprocess_trunk``.

    Args:
        model: the detector (only its float post-processing parts and config are used).
        outputs: float tensors as :class:`DetectorNetwork` returns them.
        image_sizes: ``(h, w)`` of each image in the batch before padding.
        batch_hw: ``(H, W)`` of the prepared batch.

    Returns:
        Per image ``boxes float32[D, 4]`` (batch pixels, 0-based xyxy), ``labels int64[D]``
        (0-based), ``scores float32[D]`` sorted decreasing -- as the model's own eval path.
    """
    _exportable(model, "postprocess_outputs")
    return model.postprocess_trunk([o.float() for o in outputs], image_sizes, batch_hw)


def calibration_batches(model: nn.Module, dataset: Any, num_images: int,
                        batch_size: int = 8) -> list[Tensor]:
    """Network-input batches ``Tensor[B, 3, H, W]`` from the first ``num_images`` items of
    ``dataset``.

    Detection datasets yield ``(image Tensor[3, H_i, W_i] in [0, 1], target)``: images are
    prepared by ``model.transform`` (normalise, resize, pad), exactly what the exported
    network sees. Other datasets yield ``(input, label)`` or ``input`` tensors, stacked as is.
    ValueError when the dataset gives no item or a non-finite input.
    """
    n = min(len(dataset), int(num_images))
    if n < 1:
        raise ValueError("the dataset gave no calibration image")
    detector = isinstance(model, Detector)
    items = []
    for i in range(n):
        item = dataset[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        items.append(torch.as_tensor(x).float())
    out = []
    for s in range(0, n, batch_size):
        chunk = items[s:s + batch_size]
        if detector:
            batch = model.transform(chunk)[0]
        else:
            batch = torch.stack(chunk)
        if not bool(torch.isfinite(batch).all()):
            raise ValueError(f"calibration batch {s // batch_size} has non-finite values")
        out.append(batch)
    return out


class OnnxDetector:
    """Run an exported detector network in onnxruntime CPU, then lowbit's float
    post-processing, giving torchvision-style detections.

    Args:
        path: ONNX file written by ``lowbit export --format onnx|onnx-int8`` (or
            :func:`export_detector_onnx`).
        model: the detector whose post-processing to use (weights unused); default: rebuilt
            from the config stored in the file's metadata (``lowbit_config``).
        threads: onnxruntime intra-op threads (default :func:`lowbit.runtime.get_threads`).

    ``detector(images)`` with ``images`` a list of ``Tensor[3, H_i, W_i]`` RGB in ``[0, 1]``
    returns per image ``boxes float32[D, 4]`` (original pixels, 0-based xyxy), ``labels
    int64[D]`` (0-based), ``scores float32[D]`` sorted decreasing.
    """

    def __init__(self, path: str | os.PathLike[str], model: nn.Module | None = None,
                 threads: int | None = None) -> None:
        from lowbit.export.onnx import ort_session

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        self.session = ort_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if model is None:
            if "lowbit_config" not in meta:
                raise ValueError(f"{self.path}: no lowbit_config metadata; pass model=")
            from lowbit.config import config_from_dict
            from lowbit.train import build_model

            model = build_model(config_from_dict(json.loads(meta["lowbit_config"])))[1]
        self.model = model.eval()
        self.spec = _exportable(self.model, "OnnxDetector")
        self.kind = self.spec.export_kind
        names = tuple(o.name for o in self.session.get_outputs())
        if names != self.spec.onnx_outputs:
            raise ValueError(f"{self.path}: outputs {names} do not match a {self.kind} "
                             f"network {self.spec.onnx_outputs}")

    def raw(self, batch: Tensor) -> list[Tensor]:
        """Network outputs for a prepared ``Tensor[N, 3, H, W]`` batch; ValueError naming the
        output when onnxruntime returns non-finite values."""
        outs = self.session.run(None, {"input": batch.detach().float().cpu().numpy()})
        for name, o in zip(self.spec.onnx_outputs, outs):
            if not np.isfinite(o).all():
                raise ValueError(f"{self.path}: output {name!r} has non-finite values")
        return [torch.from_numpy(o) for o in outs]

    @torch.no_grad()
    def __call__(self, images: Sequence[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        from lowbit.detection.models.transform import validate_images

        ims = validate_images(images)
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in ims]
        batch, sizes, _ = self.model.transform(ims)
        outs = self.raw(batch)
        dets = postprocess_outputs(self.model, outs, sizes,
                                   (int(batch.shape[-2]), int(batch.shape[-1])))
        return self.model.transform.postprocess(dets, sizes, original)


def export_detector_onnx(
    model: nn.Module, path: str | os.PathLike[str], example: Tensor, *,
    calibration: Sequence[Tensor] | None = None, config: dict[str, Any] | None = None,
    int8: Int8Config | None = None, fp32_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Export a detector's network (:class:`DetectorNetwork`) to ONNX at ``path``.

    Args:
        model: R-FCN or YOLOv3 detector (float, or prepared + converted).
        example: a prepared batch ``Tensor[1, 3, H, W]`` (from :func:`calibration_batches`).
        calibration: None for FP32; else the int8 QDQ file is written (activation ranges from
            these prepared batches; see :func:`lowbit.export.onnx.export_onnx_int8`).
        config: the run's resolved config dict, stored as ``lowbit_config`` metadata so that
            :class:`OnnxDetector` can rebuild the post-processing without the run folder.
        int8: :class:`lowbit.export.onnx.Int8Config` (default :func:`default_int8` of the
            detector's kind).
        fp32_path: int8 only: where to keep the FP32 intermediate (default: a temporary
            folder, deleted).

    Returns:
        ``{"path", "kind", "outputs"}`` (+ ``"fp32_path", "config", "weights"`` for int8).
    """
    from lowbit.export.onnx import export_onnx, export_onnx_int8

    net = DetectorNetwork(model).eval()
    meta = {"lowbit_kind": net.kind}
    if config is not None:
        meta["lowbit_config"] = json.dumps(config)
    names = list(net.output_names)
    dyn_hw = net.spec.dynamic_hw  # R-FCN: any H, W; YOLO warps every image to S x S
    if calibration is None:
        p = export_onnx(net, example, path, output_names=names, dynamic_hw=dyn_hw,
                        metadata=meta)
        return {"path": str(p), "kind": net.kind, "outputs": names}
    rep = export_onnx_int8(net, example, path, calibration, output_names=names,
                           dynamic_hw=dyn_hw, metadata=meta,
                           config=int8 or default_int8(net.spec), fp32_path=fp32_path)
    return {**rep, "kind": net.kind, "outputs": names}


