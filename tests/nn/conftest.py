"""Shared fixtures for tests/nn: small models and a single intra-op thread.

Every model here is tiny; one thread avoids OpenMP fork/join costs on the shared 2-core box.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Nested(nn.Module):
    """Conv/Linear layers inside Sequential, ModuleList and ModuleDict, plus a shared conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        shared = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList([
            nn.Sequential(shared, nn.ReLU()),
            nn.ModuleDict({"a": nn.Conv2d(8, 8, 1), "b": nn.Sequential(shared)}),
        ])
        self.head = nn.ModuleDict({"fc": nn.Linear(8, 5)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks[0](x)
        x = torch.relu(self.blocks[1]["a"](x))
        x = self.blocks[1]["b"](x)
        return self.head["fc"](x.mean((2, 3)))


@pytest.fixture
def nested() -> Nested:
    torch.manual_seed(0)
    m = Nested()
    with torch.no_grad():
        bn = m.stem[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return m
