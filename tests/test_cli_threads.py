"""`--threads N` on every computing verb: parsed, applied to torch inside the command process
(read back with torch.get_num_threads()), passed to onnxruntime sessions, reported with the
load average at start; verbs that do not compute do not get it."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit import runtime
from lowbit.cli import COMPUTING_VERBS, _leaf_parsers, build_parser

ROOT = Path(__file__).resolve().parents[1]
START = re.compile(r"lowbit: (\d+) threads? \((--threads|torch default); torch intra-op (\d+), "
                   r"inter-op (\d+)\), load average at start ([\d. ]+|n/a), (\d+) CPUs")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return subprocess.run([sys.executable, "-m", "lowbit.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_threads_applied_inside_a_real_verb(tmp_path: Path) -> None:
    """`lowbit eval` in its own process (no OMP_NUM_THREADS in the environment): the start
    line reads torch's intra- and inter-op counts after --threads was applied, then the verb
    itself runs (here: the missing checkpoint error, exit 2)."""
    r = _run("eval", str(tmp_path / "missing"), "--threads", "1")
    lines = r.stderr.strip().splitlines()
    m = START.fullmatch(lines[0])
    assert m, r.stderr
    assert m.group(1, 2, 3, 4) == ("1", "--threads", "1", "1")
    assert int(m.group(6)) == os.cpu_count()
    assert r.returncode == 2 and lines[-1].startswith("error: ") and "missing" in lines[-1]


def test_threads_follow_the_flag_in_process(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            restore_threads: None) -> None:
    """Through lowbit.cli.main: --threads 2 gives 2 (not an environment default), then 1."""
    from lowbit.cli import main

    for n in (2, 1):
        assert main(["eval", str(tmp_path / "missing"), "--threads", str(n)]) == 2
        m = START.fullmatch(capsys.readouterr().err.splitlines()[0])
        assert m and m.group(1, 3) == (str(n), str(n))
        assert torch.get_num_threads() == n


def test_bad_thread_counts_are_usage_errors(tmp_path: Path) -> None:
    for bad in ("0", "-2", "two"):
        r = _run("stats", str(tmp_path), "--threads", bad)
        assert r.returncode == 2 and "--threads" in r.stderr and bad in r.stderr


def test_every_computing_leaf_has_threads_and_others_do_not() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert COMPUTING_VERBS <= set(sub.choices)
    for verb, p in sub.choices.items():
        for leaf in _leaf_parsers(p):
            has = "--threads" in leaf._option_string_actions
            assert has == (verb in COMPUTING_VERBS), (verb, leaf.prog)
            if has:
                assert leaf._option_string_actions["--threads"].help
                assert leaf.get_default("_computing") is True
    bench = sub.choices["bench"]
    assert {lp.prog.split()[-1] for lp in _leaf_parsers(bench)} >= {"quantizers", "qat",
                                                                    "deploy", "digits"}


@pytest.fixture
def restore_threads():
    saved = torch.get_num_threads(), dict(runtime._STATE)
    env = {k: os.environ.get(k) for k in runtime._ENV_VARS}
    yield
    torch.set_num_threads(saved[0])
    runtime._STATE.clear()
    runtime._STATE.update(saved[1])
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_runtime_api_and_onnxruntime_sessions(tmp_path: Path, restore_threads: None) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from lowbit.export.onnx import ort_session

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["out"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))

    assert runtime.set_threads(1) == 1 == torch.get_num_threads() == runtime.get_threads()
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert ort_session(path).get_session_options().intra_op_num_threads == 1
    info = runtime.run_info()
    assert info["threads"] == 1 and info["threads_source"] == "--threads"
    assert info["torch"] == torch.__version__ and info["cpu_count"] == os.cpu_count()
    la = info["load_average_start"]
    assert la is None or (len(la) == 3 and all(v >= 0 for v in la))
    assert not any(os.uname().nodename in str(v) for v in info.values())  # no host name
    assert START.fullmatch(runtime.start_line(info))

    runtime.set_threads(None)  # no --threads: torch's own count, reported as such
    assert runtime.get_threads() == torch.get_num_threads()
    assert runtime.run_info()["threads_source"] == "torch default"
    assert ort_session(path).get_session_options().intra_op_num_threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="--threads must be an integer >= 1, got 0"):
        runtime.set_threads(0)


def test_every_help_page_formats(capsys: pytest.CaptureFixture) -> None:
    """`lowbit --help` and each verb's --help render (a bare '%' in a help string broke the
    top-level page once)."""
    from lowbit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "voc-eval" in capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in sub.choices.values():
        for leaf in [p, *_leaf_parsers(p)]:
            assert leaf.format_help()


def test_busy_machine_note_only_without_threads_flag() -> None:
    info = {"threads": 2, "threads_source": "torch default", "torch_threads": 2,
            "torch_interop_threads": 2, "load_average_start": [5.0, 4.0, 3.0], "cpu_count": 2}
    first, note = runtime.start_line(info).split("\n")
    assert START.fullmatch(first) and "--threads 1" in note and "load 5.00 on 2 CPUs" in note
    assert "\n" not in runtime.start_line({**info, "load_average_start": [1.5, 1.0, 1.0]})
    assert "\n" not in runtime.start_line({**info, "threads_source": "--threads"})
    assert "\n" not in runtime.start_line({**info, "threads": 1, "torch_threads": 1})


def test_at_most_threads_limits_and_restores() -> None:
    import pytest
    import torch

    from lowbit.runtime import at_most_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with at_most_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), at_most_threads(1, "cpu"):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2  # restored on errors
        for limit, device in ((None, "cpu"), (1, "cuda"), (3, None)):
            with at_most_threads(limit, device):  # no limit, not the CPU, already below
                assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
