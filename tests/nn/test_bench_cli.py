"""The `lowbit bench digits|qat` sub-verbs and the QAT benchmark's result shape."""

from __future__ import annotations

import argparse

import pytest

from lowbit.bench.qat import format_qat_bench, run_qat_bench
from lowbit.commands.bench import add_bench_subcommands


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit bench")
    add_bench_subcommands(p.add_subparsers(dest="bench"))
    return p


def test_subcommands_parse_and_have_help(capsys) -> None:
    p = _parser()
    a = p.parse_args(["digits", "--json", "--quick"])
    assert a.json and a.quick and callable(a.func)
    a = p.parse_args(["qat", "--steps", "3", "--input-size", "32"])
    assert a.steps == 3 and a.input_size == 32 and a.bits == 6 and a.method == "lbw-exact"
    for verb in ("digits", "qat"):
        with pytest.raises(SystemExit):
            p.parse_args([verb, "--help"])
        assert "--json" in capsys.readouterr().out


def test_qat_bench_result_shape() -> None:
    res = run_qat_bench(steps=1, warmup=0, input_size=32, batch=2, progress=False,
                        verbose=False)
    assert res["params"] == 11_689_512  # torchvision's ResNet-18 count
    assert res["ratio_mean"] > 0 and res["fp32_s"]["mean"] > 0
    assert "ratio" in format_qat_bench(res)
