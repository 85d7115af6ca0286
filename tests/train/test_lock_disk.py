"""One process per run folder (real processes), and a full disk that loses nothing.

* A real ``lowbit train`` writes a run folder; a second ``lowbit train --resume`` (another
  process) and a plain ``train`` into that folder are refused naming the first one's pid and
  host. After the first is SIGKILLed its lock file stays behind; the next ``lowbit train
  --resume`` takes it over with a message and continues from the last checkpoint.
* A disk that fills up while a resumed run writes its next checkpoint: a real tiny tmpfs where
  this machine lets us mount one, and everywhere a real per-file size limit
  (``RLIMIT_FSIZE``, the kernel's EFBIG) in a subprocess. The error names the file, and the
  last good checkpoint is left intact and loadable.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.train.checkpoint import find_latest_checkpoint, load_checkpoint
from lowbit.train.lock import LOCK_NAME, RunLock, RunLockedError
from tests.train.conftest import REPO

CONFIG = str(REPO / "configs" / "digits_cnn.yaml")
SMALL = ["--set", "train.epochs=1", "--set", "model.kwargs.width=8", "--set", "train.device=cpu",
         "--set", "train.keep_checkpoints=1", "--set", "train.eval_interval=0"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

def _lowbit(*args: str, preexec: object = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lowbit.cli", *args], cwd=REPO, env=ENV, capture_output=True,
        text=True, timeout=300, preexec_fn=preexec,  # type: ignore[arg-type]
    )


@pytest.fixture
def first_writer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A real `lowbit train` into R, long enough to be killed, with one checkpoint written."""
    run = tmp_path / "R"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowbit.cli", "train", CONFIG, "--out", str(run), *SMALL,
         "--set", "train.epochs=5000", "--set", "train.log_every=1000"],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while find_latest_checkpoint(run) is None:
            assert proc.poll() is None, proc.stderr.read()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)  # polling interval, not a timing assumption
        yield proc, run
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def test_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(
    first_writer: tuple[subprocess.Popen[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Reproducer: two `lowbit train` into one --out both "succeeded"; a `train --resume`
    started while the first ran read a checkpoint the first had just rotated away."""
    proc, run = first_writer
    got = _lowbit("train", CONFIG, "--out", str(run), "--resume")
    assert got.returncode == 2
    err = got.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and f"pid {proc.pid}" in err
    assert socket.gethostname() in err
    assert main(["train", CONFIG, "--out", str(run), *SMALL]) == 2  # a plain train too
    assert f"pid {proc.pid}" in capsys.readouterr().err
    with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
        RunLock(run).acquire()  # the library API says the same
    assert proc.poll() is None  # the first writer was not disturbed

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (run / LOCK_NAME).exists()  # a dead process leaves its lock file behind
    latest = find_latest_checkpoint(run)
    assert latest is not None
    done = int(latest.stem.split("-")[1])
    epochs = done // 22 + 1
    assert main(["train", "--resume", "--out", str(run), "--override",
                 "--set", f"train.epochs={epochs}", "--json"]) == 0
    cap = capsys.readouterr()
    assert f"taking over the stale lock of pid {proc.pid}" in cap.err
    assert f"resuming from iteration {done}" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["iteration"] == epochs * 22
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_lock_is_reentrant_free_after_release(tmp_path: Path) -> None:
    with RunLock(tmp_path / "a") as lock:
        assert lock.held and lock.takeover is None
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "a").acquire()  # another descriptor: refused, even here
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    with RunLock(tmp_path / "a") as again:
        assert again.takeover is None


def _first_epoch(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    run = tmp_path / "R"
    assert main(["train", CONFIG, "--out", str(run), *SMALL]) == 0
    ck = find_latest_checkpoint(run)
    assert ck is not None and ck.name == "ckpt-00000022.json"
    return run, ck.read_bytes(), ck.with_suffix(".safetensors").read_bytes()


def _intact(run: Path, json_bytes: bytes, tensors_bytes: bytes) -> None:
    ck = find_latest_checkpoint(run)
    assert ck is not None and ck.name == "ckpt-00000022.json"
    assert ck.read_bytes() == json_bytes
    assert ck.with_suffix(".safetensors").read_bytes() == tensors_bytes
    assert load_checkpoint(ck).state["iteration"] == 22
    leftovers = [p.name for p in (run / "checkpoints").iterdir()
                 if p.name.endswith(".tmp") or "00000044" in p.name]
    assert leftovers == []


def test_file_size_limit_fails_clearly_and_keeps_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run, js, ts = _first_epoch(tmp_path)
    limit = len(ts) // 2  # metrics/config stay far below it, the next tensors file does not

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    got = _lowbit("train", CONFIG, "--out", str(run), "--resume", "--override",
                  "--set", "train.epochs=2", preexec=cap)
    assert got.returncode == 2, got.stderr[-2000:]
    err = got.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "ckpt-00000044.safetensors" in err
    assert "File too large" in err and "ckpt-00000022.json" in err
    _intact(run, js, ts)
    # the disk has room again: the run continues from its last good checkpoint
    assert main(["train", CONFIG, "--out", str(run), "--resume", "--override",
                 "--set", "train.epochs=2"]) == 0
    assert find_latest_checkpoint(run).name == "ckpt-00000044.json"  # type: ignore[union-attr]


def test_full_tmpfs_fails_clearly_and_keeps_the_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run, js, ts = _first_epoch(tmp_path)
    used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # room for the run as it is plus half a checkpoint (pages of 4 KiB)
    size_kib = (used + len(ts) // 2) // 1024 + 16
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                              str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the RLIMIT_FSIZE test covers a full disk)")
    try:
        small = mnt / "R"
        shutil.copytree(run, small)
        assert main(["train", CONFIG, "--out", str(small), "--resume", "--override",
                     "--set", "train.epochs=2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and "No space left on device" in err
        assert "ckpt-00000044" in err and "ckpt-00000022.json" in err
        _intact(small, js, ts)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
