"""`lowbit bench deploy --model-kwargs MODEL:K=V,...`: parsing (good and bad text, argparse
errors naming the offending text), the keywords reaching the model (conv channel counts, the
noise images' and the exported ONNX input's size) and the results recording them, through real
onnxruntime sessions on a small YOLOv3 (width 0.25, 128 px)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch

from lowbit import runtime
from lowbit.bench.deploy import (
    _model_and_images,
    input_side,
    parse_model_kwargs,
    run_deploy_bench,
)
from lowbit.cli import build_parser, main
from lowbit.detection.registry import create_model


def test_parse_values_typed() -> None:
    name, kw = parse_model_kwargs(
        "yolov3_tiny_darknet:width=0.5,image_size=416,freeze_at=0,extra_anchor_iou=none,"
        "norm=frozen_bn,flag=True,other=false")
    assert name == "yolov3_tiny_darknet"
    assert kw == {"width": 0.5, "image_size": 416, "freeze_at": 0, "extra_anchor_iou": None,
                  "norm": "frozen_bn", "flag": True, "other": False}
    assert type(kw["image_size"]) is int and type(kw["width"]) is float
    assert parse_model_kwargs(" m : a = 1 ") == ("m", {"a": 1})


@pytest.mark.parametrize("text", ["yolov3_tiny_darknet", "yolov3_tiny_darknet:",
                                  ":width=1", "yolov3_tiny_darknet:width",
                                  "yolov3_tiny_darknet:=1", "yolov3_tiny_darknet:width=1,",
                                  "yolov3_tiny_darknet:width=1,width=2",
                                  "yolov3_tiny_darknet:wi dth=1"])
def test_parse_bad_syntax_names_the_text(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_model_kwargs(text)
    assert repr(text) in str(exc.value)


@pytest.mark.parametrize("text, says", [
    ("no_such_model:width=1", "unknown model 'no_such_model'"),
    ("yolov3_tiny_darknet:widht=1", "unknown model option(s) widht"),
    ("yolov3_tiny_darknet:image_size=100", "image_size must be a multiple of 32"),
    ("yolov3_tiny_darknet:width", "'width'"),
])
def test_cli_rejects_bad_kwargs(text: str, says: str, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    """argparse error (exit 2) before anything runs, naming the offending text and why."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "deploy", "--model-kwargs", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--model-kwargs" in err and says in err and text.split(":")[0] in err


def test_cli_collects_repeated_kwargs(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["bench", "deploy", "--model-kwargs", "yolov3_tiny_darknet:width=0.5",
         "--model-kwargs", "rfcn_resnet18:min_size=320"])
    assert args.model_kwargs == [("yolov3_tiny_darknet", {"width": 0.5}),
                                 ("rfcn_resnet18", {"min_size": 320})]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "deploy", "--help"])
    assert "the run's config wins" in " ".join(capsys.readouterr().out.split())


def test_kwargs_for_a_model_not_timed_is_an_error() -> None:
    with pytest.raises(ValueError, match="yolov3_tiny_darknet, not among the models"):
        run_deploy_bench(models=["rfcn_resnet18"],
                         model_kwargs={"yolov3_tiny_darknet": {"width": 0.5}})


def _convs(model: torch.nn.Module, prefix: str) -> list[int]:
    return [m.out_channels for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and n.startswith(prefix)]


def test_kwargs_reach_the_model_and_the_images() -> None:
    """width / image_size change the built model's channels and the noise images' size;
    without keywords the preset (width 0.25, 256 px); R-FCN's input side is its min_size (256
    when unset: images keep their size)."""
    m, ims, how = _model_and_images("yolov3_tiny_darknet", (), 2,
                                    {"width": 1.0, "image_size": 416})
    stage_out = [m.backbone.conv1.conv.out_channels] + [
        getattr(m.backbone, f"layer{i}")[0].conv.out_channels for i in range(1, 6)]
    assert stage_out == [32, 64, 128, 256, 512, 1024]
    assert [tuple(x.shape) for x in ims] == [(3, 416, 416)] * 2
    assert "width=1.0,image_size=416" in how
    m, ims, _ = _model_and_images("yolov3_tiny_darknet", (), 1)
    assert m.backbone.conv1.conv.out_channels == 8 and ims[0].shape == (3, 256, 256)
    with torch.device("meta"):
        assert input_side("rfcn_resnet18", create_model("rfcn_resnet18", 10)) == 256
        assert input_side("rfcn_resnet18", create_model("rfcn_resnet18", 10,
                                                        min_size=320)) == 320


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """`main([... "--threads", "1"])` sets torch's threads, lowbit.runtime's state and the
    thread environment variables of this process: put them back for the tests after."""
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS")}
    state, nt = dict(runtime._STATE), torch.get_num_threads()
    yield
    torch.set_num_threads(nt)
    runtime._STATE.update(state)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.usefixtures("keep_threads")
def test_cli_end_to_end_records_kwargs(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    """`lowbit bench deploy --json` with real onnxruntime FP32 and int8 sessions on YOLOv3 at
    width 0.25 and 128 px: the exported FP32 ONNX input is 1 x 3 x 128 x 128, the results
    record the keywords and the input size, and both sessions timed."""
    rc = main(["bench", "deploy", "--models", "yolov3_tiny_darknet", "--model-kwargs",
               "yolov3_tiny_darknet:width=0.25,image_size=128", "--iters", "2",
               "--threads", "1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{"):])["yolov3_tiny_darknet"]
    assert res["model_kwargs"] == {"width": 0.25, "image_size": 128}
    assert res["input_hw"] == [128, 128]
    assert "width=0.25,image_size=128" in res["model"] and "input 128x128" in res["model"]
    assert res["ms_ort_fp32"] > 0 and res["ms_ort_int8"] > 0
    fp32 = onnx.load(str(tmp_path / "yolov3_tiny_darknet" / "model.fp32.onnx"))
    dims = [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 128, 128]
    w = {i.name: list(i.dims) for i in fp32.graph.initializer}
    assert max(d[0] for d in w.values() if len(d) == 4) == 256  # layer5 at width 0.25
