"""One process per run folder: ``RUN/.lock`` holds the writer's pid and host.

:class:`RunLock` takes an exclusive ``flock`` on ``RUN/.lock`` and writes
``{"pid": ..., "host": ..., "started": ...}`` into it. The kernel drops the ``flock`` when the
holder dies (SIGKILL included), so a second writer is refused exactly while the first one lives:

* a live holder: :class:`RunLockedError` naming its pid, host and start time;
* a file left by a dead holder (no ``flock`` on it any more): taken over, and the message
  returned by :meth:`RunLock.acquire` says whose lock it was.

Where ``flock`` is not available (some network file systems answer ``ENOLCK``) the pid in the
file decides on the same host (``os.kill(pid, 0)``); a lock from another host is then refused
(its pid cannot be checked from here) and must be removed by hand.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process writes to this run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        if len(data) > 65536:
            break
    try:
        info = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = ""
    if isinstance(started, (int, float)):
        when = " since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{when}"


class RunLock:
    """Exclusive writer lock of a run folder (see the module docstring).

    ``with RunLock(run_dir) as lock: ...`` or ``acquire()`` / ``release()``. The folder is
    created if missing. ``lock.takeover`` is the message about a stale lock that was taken over
    (``None`` when the folder was free).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.takeover: str | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns the takeover message (or ``None``).

        Raises :class:`RunLockedError` naming the holder when a live process holds it, and
        ``ValueError`` naming the folder when it cannot be created or written.
        """
        if self._fd is not None:
            return self.takeover
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{self.run_dir}: cannot create the run folder "
                             f"({exc.strerror or exc})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ValueError(f"{self.path}: cannot create the run lock "
                                 f"({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                use_pid = False
            except BlockingIOError:
                info = _read_info(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.run_dir}: in use by {_describe(info)} (lock {self.path}); wait for "
                    "it to finish or choose another --out"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise ValueError(f"{self.path}: cannot lock ({exc.strerror or exc})") from None
                use_pid = True
            # the file may have been unlinked by its previous holder between open and flock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_info(fd)
        here = socket.gethostname()
        takeover = None
        if old.get("pid") is not None and old.get("pid") != os.getpid():
            if use_pid:
                alive = old.get("host") != here or (
                    isinstance(old.get("pid"), int) and _pid_alive(old["pid"]))
                if alive:
                    os.close(fd)
                    raise RunLockedError(
                        f"{self.run_dir}: in use by {_describe(old)} (lock {self.path}; this file "
                        "system has no flock: remove the file if that process is gone)")
            takeover = (f"{self.run_dir}: taking over the stale lock of {_describe(old)} "
                        "(that process is gone)")
        mine = {"pid": os.getpid(), "host": here, "started": round(time.time(), 3)}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(mine).encode("utf-8") + b"\n")
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise ValueError(f"{self.path}: cannot write the run lock "
                             f"({exc.strerror or exc})") from None
        self._fd = fd
        self.takeover = takeover
        return takeover

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder now: the flock still goes with the descriptor
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
