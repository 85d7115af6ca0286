"""Pieces shared by the backbones: frozen batch norm, freezing, the weights loader, and the
stem-then-stages forward pass of ResNet and Darknet (:class:`StagedBackbone`)."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "FrozenBatchNorm2d",
    "LoadResult",
    "StagedBackbone",
    "convert_frozen_batchnorm",
    "freeze_modules",
    "load_backbone_weights",
    "read_state_dict",
    "with_weights",
]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, no parameters).

    Buffer names are torchvision's (``weight``, ``bias``, ``running_mean``, ``running_var``), so
    a BatchNorm2d state_dict loads into it; its ``num_batches_tracked`` entry is dropped on
    load. ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, folded into one
    scale and shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (or ``module`` itself) by a
    :class:`FrozenBatchNorm2d` carrying the same statistics; returns the converted module."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        tensors = list(module.parameters()) + list(module.buffers())
        if tensors:
            frozen = frozen.to(tensors[0].device)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None and module.running_var is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze_modules(modules: Iterable[nn.Module]) -> None:
    """Stop gradients to the parameters of ``modules`` and freeze their batch norms."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
        convert_frozen_batchnorm(m)


class LoadResult(NamedTuple):
    """What :func:`load_backbone_weights` did: keys missing from / unexpected in the file
    (only non-empty with ``strict=False``) and the classifier-head keys it skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    ignored_keys: list[str]


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state_dict from ``.safetensors`` or a torch file, never unpickling objects.

    Torch files are read with ``weights_only=True``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: one line naming the file when it is not a safetensors file or a torch
            file holding only tensors (a pickle of arbitrary objects, a truncated or corrupt
            file, a mapping with non-tensor values). Arbitrary pickled objects are refused,
            never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: object = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # "protocol 4" chatter before our one-line error
                warnings.simplefilter("ignore", UserWarning)
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, SafetensorError...
        raise ValueError(
            f"{path}: not a safetensors or state_dict file of tensors ({type(e).__name__}; "
            "lowbit reads weights with weights_only=True and never unpickles other objects)"
        ) from None
    if isinstance(sd, Mapping):
        for key in ("state_dict", "model"):
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return dict(sd)


def _first_mismatch(model: nn.Module, sd: Mapping[str, Tensor], strict: bool) -> str | None:
    """One line on the first key (in the model's order) that does not fit, with counts."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    unexpected = [
        k for k in sd if k not in own and not k.endswith("num_batches_tracked")
    ]  # FrozenBatchNorm2d drops num_batches_tracked on load
    if not strict:
        missing, unexpected = [], []
    if not (missing or shapes or unexpected):
        return None
    order = {k: i for i, k in enumerate(own)}
    first_own = min(missing + shapes, key=order.__getitem__, default=None)
    if first_own is not None and first_own in shapes:
        what = (
            f"first mismatched key {first_own!r}: size mismatch, "
            f"{tuple(sd[first_own].shape)} in the file, {tuple(own[first_own].shape)} in the model"
        )
    elif first_own is not None:
        what = f"first mismatched key {first_own!r}: missing from the file"
    else:
        what = f"first mismatched key {unexpected[0]!r}: unexpected (not in the model)"
    return (
        f"{what} ({len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(shapes)} of another shape)"
    )


def load_backbone_weights(
    model: nn.Module,
    weights: str | os.PathLike | Mapping[str, Tensor],
    strict: bool = True,
) -> LoadResult:
    """Load ImageNet weights in torchvision's key layout into a lowbit backbone.

    The classification head of the file (``fc.*`` for ResNet, ``classifier.*`` for VGG: the
    model's ``head_prefixes``) is skipped exactly when the model has no such modules (a
    detection backbone); every other key must match (with ``strict=True``), shapes included.
    Nothing is downloaded.

    Args:
        model: a backbone from :mod:`lowbit.detection.backbones` (any module works; the head
            rule then uses ``getattr(model, "head_prefixes", ())``).
        weights: a ``.pth``/``.pt`` file (read with ``weights_only=True``), a ``.safetensors``
            file, or a state_dict.
        strict: as in ``nn.Module.load_state_dict`` (shapes must match either way).

    Returns:
        :class:`LoadResult`.

    Raises:
        ValueError: one line naming the file (or ``state_dict``), the model class and the
            first key that does not fit (missing, unexpected or of another shape), with the
            counts of each; or naming the file when it is not a weights file at all
            (:func:`read_state_dict`).
    """
    source = "state_dict" if isinstance(weights, Mapping) else str(weights)
    sd = dict(weights) if isinstance(weights, Mapping) else read_state_dict(weights)
    own = model.state_dict().keys()
    ignored: list[str] = []
    for prefix in getattr(model, "head_prefixes", ()):
        if not any(k.startswith(prefix) for k in own):
            ignored.extend(k for k in sd if k.startswith(prefix))
    for k in ignored:
        del sd[k]
    problem = _first_mismatch(model, sd, strict)
    if problem is not None:
        raise ValueError(f"{source}: backbone weights do not fit {type(model).__name__}: {problem}")
    try:
        res = model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:  # anything _first_mismatch did not foresee: still one line
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise ValueError(
            f"{source}: backbone weights do not fit {type(model).__name__}: {detail}"
        ) from None
    return LoadResult(list(res.missing_keys), list(res.unexpected_keys), ignored)


def with_weights(
    model: ModuleT, weights: str | os.PathLike | Mapping[str, Tensor] | None
) -> ModuleT:
    """``model`` after :func:`load_backbone_weights` with ``strict=True`` (unchanged when
    ``weights`` is ``None``): the ``weights=`` argument of every backbone constructor."""
    if weights is not None:
        load_backbone_weights(model, weights, strict=True)
    return model


class StagedBackbone(nn.Module):
    """A stem, then submodules named ``stage_names`` run in order, then an optional
    classification head (``avgpool`` + ``fc``): the forward pass of ResNet and Darknet.

    Subclasses set the class attribute ``stage_names``, implement :meth:`forward_stem`, and in
    ``__init__`` set ``return_layers`` (a subset of ``stage_names``, in network order) and
    ``avgpool`` / ``fc`` (both ``None`` for a detection backbone without head).
    """

    stage_names: tuple[str, ...] = ()
    head_prefixes: tuple[str, ...] = ("fc.",)
    return_layers: tuple[str, ...]
    avgpool: nn.Module | None
    fc: nn.Module | None

    def forward_stem(self, x: Tensor) -> Tensor:
        """The layers before the first stage."""
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``Tensor[N, 3, H, W]`` → ``OrderedDict`` of the ``return_layers`` maps.

        Stage ``s`` has ``out_channels[s]`` channels and spatial size ``ceil(H / strides[s])``
        (for the usual sizes). Stages after the deepest requested one are not run.
        """
        x = self.forward_stem(x)
        out: OrderedDict[str, Tensor] = OrderedDict()
        last = self.return_layers[-1]
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.return_layers:
                out[name] = x
            if name == last:
                break
        return out

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor] | Tensor:
        """Without a head: :meth:`forward_features`. With one: logits ``Tensor[N, classes]``."""
        if self.fc is None or self.avgpool is None:
            return self.forward_features(x)
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
