"""An outside-model zoo: architectures from packages made for model zoos, built without weights.

Packages (the ``zoo`` extra of pyproject.toml): ``pytorchcv`` 0.0.67 (the last release that
does not declare torchvision; none of the models used here imports it) and
``efficientnet_pytorch``. Nothing is downloaded: every builder passes ``pretrained=False`` (the
default) and seeds torch before building, so two calls give the same weights.

Each :class:`ZooEntry` names what the model exercises in :func:`lowbit.nn.prepare`:

* ``mobilenetv2_wd4`` -- depthwise 3x3 convs, 1x1 classifier conv;
* ``shufflenetv2_wd2`` -- grouped / depthwise convs, channel shuffle, Linear head;
* ``resnext14_16x4d`` -- grouped 3x3 convs (32 groups);
* ``sharesnet18`` -- ShaResNet: one conv *module* shared by every unit of a stage;
* ``octresnet10_ad2`` -- ``OctConv(nn.Conv2d)``, own forward slicing ``self.weight`` (quarter
  width);
* ``xdensenet40_cifar`` -- ``XConv2d(nn.Conv2d)``, own forward multiplying ``weight`` by a
  fixed random mask;
* ``efficientnet_b0_static`` / ``efficientnet_b0_dynamic`` -- ``Conv2dStaticSamePadding`` /
  ``Conv2dDynamicSamePadding`` (same-padding subclasses of ``nn.Conv2d``, own forward): the
  EfficientNet whose convs lowbit once skipped silently (B0 at half width and depth);
* ``centernet_resnet18`` -- CenterNet detector: ResNet-18 trunk, three ``ConvTranspose2d``
  upsampling stages, heatmap / size / offset heads (network output, no box decoding; quarter
  width);
* ``quartznet5x5`` -- QuartzNet 5x5 speech model at quarter width: ``MaskConv1d(nn.Conv1d)``
  (own forward taking ``(x, x_len)``), depthwise 1-D convs; wrapped to take one tensor;
* ``stdconv`` (written here) -- ``StdConv2d(nn.Conv2d)``, weight standardisation in its own
  forward (as timm's ``StdConv2d``), GroupNorm;
* ``tied`` (written here) -- one conv module called twice, and two ``nn.Linear`` modules
  holding one weight Parameter;
* ``all_kinds`` (written here) -- ``Conv1d``, ``Conv3d``, ``ConvTranspose1d/2d/3d`` (grouped
  and dilated ones among them) in one network.

Inputs are small (``1x3x64x64`` for ImageNet models, whose fixed 7x7 final pooling is replaced by
an adaptive one; ``1x3x32x32`` for the CIFAR model; ``1x64x64`` features for QuartzNet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ZooEntry", "ZOO", "StdConv2d", "build"]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: ``builder()`` returns the float model (eval mode, seeded); ``shape`` is
    the input shape (batch 1) of a forward; ``package`` where it comes from; ``exercises``
    what it tests in prepare."""

    name: str
    builder: Callable[[], nn.Module]
    shape: tuple[int, ...]
    package: str
    exercises: str


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (as timm's ``StdConv2d``): each output channel's weight is
    shifted to mean 0 and scaled to variance 1 (biased, ``eps`` added) inside the forward,
    then an ordinary conv. Input ``Tensor[N, C_in, H, W]``."""

    def __init__(self, *args, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + self.eps)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StdConvNet(nn.Module):
    """Three weight-standardised convs with GroupNorm, a Linear head. ``[N,3,H,W] -> [N,10]``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            StdConv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            StdConv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
            StdConv2d(32, 32, 3, padding=2, dilation=2, groups=2), nn.GroupNorm(4, 32),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


class TiedNet(nn.Module):
    """Shared and tied weights: ``block`` is one conv module called twice; ``enc`` and ``dec``
    are two ``nn.Linear`` modules holding the same weight Parameter. ``[N,3,H,W] -> [N,16]``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.enc = nn.Linear(16, 16)
        self.dec = nn.Linear(16, 16)
        self.dec.weight = self.enc.weight

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.block(x))
        x = torch.relu(self.block(x))
        z = torch.relu(self.enc(x.mean((2, 3))))
        return self.dec(z)


class AllKinds(nn.Module):
    """Every conv kind in one network: Conv2d -> Conv1d (dilated) -> ConvTranspose1d (grouped)
    -> Conv3d -> ConvTranspose3d -> ConvTranspose2d (grouped, dilated) -> Linear.
    ``[N,3,16,16] -> [N,10]``."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.t1 = nn.ConvTranspose1d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv3d(2, 4, 3, padding=1)
        self.t3 = nn.ConvTranspose3d(4, 2, 2, stride=2)
        self.t2 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4,
                                     output_padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        x = torch.relu(self.c2(x))                        # [N,8,16,16]
        h, w = x.shape[2], x.shape[3]
        s = torch.relu(self.c1(x.flatten(2)))             # [N,8,256]
        s = torch.relu(self.t1(s))                        # [N,8,256]
        v = s.reshape(n, 2, 4, h, w)                      # [N,2,4,16,16] as 3-D volumes
        v = torch.relu(self.c3(v))                        # [N,4,4,16,16]
        v = torch.relu(self.t3(v[:, :, :, ::2, ::2]))     # [N,2,8,16,16]
        x = v.reshape(n, 16, h, w)[:, :8] + x
        x = torch.relu(self.t2(x))                        # [N,8,33,33]
        return self.fc(x.mean((2, 3)))


class _Quartz(nn.Module):
    """QuartzNet taking one tensor ``[N, 64, T]`` (all lengths ``T``); output ``[N, 29, T/2]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        lengths = torch.full((x.shape[0],), x.shape[2], dtype=torch.long)
        return self.net(x, lengths)[0]


def _pcv(name: str, adaptive_pool: bool = True, **kw) -> nn.Module:
    from pytorchcv.model_provider import get_model

    m = get_model(name, pretrained=False, **kw)
    if adaptive_pool:  # ImageNet models end with AvgPool2d(7): any input size >= 32 then
        m.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return m


def _effnet(dynamic: bool) -> nn.Module:
    from efficientnet_pytorch import EfficientNet

    # B0's layout at half width and depth (the same block and conv classes, fewer channels:
    # onnxruntime's quantizer spends its time per output channel)
    m = EfficientNet.from_name("efficientnet-b0", image_size=None if dynamic else 64,
                               num_classes=10, width_coefficient=0.5, depth_coefficient=0.5)
    m.set_swish(memory_efficient=False)  # the autograd-Function swish does not export to ONNX
    return m


def _octresnet() -> nn.Module:
    """pytorchcv ``octresnet10_ad2`` (Octave ResNet-10, alpha 1/2) at a quarter of its width."""
    from pytorchcv.models.octresnet import get_octresnet

    m = get_octresnet(blocks=10, oct_alpha=0.5, width_scale=0.25, num_classes=10)
    m.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return m


def _centernet() -> nn.Module:
    """pytorchcv ``centernet_resnet18_voc``'s layout (ResNet-18 trunk without its pooling, three
    ConvTranspose2d stages, heatmap / size / offset heads, 20 classes) on ``resnet18_wd4``
    (quarter-width trunk) with decoder channels 64/32/16 instead of 256/128/64."""
    from pytorchcv.models.centernet import CenterNet
    from pytorchcv.models.resnet import resnet18_wd4

    backbone = resnet18_wd4().features
    del backbone[-1]
    return CenterNet(backbone=backbone, backbone_out_channels=512, channels=[64, 32, 16],
                     return_heatmap=True, in_size=(64, 64), num_classes=20)


def _quartz() -> nn.Module:
    """QuartzNet 5x5's layout (pytorchcv ``quartznet5x5_en_ls``: 8 stages, depthwise
    ``MaskConv1d`` blocks repeated 5 times, kernels 33..87) at a quarter of its width."""
    from pytorchcv.models.jasper import Jasper

    channels = [64, 64, 64, 128, 128, 128, 128, 256]
    kernels = [33, 33, 39, 51, 63, 75, 87, 1]
    return _Quartz(Jasper(channels=channels, kernel_sizes=kernels, bn_eps=1e-3,
                          dropout_rates=[0.0] * 8, repeat=5, use_dw=True, use_dr=False,
                          from_audio=False, in_channels=64, num_classes=29))


_IMG = (1, 3, 64, 64)
ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("mobilenetv2_wd4", lambda: _pcv("mobilenetv2_wd4", num_classes=10), _IMG,
             "pytorchcv", "depthwise convs"),
    ZooEntry("shufflenetv2_wd2", lambda: _pcv("shufflenetv2_wd2", num_classes=10), _IMG,
             "pytorchcv", "grouped/depthwise convs, channel shuffle, Linear"),
    ZooEntry("resnext14_16x4d", lambda: _pcv("resnext14_16x4d", num_classes=10), _IMG,
             "pytorchcv", "grouped convs"),
    ZooEntry("sharesnet18", lambda: _pcv("sharesnet18", num_classes=10), _IMG,
             "pytorchcv", "conv modules shared across units"),
    ZooEntry("octresnet10_ad2", _octresnet, _IMG,
             "pytorchcv", "OctConv(nn.Conv2d) slicing its weight"),
    ZooEntry("xdensenet40_cifar",
             lambda: _pcv("xdensenet40_2_k24_bc_cifar10", adaptive_pool=False), (1, 3, 32, 32),
             "pytorchcv", "XConv2d(nn.Conv2d) masking its weight"),
    ZooEntry("efficientnet_b0_static", lambda: _effnet(False), _IMG, "efficientnet_pytorch",
             "Conv2dStaticSamePadding"),
    ZooEntry("efficientnet_b0_dynamic", lambda: _effnet(True), _IMG, "efficientnet_pytorch",
             "Conv2dDynamicSamePadding"),
    ZooEntry("centernet_resnet18", _centernet, _IMG, "pytorchcv",
             "detector with ConvTranspose2d"),
    ZooEntry("quartznet5x5", _quartz, (1, 64, 64), "pytorchcv",
             "MaskConv1d(nn.Conv1d) with (x, x_len) forward, depthwise Conv1d"),
    ZooEntry("stdconv", StdConvNet, (1, 3, 32, 32), "tests", "weight-standardised conv"),
    ZooEntry("tied", TiedNet, (1, 3, 16, 16), "tests", "shared module, tied Linear weights"),
    ZooEntry("all_kinds", AllKinds, (1, 3, 16, 16), "tests",
             "Conv1d/3d, ConvTranspose1d/2d/3d"),
]}


def build(name: str, seed: int = 0) -> nn.Module:
    """The float model ``name`` of :data:`ZOO` with weights from ``torch.manual_seed(seed)``,
    in eval mode. BatchNorm layers get affine parameters drawn around (1, 0) and running
    statistics measured on two random batches (cumulative average), so that eval mode is
    neither the identity normalisation nor far from the data, as in a trained network."""
    torch.manual_seed(seed)
    m = ZOO[name].builder()
    g = torch.Generator().manual_seed(seed + 1)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
           and mod.track_running_stats]
    with torch.no_grad():
        for mod in bns:
            mod.reset_running_stats()
            mod.momentum = None
            if mod.weight is not None:
                c = mod.weight.shape[0]
                mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
        if bns:
            m.train()
            for _ in range(2):
                m(torch.randn(4, *ZOO[name].shape[1:], generator=g))
        for mod in bns:
            mod.momentum = 0.1
    return m.eval()
