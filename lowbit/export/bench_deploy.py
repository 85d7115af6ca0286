"""`lowbit bench deploy`: onnxruntime FP32 vs int8 QDQ latency (2 threads, same inputs,
alternating, one process), PyTorch FP32 eager for reference, and file sizes (FP32
safetensors / packed raw / packed zlib / ONNX FP32 / ONNX int8), on a ResNet-18-style
classifier built from :mod:`lowbit.detection.backbones` (the detector networks' backbone)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lowbit.export.onnx import export_onnx_int8, ort_session
from lowbit.export.packed import save_packed
from lowbit.nn import convert, prepare


def _net() -> nn.Module:
    torch.manual_seed(0)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         block(64, 64, 1), block(64, 128, 2), block(128, 256, 2),
                         block(256, 512, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, 20))


def run_deploy_bench(bits: int = 4, iters: int = 20, out_dir: str | None = None,
                     size: int = 224) -> dict[str, Any]:
    """Measure (see module doc); returns a dict of sizes (bytes), latencies (ms, median) and
    the int8/FP32 ratio."""
    torch.set_num_threads(2)
    out = Path(out_dir or tempfile.mkdtemp(prefix="lowbit-deploy-"))
    out.mkdir(parents=True, exist_ok=True)
    float_model = _net().eval()
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()},
              str(out / "fp32.safetensors"))
    m = prepare(_net(), {"method": "lbw-exact", "bits": bits}).eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(2, 3, size, size, generator=g) for _ in range(4)]
    with torch.no_grad():
        m(calib[0])
    convert(m)
    raw = save_packed(m, out / "model.lbp", arch=None)
    zl = save_packed(m, out / "model.zlib.lbp", arch=None, coding="zlib")
    rep = export_onnx_int8(m, calib[0][:1], out / "model.int8.onnx", calib)
    s32, s8 = ort_session(rep["fp32_path"]), ort_session(rep["path"])
    x = torch.randn(1, 3, size, size, generator=g)
    feed = {"input": x.numpy()}
    t32, t8, tpt = [], [], []
    for _ in range(3):
        s32.run(None, feed)
        s8.run(None, feed)
    for _ in range(iters):
        t0 = time.perf_counter()
        s32.run(None, feed)
        t1 = time.perf_counter()
        s8.run(None, feed)
        t2 = time.perf_counter()
        with torch.no_grad():
            m(x)
        t3 = time.perf_counter()
        t32.append(t1 - t0)
        t8.append(t2 - t1)
        tpt.append(t3 - t2)

    def med(v: list[float]) -> float:
        return round(1000 * sorted(v)[len(v) // 2], 2)

    return {
        "model": f"resnet18-style classifier {size}x{size}, lbw-exact {bits}-bit",
        "bytes_fp32_safetensors": (out / "fp32.safetensors").stat().st_size,
        "bytes_packed_raw": raw["bytes"], "bytes_packed_zlib": zl["bytes"],
        "ratio_packed_raw": round(raw["ratio"], 2), "ratio_packed_zlib": round(zl["ratio"], 2),
        "bytes_onnx_fp32": Path(rep["fp32_path"]).stat().st_size,
        "bytes_onnx_int8": Path(rep["path"]).stat().st_size,
        "ms_ort_fp32": med(t32), "ms_ort_int8": med(t8), "ms_torch_fp32": med(tpt),
        "int8_over_fp32": round(med(t8) / med(t32), 3),
        "exact_pot_weights": sum(v == "pot-exact" for v in rep["weights"].values()),
    }
