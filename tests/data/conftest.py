"""Shared fixtures for tests/data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest


@pytest.fixture
def cli_main() -> Callable[[Sequence[str]], int]:
    """``lowbit.cli.main`` (every registered verb must import)."""
    from lowbit import cli

    return cli.main


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory: pytest.TempPathFactory):
    """A 12 + 8 image digits devkit at 80 px (with COCO JSON), generated once."""
    from lowbit.data.digits import generate_digits

    root = tmp_path_factory.mktemp("digits")
    generate_digits(root, train=12, test=8, size=80, seed=3, coco=True, workers=1)
    return root
