"""benchmarks/bench_int8.py's single-layer microbenchmark (``--layers all``): every conv of a
detector grouped by distinct shape, each layer exported alone by lowbit's int8 export with the
detector's default config; the int8 file takes and returns uint8, fuses to one QLinearConv in a
real onnxruntime session and agrees with the FP32 file; the stem YOLO keeps float stays a
float conv. Small YOLOv3 (width 0.25, 64 px) to stay fast."""

from __future__ import annotations

import argparse
import importlib.util
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lowbit.export.detect import default_int8
from lowbit.export.onnx import ort_session

ROOT = Path(__file__).resolve().parents[2]


def _bench_int8() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("bench_int8",
                                                  ROOT / "benchmarks" / "bench_int8.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def yolo() -> tuple:
    b = _bench_int8()
    model, calib, _, net = b.build("yolov3_tiny_darknet", (), 4, Path("unused"),
                                   {"width": 0.25, "image_size": 64}, export=False)
    return b, model, calib, net


def test_layers_grouped_by_shape(yolo: tuple) -> None:
    b, model, calib, net = yolo
    layers = b.conv_layers(net, calib[0][:2])
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert sum(d["count"] for d in layers) == n_convs
    keys = {(tuple(d["x"]), tuple(d["w"]), str(d["attrs"]), d["bn"] is None) for d in layers}
    assert len(keys) == len(layers)
    first = layers[0]
    assert first["name"].endswith("backbone.conv1.conv") and first["x"] == [3, 64, 64]
    assert first["bn"] is not None and first["input"].shape[0] == 2
    head = [d for d in layers if d["name"].endswith("head.branches.0.1")][0]
    assert head["bn"] is None  # the prediction conv has a bias, no BatchNorm


def test_single_layer_files_run_uint8_qlinearconv(yolo: tuple, tmp_path: Path) -> None:
    b, model, calib, net = yolo
    layers = b.conv_layers(net, calib[0][:2])
    cfg = default_int8(model)
    # a conv with >= 4 input channels: int8; uint8 in and out, one QLinearConv after fusion
    layer = next(d for d in layers if d["x"][0] >= 16)
    f32, f8, feed32, feed8, wrep = b.single_layer_files(layer, cfg, tmp_path, "l")
    g = onnx.load(str(f8)).graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.UINT8]
    assert [o.type.tensor_type.elem_type for o in g.output] == [onnx.TensorProto.UINT8]
    assert "QuantizeLinear" in {n.op_type for n in g.node}  # the conv's output
    assert wrep == "pot-exact"
    assert [n.op_type for n in onnx.load(str(f32)).graph.node] == ["Conv"]  # BN folded
    s8 = ort_session(f8, 1)
    y8 = s8.run(None, feed8)[0]
    assert y8.dtype == np.uint8 and list(y8.shape[1:]) == layer["y"]
    qn = next(n for n in g.node if n.op_type == "QuantizeLinear")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    sc, zp = float(inits[qn.input[1]]), int(inits[qn.input[2]])
    y32 = ort_session(f32, 1).run(None, feed32)[0]
    deq = (y8.astype(np.float32) - zp) * sc
    inside = (y32 > -zp * sc) & (y32 < (255 - zp) * sc)  # not clipped by uint8
    assert np.abs(deq - y32)[inside].max() <= 3 * sc + 0.02 * np.abs(y32).max()
    # the stem (3 input channels): YOLO's config keeps it a float conv, fed float
    stem = layers[0]
    _, f8s, feed32s, feed8s, _ = b.single_layer_files(stem, cfg, tmp_path, "stem")
    assert feed8s is feed32s
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(f8s)).graph.node}


def test_paired_ratio_and_cli(yolo: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                              ) -> None:
    b, *_ = yolo
    rc = b.main(["--models", "yolov3_tiny_darknet:width=0.25,image_size=64", "--threads", "1",
                 "--layers", "all", "--layers-only", "--rounds", "2", "--block", "1",
                 "--layer-images", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| layer (x count) | input C×H×W | weight |" in out
    assert "**weighted total** (43 convs" in out
    assert "(float conv)" in out.split("backbone.conv1.conv")[1].split("\n")[0]
    with pytest.raises(SystemExit):
        b.main(["--layers-only"])
    with pytest.raises(SystemExit):
        b.main(["--models", "yolov3_tiny_darknet:width", "--layers", "all"])
    assert isinstance(b._layers_arg("all"), str)
    with pytest.raises(argparse.ArgumentTypeError):
        b._layers_arg("some")
