"""``train.channels_last``: the engine, ``lowbit eval`` and ``load_run`` keep 4-D parameters in
NHWC; the numbers match the default layout up to float rounding, resume stays bit-exact and
checkpoints load into either layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lowbit.config import config_from_dict
from lowbit.runs import load_run
from lowbit.train.checkpoint import load_checkpoint, resolve_checkpoint
from lowbit.train.engine import evaluate_checkpoint, fit
from tests.train.conftest import small_config


def _cfg(channels_last: bool, **train: object):
    return config_from_dict(small_config(train={"channels_last": channels_last, **train}))


def _conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_load_run_and_eval_use_the_layout_and_agree_with_the_default(
        tmp_path: Path, one_thread: None) -> None:
    res_cl = fit(_cfg(True, iterations=6), tmp_path / "cl", progress=False)
    res_std = fit(_cfg(False, iterations=6), tmp_path / "std", progress=False)
    _, _, m_cl = load_run(tmp_path / "cl")
    _, _, m_std = load_run(tmp_path / "std")
    ws = _conv_weights(m_cl)
    # (a weight with one input channel or a 1x1 kernel is both layouts at once)
    ambiguous = [w.shape[1] == 1 or w.shape[2:].numel() == 1 for w in ws]
    assert ws and not all(ambiguous)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in ws)
    assert all(amb or not w.is_contiguous() for w, amb in zip(ws, ambiguous))
    assert all(w.is_contiguous() for w in _conv_weights(m_std))
    # six SGD steps in either layout: the same weights up to float rounding
    for a, b in zip(ws, _conv_weights(m_std)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert abs(res_cl.metrics["main"] - res_std.metrics["main"]) <= 0.01
    # lowbit eval of the channels-last run reproduces its final evaluation
    ev = evaluate_checkpoint(tmp_path / "cl")
    assert ev.metrics["main"] == res_cl.metrics["main"]


def test_resume_with_channels_last_is_bit_exact(tmp_path: Path, one_thread: None) -> None:
    cfg = _cfg(True, epochs=2, keep_checkpoints=3, eval_interval=0)
    full = fit(cfg, tmp_path / "full", progress=False)
    # the same run cut back to its epoch-1 checkpoint, then resumed
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    last = resolve_checkpoint(cut)
    for p in (last, last.with_suffix(".safetensors")):
        p.unlink()
    resumed = fit(cfg, cut, resume=True, progress=False)
    assert resumed.resumed_from is not None and resumed.resumed_from < full.iteration
    assert resumed.iteration == full.iteration
    a = load_checkpoint(resolve_checkpoint(tmp_path / "full")).model_state
    b = load_checkpoint(resolve_checkpoint(cut)).model_state
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
