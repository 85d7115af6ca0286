"""The ``detect`` task through the generic engine, on a tiny generated digits devkit."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lowbit.train.engine")

from lowbit.config import config_from_dict  # noqa: E402
from lowbit.tasks.detect import DetectTask  # noqa: E402
from lowbit.train import evaluate_checkpoint, fit, get_task  # noqa: E402

TINY = {
    "width": 0.125,
    "k": 3,
    "reduce_dim": 16,
    "anchor_sizes": [8, 16, 32],
    "aspect_ratios": [1.0, 2.0],
    "rpn_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 30,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 16,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(root, name="rfcn_resnet18", kwargs=None, **data_kw):
    return config_from_dict(
        {
            "model": {"name": name, "task": "detect", "num_classes": None,
                      "kwargs": dict(TINY if kwargs is None else kwargs)},
            "data": {"kind": "digits", "root": str(root), "train_split": "trainval",
                     "test_split": "test",
                     "kwargs": {"train": 6, "test": 4, "size": 64, "seed": 1, **data_kw}},
            "optim": {"lr": 0.01, "warmup_iters": 1, "schedule": "cosine"},
            "train": {"iterations": 3, "batch_size": 2, "eval_batch_size": 4,
                      "eval_interval": 0, "log_every": 1, "device": "cpu"},
        }
    )  # fmt: skip


def test_registered_as_detect():
    from lowbit.train.tasks import list_tasks, register_task

    assert "detect" in list_tasks()  # the registry loads lowbit.tasks itself
    with pytest.raises(ValueError, match="already registered"):
        register_task("detect")(DetectTask)  # registered once, by the decorator
    assert isinstance(get_task("detect"), DetectTask)
    assert isinstance(get_task("lowbit.tasks.detect:DetectTask"), DetectTask)


@pytest.mark.parametrize("name", ["rfcn_resnet18", "faster_rcnn_resnet18"])
def test_fit_and_evaluate_checkpoint(tmp_path, name):
    kw = dict(TINY)
    if name.startswith("faster"):
        kw.pop("k"), kw.pop("reduce_dim")
        kw["representation_size"] = 16
    cfg = make_cfg(tmp_path / "digits", name, kw)
    res = fit(cfg, tmp_path / "run", progress=False)
    # the devkit was generated on first use
    assert (tmp_path / "digits" / "ImageSets" / "Main" / "trainval.txt").is_file()
    m = res.metrics
    assert res.iteration == 3
    assert 0.0 <= m["main"] <= 1.0 and m["main"] == m["mAP"]
    assert "mAP_area" in m and "AP_seven" in m
    again = evaluate_checkpoint(tmp_path / "run")
    assert again.metrics["main"] == pytest.approx(m["main"])


@pytest.mark.parametrize("name", DetectTask.model_names)
def test_data_image_size_sets_the_input_size_of_every_detector(tmp_path, name):
    cfg = make_cfg(tmp_path / "d", name, {"width": 0.0625})
    cfg.data.image_size = 96
    model = DetectTask().build_model(cfg)
    # a 64 x 128 image: the two-stage detectors scale the shorter side to 96 and keep the
    # aspect ratio; SSD / YOLOv3 warp every image to a fixed 96 x 96 input
    single_stage = name.startswith(("ssd", "yolo"))
    expect = (96, 96) if single_stage else (96, 192)
    _, sizes, _ = model.transform([torch.rand(3, 64, 128)])
    assert sizes == [expect]
    assert model.config["image_size" if single_stage else "min_size"] == 96


def test_data_image_size_errors_and_model_kwargs_precedence(tmp_path):
    cfg = make_cfg(tmp_path / "d", "yolov3_tiny_darknet", {"width": 0.0625})
    cfg.data.image_size = 100
    with pytest.raises(ValueError, match=r"data\.image_size=100 .*multiple of 32"):
        DetectTask().build_model(cfg)
    cfg.model.kwargs["image_size"] = 64  # the model's own option wins over data.image_size
    assert DetectTask().build_model(cfg).transform.size == 64
    cfg = make_cfg(tmp_path / "d", "rfcn_resnet18", {"width": 0.0625, "min_size": 48})
    cfg.data.image_size = 96
    assert DetectTask().build_model(cfg).transform.min_size == 48


def test_task_batches_and_losses(tmp_path):
    task = DetectTask()
    cfg = make_cfg(tmp_path / "d")
    train, test = task.build_datasets(cfg)
    assert len(train) == 6 and len(test) == 4 and len(train.classes) == 10
    model = task.build_model(cfg)
    assert model.num_classes == 10
    images, targets = task.collate_fn([train[0], train[1]])
    assert isinstance(images, list) and images[0].shape == (3, 64, 64)
    model.train()
    loss, logs = task.train_step_loss(model, (images, targets))
    assert loss.dim() == 0 and set(logs) == {"loss_objectness", "loss_rpn_box_reg",
                                             "loss_classifier", "loss_box_reg"}
    assert loss.item() == pytest.approx(sum(logs.values()), rel=1e-5)


def test_task_errors(tmp_path):
    task = DetectTask()
    with pytest.raises(ValueError, match="data.kwargs.bogus"):
        task.build_datasets(make_cfg(tmp_path / "d", bogus=1))
    cfg = make_cfg(tmp_path / "d")
    cfg.data.kind = "sklearn-digits"
    with pytest.raises(ValueError, match="data.kind='sklearn-digits'"):
        task.build_datasets(cfg)
    with pytest.raises(ValueError, match="unknown model option"):
        task.build_model(make_cfg(tmp_path / "d", kwargs={"bogus": 1}))


def test_shipped_configs_are_valid():
    from pathlib import Path

    from lowbit.config import load_config
    from lowbit.detection import list_models
    from lowbit.detection.models import FasterRCNNConfig, RFCNConfig
    from lowbit.detection.models.config import make_config

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("rfcn_*.yaml")) + sorted(root.glob("faster_rcnn_*.yaml"))
    assert {f.name for f in files} >= {
        "rfcn_digits.yaml", "faster_rcnn_digits.yaml", "rfcn_resnet50_voc.yaml",
        "rfcn_resnet101_voc.yaml", "rfcn_resnet50_voc_lbw4.yaml", "rfcn_resnet50_voc_lbw5.yaml",
        "rfcn_resnet50_voc_lbw6.yaml", "rfcn_resnet101_voc_lbw4.yaml",
        "rfcn_resnet101_voc_lbw5.yaml", "rfcn_resnet101_voc_lbw6.yaml",
    }  # fmt: skip
    for f in files:
        cfg = load_config(f)
        assert cfg.model.task == "detect" and cfg.model.name in list_models(), f
        cls = RFCNConfig if cfg.model.name.startswith("rfcn") else FasterRCNNConfig
        make_config(cls, {}, cfg.model.num_classes, cfg.model.kwargs)  # fields validate
        if cfg.quant is not None:
            from lowbit.nn import Recipe

            r = Recipe.from_dict(cfg.quant)
            assert r.method == "lbw-approx" and r.bits in (4, 5, 6), f


def test_a_stale_digits_devkit_is_written_anew(tmp_path, capsys):
    import json

    from lowbit.data.digits import GENERATOR_VERSION, devkit_version

    root = tmp_path / "digits"
    cfg = make_cfg(root)
    DetectTask().build_datasets(cfg)  # writes the devkit
    assert devkit_version(root) == GENERATOR_VERSION
    meta = json.loads((root / "digits.json").read_text())
    meta["version"] = GENERATOR_VERSION - 1  # as an older generator left it
    (root / "digits.json").write_text(json.dumps(meta))
    capsys.readouterr()
    train, test = DetectTask().build_datasets(cfg)
    assert devkit_version(root) == GENERATOR_VERSION
    assert "writing it anew" in capsys.readouterr().err
    assert len(train) == 6 and len(test) == 4
    # a current devkit is reused as it is (no rewrite, no note)
    stamp = (root / "digits.json").stat().st_mtime_ns
    DetectTask().build_datasets(cfg)
    assert (root / "digits.json").stat().st_mtime_ns == stamp
    assert "writing it anew" not in capsys.readouterr().err
