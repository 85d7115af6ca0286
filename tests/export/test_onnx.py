"""ONNX FP32 and int8 QDQ exports load in onnxruntime CPU and agree with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lowbit.export.onnx import export_onnx, export_onnx_int8, ort_session, run_onnx
from lowbit.nn import convert, prepare


def _model(bits: int) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    prepare(m, {"method": "lbw-exact", "bits": bits}).eval()
    m(torch.randn(2, 3, 16, 16))
    return convert(m)


def test_fp32_matches_torch(tmp_path: Path) -> None:
    m = _model(4)
    x = torch.randn(5, 3, 16, 16)
    f = export_onnx(m, x[:1], tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(f)))
    out = run_onnx(ort_session(f), x)[0]
    np.testing.assert_allclose(out, m(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 4])
def test_int8_exact_weights_and_close(tmp_path: Path, bits: int) -> None:
    m = _model(bits)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(4)]
    rep = export_onnx_int8(m, calib[0][:1], tmp_path / "m8.onnx", calib)
    assert sorted(rep["weights"].values()).count("pot-exact") == 2  # both pot convs
    onnx.checker.check_model(onnx.load(rep["path"]))
    x = torch.randn(16, 3, 16, 16, generator=g)
    ref = m(x).detach().numpy()
    out = run_onnx(ort_session(rep["path"]), x)[0]
    # activation quantization (uint8, calibrated) is the only error source: stated tolerance
    # 5% of the output range
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
