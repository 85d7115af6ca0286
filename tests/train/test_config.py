"""Config parsing, dotted overrides, validation errors, dump/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    dump_config,
    load_config,
)
from tests.train.conftest import REPO, small_config, write_config


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "digits_cnn.yaml")
    assert cfg.model == ModelConfig("digits-cnn", "classify-digits", 10,
                                    {"width": 16, "norm": "bn", "dropout": 0.0})
    assert cfg.data.kind == "sklearn-digits"
    assert cfg.optim.nesterov and cfg.optim.weight_decay == 1e-4  # "1.0e-4" in YAML
    assert cfg.quant is None and cfg.init is None


def test_overrides_are_yaml_typed(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", small_config())
    cfg = load_config(path, [
        "optim.lr=0.05", "train.epochs=3", "optim.schedule=step", "optim.milestones=[1, 2.5]",
        "optim.weight_decay=1e-5",  # YAML 1.1 reads this as a string; the field wants a float
        "model.kwargs.width=4", "quant.method=lbw", "quant.bits=4", "train.amp=true",
        "init=null", "data.kwargs.split_seed=3",
    ])
    assert cfg.optim.lr == 0.05 and cfg.train.epochs == 3 and cfg.optim.schedule == "step"
    assert cfg.optim.milestones == [1.0, 2.5]
    assert cfg.optim.weight_decay == pytest.approx(1e-5)
    assert cfg.model.kwargs["width"] == 4 and cfg.model.kwargs["norm"] == "bn"
    assert cfg.quant == {"method": "lbw", "bits": 4}
    assert cfg.train.amp is True and cfg.init is None
    assert cfg.data.kwargs == {"split_seed": 3}


def test_override_does_not_mutate_input() -> None:
    raw = small_config()
    out = apply_overrides(raw, ["train.seed=7"])
    assert out["train"]["seed"] == 7 and raw["train"]["seed"] == 0


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lr=-1", ["optim.lr", "-1"]),
        ("optim.lrr=0.1", ["optim.lrr", "unknown"]),
        ("train.batch_size=abc", ["train.batch_size", "abc"]),
        ("train.epochs=1.5", ["train.epochs", "1.5"]),
        ("train.amp=maybe", ["train.amp", "maybe"]),
        ("data.kind=imagenet", ["data.kind", "imagenet"]),
        ("data.kind=voc", ["data.root", "voc"]),
        ("optim.schedule=linear", ["optim.schedule", "linear"]),
        ("optim.milestones=[3, 1]", ["optim.milestones", "[3.0, 1.0]"]),
        ("train.device=tpu", ["train.device", "tpu"]),
        ("model.kwargs=5", ["model.kwargs", "5"]),
        ("quant=[1]", ["quant", "[1]"]),
        ("bogus.x=1", ["bogus", "unknown"]),
        ("train.epochs.x=1", ["train.epochs", "not a mapping"]),
        ("novalue", ["novalue", "key=value"]),
        ("train.quant_penalty=-1", ["train.quant_penalty", "-1"]),
        ("train.quant_penalty=1", ["train.quant_penalty", "quant recipe"]),  # no quant section
    ],
)
def test_validation_errors_name_key_and_value(tmp_path: Path, override: str,
                                              words: list[str]) -> None:
    path = write_config(tmp_path / "c.yaml", small_config())
    with pytest.raises(ValueError) as info:
        load_config(path, [override])
    for word in words:
        assert word in str(info.value)


def test_missing_required_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.name"):
        config_from_dict({"model": {"task": "x"}})
    with pytest.raises(ValueError, match=r"config model: required"):
        config_from_dict({})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_config(top)


def test_typed_constructors_validate() -> None:
    with pytest.raises(ValueError, match="optim.momentum"):
        OptimConfig(momentum=1.0)
    with pytest.raises(ValueError, match="optim.nesterov"):
        OptimConfig(momentum=0.0, nesterov=True)
    assert DataConfig(kind="voc", root="/data/VOC").root == "/data/VOC"
    cfg = ExperimentConfig(model=ModelConfig("digits-cnn"))
    assert cfg.train.batch_size == 64 and cfg.optim.schedule == "step"


def test_dump_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict(small_config(quant={"method": "lbw", "bits": 5}, init="/x/ckpt.json"))
    path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left
