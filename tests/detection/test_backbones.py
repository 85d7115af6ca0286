"""Backbones: torchvision key layout written out here, strict loading, stage shapes."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lowbit.detection.backbones import (
    FrozenBatchNorm2d,
    convert_frozen_batchnorm,
    create_backbone,
    list_backbones,
    load_backbone_weights,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    vgg16,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# torchvision resnet18, written out module by module: (module, weight shape) for convs / fc,
# (module, channels) for batch norms.
RESNET18_LAYOUT: list[tuple[str, object]] = [
    ("conv1", (64, 3, 7, 7)), ("bn1", 64),
    ("layer1.0.conv1", (64, 64, 3, 3)), ("layer1.0.bn1", 64),
    ("layer1.0.conv2", (64, 64, 3, 3)), ("layer1.0.bn2", 64),
    ("layer1.1.conv1", (64, 64, 3, 3)), ("layer1.1.bn1", 64),
    ("layer1.1.conv2", (64, 64, 3, 3)), ("layer1.1.bn2", 64),
    ("layer2.0.conv1", (128, 64, 3, 3)), ("layer2.0.bn1", 128),
    ("layer2.0.conv2", (128, 128, 3, 3)), ("layer2.0.bn2", 128),
    ("layer2.0.downsample.0", (128, 64, 1, 1)), ("layer2.0.downsample.1", 128),
    ("layer2.1.conv1", (128, 128, 3, 3)), ("layer2.1.bn1", 128),
    ("layer2.1.conv2", (128, 128, 3, 3)), ("layer2.1.bn2", 128),
    ("layer3.0.conv1", (256, 128, 3, 3)), ("layer3.0.bn1", 256),
    ("layer3.0.conv2", (256, 256, 3, 3)), ("layer3.0.bn2", 256),
    ("layer3.0.downsample.0", (256, 128, 1, 1)), ("layer3.0.downsample.1", 256),
    ("layer3.1.conv1", (256, 256, 3, 3)), ("layer3.1.bn1", 256),
    ("layer3.1.conv2", (256, 256, 3, 3)), ("layer3.1.bn2", 256),
    ("layer4.0.conv1", (512, 256, 3, 3)), ("layer4.0.bn1", 512),
    ("layer4.0.conv2", (512, 512, 3, 3)), ("layer4.0.bn2", 512),
    ("layer4.0.downsample.0", (512, 256, 1, 1)), ("layer4.0.downsample.1", 512),
    ("layer4.1.conv1", (512, 512, 3, 3)), ("layer4.1.bn1", 512),
    ("layer4.1.conv2", (512, 512, 3, 3)), ("layer4.1.bn2", 512),
    ("fc", (1000, 512)),
]  # fmt: skip


def expand_layout(layout: list[tuple[str, object]]) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}
    for name, spec in layout:
        if isinstance(spec, int):  # batch norm
            for b in BN:
                shapes[f"{name}.{b}"] = torch.Size([] if b == "num_batches_tracked" else [spec])
        elif name == "fc" or name.startswith("classifier."):
            shapes[f"{name}.weight"] = torch.Size(spec)
            shapes[f"{name}.bias"] = torch.Size(spec[:1])
        elif name.startswith("features."):
            shapes[f"{name}.weight"] = torch.Size(spec)
            shapes[f"{name}.bias"] = torch.Size(spec[:1])
        else:
            shapes[f"{name}.weight"] = torch.Size(spec)
    return shapes


def bottleneck_layout(blocks: tuple[int, ...], width: float = 1.0) -> list[tuple[str, object]]:
    """torchvision resnet50/101 key pattern: layerS.B.{conv1,bn1,conv2,bn2,conv3,bn3} and
    layerS.0.downsample.{0,1}; planes 64, 128, 256, 512 (times width), expansion 4."""
    stem = round(64 * width)
    layout: list[tuple[str, object]] = [("conv1", (stem, 3, 7, 7)), ("bn1", stem)]
    inplanes = stem
    for s, n in enumerate(blocks, start=1):
        p = round(64 * 2 ** (s - 1) * width)
        for b in range(n):
            pre = f"layer{s}.{b}"
            layout += [
                (f"{pre}.conv1", (p, inplanes, 1, 1)), (f"{pre}.bn1", p),
                (f"{pre}.conv2", (p, p, 3, 3)), (f"{pre}.bn2", p),
                (f"{pre}.conv3", (4 * p, p, 1, 1)), (f"{pre}.bn3", 4 * p),
            ]  # fmt: skip
            if b == 0:
                layout += [(f"{pre}.downsample.0", (4 * p, inplanes, 1, 1))]
                layout += [(f"{pre}.downsample.1", 4 * p)]
            inplanes = 4 * p
    layout.append(("fc", (1000, inplanes)))
    return layout


def vgg16_layout(width: float = 1.0, head: bool = True) -> list[tuple[str, object]]:
    convs = {0: 64, 2: 64, 5: 128, 7: 128, 10: 256, 12: 256, 14: 256,
             17: 512, 19: 512, 21: 512, 24: 512, 26: 512, 28: 512}  # fmt: skip
    layout: list[tuple[str, object]] = []
    cin = 3
    for idx, cout in convs.items():
        cout = round(cout * width)
        layout.append((f"features.{idx}", (cout, cin, 3, 3)))
        cin = cout
    if head:
        hidden = round(4096 * width)
        layout += [
            ("classifier.0", (hidden, cin * 49)),
            ("classifier.3", (hidden, hidden)),
            ("classifier.6", (1000, hidden)),
        ]
    return layout


def make_state_dict(shapes: dict[str, torch.Size], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(s, generator=gen) + 0.5
        else:
            sd[k] = torch.randn(s, generator=gen) * 0.01
    return sd


def test_resnet18_layout_written_out() -> None:
    shapes = expand_layout(RESNET18_LAYOUT)
    assert len(shapes) == 122  # len(torchvision.models.resnet18().state_dict())
    with_head = resnet18(num_classes=1000)
    assert {k: v.shape for k, v in with_head.state_dict().items()} == shapes
    backbone = resnet18()
    assert set(backbone.state_dict()) == {k for k in shapes if not k.startswith("fc.")}


def test_resnet50_101_layout_pattern() -> None:
    for fn, blocks, n_keys in ((resnet50, (3, 4, 6, 3), 320), (resnet101, (3, 4, 23, 3), 626)):
        shapes = expand_layout(bottleneck_layout(blocks))
        assert len(shapes) == n_keys
        with torch.device("meta"):
            model = fn(num_classes=1000)
        assert {k: v.shape for k, v in model.state_dict().items()} == shapes


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet50_loads_torchvision_file_strict(tmp_path, suffix: str) -> None:
    sd = make_state_dict(expand_layout(bottleneck_layout((3, 4, 6, 3))))
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    model = resnet50(weights=path, return_layers=("layer3", "layer4"))
    assert model.fc is None
    torch.testing.assert_close(model.layer3[5].conv3.weight, sd["layer3.5.conv3.weight"])
    torch.testing.assert_close(model.layer1[0].downsample[1].running_var,
                               sd["layer1.0.downsample.1.running_var"])  # fmt: skip
    res = load_backbone_weights(model, path)
    assert sorted(res.ignored_keys) == ["fc.bias", "fc.weight"]
    assert res.missing_keys == [] and res.unexpected_keys == []
    # with a head nothing is ignored and fc is loaded
    head = resnet50(num_classes=1000)
    assert load_backbone_weights(head, path).ignored_keys == []
    torch.testing.assert_close(head.fc.weight, sd["fc.weight"])


def test_loading_is_strict_about_everything_but_fc() -> None:
    shapes = expand_layout(bottleneck_layout((3, 4, 6, 3), width=0.25))
    sd = make_state_dict(shapes)
    model = resnet50(width=0.25)
    load_backbone_weights(model, sd)  # scaled widths, same names
    extra = dict(sd, **{"layer4.9.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="layer4.9.conv1.weight"):
        load_backbone_weights(model, extra)
    missing = {k: v for k, v in sd.items() if k != "layer2.1.bn2.bias"}
    with pytest.raises(ValueError, match="layer2.1.bn2.bias"):
        load_backbone_weights(model, missing)
    with pytest.raises(ValueError, match="size mismatch"):
        load_backbone_weights(resnet50(width=0.5), sd)
    res = load_backbone_weights(model, missing, strict=False)
    assert res.missing_keys == ["layer2.1.bn2.bias"]


def test_frozen_backbone_loads_and_freezes() -> None:
    sd = make_state_dict(expand_layout(RESNET18_LAYOUT))
    model = resnet18(weights=sd, freeze_at=2)
    assert isinstance(model.bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer1[1].bn2, FrozenBatchNorm2d)
    assert isinstance(model.layer2[0].bn1, nn.BatchNorm2d)
    assert not model.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    torch.testing.assert_close(model.layer1[1].bn2.running_mean, sd["layer1.1.bn2.running_mean"])
    frozen = resnet18(weights=sd, norm="frozen_bn")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert "bn1.num_batches_tracked" not in frozen.state_dict()


def test_frozen_batchnorm_equals_eval_batchnorm() -> None:
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.eval()
    x = torch.randn(2, 5, 3, 4)
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    torch.testing.assert_close(frozen(x), bn(x))


@pytest.mark.parametrize(
    ("fn", "width", "channels"),
    [
        (resnet18, 0.25, (16, 32, 64, 128)),
        (resnet34, 0.25, (16, 32, 64, 128)),
        (resnet50, 0.25, (64, 128, 256, 512)),
        (resnet101, 0.125, (32, 64, 128, 256)),
    ],
)
def test_resnet_stage_shapes(fn, width: float, channels: tuple[int, ...]) -> None:
    layers = ("layer1", "layer2", "layer3", "layer4")
    model = fn(width=width, return_layers=layers).eval()
    h, w = 70, 97
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert list(out) == list(layers)
    for name, c, stride in zip(layers, channels, (4, 8, 16, 32)):
        assert model.out_channels[name] == c and model.strides[name] == stride
        assert out[name].shape == (1, c, math.ceil(h / stride), math.ceil(w / stride))
    dil = fn(width=width, return_layers=("layer4",), dilate_layer4=True).eval()
    assert dil.strides["layer4"] == 16
    with torch.no_grad():
        o4 = dil(torch.randn(1, 3, h, w))["layer4"]
    assert o4.shape == (1, channels[3], math.ceil(h / 16), math.ceil(w / 16))
    for b, block in enumerate(dil.layer4):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] == 3]
        assert all(c.dilation == ((1, 1) if b == 0 else (2, 2)) for c in convs)
        assert all(c.stride == (1, 1) and c.padding == c.dilation for c in convs)


def test_resnet_only_runs_needed_stages_and_head() -> None:
    model = resnet18(width=0.25, return_layers=("layer2",))
    out = model(torch.randn(2, 3, 32, 32))
    assert list(out) == ["layer2"]
    clf = resnet18(width=0.25, num_classes=10)
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        resnet18(return_layers=("layer5",))


def test_vgg16_layout_and_loading(tmp_path) -> None:
    shapes = expand_layout(vgg16_layout())
    with torch.device("meta"):
        full = vgg16(num_classes=1000)
        backbone_full = vgg16()
    assert {k: v.shape for k, v in full.state_dict().items()} == shapes
    assert {k: v.shape for k, v in backbone_full.state_dict().items()} == {
        k: v for k, v in shapes.items() if not k.startswith("classifier.")
    }
    # loading: a quarter-width file in the same layout (the full classifier is 100M floats)
    sd = make_state_dict(expand_layout(vgg16_layout(width=0.25)))
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    backbone = vgg16(width=0.25)
    res = load_backbone_weights(backbone, path)
    assert sorted(res.ignored_keys) == sorted(k for k in sd if k.startswith("classifier."))
    torch.testing.assert_close(backbone.features[28].bias, sd["features.28.bias"])
    head = vgg16(width=0.25, num_classes=1000, weights=path)
    torch.testing.assert_close(head.classifier[6].weight, sd["classifier.6.weight"])
    assert head(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_vgg16_stage_shapes_and_freeze() -> None:
    stages = ("conv1", "conv2", "conv3", "conv4", "conv5")
    model = vgg16(width=0.25, return_layers=stages, freeze_at=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 64))
    for name, c, s in zip(stages, (16, 32, 64, 128, 128), (1, 2, 4, 8, 16)):
        assert model.out_channels[name] == c and model.strides[name] == s
        assert out[name].shape == (1, c, 48 // s, 64 // s)
    assert not model.features[7].weight.requires_grad
    assert model.features[10].weight.requires_grad


def test_registry_and_bad_file(tmp_path) -> None:
    names = list_backbones()
    assert names == sorted(names)
    assert {"resnet101", "resnet18", "resnet34", "resnet50", "vgg16"} <= set(names)
    assert create_backbone("resnet18", width=0.25).out_channels["layer4"] == 128
    # the same error as every lowbit catalogue: ValueError listing the known names
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet7'; known: .*resnet18"):
        create_backbone("resnet7")
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(resnet18(width=0.25), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"a": 1}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        load_backbone_weights(resnet18(width=0.25), bad)
