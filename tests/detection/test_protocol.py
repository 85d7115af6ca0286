"""The written detector contract (:mod:`lowbit.detection.protocol`): every registered model
satisfies it and its declarations match what it actually returns; consumers refuse objects
without it by name; the helpers moved out of ssd.py are the same objects under the old paths."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lowbit.detection.models.ssd as ssd_module
from lowbit.detection import Detector, DetectorSpec, create_model, list_models, require_detector
from lowbit.detection.protocol import PROTOCOL_MEMBERS, export_kinds, export_spec
from lowbit.detection.registry import model_size_option

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(name: str) -> nn.Module:
    """``name`` at width 1/8 and 64 px (SSD300's extras need its 300 px: 38 ... 1 maps)."""
    kw: dict[str, Any] = {"width": 0.125}
    opt = model_size_option(name)
    if opt is not None:
        kw[opt] = 300 if name == "ssd300_vgg16" else 64
    torch.manual_seed(0)
    return create_model(name, 3, **kw).eval()


def _images() -> list[Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]


def _float_tensors(v: Any) -> list[Tensor]:
    vs = v if isinstance(v, (list, tuple)) else [v]
    assert all(isinstance(t, Tensor) and t.is_floating_point() for t in vs), type(v)
    return list(vs)


@pytest.mark.parametrize("name", list_models())
def test_every_model_satisfies_its_declarations(name: str) -> None:
    m = _tiny(name)
    assert isinstance(m, Detector)
    assert "detector_spec" in vars(type(m))  # declared by the class itself
    spec = require_detector(m)
    assert spec is type(m).detector_spec and isinstance(spec, DetectorSpec)

    ims = _images()
    with torch.no_grad():
        batch, sizes, _ = m.transform(ims)
        # keyword arguments: read off the signature here, compared with the declaration
        params = inspect.signature(m.forward_raw).parameters
        taken = [p for p in params if p != "batch"]
        assert set(taken) == set(spec.raw_kwargs), (taken, spec.raw_kwargs)
        kw = {"image_sizes": sizes} if "image_sizes" in taken else {}
        raw = m.forward_raw(batch, **kw)
        # keys: outputs and geometry exactly; outputs in the declared (dict) order
        assert set(raw) == set(spec.raw_outputs) | set(spec.raw_geometry), list(raw)
        assert [k for k in raw if k in spec.raw_outputs] == list(spec.raw_outputs)
        for k in spec.raw_outputs:
            for t in _float_tensors(raw[k]):
                assert t.shape[0] in (batch.shape[0], sum(len(p) for p in raw.get("proposals",
                                                                                   [])))
        # every declared keyword is a key of the result; feeding it back changes nothing
        pinned = {k: raw[k] for k in spec.raw_kwargs}
        again = m.forward_raw(batch, **pinned)
        for k in spec.raw_outputs:
            assert all(torch.equal(a, b) for a, b in
                       zip(_float_tensors(raw[k]), _float_tensors(again[k]))), k
        # the declared outputs depend on the weights (geometry pinned as the metric does;
        # two-stage: fixed proposals, as an untrained frozen-BN ResNet-101 proposes nothing)
        if "proposals" in pinned:
            pinned["proposals"] = [torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 8.0, 60.0, 50.0]])
                                   for _ in sizes]
        ref = m.forward_raw(batch, **pinned)
        other = copy.deepcopy(m)
        g = torch.Generator().manual_seed(1)
        for p in other.parameters():
            p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=g))
        moved = other.forward_raw(batch, **pinned)
        for k in spec.raw_outputs:
            pairs = list(zip(_float_tensors(ref[k]), _float_tensors(moved[k])))
            assert pairs and all(a.numel() for a, _ in pairs), k
            assert any(not torch.equal(a, b) for a, b in pairs), k

        # postprocess(raw, image_sizes=...) is the eval forward before the size mapping
        dets = m.postprocess(raw, image_sizes=sizes)
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in ims]
        want = m(ims)
        got = m.transform.postprocess(dets, sizes, original)
        assert len(got) == len(ims)
        for d, w in zip(got, want):
            assert d["boxes"].dtype == torch.float32 and d["boxes"].shape[-1] == 4
            assert d["labels"].dtype == torch.int64
            assert bool((d["scores"][:-1] >= d["scores"][1:]).all())
            assert all(torch.equal(d[k], w[k]) for k in ("boxes", "labels", "scores"))

        # trunk and export declarations
        if spec.has_trunk:
            outs = m.forward_trunk(batch)
            assert isinstance(outs, tuple) and len(outs) == len(spec.trunk_outputs)
            assert all(o.shape[0] == batch.shape[0] for o in outs)
        else:
            with pytest.raises(ValueError, match=type(m).__name__):
                m.forward_trunk(batch)
        hw = (int(batch.shape[-2]), int(batch.shape[-1]))
        if spec.exportable:
            assert spec.onnx_outputs == spec.trunk_outputs
            assert export_spec(spec.export_kind) is spec
            from_trunk = m.postprocess_trunk(outs, sizes, hw)
            for d, w in zip(from_trunk, m.postprocess(raw, image_sizes=sizes)):
                assert all(torch.equal(d[k], w[k]) for k in ("boxes", "labels", "scores"))
        else:
            assert spec.onnx_outputs == () and spec.note
            with pytest.raises(ValueError, match=type(m).__name__):
                m.postprocess_trunk([], sizes, hw)


def test_declared_kinds() -> None:
    """Which families export and which only have a trunk (what export and latency did by
    class before the declarations)."""
    kinds = {name: _spec_of(name) for name in list_models()}
    assert {n for n, s in kinds.items() if s.exportable} == {
        "rfcn_resnet18", "rfcn_resnet50", "rfcn_resnet101", "yolov3_darknet53",
        "yolov3_tiny_darknet"}
    assert {n for n, s in kinds.items() if not s.has_trunk} == {"ssd300_vgg16", "ssd_lite_vgg"}
    assert set(export_kinds()) == {"rfcn", "yolov3"}
    assert export_kinds()["rfcn"].dynamic_hw and not export_kinds()["yolov3"].dynamic_hw
    assert dict(export_kinds()["yolov3"].int8) == {"float_below_channels": 4,
                                                   "float_conv_weights": "int8"}
    assert dict(export_kinds()["rfcn"].int8) == {}
    with pytest.raises(ValueError, match="known: rfcn, yolov3"):
        export_spec("ssd")


def _spec_of(name: str) -> DetectorSpec:
    return require_detector(_tiny(name))


class _Half(nn.Module):
    """Has ``transform`` and ``forward_raw`` only."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = nn.Identity()

    def forward_raw(self, batch: Tensor) -> dict[str, Tensor]:
        return {"x": batch}


def test_non_detectors_are_refused_by_name() -> None:
    conv = nn.Conv2d(3, 4, 3)
    assert not isinstance(conv, Detector)
    with pytest.raises(ValueError, match=r"Conv2d is not a lowbit detector: it lacks "
                                         r"detector_spec, transform, num_classes, forward_raw"):
        require_detector(conv)
    half = _Half()
    assert not isinstance(half, Detector)
    with pytest.raises(ValueError, match="export: _Half") as exc:
        require_detector(half, "export")
    missing = str(exc.value).split("lacks ")[1]
    assert missing.startswith("detector_spec, num_classes, postprocess, forward_trunk, "
                              "postprocess_trunk")
    assert "forward_raw" not in missing and "transform" not in missing

    class _BadSpec(_Half):
        detector_spec = {"raw_outputs": ("x",)}
        num_classes = 1
        postprocess = forward_trunk = postprocess_trunk = _Half.forward_raw

    with pytest.raises(ValueError, match="_BadSpec.detector_spec is a dict"):
        require_detector(_BadSpec())
    assert PROTOCOL_MEMBERS[0] == "detector_spec"


def test_consumers_refuse_a_non_detector_naming_its_class() -> None:
    from lowbit.export.detect import DetectorNetwork, detector_kind, postprocess_outputs
    from lowbit.export.latency import NotExportable, _Trunk
    from lowbit.studies.mixed import OutputMSE

    conv = nn.Conv2d(3, 4, 3)
    assert detector_kind(conv) is None  # a classifier: exported as a plain network
    for build in (DetectorNetwork, _Trunk, lambda c: OutputMSE(c, [[torch.rand(3, 8, 8)]]),
                  lambda c: postprocess_outputs(c, [], [], (8, 8))):
        with pytest.raises(ValueError, match="Conv2d is not a lowbit detector.*forward_raw"):
            build(conv)
    with pytest.raises(NotExportable, match="SSD has no exportable trunk"):
        _Trunk(_tiny("ssd_lite_vgg"))


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="at least one raw output"):
        DetectorSpec(raw_outputs=(), note="x")
    with pytest.raises(ValueError, match="both output and geometry"):
        DetectorSpec(raw_outputs=("a",), raw_geometry=("a",), note="x")
    with pytest.raises(ValueError, match=r"raw_kwargs \['p'\]"):
        DetectorSpec(raw_outputs=("a",), raw_kwargs=("p",), note="x")
    with pytest.raises(ValueError, match="needs trunk_outputs"):
        DetectorSpec(raw_outputs=("a",), export_kind="k")
    with pytest.raises(ValueError, match="needs a note"):
        DetectorSpec(raw_outputs=("a",))
    rfcn = export_spec("rfcn")
    with pytest.raises(ValueError, match="'rfcn' is already declared"):
        DetectorSpec(raw_outputs=("a",), trunk_outputs=("t",), export_kind="rfcn")
    assert export_spec("rfcn") is rfcn
    spec = DetectorSpec(raw_outputs=("a",), note="x", int8={"float_below_channels": 4})
    with pytest.raises(TypeError):
        spec.int8["float_below_channels"] = 0  # type: ignore[index]


def test_moved_helpers_keep_their_old_paths() -> None:
    from lowbit.data import transforms as data_transforms
    from lowbit.detection import models, ops
    from lowbit.detection.models import transform
    anchors = importlib.import_module("lowbit.detection.ops.anchors")
    boxes = importlib.import_module("lowbit.detection.ops.boxes")
    nms = importlib.import_module("lowbit.detection.ops.nms")  # ops.nms is the function

    same = {
        "SSDTransform": (transform.SSDTransform, models.SSDTransform),
        "cxcywh_to_xyxy": (boxes.cxcywh_to_xyxy, ops.cxcywh_to_xyxy),
        "DefaultBoxGenerator": (anchors.DefaultBoxGenerator, ops.DefaultBoxGenerator),
        "ssd_box_sizes": (anchors.ssd_box_sizes, ops.ssd_box_sizes),
        "multiclass_nms": (nms.multiclass_nms, ops.multiclass_nms),
        "check_postprocess_caps": (nms.check_postprocess_caps, ops.check_postprocess_caps),
    }
    for name, objs in same.items():
        assert name in ssd_module.__all__
        assert all(o is getattr(ssd_module, name) for o in objs), name
    for name in ssd_module.__all__:
        assert getattr(ssd_module, name) is not None
    assert transform.IMAGENET_MEAN is data_transforms.IMAGENET_MEAN
    assert transform.IMAGENET_STD is data_transforms.IMAGENET_STD
    # cxcywh -> xyxy against a hand computation
    got = ops.cxcywh_to_xyxy(torch.tensor([[5.0, 6.0, 4.0, 2.0], [0.0, 0.0, 1.0, 3.0]]))
    assert got.tolist() == [[3.0, 5.0, 7.0, 7.0], [-0.5, -1.5, 0.5, 1.5]]


def test_yolov3_does_not_import_ssd() -> None:
    import lowbit.detection.models.yolov3 as yolo

    tree = ast.parse(Path(yolo.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "lowbit.detection.models.transform" in imported  # sanity: the walk sees imports
    assert not any(m and m.endswith(".ssd") for m in imported), imported
