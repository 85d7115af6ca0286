"""Checkpoints: safetensors for tensors + JSON for everything else; never pickle.

A checkpoint is a pair ``NAME.safetensors`` + ``NAME.json``:

- ``NAME.safetensors`` holds the model's ``state_dict`` under ``model.<key>`` and the
  optimizer's tensor state under ``optim.<param index>.<key>`` (e.g. ``optim.3.momentum_buffer``).
- ``NAME.json`` holds the optimizer's ``param_groups`` and non-tensor state, the scheduler's
  ``state_dict()``, the caller's ``state`` (epoch, iteration, RNG states, config, metrics), and
  the byte size and SHA-256 of the tensors file, and a SHA-256 of its own content
  (``meta_sha256``: the canonical JSON of every other field).

Never written: a checkpoint holding a NaN or infinite float tensor (:class:`NonFiniteError`,
nothing touched on disk). Never loaded: tensors whose size or SHA-256 differ from the JSON, a
JSON whose ``meta_sha256`` does not match, or non-finite float tensors (a diverged run);
each a ``ValueError`` naming the file. A write that fails (full disk, read-only folder) raises
:class:`CheckpointWriteError` naming the file and leaves every earlier checkpoint as it was.

Both are written to a temp file in the same folder, fsynced, then ``os.replace``d — tensors
first, JSON last. The JSON is the commit marker: a tensors file without its JSON (a kill between
the two writes) or a leftover ``*.tmp`` is not a checkpoint, and a tensors file that does not
match the size/hash recorded in its JSON is reported as corrupt. Loading reads the bytes once,
checks them, and decodes with ``safetensors.torch.load``; ``torch.load`` is never used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lowbit._files import write_atomic

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_json",
    "list_checkpoints",
    "find_latest_checkpoint",
    "resolve_checkpoint",
    "prune_checkpoints",
    "remove_stale_files",
    "read_safetensors",
    "capture_rng_state",
    "restore_rng_state",
    "unwrap_model",
    "NonFiniteError",
    "CheckpointWriteError",
    "first_non_finite",
]

FORMAT = "lowbit.checkpoint"
VERSION = 1
_NAME_RE = re.compile(r"^ckpt-(\d+)\.json$")


class NonFiniteError(ValueError):
    """A tensor holds NaN or infinity (refused on save and on load); ``tensor`` is its name."""

    def __init__(self, message: str, tensor: str = "") -> None:
        super().__init__(message)
        self.tensor = tensor


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (full disk, read-only folder, file size limit)."""


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point (or complex) tensor holding NaN or infinity, else
    ``None``. Integer and bool tensors are always finite."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() \
                and not bool(torch.isfinite(t).all()):
            return name
    return None


def _meta_digest(meta: Mapping[str, Any]) -> str:
    # through JSON first: the digest is of what the file holds (int keys as strings, tuples
    # as lists), so it is the same on save and on load
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"}))
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``state`` is the caller's dict given to :func:`save_checkpoint`."""

    path: Path  # the JSON file
    state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tensors_path(self) -> Path:
        """The ``.safetensors`` file next to the JSON."""
        return self.path.with_suffix(".safetensors")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or ``model``)."""
    while isinstance(
        model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    ):
        model = model.module
    return model


# ---------------------------------------------------------------------------------------------
# atomic file writes


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + ``os.replace`` (mode 0644 under the
    usual umask), then fsync the folder."""
    write_atomic(path, data, fsync=True)
    _fsync_dir(path.parent)


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=False).encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# RNG state as JSON


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), NumPy legacy global and Python ``random`` states as
    JSON-safe data (byte states base64)."""
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002 - the global state is what we save
    assert isinstance(np_state, tuple)
    out: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": {
            "kind": np_state[0],
            "keys": base64.b64encode(np.asarray(np_state[1], dtype="<u4").tobytes()).decode(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _py_state_to_json(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def _py_state_to_json(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where CUDA is present)."""
    try:
        torch.set_rng_state(_unb64(state["torch"]))
        n = state["numpy"]
        keys = np.frombuffer(base64.b64decode(n["keys"]), dtype="<u4").astype(np.uint32)
        np.random.set_state(  # noqa: NPY002 - restoring the global legacy state
            (n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"]))
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            cuda = [_unb64(s) for s in state["cuda"]]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"bad RNG state in checkpoint: {exc}") from None


# ---------------------------------------------------------------------------------------------
# optimizer state <-> flat tensors + JSON


def _flatten_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if "." in str(key):
                raise ValueError(f"optimizer state key {key!r} contains '.'")
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                _check_json(f"optimizer state {idx}.{key}", value)
                scalars.setdefault(str(idx), {})[key] = value
    groups = sd["param_groups"]
    _check_json("optimizer param_groups", groups)
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _check_json(what: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


# ---------------------------------------------------------------------------------------------
# save / load


def _paths(dir_or_path: str | os.PathLike[str], iteration: int | None) -> tuple[Path, Path]:
    p = Path(dir_or_path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p / (
        f"ckpt-{int(iteration or 0):08d}"
    )
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(
    dir_or_path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    state: Mapping[str, Any] | None = None,
    *,
    scaler: Any = None,
) -> Path:
    """Write a checkpoint; returns the path of its JSON file.

    ``dir_or_path``: a folder (created; the files are ``ckpt-<iteration:08d>.*`` with
    ``iteration`` taken from ``state``) or a ``.json`` / ``.safetensors`` path naming the pair.
    ``state`` must be JSON-serialisable. ``scheduler`` and ``scaler`` (a GradScaler) are saved
    through their ``state_dict()`` when given. The JSON is written last: it commits the checkpoint.

    Raises :class:`NonFiniteError` (nothing written) when a model or optimizer float tensor
    holds NaN/inf, and :class:`CheckpointWriteError` naming the file when the disk refuses the
    write (no partial file is left; earlier checkpoints are untouched).
    """
    state = dict(state or {})
    _check_json("checkpoint state", state)
    tensors_path, json_path = _paths(dir_or_path, state.get("iteration"))
    tensors_path.parent.mkdir(parents=True, exist_ok=True)

    flat: dict[str, torch.Tensor] = {}
    for key, value in unwrap_model(model).state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"model state {key!r} is not a tensor ({type(value).__name__})")
        # a private CPU copy: safetensors refuses shared or non-contiguous storage
        flat[f"model.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    optim_meta = None
    if optimizer is not None:
        otensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
        optim_meta["class"] = type(optimizer).__name__
        for key, value in otensors.items():
            flat[key] = value.detach().to("cpu", copy=True).contiguous()
    sched_state = scheduler.state_dict() if scheduler is not None else None
    if sched_state is not None:
        _check_json("scheduler state", sched_state)
    scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None

    bad = first_non_finite(flat)
    if bad is not None:
        raise NonFiniteError(
            f"{json_path}: not written: tensor {bad} holds NaN or infinity (a diverged run); "
            "earlier checkpoints are kept", bad
        )
    blob = st_save(flat, metadata={"format": "pt", "lowbit": FORMAT})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": tensors_path.name,
        "tensors_bytes": len(blob),
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "optimizer": optim_meta,
        "scheduler": sched_state,
        "scaler": scaler_state,
        "state": state,
    }
    meta["meta_sha256"] = _meta_digest(meta)
    for target, write in ((tensors_path, lambda: _write_atomic(tensors_path, blob)),
                          (json_path, lambda: _write_json_atomic(json_path, meta))):
        try:
            write()
        except OSError as exc:
            if target is json_path:  # the tensors file is an orphan now: not a checkpoint
                tensors_path.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"{target}: cannot write checkpoint ({exc.strerror or exc}); earlier "
                "checkpoints are untouched"
            ) from None
    return json_path


def read_checkpoint_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check a checkpoint's JSON file (not its tensors)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: corrupt checkpoint JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{p}: not a lowbit checkpoint (format {FORMAT!r} missing)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{p}: unsupported checkpoint version {meta.get('version')!r}")
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):
        raise ValueError(f"{p}: corrupt checkpoint JSON (its SHA-256 does not match its content)")
    return meta


def read_safetensors(
    path: str | os.PathLike[str],
    *,
    expected_bytes: int | None = None,
    expected_sha256: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file (no pickle); ValueError naming the file if it is corrupt."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: tensors file not found")
    blob = p.read_bytes()
    if expected_bytes is not None and len(blob) != expected_bytes:
        raise ValueError(
            f"{p}: truncated or corrupt checkpoint tensors ({len(blob)} bytes, "
            f"expected {expected_bytes})"
        )
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise ValueError(f"{p}: corrupt checkpoint tensors (SHA-256 does not match its JSON)")
    try:
        return st_load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{p}: corrupt safetensors file ({exc})") from None


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The JSON file of a checkpoint given as ``.json``, ``.safetensors`` or a folder (a run
    folder or its ``checkpoints/``: the latest complete checkpoint)."""
    p = Path(path)
    if p.is_dir():
        found = find_latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"{p}: no complete checkpoint (ckpt-*.json) in this folder")
        return found
    if p.suffix == ".safetensors":
        j = p.with_suffix(".json")
        if not j.is_file():
            raise ValueError(f"{p}: incomplete checkpoint ({j.name} is missing)")
        return j
    if not p.exists():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    return p


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    scaler: Any = None,
    strict: bool = True,
) -> Checkpoint:
    """Load a checkpoint (see :func:`resolve_checkpoint` for ``path``).

    When given, ``model`` (unwrapped from DDP), ``optimizer``, ``scheduler`` (if it has
    ``load_state_dict``) and ``scaler`` are restored in place. Tensors are loaded on CPU;
    ``load_state_dict`` moves them to the parameters' device. Raises ``ValueError`` naming the
    file when the JSON or tensors are corrupt or truncated.
    """
    json_path = resolve_checkpoint(path)
    meta = read_checkpoint_json(json_path)
    tensors_path = json_path.with_name(meta.get("tensors", json_path.with_suffix("").name))
    if not tensors_path.is_file():
        raise ValueError(f"{json_path}: its tensors file {tensors_path.name} is missing")
    flat = read_safetensors(
        tensors_path,
        expected_bytes=meta.get("tensors_bytes"),
        expected_sha256=meta.get("tensors_sha256"),
    )
    bad = first_non_finite(flat)
    if bad is not None:
        raise NonFiniteError(
            f"{tensors_path}: tensor {bad} holds NaN or infinity (written by a diverged run); "
            "refusing to load it", bad
        )
    model_state = {k[6:]: v for k, v in flat.items() if k.startswith("model.")}
    otensors = {k: v for k, v in flat.items() if k.startswith("optim.")}
    optim_state = None
    if meta.get("optimizer") is not None:
        optim_state = _unflatten_optimizer(otensors, meta["optimizer"])
    ckpt = Checkpoint(
        path=json_path,
        state=meta.get("state", {}),
        model_state=model_state,
        optimizer_state=optim_state,
        scheduler_state=meta.get("scheduler"),
        meta=meta,
    )
    if model is not None:
        try:
            unwrap_model(model).load_state_dict(model_state, strict=strict)
        except RuntimeError as exc:
            raise ValueError(f"{tensors_path}: does not fit the model: {exc}") from None
    if optimizer is not None:
        if optim_state is None:
            raise ValueError(f"{json_path}: checkpoint has no optimizer state")
        # JSON turned tuples (Adam's betas) into lists: give them back their type
        for saved, current in zip(optim_state["param_groups"], optimizer.param_groups):
            for key, value in saved.items():
                if isinstance(current.get(key), tuple) and isinstance(value, list):
                    saved[key] = tuple(value)
        try:
            optimizer.load_state_dict(optim_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{json_path}: optimizer state does not fit: {exc}") from None
    if scheduler is not None and hasattr(scheduler, "load_state_dict") and ckpt.scheduler_state:
        scheduler.load_state_dict(ckpt.scheduler_state)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return ckpt


# ---------------------------------------------------------------------------------------------
# run folders


def _ckpt_dir(run_dir: Path) -> Path:
    sub = run_dir / "checkpoints"
    return sub if sub.is_dir() else run_dir


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Committed checkpoints (``ckpt-<N>.json`` whose tensors file exists), oldest first.

    Looks in ``run_dir/checkpoints`` when it exists, else in ``run_dir``. Temp files and
    tensors files without their JSON are ignored.
    """
    d = _ckpt_dir(Path(run_dir))
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.with_suffix(".safetensors").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """JSON path of the newest committed checkpoint in ``run_dir`` (see ``list_checkpoints``)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep=0``: keep all); JSON first so a
    half-deleted checkpoint is never taken for a complete one. Returns the deleted JSON paths."""
    if keep <= 0:
        return []
    old = list_checkpoints(run_dir)[:-keep]
    for j in old:
        j.unlink(missing_ok=True)
        j.with_suffix(".safetensors").unlink(missing_ok=True)
    return old


def remove_stale_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete ``*.tmp`` leftovers and tensors files without a JSON (uncommitted writes)."""
    d = _ckpt_dir(Path(run_dir))
    gone = []
    if not d.is_dir():
        return gone
    for p in d.iterdir():
        orphan = p.suffix == ".safetensors" and not p.with_suffix(".json").exists()
        if p.name.endswith(".tmp") or (orphan and p.name.startswith("ckpt-")):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone
