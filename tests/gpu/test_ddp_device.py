"""A one-process DistributedDataParallel step (world size 1; NCCL on CUDA, gloo on CPU) of a
small prepared QAT model gives the plain step's gradients and weights, and lowbit's
collectives work inside that process group."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lowbit.nn import prepare
from lowbit.train.distributed import DistContext, all_gather_json, all_reduce_mean, any_true


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    return prepare(m, {"method": "lbw-exact", "bits": 4})


def _step(model: nn.Module, device: torch.device) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 12, 12, generator=g).to(device)
    y = torch.randint(0, 5, (8,), generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss)


def test_one_process_ddp_step(device: torch.device, tmp_path: Path) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        device = torch.device("cuda", torch.cuda.current_device())
    assert not dist.is_initialized()
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        plain = _model().to(device)
        wrapped = copy.deepcopy(plain)
        ddp = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
        loss_plain = _step(plain, device)
        loss_ddp = _step(ddp, device)
        assert loss_plain == loss_ddp
        # world size 1: the all-reduced mean gradient is the local one, so the weights match
        for (k, a), (_, b) in zip(plain.state_dict().items(), wrapped.state_dict().items()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=k)
        moved = max(float((p - q).abs().max()) for p, q in
                    zip(plain.parameters(), _model().to(device).parameters()))
        assert moved > 1e-4  # the step changed the weights
        ctx = DistContext(0, 1, 0, device, backend)
        assert all_reduce_mean({"loss": 2.5, "acc": 0.25}, ctx) == {"loss": 2.5, "acc": 0.25}
        assert all_gather_json({"rank": 0, "ok": [1, 2]}, ctx) == [{"rank": 0, "ok": [1, 2]}]
        assert any_true(True, ctx) and not any_true(False, ctx)
    finally:
        dist.destroy_process_group()
