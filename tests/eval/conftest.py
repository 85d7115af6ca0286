"""Shared fixtures for tests/eval."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest


@pytest.fixture
def cli_main() -> Callable[[Sequence[str]], int]:
    """``lowbit.cli.main`` (every registered verb must import)."""
    from lowbit import cli

    return cli.main
