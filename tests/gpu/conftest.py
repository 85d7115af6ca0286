"""GPU checks: every test takes a ``device`` fixture, ``cpu`` or ``cuda``, and compares what
the code computes there with the same computation on the CPU.

On a machine without CUDA the ``cuda`` half is skipped and the ``cpu`` half runs (a cpu-vs-cpu
sanity path through the same code, so the checks are collected and exercised everywhere).
``LOWBIT_REQUIRE_CUDA=1`` (set by ``make gpu-check``) turns the skip into a failure, so a GPU
run cannot pass without having used the GPU. See docs/gpu.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
REQUIRE_CUDA = os.environ.get("LOWBIT_REQUIRE_CUDA", "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda_half: the CUDA half of a device-parametrized check")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda_half)])
def device(request: pytest.FixtureRequest) -> torch.device:
    """``torch.device`` under test; the reference is always computed on the CPU."""
    if request.param == "cuda" and not HAS_CUDA:
        if REQUIRE_CUDA:
            pytest.fail("LOWBIT_REQUIRE_CUDA is set but torch.cuda.is_available() is False "
                        f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
        pytest.skip("no CUDA device (the cpu half of this check ran)")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _exact_float32() -> Iterator[None]:
    """No TF32 on Ampere+ (it rounds conv / matmul inputs to 10 mantissa bits, which would be
    measured here as a CUDA-vs-CPU difference); one CPU thread for the reference path."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.get_num_threads())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[:2]
    torch.set_num_threads(old[2])
