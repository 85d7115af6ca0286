"""BN folding and SVD compression."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.bench.models import resnet18_classifier
from lowbit.nn import SVDLinear, find_conv_bn_pairs, fold_bn, prepare, svd_compress


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)


def test_fold_bn_resnet_equivalence_in_eval() -> None:
    torch.manual_seed(0)
    m = resnet18_classifier(num_classes=10, width=8)
    _randomize_bn(m)
    m.eval()
    ref = copy.deepcopy(m)
    pairs = find_conv_bn_pairs(m)
    assert ("conv1", "bn1") in pairs and ("layer2.0.downsample.0", "layer2.0.downsample.1") in pairs
    assert len(pairs) == sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    fold_bn(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


class _Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx: the structural fallback must pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.seq = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x))
        if y.sum() > 1e9:  # never true; untraceable
            y = -y
        return self.seq(y)


def test_fold_bn_structural_fallback_and_bias() -> None:
    torch.manual_seed(1)
    m = _Untraceable()
    _randomize_bn(m)
    m.eval()
    ref = copy.deepcopy(m)
    assert sorted(find_conv_bn_pairs(m)) == [("conv1", "bn1"), ("seq.0", "seq.1")]
    fold_bn(m)
    assert m.seq[0].bias is not None  # bias created for a bias-free conv
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_fold_bn_into_quantized_conv_then_quantize_folded_weights() -> None:
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU())
    _randomize_bn(m)
    m.eval()
    ref = copy.deepcopy(m)
    fold_bn(m)
    folded_float = copy.deepcopy(m)
    prepare(m, {"method": "uniform", "bits": 8, "params": {"per_channel": True}}).eval()
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded_float(x), ref(x), rtol=1e-4, atol=1e-5)
        # 8-bit per-channel uniform of the folded weight: close, not exact
        err = (m(x) - ref(x)).abs().max()
        assert 0 < err < 0.02 * ref(x).abs().max()
    q = prepare(copy.deepcopy(ref), {"method": "lbw-exact", "bits": 4}).eval()
    fold_bn(q)  # folding after prepare folds the float weight of the QuantConv2d
    assert isinstance(q[1], nn.Identity)


def test_fold_bn_skips_shared_outputs() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is used twice: cannot fold

    assert find_conv_bn_pairs(Branch()) == []


def test_svd_full_rank_is_lossless_and_reports_params() -> None:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5, bias=False))
    ref = copy.deepcopy(m)
    rep = svd_compress(m, rank=7)
    assert isinstance(m[0], SVDLinear) and m[0].rank == 7
    assert isinstance(m[2], SVDLinear) and m[2].rank == 5
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    lay = rep["layers"]["0"]
    assert lay["params_before"] == 12 * 7 + 7 and lay["params_after"] == 7 * (12 + 7) + 7
    assert rep["params_before"] == 12 * 7 + 7 + 7 * 5
    assert rep["params_after"] == sum(p.numel() for p in m.parameters())


def test_svd_energy_rank_matches_numpy() -> None:
    g = torch.Generator().manual_seed(4)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(48, 48, generator=g))
    s = torch.tensor([2.0 ** -i for i in range(48)])
    w = (u[:, :48] * s) @ v.T  # 64 x 48, known spectrum
    m = nn.Sequential(nn.Linear(48, 64))
    with torch.no_grad():
        m[0].weight.copy_(w)
    sv = np.linalg.svd(w.double().numpy(), compute_uv=False)
    share = np.cumsum(sv**2) / np.sum(sv**2)
    r_np = int(np.argmax(share >= 0.99)) + 1
    rep = svd_compress(m, energy=0.99)
    assert rep["layers"]["0"]["rank"] == r_np and rep["layers"]["0"]["replaced"]
    assert rep["layers"]["0"]["energy"] >= 0.99
    x = torch.randn(3, 48)
    with torch.no_grad():
        err = (m(x) - (x @ w.T + m[0][1].bias)).norm() / (x @ w.T).norm()
    assert err < 0.1
    with pytest.raises(ValueError):
        svd_compress(nn.Sequential(nn.Linear(3, 3)), energy=0.5, rank=2)


def test_svd_energy_skips_when_no_saving() -> None:
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(4, 4))
    rep = svd_compress(m, energy=1.0)
    assert not rep["layers"]["0"]["replaced"] and type(m[0]) is nn.Linear
