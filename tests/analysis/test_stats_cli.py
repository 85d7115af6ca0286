"""`lowbit stats` and `lowbit export` from the command line: one-line errors naming the path or
the pattern (exit 2, never a traceback), help on every option, 0644 output files."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from lowbit.analysis.stats import select_layers
from lowbit.cli import build_parser, main
from tests._tiny import tiny_fp32_run


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("lowbit: ")]
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("verb", [["stats"], ["export", "--out", "y.lbp"]])
def test_bad_paths_are_named(tmp_path: Path, capsys, verb: list[str]) -> None:
    pt = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    plain = tmp_path / "plain"
    plain.mkdir()
    stray = tmp_path / "ckpt-1.json"  # a checkpoint name, but not inside a run
    stray.write_text("{}")
    cases = {
        pt: "not a run folder or a checkpoint inside one",
        tmp_path / "missing": "no such run folder or checkpoint",
        plain: "not a run folder (it has no config.yaml)",
        stray: "not a run folder or a checkpoint inside one",
    }
    for path, why in cases.items():
        code, _, err = run_cli([verb[0], str(path), *verb[1:]], capsys)
        assert code == 2
        assert error_line(err).startswith(f"error: {path}: {why}")


def test_bad_layer_pattern_is_named_before_loading(tmp_path: Path, capsys) -> None:
    # the run does not even exist: the pattern is checked first
    code, _, err = run_cli(["stats", "--layers", "([", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert error_line(err).startswith("error: --layers '([': not a regular expression")
    with pytest.raises(ValueError, match=r"layer pattern '\(\[' is not a regular expression"):
        select_layers(["a", "b"], "([")
    assert select_layers(["conv1", "layer1.0.conv1", "fc"], r"conv1$") == [
        "conv1",
        "layer1.0.conv1",
    ]


def _leaf(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [("export",), ("stats",), ("bench", "deploy")])
def test_every_option_has_help(path: tuple[str, ...]) -> None:
    leaf = _leaf(build_parser(), *path)
    for action in leaf._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, (path, action.dest)


def test_stats_on_a_checkpoint_writes_0644(tmp_path_factory, tmp_path: Path, capsys) -> None:
    run = tiny_fp32_run(tmp_path_factory)
    ckpt = sorted((run / "checkpoints").glob("ckpt-*.json"))[-1]
    out = tmp_path / "st"
    code, printed, err = run_cli(
        ["stats", str(ckpt), "--layers", r"layer1\.0\.conv1$", "--out", str(out), "--json"],
        capsys,
    )
    assert code == 0, err
    data = json.loads(printed)
    assert list(data["layers"]) == ["backbone.layer1.0.conv1"]
    table = data["layers"]["backbone.layer1.0.conv1"]["table"][ckpt.name]
    assert sum(table) == pytest.approx(100.0)
    files = sorted(out.iterdir())
    assert sorted(f.name for f in files) == ["hist_backbone_layer1_0_conv1.png", "stats.json"]
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644 & ~_umask(), f


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_export_packed_names_and_writes_0644(tmp_path_factory, tmp_path: Path, capsys) -> None:
    run = tiny_fp32_run(tmp_path_factory)
    out = tmp_path / "model.lbp"
    code, printed, err = run_cli(
        ["export", str(run), "--out", str(out), "--bits", "4", "--json"], capsys
    )
    assert code == 0, err
    info = json.loads(printed)
    assert info["path"] == str(out) and info["bytes"] == out.stat().st_size
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644 & ~_umask()


def test_export_out_errors_before_loading(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"  # only a run folder's shape: --out is checked before loading it
    run.mkdir()
    (run / "config.yaml").write_text("not: loaded\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = {
        str(tmp_path / "nope" / "m.lbp"): f"its folder {tmp_path / 'nope'} does not exist",
        str(afile / "m.lbp"): f"its folder {afile} is not a folder",
        str(tmp_path): "is a folder",
    }
    for out, why in cases.items():
        code, _, err = run_cli(["export", str(run), "--out", out], capsys)
        assert code == 2
        assert error_line(err).startswith(f"error: --out {out}: {why}")
    code, _, err = run_cli(["stats", str(run), "--out", str(afile / "x")], capsys)
    assert code == 2
    assert error_line(err).startswith(f"error: --out {afile / 'x'}: cannot create the folder")


def test_export_packed_of_fp32_run_names_the_run(tmp_path_factory, tmp_path, capsys) -> None:
    run = tiny_fp32_run(tmp_path_factory)
    code, _, err = run_cli(["export", str(run), "--out", str(tmp_path / "m.lbp")], capsys)
    assert code == 2
    assert error_line(err).startswith(f"error: {run}: an FP32 run has no quantized layer")
    assert not (tmp_path / "m.lbp").exists()
