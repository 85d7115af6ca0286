"""Checkpoint round trip, atomic-write leftovers, corrupt files, RNG state."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.train.checkpoint import (
    capture_rng_state,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_files,
    restore_rng_state,
    save_checkpoint,
)
from tests.train.conftest import REPO


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def _train_a_bit(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(5, 1, 8, 8, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_round_trip(tmp_path: Path, opt_cls: type) -> None:
    torch.manual_seed(0)
    model = _model()
    kwargs = {"momentum": 0.9, "nesterov": True} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls(model.parameters(), lr=0.01, **kwargs)
    _train_a_bit(model, opt)
    state = {"iteration": 12, "epoch": 1.5, "metrics": {"main": 0.5}, "note": [1, "a", None]}
    path = save_checkpoint(tmp_path, model, opt, None, state)
    assert path == tmp_path / "ckpt-00000012.json"
    assert path.with_suffix(".safetensors").is_file()

    torch.manual_seed(1)
    model2 = _model()
    opt2 = opt_cls(model2.parameters(), lr=0.5, **kwargs)
    ckpt = load_checkpoint(path, model2, opt2)
    assert ckpt.state == state
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    sd, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd["param_groups"] == sd2["param_groups"]
    for idx, values in sd["state"].items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sd2["state"][idx][key]))
    # identical continuation
    _train_a_bit(model, opt, 2)
    _train_a_bit(model2, opt2, 2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_explicit_file_names_and_dir_resolution(tmp_path: Path) -> None:
    model = _model()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, state={"iteration": 1})
    assert path.name == "ckpt.json" and (tmp_path / "ckpt.safetensors").is_file()
    ckpt = load_checkpoint(tmp_path / "ckpt.safetensors")
    assert ckpt.optimizer_state is None and set(ckpt.model_state) == set(model.state_dict())


def test_leftovers_are_not_checkpoints(tmp_path: Path) -> None:
    model = _model()
    ck = tmp_path / "checkpoints"
    save_checkpoint(ck, model, state={"iteration": 5})
    # a kill mid-write leaves a temp file; a kill between the two files leaves tensors alone
    (ck / "ckpt-00000009.safetensors.abc123.tmp").write_bytes(b"partial")
    (ck / "ckpt-00000009.json.xyz.tmp").write_bytes(b"{")
    (ck / "ckpt-00000008.safetensors").write_bytes(
        (ck / "ckpt-00000005.safetensors").read_bytes())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000005.json"]
    assert find_latest_checkpoint(tmp_path) == ck / "ckpt-00000005.json"
    with pytest.raises(ValueError, match=r"ckpt-00000008\.safetensors.*incomplete"):
        load_checkpoint(ck / "ckpt-00000008.safetensors")
    gone = sorted(p.name for p in remove_stale_files(tmp_path))
    assert gone == ["ckpt-00000008.safetensors", "ckpt-00000009.json.xyz.tmp",
                    "ckpt-00000009.safetensors.abc123.tmp"]
    assert load_checkpoint(tmp_path).state["iteration"] == 5


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_tensors_raise_naming_file(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path, _model(), state={"iteration": 3})
    st = path.with_suffix(".safetensors")
    blob = bytearray(st.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[-3] ^= 0xFF
    else:
        blob = bytearray(b"\x00" * len(blob))
    st.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"ckpt-00000003\.safetensors"):
        load_checkpoint(path, _model())


def test_corrupt_json_raises_naming_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _model(), state={"iteration": 3})
    path.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match=r"ckpt-00000003\.json"):
        load_checkpoint(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a lowbit checkpoint"):
        load_checkpoint(path)


def test_wrong_model_raises(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _model(), state={"iteration": 1})
    with pytest.raises(ValueError, match="does not fit the model"):
        load_checkpoint(path, nn.Linear(2, 2))


def test_prune_keeps_newest(tmp_path: Path) -> None:
    model = _model()
    for it in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model, state={"iteration": it})
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000003.json",
                                                            "ckpt-00000004.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000003.json", "ckpt-00000003.safetensors",
        "ckpt-00000004.json", "ckpt-00000004.safetensors"]


def test_rng_state_round_trip_through_json() -> None:
    state = json.loads(json.dumps(capture_rng_state()))
    # the legacy global NumPy RNG is the state being tested
    a = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(5)  # noqa: NPY002
    random.seed(9)
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2] == b[2] and a[3] == b[3]
    with pytest.raises(ValueError, match="RNG"):
        restore_rng_state({"torch": "AAAA"})


def test_engine_never_unpickles() -> None:
    for path in (REPO / "lowbit" / "train").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "load":
                assert not (isinstance(node.value, ast.Name) and node.value.id == "torch"), path
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("pickle" in n for n in names), path
