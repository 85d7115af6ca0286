"""Offline backbone pretraining: files every detector family loads strictly, reuse by config,
errors naming the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lowbit.detection import create_model
from lowbit.tasks.pretrain import NUM_CLASSES, PretrainConfig, make_crops, pretrain_backbone

TINY = {"steps": 2, "train_crops": 22, "test_crops": 11, "batch": 8, "crop": 32}


@pytest.mark.parametrize("model", ["rfcn_resnet18", "faster_rcnn_resnet18",
                                   "yolov3_tiny_darknet", "ssd_lite_vgg"])
def test_each_family_loads_the_pretrained_file_strictly(model: str, tmp_path) -> None:
    torch.manual_seed(0)
    res = pretrain_backbone(PretrainConfig(model=model, **TINY), tmp_path, progress=False)
    assert not res["reused"] and os.path.isfile(res["path"])
    sd = load_file(res["path"])
    det = create_model(model, 10, backbone_weights=res["path"])  # strict=True inside
    own = det.state_dict()
    # every tensor of the file is somewhere in the detector (two-stage detectors move layer4
    # into their box head), with the file's values
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):  # a counter, not a weight
            continue
        key = k.split("features.", 1)[-1]
        hits = [n for n in own if n.endswith("." + key) and own[n].shape == v.shape]
        if not hits:  # lowbit's Faster R-CNN loads the whole ResNet, then drops layer4
            assert model.startswith("faster_rcnn") and k.startswith("layer4."), k
            continue
        assert any(torch.equal(own[n], v) for n in hits), k
    # and training moved the weights away from a fresh initialisation
    torch.manual_seed(0)
    fresh = create_model(model, 10).state_dict()
    conv_keys = [k for k in sd if k.endswith("weight") and sd[k].dim() == 4]
    moved = 0
    for k in conv_keys:
        key = k.split("features.", 1)[-1]
        hits = [n for n in fresh if n.endswith("." + key) and fresh[n].shape == sd[k].shape]
        moved += bool(hits) and all(not torch.equal(fresh[n], sd[k]) for n in hits)
    assert moved == len([k for k in conv_keys if not (model.startswith("faster_rcnn")
                                                      and k.startswith("layer4."))])
    assert 0.0 <= res["accuracy"] <= 1.0 and res["chance"] == pytest.approx(1 / NUM_CLASSES)


def test_frozen_bn_preset_loads_the_file_too(tmp_path) -> None:
    res = pretrain_backbone(PretrainConfig(model="rfcn_resnet18", **TINY), tmp_path,
                            progress=False)
    det = create_model("rfcn_resnet18", 10, backbone_weights=res["path"], norm="frozen_bn",
                       freeze_at=2)
    sd = load_file(res["path"])
    assert torch.equal(det.backbone.bn1.running_var, sd["bn1.running_var"])


def test_rerun_reuses_and_another_config_does_not(tmp_path) -> None:
    cfg = PretrainConfig(model="yolov3_tiny_darknet", **TINY)
    a = pretrain_backbone(cfg, tmp_path, progress=False)
    mtime = os.stat(a["path"]).st_mtime_ns
    b = pretrain_backbone(cfg, tmp_path, progress=False)
    assert b["reused"] and b["path"] == a["path"] and os.stat(a["path"]).st_mtime_ns == mtime
    c = pretrain_backbone(PretrainConfig(model="yolov3_tiny_darknet", **{**TINY, "seed": 1}),
                          tmp_path, progress=False)
    assert not c["reused"] and c["path"] != a["path"]
    # backbone_weights in the kwargs does not change the key (it is ignored)
    d = PretrainConfig(model="yolov3_tiny_darknet", model_kwargs={"backbone_weights": "x"},
                       **TINY)
    assert d.key() == cfg.key()


def test_wrong_architecture_names_the_file(tmp_path) -> None:
    res = pretrain_backbone(PretrainConfig(model="yolov3_tiny_darknet", **TINY), tmp_path,
                            progress=False)
    with pytest.raises((ValueError, RuntimeError), match=os.path.basename(res["path"])):
        create_model("rfcn_resnet18", 10, backbone_weights=res["path"])


def test_crops_balanced_deterministic_and_split_apart() -> None:
    x, y = make_crops(44, 32, seed=3)
    assert x.shape == (44, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=NUM_CLASSES).tolist() == [4] * NUM_CLASSES
    x2, y2 = make_crops(44, 32, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = make_crops(44, 32, seed=3, split="test")
    assert not np.array_equal(x, x3)


def test_bad_config_is_an_error() -> None:
    with pytest.raises(ValueError, match="steps"):
        PretrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        PretrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="cannot pretrain|unknown"):
        pretrain_backbone(PretrainConfig(model="nope", **TINY), "/tmp/x", progress=False)
