"""ONNX FP32 and int8 QDQ exports load in onnxruntime CPU and agree with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

from lowbit.export.onnx import Int8Config, export_onnx, export_onnx_int8, ort_session, run_onnx
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


def _pot_per_channel(shape: tuple[int, ...], axis: int, exps: list[int], seed: int) -> Tensor:
    """Weights ``sign * 2**(s_c - k)``, ``k in 0..3``, with ``s_c = exps[c]`` along ``axis``
    (the per-channel power-of-two grid: ``scale = Tensor[C]`` of ``2**s_c``)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 4, shape, generator=g).double()
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
    s = torch.tensor(exps, dtype=torch.float64)
    view = [1] * len(shape)
    view[axis] = len(exps)
    return (sign * torch.exp2(s.view(view) - k)).float()


def _dequantized_weights(path: str) -> dict[str, np.ndarray]:
    """``codes * scale`` (float64) of every int8 weight read by a DequantizeLinear, broadcast
    along the node's ``axis`` attribute (written here from the ONNX spec, not lowbit's code)."""
    from onnx import helper, numpy_helper

    q = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    out = {}
    for n in q.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        codes = inits[n.input[0]]
        if codes.dtype != np.int8:
            continue
        scale = inits[n.input[1]].astype(np.float64)
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * codes.ndim
            shape[axis] = scale.size
            scale = scale.reshape(shape)
        out[n.input[0].removesuffix("_quantized")] = codes.astype(np.float64) * scale
    return out


class _UpNet(nn.Module):
    """conv (per-channel pot, axis 0) -> ReLU -> transposed conv (per-channel pot, axis 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        with torch.no_grad():
            # channel scales 2**0 .. 2**-9 apart: more than int8's 2**6 range per tensor, so
            # only a per-channel scale along the right axis keeps every code exact
            self.conv.weight.copy_(_pot_per_channel((4, 3, 3, 3), 0, [0, -3, -6, -9], 1))
            self.up.weight.copy_(_pot_per_channel((4, 3, 2, 2), 1, [-1, -5, -9], 2))
            self.conv.bias.copy_(torch.tensor([0.1, -0.05, 0.02, 0.0]))
            self.up.bias.copy_(torch.tensor([0.01, -0.02, 0.03]))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(torch.relu(self.conv(x)))


def _registry_up_net() -> nn.Module:
    """:class:`_UpNet` with weights from lowbit's per-channel lbw-exact (``QuantResult`` with
    ``scale = 2**s_c`` along ``axis``: 0 for the conv, 1 for the transposed conv) applied to
    weights whose channels differ in magnitude by up to 2**9."""
    from lowbit.quant import get

    m = _UpNet()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer, axis in ((m.conv, 0), (m.up, 1)):
            w = torch.randn(layer.weight.shape, generator=g)
            shape = [1] * w.dim()
            shape[axis] = w.shape[axis]
            w = w * torch.exp2(-3.0 * torch.arange(w.shape[axis])).view(shape)
            r = get("lbw-exact")(w, bits=4, per_channel=True, axis=axis)
            assert r.axis == axis and r.scale.numel() == w.shape[axis]
            layer.weight.copy_(r.values)
    return m


@pytest.mark.parametrize("source", ["hand", "registry"])
def test_int8_per_channel_pot_conv_and_conv_transpose(tmp_path: Path, source: str) -> None:
    m = (_UpNet() if source == "hand" else _registry_up_net()).eval()
    g = torch.Generator().manual_seed(3)
    calib = [torch.randn(4, 3, 12, 12, generator=g) for _ in range(3)]
    rep = export_onnx_int8(m, calib[0][:1], tmp_path / "up8.onnx", calib)
    assert rep["weights"] == {"conv.weight": "pot-exact", "up.weight": "pot-exact"}
    deq = _dequantized_weights(rep["path"])
    np.testing.assert_array_equal(deq["conv.weight"], m.conv.weight.detach().double().numpy())
    np.testing.assert_array_equal(deq["up.weight"], m.up.weight.detach().double().numpy())
    # on the calibration images themselves (min/max ranges: nothing is clipped; fresh images
    # may exceed the calibrated output range by 10% and are clipped there)
    x = torch.cat(calib)
    with torch.no_grad():
        ref = m(x).numpy()
    out = run_onnx(ort_session(rep["path"], 1), x)[0]
    assert out.shape == ref.shape == (12, 3, 24, 24)
    # weights exact, so uint8 activations (input, the ReLU output and the output, per tensor)
    # are the only error: stated tolerance 3% of the output range (half a uint8 step of each
    # of the three tensors, amplified by the weights' row sums; measured 1.3%)
    assert np.abs(out - ref).max() <= 0.03 * np.abs(ref).max()


@pytest.mark.parametrize("cfg", [Int8Config(quant_format="qoperator"),
                                 Int8Config(per_channel=False),
                                 Int8Config(float_below_channels=4),
                                 Int8Config(float_below_channels=4, float_conv_weights="int8")])
def test_int8_config_variants_close_to_torch(tmp_path: Path, cfg: Int8Config) -> None:
    m = _model(4)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(4)]
    rep = export_onnx_int8(m, calib[0][:1], tmp_path / "v.onnx", calib, config=cfg,
                           fp32_path=tmp_path / "v.fp32.onnx")
    assert rep["config"] == cfg.label
    q = onnx.load(rep["path"])
    ops = {n.op_type for n in q.graph.node}
    if cfg.quant_format == "qoperator":
        assert "QLinearConv" in ops
    stem = [n for n in q.graph.node if n.op_type == "Conv" and n.input[0] == "input"]
    if cfg.float_below_channels and cfg.float_conv_weights == "float":
        # the stem conv (3 input channels) reads the float input with a float weight
        assert len(stem) == 1 and rep["weights"][stem[0].input[1]] == "float"
        assert list(rep["weights"].values()).count("float") == 1
    else:
        assert "float" not in rep["weights"].values()
    if cfg.float_below_channels and cfg.float_conv_weights == "int8":
        # ... or with its int8 weight (exact pot codes) through a DequantizeLinear
        dq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
        assert len(stem) == 1 and stem[0].input[1] in dq
        w = dq[stem[0].input[1]].input[0]
        assert rep["weights"][w.removesuffix("_quantized")] == "pot-exact"
        # codes * scale are the FP32 intermediate's weight (BatchNorm folded), exactly
        from onnx import numpy_helper

        fp = {i.name: numpy_helper.to_array(i)
              for i in onnx.load(rep["fp32_path"]).graph.initializer}
        base = w.removesuffix("_quantized")
        np.testing.assert_array_equal(_dequantized_weights(rep["path"])[base],
                                      fp[base].astype(np.float64))
    # the int8 convs keep lowbit's exact pot values (the float Linear head is onnxruntime's);
    # BatchNorm is at its initial state, so its folded factor is one for all rows and the
    # per-tensor scale is exact too
    n_int8_convs = 1 if cfg.float_below_channels and cfg.float_conv_weights == "float" else 2
    assert list(rep["weights"].values()).count("pot-exact") == n_int8_convs
    x = torch.randn(16, 3, 16, 16, generator=g)
    ref = m(x).detach().numpy()
    out = run_onnx(ort_session(rep["path"], 1), x)[0]
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()


def test_int8_fp32_intermediate_is_temporary_unless_asked(tmp_path: Path) -> None:
    m = _model(4)
    calib = [torch.randn(4, 3, 16, 16)]
    a = tmp_path / "a"
    a.mkdir()
    rep = export_onnx_int8(m, calib[0][:1], a / "m8.onnx", calib)
    assert rep["fp32_path"] is None
    assert sorted(p.name for p in a.iterdir()) == ["m8.onnx"]
    keep = tmp_path / "keep" / "m.fp32.onnx"
    keep.parent.mkdir()
    rep = export_onnx_int8(m, calib[0][:1], a / "m8b.onnx", calib, fp32_path=keep)
    assert rep["fp32_path"] == str(keep)
    out = run_onnx(ort_session(keep, 1), calib[0])[0]
    np.testing.assert_allclose(out, m(calib[0]).detach().numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fp32_path"):
        export_onnx_int8(m, calib[0][:1], a / "same.onnx", calib, fp32_path=a / "same.onnx")


@pytest.mark.parametrize("kw", [{"quant_format": "qdq2"}, {"activations": "u4"},
                                {"weights": "f8"}, {"float_below_channels": -1},
                                {"float_conv_weights": "s8"}])
def test_int8_config_rejects_bad_values(kw: dict) -> None:
    with pytest.raises(ValueError, match="Int8Config"):
        Int8Config(**kw)


def test_ort_session_rejects_bad_options(tmp_path: Path) -> None:
    f = export_onnx(_model(4), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opt_level"):
        ort_session(f, opt_level="fast")
    with pytest.raises(ValueError, match="threads"):
        ort_session(f, threads=0)
    # the layout transformer can be switched off and the session still computes the same
    x = torch.randn(2, 3, 16, 16)
    a = run_onnx(ort_session(f, 1, disabled_optimizers=("NchwcTransformer",)), x)[0]
    b = run_onnx(ort_session(f, 1, opt_level="basic"), x)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_int8_grouped_conv_transpose(tmp_path: Path) -> None:
    """A grouped ConvTranspose (weight ``[C_in, C_out/g, kh, kw]``, bias ``[C_out]``) gets one
    weight scale per tensor (onnxruntime's per-channel quantizer cannot give it C_out scales)
    and still exact power-of-two codes; the ungrouped ones stay per channel."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                      nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2), nn.ReLU(),
                      nn.ConvTranspose2d(8, 4, 2, stride=2)).eval()
    with torch.no_grad():
        for i, layer in enumerate((m[0], m[2], m[4])):
            layer.weight.copy_(_pot_per_channel(tuple(layer.weight.shape), 0,
                                                [-1] * layer.weight.shape[0], 10 + i))
    g = torch.Generator().manual_seed(5)
    calib = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
    rep = export_onnx_int8(m, calib[0][:1], tmp_path / "g.onnx", calib)
    assert rep["weights"] == {"0.weight": "pot-exact", "2.weight": "pot-exact",
                              "4.weight": "pot-exact"}
    deq = _dequantized_weights(rep["path"])
    for name, layer in (("0.weight", m[0]), ("2.weight", m[2]), ("4.weight", m[4])):
        np.testing.assert_array_equal(deq[name], layer.weight.detach().double().numpy())
    from onnx import numpy_helper

    q = onnx.load(rep["path"])
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    scales = {n.input[0]: inits[n.input[1]].size for n in q.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and n.input[0].endswith("weight_quantized")}
    assert scales == {"0.weight_quantized": 8, "2.weight_quantized": 1, "4.weight_quantized": 4}
    x = torch.cat(calib)
    with torch.no_grad():
        ref = m(x).numpy()
    out = run_onnx(ort_session(rep["path"], 1), x)[0]
    assert out.shape == ref.shape == (8, 4, 32, 32)
    assert np.abs(out - ref).max() <= 0.03 * np.abs(ref).max()


@pytest.mark.parametrize("weights", ["float", "int8"])
def test_float_conv_int8_weights_stay_out_of_nchwc(tmp_path: Path, weights: str) -> None:
    """``float_conv_weights="int8"``: onnxruntime's optimized graph runs the float stem conv as
    a plain (NCHW) conv -- no NCHWc conv, no ReorderInput / ReorderOutput -- where a
    float weight gets the NCHWc conv and a ReorderOutput before the QuantizeLinear."""
    import onnxruntime as ort

    m = _model(4)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    cfg = Int8Config(float_below_channels=4, float_conv_weights=weights)
    rep = export_onnx_int8(m, calib[0][:1], tmp_path / "s.onnx", calib, config=cfg)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "s.opt.onnx")
    ort.InferenceSession(rep["path"], so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "s.opt.onnx"))
    nchwc = [n for n in opt.graph.node if n.domain == "com.microsoft.nchwc"]
    stem = [n for n in opt.graph.node if "input" in n.input and "Conv" in n.op_type]
    assert len(stem) == 1
    if weights == "int8":
        # (a Relu after it is dropped by the QuantizeLinear that clips at zero; a LeakyRelu
        # would make it a FusedConv)
        assert nchwc == [] and stem[0].op_type in ("Conv", "FusedConv")
    else:
        assert {n.op_type for n in nchwc} >= {"Conv", "ReorderOutput"}
    x = torch.randn(4, 3, 16, 16, generator=g)
    ref = m(x).detach().numpy()
    out = run_onnx(ort_session(rep["path"], 1), x)[0]
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
