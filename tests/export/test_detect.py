"""Detector export: R-FCN and YOLOv3 networks in ONNX (FP32 and int8 QDQ) give, after lowbit's
float post-processing, the detections of the PyTorch model's own eval forward; packed round
trips of quantized detectors are exact.

Models are tiny (width 1/8, 64 px images) and made here; their prediction convs are re-drawn
with a larger spread so that scores are well separated (an untrained head gives near-equal
scores whose order is decided by rounding noise, which would make any comparison flaky).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from lowbit.detection.registry import create_model
from lowbit.export.detect import (
    DetectorNetwork,
    OnnxDetector,
    calibration_batches,
    export_detector_onnx,
)
from lowbit.export.packed import load_packed, save_packed
from lowbit.nn import convert, prepare


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """One PyTorch thread: on the shared 2-core machine two OpenMP threads spin-wait."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MODELS = {
    "rfcn": ("rfcn_resnet18", {"width": 0.125}),
    "yolo": ("yolov3_tiny_darknet", {"width": 0.125, "image_size": 64, "score_thresh": 0.05,
                                     "detections_per_img": 30}),
}


def _detector(which: str, bits: int | None) -> nn.Module:
    torch.manual_seed(0)
    name, kw = MODELS[which]
    m = create_model(name, 3, **kw).eval()
    if which == "rfcn":
        heads = [m.roi_heads.head.rfcn_cls, m.roi_heads.head.rfcn_bbox, m.rpn.head.cls_logits]
    else:
        heads = [b[1] for b in m.head.branches]
    for conv in heads:
        nn.init.normal_(conv.weight, std=0.3 if which == "rfcn" else 1.0)
        nn.init.zeros_(conv.bias)
    if bits is not None:
        prepare(m, {"method": "lbw-exact", "bits": bits}).eval()
        convert(m)
    return m


def _images(n: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 64, 96, generator=g) for _ in range(n)]


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix of xyxy boxes ``a[K, 4]``, ``b[L, 4]`` (loop-free but independent of
    lowbit.detection.ops)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _unmatched(ref: dict[str, Tensor], got: dict[str, Tensor], min_score: float,
               box_tol: float | None, iou_min: float, score_tol: float) -> list[int]:
    """Indices of ``ref`` detections with score >= ``min_score`` that have no partner in
    ``got`` (same label, |score diff| <= score_tol, and max |box diff| <= box_tol px, or IoU
    >= iou_min when box_tol is None); each ``got`` detection is used once."""
    used: set[int] = set()
    missing = []
    iou = _iou(ref["boxes"], got["boxes"]) if len(ref["boxes"]) and len(got["boxes"]) else None
    for i in range(len(ref["scores"])):
        if float(ref["scores"][i]) < min_score:
            continue
        found = False
        for j in range(len(got["scores"])):
            if j in used or int(got["labels"][j]) != int(ref["labels"][i]):
                continue
            if abs(float(got["scores"][j]) - float(ref["scores"][i])) > score_tol:
                continue
            if box_tol is not None:
                ok = float((got["boxes"][j] - ref["boxes"][i]).abs().max()) <= box_tol
            else:
                ok = iou is not None and float(iou[i, j]) >= iou_min
            if ok:
                used.add(j)
                found = True
                break
        if not found:
            missing.append(i)
    return missing


@pytest.mark.parametrize("which", ["rfcn", "yolo"])
def test_fp32_onnx_detections_match_torch(tmp_path: Path, which: str) -> None:
    m = _detector(which, bits=4)
    ims = _images(3, 0)
    with torch.no_grad():
        ref = m(ims)
    assert sum(len(d["scores"]) for d in ref) > 10  # the comparison is not vacuous
    example = m.transform(ims[:1])[0]
    rep = export_detector_onnx(m, tmp_path / "det.onnx", example)
    onnx.checker.check_model(onnx.load(rep["path"]), full_check=True)
    got = OnnxDetector(rep["path"], m)(ims)
    # FP32: same detections, same count; boxes within 1e-3 px, scores within 1e-5 (the two
    # runtimes' conv summation orders differ by ~1e-6 relative)
    for r, g in zip(ref, got):
        assert len(r["scores"]) == len(g["scores"])
        assert _unmatched(r, g, 0.0, 1e-3, 0.0, 1e-5) == []


def test_fp32_onnx_rebuilds_postprocessing_from_metadata(tmp_path: Path) -> None:
    """The file carries the run config; OnnxDetector rebuilds the post-processing from it."""
    from lowbit.config import config_from_dict, config_to_dict
    from lowbit.train import build_model

    cfg = config_from_dict({"model": {"name": "rfcn_resnet18", "task": "detect",
                                      "num_classes": 3, "kwargs": {"width": 0.125}},
                            "data": {"kind": "digits", "root": str(tmp_path / "none")}})
    m = build_model(cfg)[1].eval()
    ims = _images(2, 3)
    rep = export_detector_onnx(m, tmp_path / "d.onnx", m.transform(ims[:1])[0],
                               config=config_to_dict(cfg))
    det = OnnxDetector(rep["path"])
    assert type(det.model) is type(m)
    with torch.no_grad():
        ref = m(ims)
    for r, g in zip(ref, det(ims)):
        assert len(r["scores"]) == len(g["scores"])
        assert _unmatched(r, g, 0.0, 1e-3, 0.0, 1e-5) == []


@pytest.mark.parametrize("which", ["rfcn", "yolo"])
def test_int8_onnx_detections_close_to_torch(tmp_path: Path, which: str) -> None:
    m = _detector(which, bits=4)
    calib = calibration_batches(m, _images(8, 1), 8, batch_size=4)
    assert calib[0].shape[-2:] == m.transform(_images(1, 1))[0].shape[-2:]
    rep = export_detector_onnx(m, tmp_path / "det8.onnx", calib[0][:1], calibration=calib)
    q = onnx.load(rep["path"])
    onnx.checker.check_model(q, full_check=True)
    # every conv weight is lowbit's power-of-two value, exactly, in int8 -- YOLO's stem conv
    # on the 3 RGB channels too, which the default computes in float on the float input, its
    # weight read through a DequantizeLinear (float_conv_weights="int8")
    assert rep["weights"] and set(rep["weights"].values()) == {"pot-exact"}
    dq_out = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    inits = {i.name: i for i in q.graph.initializer}
    float_convs = [n for n in q.graph.node if n.op_type == "Conv" and n.input[0] not in dq_out]
    assert len(float_convs) == (1 if which == "yolo" else 0)
    dq_of = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    for n in float_convs:
        assert n.input[0] == "input" and n.input[1] in dq_out
        assert inits[dq_of[n.input[1]].input[0]].dims[1] == 3
    # the biases are int32 (otherwise onnxruntime cannot fuse QLinearConv)
    convs = [n for n in q.graph.node if n.op_type == "Conv" and n.input[0] in dq_out]
    assert convs and all(len(n.input) == 3 for n in convs)
    assert all(all(i in dq_out for i in n.input) for n in convs)
    # shapes are read from the quantized tensors, not from DequantizeLinear copies of them
    assert not [n.name for n in q.graph.node if n.op_type == "Shape" and n.input[0] in dq_out]
    if which == "yolo":  # its upsampling reads two skip connections' shapes
        assert [n.op_type for n in q.graph.node].count("Shape") >= 2

    ims = _images(3, 2)
    det = OnnxDetector(rep["path"], m)
    batch = m.transform(ims)[0]
    with torch.no_grad():
        ref_raw = DetectorNetwork(m)(batch)
        ref = m(ims)
    # stated tolerance, raw maps: activation quantization (uint8, per-tensor min/max over 8
    # images) is the only error source; each map within 8% of its largest magnitude
    for name, r, g in zip(rep["outputs"], ref_raw, det.raw(batch)):
        err = float((r - g).abs().max())
        assert err <= 0.08 * float(r.abs().max()), (name, err)
    # stated tolerance, detections: of each image's 10 best PyTorch detections, at least 8
    # have an int8 detection of the same label with IoU >= 0.7 and |score diff| <= 0.05.
    # Not all: on an untrained net the RPN/score maps are noise, and int8 rounding flips the
    # order of near-equal proposals, which NMS turns into different survivors.
    for r, g in zip(ref, det(ims)):
        assert len(r["scores"]) >= 10
        missing = _unmatched(r, g, float(r["scores"][9]), None, 0.7, 0.05)
        assert len(missing) <= 2, missing


@pytest.mark.parametrize("which", ["rfcn", "yolo"])
@pytest.mark.parametrize("bits", [4, 6])
def test_packed_detector_round_trip_exact(tmp_path: Path, which: str, bits: int) -> None:
    m = _detector(which, bits=bits)
    f = tmp_path / "det.lbp"
    save_packed(m, f, arch={"which": which})
    m2 = load_packed(f, builder=lambda arch: _detector(arch["which"], bits=None))
    batch = m.transform(_images(2, 4))[0]
    with torch.no_grad():
        a, b = DetectorNetwork(m)(batch), DetectorNetwork(m2)(batch)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with torch.no_grad():
        da, db = m(_images(2, 4)), m2(_images(2, 4))
    for x, y in zip(da, db):
        assert all(torch.equal(x[k], y[k]) for k in ("boxes", "labels", "scores"))


def test_faster_rcnn_is_refused_with_a_clear_error() -> None:
    m = create_model("faster_rcnn_resnet18", 3, width=0.125)
    with pytest.raises(ValueError, match="FasterRCNN"):
        DetectorNetwork(m)


def test_onnx_detector_rejects_non_finite_output(tmp_path: Path) -> None:
    m = _detector("yolo", bits=None)
    ims = _images(1, 5)
    rep = export_detector_onnx(m, tmp_path / "y.onnx", m.transform(ims)[0])
    det = OnnxDetector(rep["path"], m)
    bad = m.transform(ims)[0].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        det.raw(bad)
    assert np.isfinite(det.raw(m.transform(ims)[0])[0].numpy()).all()


def test_export_reads_the_detectors_declarations() -> None:
    """Kind, ONNX output names, dynamic H/W and int8 defaults come from each detector's
    DetectorSpec; SSD / Faster R-CNN are refused with their declared reason, a non-detector
    is exported as a plain network (kind None) but refused by DetectorNetwork by name."""
    from lowbit.export.detect import OUTPUT_NAMES, default_int8, detector_kind
    from lowbit.export.onnx import Int8Config

    assert OUTPUT_NAMES == {"rfcn": ("objectness", "rpn_deltas", "cls_maps", "bbox_maps"),
                            "yolov3": ("out_s8", "out_s16", "out_s32")}
    for which, kind in (("rfcn", "rfcn"), ("yolo", "yolov3")):
        m = _detector(which, bits=None)
        net = DetectorNetwork(m)
        assert detector_kind(m) == net.kind == kind
        assert net.output_names == m.detector_spec.onnx_outputs == OUTPUT_NAMES[kind]
        with torch.no_grad():
            outs = net(m.transform(_images(1, 6))[0])
        assert len(outs) == len(net.output_names)
        assert default_int8(m) == default_int8(kind) == default_int8(m.detector_spec)
    assert default_int8("yolov3") == Int8Config(float_below_channels=4,
                                                float_conv_weights="int8")
    assert default_int8("rfcn") == Int8Config()
    with pytest.raises(ValueError, match="unknown detector export kind 'ssd'"):
        default_int8("ssd")
    ssd = create_model("ssd_lite_vgg", 3, width=0.125, image_size=64)
    with pytest.raises(ValueError, match="SSD: SSD export is not wired yet"):
        detector_kind(ssd)
    with pytest.raises(ValueError, match="SSD: SSD export is not wired yet"):
        DetectorNetwork(ssd)
    conv = nn.Conv2d(3, 4, 3)
    assert detector_kind(conv) is None
    with pytest.raises(ValueError, match="Conv2d is not a lowbit detector"):
        DetectorNetwork(conv)
