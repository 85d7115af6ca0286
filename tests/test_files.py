"""Files lowbit writes atomically get the mode a plain open() gives (0644 under umask 022),
not mkstemp's 0600; input files that cannot be read are named."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lowbit._files import read_input_bytes, write_atomic
from lowbit.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plain_mode(tmp_path: Path) -> int:
    """The mode of a file made by a plain open() here (measured, under this process's umask)."""
    ref = tmp_path / "plain"
    with open(ref, "wb") as fh:
        fh.write(b"x")
    return stat.S_IMODE(ref.stat().st_mode)


def test_write_atomic_mode_content_and_no_leftovers(tmp_path: Path, plain_mode: int) -> None:
    p = tmp_path / "a.json"
    write_atomic(p, b"{}", fsync=True)
    assert p.read_bytes() == b"{}"
    assert stat.S_IMODE(p.stat().st_mode) == plain_mode
    write_atomic(p, b"[1]")
    assert p.read_bytes() == b"[1]"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.json", "plain"]


def test_config_and_checkpoint_files_get_the_plain_mode(tmp_path: Path, plain_mode: int) -> None:
    import torch
    from torch import nn

    from lowbit.train.checkpoint import save_checkpoint

    cfg = load_config(ROOT / "configs" / "digits_cnn.yaml")
    cfg_path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert stat.S_IMODE(cfg_path.stat().st_mode) == plain_mode
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "run" / "checkpoints", model, opt, state={"iteration": 1})
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) >= 3  # config, tensors, JSON
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == plain_mode, f


def test_read_input_bytes_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.xml: annotation file not found"):
        read_input_bytes(tmp_path / "missing.xml", "annotation file")
    with pytest.raises(ValueError, match="annotation file is a folder"):
        read_input_bytes(tmp_path, "annotation file")
