"""``backbone_weights`` files that are not weights, or not these weights: one-line ValueErrors
naming the file (and the first key that does not fit), never an unpickled object."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lowbit.detection import create_model
from lowbit.detection.backbones import (
    darknet_tiny,
    load_backbone_weights,
    read_state_dict,
    resnet18,
)


class _Payload:
    """Unpickling this would create ``marker`` (proof that the file was unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_is_refused_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    for name, dump in (
        ("evil.pth", lambda f: pickle.dump({"conv1.weight": _Payload(marker)}, f)),
        ("evil2.pt", lambda f: torch.save({"x": _Payload(marker)}, f)),
    ):
        path = tmp_path / name
        with open(path, "wb") as f:
            dump(f)
        with pytest.raises(ValueError) as info:
            read_state_dict(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: not a safetensors or state_dict file")
        assert "\n" not in msg and "weights_only=False" not in msg
        assert not marker.exists()
        # the same through the detector's config option
        with pytest.raises(ValueError, match=name):
            create_model("rfcn_resnet18", 3, backbone_weights=str(path), width=0.125)
        assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_garbage_and_truncated_files(tmp_path: Path, suffix: str) -> None:
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"\x00\x01not weights at all" * 10)
    with pytest.raises(ValueError, match=f"{junk}: not a safetensors or state_dict file"):
        read_state_dict(junk)
    good = tmp_path / f"good{suffix}"
    sd = {"a": torch.arange(1000.0)}
    torch.save(sd, good) if suffix == ".pth" else save_file(sd, str(good))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{cut}: not a safetensors or state_dict file"):
        read_state_dict(cut)
    assert torch.equal(read_state_dict(good)["a"], sd["a"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_wrong_architecture_names_file_and_first_key(tmp_path: Path, suffix: str) -> None:
    # a Darknet file given to a ResNet: the first ResNet key in model order is missing
    dk = darknet_tiny(width=0.25).state_dict()
    path = tmp_path / f"darknet{suffix}"
    torch.save(dk, path) if suffix == ".pth" else save_file(dk, str(path))
    model = resnet18(width=0.125)
    first = next(iter(model.state_dict()))
    assert first not in dk
    with pytest.raises(ValueError) as info:
        load_backbone_weights(model, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: backbone weights do not fit")
    assert f"first mismatched key {first!r}: missing from the file" in msg
    # the counts are those of a direct comparison of the key sets
    own = set(model.state_dict())
    n_missing = len(own - set(dk))
    n_unexpected = len({k for k in dk if k not in own and not k.endswith("num_batches_tracked")})
    assert f"({n_missing} missing, {n_unexpected} unexpected" in msg
    with pytest.raises(ValueError, match=f"{path.name}: backbone weights do not fit"):
        create_model("rfcn_resnet18", 3, backbone_weights=str(path), width=0.125)


def test_same_names_other_widths_report_the_shape(tmp_path: Path) -> None:
    sd = resnet18(width=0.25).state_dict()
    path = tmp_path / "r18w25.safetensors"
    save_file(sd, str(path))
    model = resnet18(width=0.125)
    first = next(k for k, v in model.state_dict().items() if v.shape != sd[k].shape)
    want = f"first mismatched key {first!r}: size mismatch, {tuple(sd[first].shape)} in the file"
    with pytest.raises(ValueError, match=want.replace("(", r"\(").replace(")", r"\)")):
        load_backbone_weights(model, path)
    # the right width loads, strict
    res = load_backbone_weights(resnet18(width=0.25), path)
    assert res.missing_keys == [] and res.unexpected_keys == []
