"""`_base_` inheritance in the config loader: merge rules, relative paths, errors naming the
file, and the VOC LBW configs equal to their FP32 siblings but for `quant`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lowbit.config import config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
model:
  name: digits_cnn
  task: classify
  num_classes: 10
  kwargs: {width: 8}
optim:
  lr: 0.1
  momentum: 0.9
train:
  epochs: 3
  batch_size: 16
"""


def _write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_child_overrides_merges_and_replaces(tmp_path: Path) -> None:
    _write(tmp_path, "base/fp32.yaml", BASE)
    child = _write(tmp_path, "exp/lbw.yaml",
                   "_base_: ../base/fp32.yaml\noptim: {lr: 0.01}\ntrain: {epochs: 5}\n"
                   "quant: {method: lbw-exact, bits: 4}\n")
    cfg = config_to_dict(load_config(child))
    base = config_to_dict(load_config(tmp_path / "base/fp32.yaml"))
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["momentum"] == 0.9  # merged
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["batch_size"] == 16
    assert cfg["quant"] == {"method": "lbw-exact", "bits": 4}
    assert cfg["model"] == base["model"]
    # --set applies after the merge; the relative base is found from any working directory
    old = os.getcwd()
    os.chdir(tmp_path / "base")
    try:
        cfg2 = config_to_dict(load_config(child, ["optim.lr=0.5"]))
    finally:
        os.chdir(old)
    assert cfg2["optim"]["lr"] == 0.5


def test_list_of_bases_later_wins_and_lists_replace(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", BASE)
    _write(tmp_path, "b.yaml", "model: {kwargs: {width: 4}}\noptim: {lr: 0.2}\n")
    child = _write(tmp_path, "c.yaml", "_base_: [a.yaml, b.yaml]\noptim: {lr: 0.3}\n")
    cfg = config_to_dict(load_config(child))
    assert cfg["model"]["kwargs"] == {"width": 4} and cfg["optim"]["lr"] == 0.3


def test_chained_bases(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", BASE)
    _write(tmp_path, "b.yaml", "_base_: a.yaml\ntrain: {epochs: 7}\n")
    child = _write(tmp_path, "c.yaml", "_base_: b.yaml\ntrain: {batch_size: 2}\n")
    cfg = config_to_dict(load_config(child))
    assert (cfg["train"]["epochs"], cfg["train"]["batch_size"]) == (7, 2)


@pytest.mark.parametrize("text, match", [
    ("_base_: nope.yaml\n", r"c\.yaml: _base_ file 'nope\.yaml' not found"),
    ("_base_: c.yaml\n", r"c\.yaml: _base_ 'c\.yaml' makes a cycle"),
    ("_base_: 3\n", r"c\.yaml: _base_ must be a file path"),
    ("_base_: []\n", r"c\.yaml: _base_ must be a file path"),
])
def test_bad_bases_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    child = _write(tmp_path, "c.yaml", text)
    with pytest.raises(ValueError, match=match):
        load_config(child)


def test_a_cycle_through_two_files(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ValueError, match=r"a\.yaml -> b\.yaml -> a\.yaml"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("child", sorted(p.name for p in (ROOT / "configs").glob("*_lbw*.yaml")))
def test_voc_lbw_configs_differ_from_their_fp32_file_only_in_quant(child: str) -> None:
    text = (ROOT / "configs" / child).read_text()
    assert "_base_:" in text  # the file holds only its differences
    base = child.split("_lbw")[0] + ".yaml"
    a = config_to_dict(load_config(ROOT / "configs" / child))
    b = config_to_dict(load_config(ROOT / "configs" / base))
    assert {k for k in a if a[k] != b[k]} == {"quant"}
    assert a["quant"]["bits"] == int(child.split("_lbw")[1][0]) and b["quant"] is None
