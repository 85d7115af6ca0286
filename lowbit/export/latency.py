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


class NotExportable(Exception):
    """The model has no exportable trunk (the reason is the message)."""


class _Trunk(nn.Module):
    """The convolutional part of a detector: a prepared batch ``Tensor[N, 3, H, W]`` -> its
    raw maps. R-FCN and YOLOv3: :class:`lowbit.export.detect.DetectorNetwork` (what
    ``lowbit export`` writes); Faster R-CNN: backbone + RPN head (objectness, deltas, the
    RoI feature map; its FC head runs per RoI and is not part of the trunk)."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        from lowbit.export.detect import DetectorNetwork, detector_kind

        self.net: nn.Module | None = None
        try:
            if detector_kind(det) is not None:
                self.net = DetectorNetwork(det)
        except ValueError:
            pass
        if self.net is None:
            for attr in ("features", "rpn", "rpn_feature", "head_feature"):
                if not hasattr(det, attr):
                    raise NotExportable(f"{type(det).__name__} has no exportable trunk (R-FCN, "
                                        "YOLOv3 and two-stage backbones + RPN are)")
        self.det = det

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.net is not None:
            return self.net(x)
        feats = self.det.features(x)
        obj, deltas = self.det.rpn.head(feats[self.det.rpn_feature])
        return obj, deltas, feats[self.det.head_feature]


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
