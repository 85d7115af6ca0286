"""Data checked before training, checkpoint before evaluation, data roots that travel.

On a tiny built-in digits devkit (6 train / 3 test images of 64 px, YOLOv3-tiny at 64 px):

* a broken test annotation used to crash the *final evaluation*, after the training, before
  the final checkpoint: now every annotation is parsed and every image header read before the
  first step; ``skip_bad`` trains on the rest and reports the count;
* a test image whose header is fine but whose body is cut (only decoding finds it) fails the
  final evaluation *after* the final checkpoint; a resume re-runs that evaluation;
* ``lowbit eval RUN`` from another directory used to regenerate the data set under the current
  directory (the run stored a relative data root).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from lowbit.cli import main
from lowbit.config import config_from_dict
from lowbit.data.digits import generate_digits
from lowbit.data.validate import drop_items, validate_dataset
from lowbit.data.voc import VOCDetection
from lowbit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from lowbit.train.engine import fit
from lowbit.train.metrics import read_metrics


@pytest.fixture(scope="module")
def devkit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits") / "digits"
    generate_digits(root, train=6, test=3, size=64, workers=1, coco=True)
    return root


@pytest.fixture
def data(devkit: Path, tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "data" / "digits"
    shutil.copytree(devkit, root)
    yield root


def _raw(root: str) -> dict[str, Any]:
    return {
        "model": {"name": "yolov3_tiny_darknet", "task": "detect", "num_classes": 10},
        "data": {"kind": "digits", "root": root, "train_split": "trainval", "test_split": "test",
                 "image_size": 64, "kwargs": {"hflip": False}},
        "optim": {"lr": 0.001, "warmup_iters": 0},
        "train": {"epochs": 1, "batch_size": 3, "device": "cpu", "log_every": 1,
                  "eval_interval": 1, "seed": 0},
    }


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metric dicts, NaN (AP of a class without test objects) equal to NaN."""
    return a.keys() == b.keys() and all(
        (a[k] != a[k] and b[k] != b[k]) or a[k] == b[k] for k in a)


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def test_validation_names_every_bad_item(data: Path) -> None:
    test_ids, train_ids = _ids(data, "test"), _ids(data, "trainval")
    broken_xml = data / "Annotations" / f"{test_ids[1]}.xml"
    broken_xml.write_text("<annotation><size><width>64</width>")
    garbage = data / "JPEGImages" / f"{test_ids[2]}.jpg"
    garbage.write_bytes(b"\x00not an image" * 10)
    resized = data / "JPEGImages" / f"{train_ids[3]}.jpg"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(resized, format="PNG")  # 50x40
    missing = data / "JPEGImages" / f"{train_ids[5]}.jpg"
    missing.unlink()

    test = VOCDetection(data, "test")
    bad = validate_dataset(test)
    assert [b.index for b in bad] == [1, 2]
    assert str(broken_xml) in bad[0].reason and str(garbage) in bad[1].reason
    kept = drop_items(test, bad)
    assert len(kept) == 1 and kept.image_ids == [test_ids[0]]
    assert len(kept.eval_targets()) == 1 and kept.classes == test.classes

    train = VOCDetection(data, "trainval")
    bad = validate_dataset(train)
    assert [b.index for b in bad] == [3, 5]
    assert "50x40" in bad[0].reason and str(missing) in bad[1].reason


def test_validation_of_a_coco_set(data: Path) -> None:
    from lowbit.data.coco import COCODetection

    test = COCODetection(data / "JPEGImages", data / "annotations" / "instances_test.json")
    assert validate_dataset(test) == []
    names = [im["file_name"] for im in test.images]
    truncated = data / "JPEGImages" / names[0]
    truncated.write_bytes(truncated.read_bytes()[:20])  # not even a whole header
    bad = validate_dataset(test)
    assert [b.index for b in bad] == [0] and names[0] in bad[0].reason
    kept = drop_items(test, bad)
    assert [im["file_name"] for im in kept.images] == names[1:]
    assert len(kept.eval_targets()) == 2 and len(test) == 3  # the original is untouched


def test_bad_test_annotation_stops_before_training_or_is_skipped(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    xml = data / "Annotations" / f"{_ids(data, 'test')[0]}.xml"
    xml.write_text(xml.read_text().replace("<xmin>", "<xmin>oops", 1))
    cfg = config_from_dict(_raw(str(data)))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"{xml.name}.*--skip-bad"):
        fit(cfg, run, progress=False)
    assert find_latest_checkpoint(run) is None
    assert not (run / "metrics.jsonl").exists() or read_metrics(run) == []

    res = fit(cfg, run, skip_bad=True, progress=False)
    assert res.iteration == 2
    assert "skipping 1 bad of 3 test items" in capsys.readouterr().err
    assert json.loads((run / "result.json").read_text())["skipped"] == {"test": 1}
    assert [e["skipped"] for e in read_metrics(run) if e["event"] == "data"] == [{"test": 1}]


def test_final_checkpoint_is_written_before_the_final_evaluation(
    data: Path, tmp_path: Path, one_thread: None
) -> None:
    clean = fit(config_from_dict(_raw(str(data))), tmp_path / "clean", progress=False)

    image = data / "JPEGImages" / f"{_ids(data, 'test')[1]}.jpg"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) * 2 // 3])  # header intact: passes the data check
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=image.name):
        fit(config_from_dict(_raw(str(data))), run, progress=False)
    ck = find_latest_checkpoint(run)
    assert ck is not None and ck.name == "ckpt-00000002.json"  # the training is not lost
    assert load_checkpoint(ck).state["eval_due"] is True
    assert not (run / "result.json").exists()

    image.write_bytes(whole)
    res = fit(config_from_dict(_raw(str(data))), run, resume=True, progress=False)
    assert res.resumed_from == 2 and res.metrics == clean.metrics
    assert _same(json.loads((run / "result.json").read_text())["metrics"], clean.metrics)


def test_eval_from_another_directory_uses_the_runs_data(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    cfg_file = tmp_path / "det.yaml"
    cfg_file.write_text(yaml.safe_dump(_raw("data/digits")))  # relative, as users write it
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(cfg_file), "--out", "run", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["data"]["root"] == str(data)  # absolute

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    assert _same(json.loads(capsys.readouterr().out)["metrics"], trained["metrics"])
    assert list(elsewhere.iterdir()) == []  # nothing generated here

    # a run written before roots were stored absolute: resolved, or refused, never regenerated
    stored["data"]["root"] = "data/digits"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(stored))
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "config.yaml" in err and "data/digits" in err
    assert list(elsewhere.iterdir()) == []
    monkeypatch.chdir(tmp_path)  # from where it was trained, the relative root still works
    assert main(["eval", "run", "--json"]) == 0
    assert _same(json.loads(capsys.readouterr().out)["metrics"], trained["metrics"])
