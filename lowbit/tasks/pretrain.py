"""Offline backbone pretraining: the LBW-Net paper's protocol without ImageNet.

The paper (Quantization and Training of Low Bit-Width Convolutional Neural Networks for Object
Detection) starts R-FCN from ImageNet-pretrained ResNets with randomly initialised detection
layers. Nothing can be downloaded here, so :func:`pretrain_backbone` pretrains a detector's
backbone on a classification task built from the same real sources as the built-in devkit:
crops of the scikit-learn photos holding one scikit-learn handwritten digit (10 classes) or
none (an 11th, background class), with the devkit's colours, rotation, clutter and noise
(:func:`lowbit.data.digits.render_crop`). Only the *train* pool of digit images is used, so
the detectors' test digits stay unseen.

The backbone is taken from the detector the config builds (so its state_dict is exactly what
that detector's ``backbone_weights`` option loads with ``strict=True``), trained with a global
average pool and a linear classifier on its deepest map (batch norm trained, nothing frozen),
and written as a safetensors state_dict in torchvision's key layout (ResNet / Darknet keys at
the top level, VGG keys under ``features.``), with a JSON sidecar holding its config and
held-out accuracy. The file name is keyed by the config, so a rerun reuses it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PretrainConfig", "pretrain_backbone", "pretrain_target", "make_crops"]

NUM_CLASSES = 11  # ten digits and background

_MEAN = (0.485, 0.456, 0.406)  # the detectors' default input normalisation (ImageNet)
_STD = (0.229, 0.224, 0.225)


@dataclass
class PretrainConfig:
    """What to pretrain and how.

    Args:
        model: registered detector name whose backbone is pretrained (``rfcn_resnet18``,
            ``faster_rcnn_resnet18``, ``yolov3_tiny_darknet``, ``ssd_lite_vgg``, ...).
        model_kwargs: the detector's keyword overrides (``width``, ``backbone``, ...), as in
            the detection config's ``model.kwargs``; ``backbone_weights`` is ignored.
        crop: crop side in pixels.
        train_crops, test_crops: crops rendered for training / held-out accuracy.
        steps: SGD steps; batch: crops per step; lr: peak learning rate (cosine, 5% warm-up);
        weight_decay; seed (data and initialisation).

    The defaults are a first measured point, not a tuned recipe: for ``rfcn_resnet18`` they
    gave 56.5% held-out accuracy (11 classes, chance 9.1%; train 74%) in 918 s at 1 thread on
    a 2-core machine at load average 9-10; lr 0.1 with batch 64 (300 steps) stayed at 15%.
    """

    model: str = "rfcn_resnet18"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    crop: int = 64
    train_crops: int = 6000
    test_crops: int = 1100
    steps: int = 1200
    batch: int = 32
    lr: float = 0.03
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("crop", "train_crops", "test_crops", "steps", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"pretrain {name} must be a positive int, got {v!r}")
        if self.crop < 16:
            raise ValueError(f"pretrain crop must be >= 16 pixels, got {self.crop}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"pretrain lr must be finite and > 0, got {self.lr!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError("pretrain model_kwargs must be a dict")

    def key(self) -> str:
        """Short hash of everything that changes the weights (the cache key)."""
        from lowbit.data.digits import GENERATOR_VERSION

        d = dataclasses.asdict(self)
        d["model_kwargs"] = {k: v for k, v in sorted(self.model_kwargs.items())
                             if k != "backbone_weights"}
        d["crops_version"] = GENERATOR_VERSION  # render_crop changes with the generator
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def pretrain_target(detector: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor], str]:
    """What ``detector``'s ``backbone_weights`` load into, built fresh: the module, a function
    mapping ``Tensor[N, 3, H, W]`` to its deepest feature map ``Tensor[N, C, h, w]`` (every
    stage run), and the key prefix of its tensors in the weights file (``""`` for ResNet and
    Darknet, ``"features."`` for SSD's VGG).

    Two-stage detectors load the weights into the whole ResNet before moving ``layer4`` into
    their box head, so the whole ResNet is built here (the detector's own ``backbone`` lacks
    ``layer4``). Raises ValueError for a detector without a known backbone.
    """
    from lowbit.detection.backbones import create_backbone
    from lowbit.detection.backbones.common import StagedBackbone
    from lowbit.detection.models.ssd import SSDVGGBackbone

    conf = getattr(detector, "config", None) or {}
    bb = getattr(detector, "backbone", None)
    if conf.get("arch") in ("rfcn", "faster_rcnn"):
        bb = create_backbone(conf["backbone"], width=conf["width"], norm="bn", freeze_at=0)
    if isinstance(bb, StagedBackbone):
        body = bb

        def run(x: Tensor) -> Tensor:
            x = body.forward_stem(x)
            for name in body.stage_names:
                x = getattr(body, name)(x)
            return x

        return body, run, ""
    if isinstance(bb, SSDVGGBackbone):
        return bb.features, bb.features, "features."
    raise ValueError(f"cannot pretrain the backbone of {type(detector).__name__}: expected a "
                     "ResNet/Darknet (StagedBackbone) or SSD's VGG backbone")


def make_crops(n: int, size: int, seed: int, split: str = "trainval"
               ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops ``uint8[n, size, size, 3]`` and labels ``int64[n]`` (0-9 digits, 10
    background), classes balanced and shuffled, rendered from the devkit's ``split`` pool
    of digit images with a generator seeded by ``(seed, split)``."""
    from lowbit.data.digits import render_crop

    src = _source()
    pool = src.pools[split]
    rng = np.random.default_rng([seed, 104729, 0 if split == "trainval" else 1])
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, lab in enumerate(labels):
        crops[i] = render_crop(rng, src, pool, size, None if lab == 10 else int(lab))
    return crops, labels


@functools.lru_cache(maxsize=1)
def _source() -> Any:
    from lowbit.data.digits import DigitsSource

    return DigitsSource()


def _to_input(crops: np.ndarray) -> Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _build(cfg: PretrainConfig) -> nn.Module:
    """The detector of ``cfg`` with plain batch norm and nothing frozen: pretraining trains
    every layer and its statistics (the saved keys are the same; frozen batch norm ignores
    ``num_batches_tracked`` when it loads them)."""
    from lowbit.detection import create_model

    kw = {k: v for k, v in cfg.model_kwargs.items() if k != "backbone_weights"}
    fields = create_model(cfg.model, 10, **kw).config
    if "norm" in fields:
        kw["norm"] = "bn"
    if "freeze_at" in fields:
        kw["freeze_at"] = 0
    return create_model(cfg.model, 10, **kw)


@torch.no_grad()
def _accuracy(body: nn.Module, run: Callable, head: nn.Module, x: Tensor, y: Tensor,
              batch: int) -> float:
    body.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = head(F.adaptive_avg_pool2d(run(x[i:i + batch]), 1).flatten(1))
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    body.train()
    return correct / max(len(x), 1)


def pretrain_backbone(cfg: PretrainConfig, out_dir: str | Path, force: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Pretrain ``cfg.model``'s backbone (see the module docstring) into ``out_dir``.

    Returns ``{"path", "reused", "key", "accuracy", "train_accuracy", "seconds", "steps",
    "config"}``; ``path`` is the safetensors file to give as the detector's
    ``model.kwargs.backbone_weights``. An existing file for the same config (same key) is
    reused unless ``force``.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    out = Path(out_dir)
    key = cfg.key()
    path = out / f"{cfg.model}-{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        return {**meta, "path": str(path), "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    detector = _build(cfg)
    body, run, prefix = pretrain_target(detector)
    body.train()
    for p in body.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        channels = run(torch.zeros(2, 3, cfg.crop, cfg.crop)).shape[1]
    head = nn.Linear(channels, NUM_CLASSES)
    xtr_np, ytr_np = make_crops(cfg.train_crops, cfg.crop, cfg.seed, "trainval")
    xte_np, yte_np = make_crops(cfg.test_crops, cfg.crop, cfg.seed, "test")
    xtr, ytr = _to_input(xtr_np), torch.from_numpy(ytr_np)
    xte, yte = _to_input(xte_np), torch.from_numpy(yte_np)
    params = list(body.parameters()) + list(head.parameters())
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=0.9, nesterov=True)
    warm = max(1, cfg.steps // 20)
    gen = torch.Generator().manual_seed(cfg.seed)
    pad = max(1, cfg.crop // 16)
    bar = tqdm(range(cfg.steps), desc=f"pretrain {cfg.model}", unit="step",
               disable=not progress)
    running = 0.0
    for step in bar:
        lr = cfg.lr * (step + 1) / warm if step < warm else 0.5 * cfg.lr * (
            1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(xtr), (cfg.batch,), generator=gen)
        xb = xtr[idx]
        # translation jitter: pad by reflection, crop back at a random offset per batch
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
        xb = F.pad(xb, (pad, pad, pad, pad), mode="reflect")[:, :, dy:dy + cfg.crop,
                                                           dx:dx + cfg.crop]
        logits = head(F.adaptive_avg_pool2d(run(xb), 1).flatten(1))
        loss = F.cross_entropy(logits, ytr[idx])
        if not torch.isfinite(loss):
            raise ValueError(f"pretraining {cfg.model}: loss became {float(loss)} at step "
                             f"{step}; lower lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = loss.item()
        running = 0.98 * running + 0.02 * lv if step else lv
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.3g}")
    acc = _accuracy(body, run, head, xte, yte, 256)
    train_acc = _accuracy(body, run, head, xtr[:len(xte)], ytr[:len(xte)], 256)
    sd = {prefix + k: v.detach().contiguous().clone() for k, v in body.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={"lowbit_pretrain": json.dumps(dataclasses.asdict(cfg))})
    tmp.replace(path)
    meta = {"key": key, "accuracy": acc, "train_accuracy": train_acc,
            "seconds": round(time.perf_counter() - t0, 1), "steps": cfg.steps,
            "threads": torch.get_num_threads(), "classes": NUM_CLASSES,
            "chance": 1.0 / NUM_CLASSES, "config": dataclasses.asdict(cfg)}
    tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
    tmp_meta.replace(meta_path)
    del detector
    return {**meta, "path": str(path), "reused": False}


def config_from_detection(det_cfg: Any, **overrides: Any) -> PretrainConfig:
    """A :class:`PretrainConfig` for the detector of a detection experiment config
    (``lowbit.config.ExperimentConfig``), with ``overrides`` of its fields."""
    kwargs = copy.deepcopy(dict(det_cfg.model.kwargs or {}))
    return PretrainConfig(model=det_cfg.model.name, model_kwargs=kwargs, **overrides)
