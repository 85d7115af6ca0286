"""Fuzzing the YAML config loader and `--set` values (hypothesis).

The promise: any file content and any ``--set`` item either loads into a config that survives a
round trip through plain data and a hash, or raises ``ValueError`` whose message starts with the
file's path (followed by ``:LINE`` when the YAML parser or the key's position gives one) —
never another exception, never a hang (alias bombs and recursive aliases are refused in linear
time; deep nesting is a YAML error).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.config import (
    ExperimentConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
)
from tests.train.conftest import REPO

BASE = (REPO / "configs" / "digits_cnn.yaml").read_text()
# LOWBIT_FUZZ_EXAMPLES=5000 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

KEYS = ["model.name", "model.task", "model.num_classes", "model.kwargs.width", "data.kind",
        "data.root", "data.image_size", "data.kwargs", "optim.lr", "optim.momentum",
        "optim.nesterov", "optim.weight_decay", "optim.warmup_iters", "optim.warmup_factor",
        "optim.schedule", "optim.milestones", "optim.milestone_unit", "optim.gamma",
        "optim.min_lr", "train.epochs", "train.batch_size", "train.eval_batch_size",
        "train.iterations", "train.eval_interval", "train.seed", "train.device",
        "train.num_workers", "train.amp", "train.log_every", "train.checkpoint_every",
        "train.keep_checkpoints", "train.clip_grad_norm", "train.quant_penalty", "train.qn_t0",
        "train.qn_phases", "quant", "init", "model", "train", "x.y"]
TOKENS = ["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "!!python/object:os.system ", "\t",
          "%YAML 1.1\n", "---\n", "? ", "|\n", ">\n", "0x1f", ".nan", ".inf", "-.inf", "~",
          "1e400", "99999999999999999999999999", "'", '"', "\\", "#", "\n  ", "2001-12-14",
          "!!binary aGk=", "<<: *a", "\x00", "\ud7ff", "null", "true", "[[[[", "}}}"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _check(path: Path, overrides: list[str] | None = None) -> None:
    """The promise for one input."""
    try:
        cfg = load_config(path, overrides or [])
    except ValueError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}"), msg
        assert "\n" not in msg.strip() or "invalid YAML" in msg, msg
        if "invalid YAML:" in msg and "nested too deeply" not in msg:
            assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", msg), msg
        return
    assert isinstance(cfg, ExperimentConfig)
    plain = config_to_dict(cfg)
    assert config_from_dict(plain) == cfg  # nothing was half-read
    assert len(config_hash(cfg)) == 64


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _check(path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    _check(path)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(BASE)), st.integers(0, 8),
                                st.sampled_from(TOKENS)), min_size=1, max_size=4))
def test_mutated_example_config(tmp_path: Path, edits: list[tuple[int, int, str]]) -> None:
    text = BASE
    for pos, cut, token in edits:
        text = text[:pos] + token + text[pos + cut:]
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    _check(path)


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(["model", "data", "optim", "train", "quant", "init"]),
                            st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]),
                                            values, max_size=5) | values, max_size=6))
def test_structured_configs(tmp_path: Path, tree: dict) -> None:
    tree.setdefault("model", {"name": "digits-cnn"})
    path = tmp_path / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as YAML text: nothing for the loader to read
    _check(path)


@FUZZ
@given(key=st.sampled_from(KEYS) | st.text(max_size=15), value=st.text(max_size=30) |
       st.sampled_from(TOKENS), sep=st.sampled_from(["=", "=", ":", ""]))
def test_set_values(tmp_path: Path, key: str, value: str, sep: str) -> None:
    path = tmp_path / "c.yaml"
    if not path.exists():
        path.write_text(BASE)
    _check(path, [f"{key}{sep}{value}"])


@FUZZ
@given(key=st.sampled_from(KEYS), value=values)
def test_set_structured_values(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "c.yaml"
    if not path.exists():
        path.write_text(BASE)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    text = text.removesuffix("\n...").removesuffix("...").strip()
    _check(path, [f"{key}={text}"])


@pytest.mark.parametrize("text", [
    # a billion laughs: 10^9 values once expanded
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
              for p, c in zip("abcdefgh", "bcdefghi"))
    + "model: {name: digits-cnn, kwargs: {bomb: *i}}\n",
    "model: &m {name: digits-cnn, kwargs: {self: *m}}\n",  # recursive
    "model: " + "[" * 5000 + "]" * 5000 + "\n",  # deep
    "model: {name: digits-cnn}\noptim: {lr: " + "9" * 5000 + "}\n",  # huge number
])
def test_bombs_are_refused_quickly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.process_time()
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_config(path)
    assert time.process_time() - t0 < 20.0  # CPU seconds: linear work, not 10^9 values


def test_validation_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.replace("  lr: 0.1\n", "  lr: -0.1\n"))
    want = BASE.splitlines().index("  lr: 0.1") + 1
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:{want}: config optim.lr"):
        load_config(path)
    with pytest.raises(ValueError, match=r"--set 'train.epochs=zero'.*train.epochs"):
        load_config(REPO / "configs" / "digits_cnn.yaml", ["train.epochs=zero"])
