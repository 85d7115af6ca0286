"""Reading input files with errors that name them (one place for the three parsers)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["read_input_bytes", "write_atomic"]


def read_input_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; ``FileNotFoundError`` if it is missing and ``ValueError``
    (both naming the file and ``what`` it is, e.g. ``"annotation file"``) if it is a folder
    or cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: {what} is a folder, not a file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def _file_mode() -> int:
    """``0o666`` under the process umask: what ``open(path, "w")`` would create."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` through a unique temp file next to it and ``os.replace``:
    readers see the old file or the new one, never a part. The file gets the mode a plain
    ``open`` would give (0644 under the usual umask; ``mkstemp`` alone would leave 0600).
    ``fsync``: flush the data to disk before the rename (checkpoints)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
