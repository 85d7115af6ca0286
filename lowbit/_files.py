"""Reading input files with errors that name them (one place for the three parsers)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_input_bytes"]


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
