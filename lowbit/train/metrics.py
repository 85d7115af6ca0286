"""Per-run metrics: ``metrics.jsonl`` (one JSON object per event) and optional TensorBoard.

Every line has ``event`` (``train``, ``eval``, ``checkpoint``, ``init``, ``resume``), the global
``iteration`` (iterations completed), fractional ``epoch`` and ``time`` (Unix seconds), plus
the event's values, e.g.::

    {"event": "train", "iteration": 20, "epoch": 0.91, "time": ..., "loss": 0.41, "lr": 0.1,
     "img_per_s": 5120.3, "acc": 0.88}
    {"event": "eval", "iteration": 22, "epoch": 1.0, "time": ..., "main": 0.95, "accuracy": 0.95}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_metrics", "truncate_metrics", "truncate_metrics_bytes"]


class MetricsLogger:
    """Appends events to ``run_dir/metrics.jsonl`` (and TensorBoard scalars when asked and
    installed). Disabled loggers (ranks other than 0) do nothing."""

    def __init__(self, run_dir: str | os.PathLike[str], *, enabled: bool = True,
                 tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._fh = None
        self._tb = None
        if not enabled:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise ValueError(f"{self.path}: cannot write the metrics log "
                             f"({exc.strerror or exc})") from None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("warning: train.tensorboard=true but tensorboard is not installed; "
                      "logging to metrics.jsonl only", file=sys.stderr)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, event: str, iteration: int, epoch: float, **values: Any) -> None:
        """Write one event line (flushed) and its numeric values to TensorBoard."""
        if not self.enabled or self._fh is None:
            return
        record = {"event": event, "iteration": int(iteration), "epoch": round(float(epoch), 4),
                  "time": round(time.time(), 3), **values}
        try:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as exc:
            raise RuntimeError(f"{self.path}: cannot write the metrics log "
                               f"({exc.strerror or exc})") from None
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{event}/{key}", value, iteration)

    def size(self) -> int:
        """Bytes in ``metrics.jsonl`` so far (0 when disabled); a checkpoint records it so a
        resumed run can cut the log back to exactly what was written before it."""
        if not self.enabled or self._fh is None:
            return 0
        self._fh.flush()
        return int(self._fh.tell())

    def close(self) -> None:
        """Close the file and TensorBoard writer."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a ``metrics.jsonl`` (a run folder is accepted); a torn last line (a kill
    mid-write) is skipped."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: metrics file not found")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def truncate_metrics(path: str | os.PathLike[str], max_iteration: int) -> int:
    """Drop events after ``max_iteration`` (written by a run that was then killed and is being
    resumed from that iteration); rewrites atomically. Returns the number of lines dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    events = read_metrics(p)
    keep = [e for e in events if int(e.get("iteration", 0)) <= max_iteration]
    total_lines = len(p.read_text(encoding="utf-8").splitlines())
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in keep), encoding="utf-8")
    os.replace(tmp, p)
    return total_lines - len(keep)


def truncate_metrics_bytes(path: str | os.PathLike[str], size: int) -> int:
    """Cut ``metrics.jsonl`` back to its first ``size`` bytes (what was written before a
    checkpoint; ``0``: empty it), rewriting atomically, and to a whole line. Returns the number
    of lines dropped. A file already no longer than ``size`` is left as it is."""
    p = Path(path)
    if not p.is_file():
        return 0
    data = p.read_bytes()
    if len(data) <= size:
        return 0
    kept = data[:size]
    if kept and not kept.endswith(b"\n"):
        kept = kept[: kept.rfind(b"\n") + 1]
    dropped = data[len(kept):].count(b"\n") + (0 if data.endswith(b"\n") else 1)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(kept)
    os.replace(tmp, p)
    return dropped
