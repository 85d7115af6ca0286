"""Latency of a detector's convolutional trunk in onnxruntime (FP32 ONNX or int8 QDQ), batch 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "NotExportable", "measure_latency",
]


class NotExportable(ValueError):
    """The model has no exportable trunk (the reason is the message): not a detector, or a
    detector whose :class:`~lowbit.detection.DetectorSpec` declares no trunk."""


class _Trunk(nn.Module):
    """The convolutional part of a detector: a prepared batch ``Tensor[N, 3, H, W]`` -> its
    raw maps, ``det.forward_trunk`` (:mod:`lowbit.detection.protocol`). R-FCN and YOLOv3: the
    network ``lowbit export`` writes (:class:`lowbit.export.detect.DetectorNetwork`); Faster
    R-CNN: backbone + RPN head (objectness, deltas, the RoI feature map; its FC head runs per
    RoI and is not part of the trunk). :class:`NotExportable` naming the class for an object
    without the detector protocol or a detector that declares no trunk (SSD)."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        from lowbit.detection.protocol import require_detector

        try:
            spec = require_detector(det, "latency")
        except ValueError as exc:
            raise NotExportable(f"{exc}; it has no exportable trunk") from None
        if not spec.has_trunk:
            raise NotExportable(f"{type(det).__name__} has no exportable trunk (R-FCN, YOLOv3 "
                                f"and two-stage backbones + RPN are): {spec.note}")
        self.det = det

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.det.forward_trunk(x))


def _prepared(model: nn.Module, images: Sequence[Tensor]) -> list[Tensor]:
    """Each image through the detector's transform: ``Tensor[1, 3, H, W]`` each."""
    out = []
    with torch.no_grad():
        for im in images:
            batch, _, _ = model.transform([im], None)
            out.append(batch.detach().float().cpu())
    return out


def measure_latency(model: nn.Module, images: Sequence[Tensor], workdir: Path, int8: bool,
                    iters: int = 20, threads: int = 2) -> tuple[float, str]:
    """Median onnxruntime latency (ms, batch 1) of ``model``'s trunk and the ONNX kind
    (``"fp32"`` / ``"int8-qdq"``). The int8 file's activation ranges come from ``images``
    (training images). Raises :class:`NotExportable` for models without a trunk."""
    from lowbit.export.onnx import export_onnx, export_onnx_int8, ort_session

    model = model.cpu().eval()
    trunk = _Trunk(model).eval()
    batches = _prepared(model, images)
    example = batches[0]
    calib = [b for b in batches if b.shape == example.shape]
    workdir.mkdir(parents=True, exist_ok=True)
    if int8:
        rep = export_onnx_int8(trunk, example, workdir / "trunk.int8.onnx", calib)
        path, kind = Path(rep["path"]), "int8-qdq"
    else:
        path, kind = export_onnx(trunk, example, workdir / "trunk.fp32.onnx"), "fp32"
    sess = ort_session(path, threads=threads)
    feed = {sess.get_inputs()[0].name: example.numpy()}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000.0 * times[len(times) // 2], kind
