"""A detector train step and eval step on the device, with and without autocast.

Without autocast the device step follows the CPU step (losses, gradients, detections within
float32 summation-order tolerance). With autocast (float16 on CUDA, bfloat16 on CPU) the step
is finite, the losses stay within 5% of float32, the gradients are finite and the detections
come back in float32 with scores in [0, 1]."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.detection.registry import create_model

MODELS = {
    "yolo": ("yolov3_tiny_darknet", {"width": 0.125, "image_size": 64}),
    "rfcn": ("rfcn_resnet18", {"width": 0.125}),
}


def _detector(which: str) -> nn.Module:
    torch.manual_seed(0)
    name, kw = MODELS[which]
    m = create_model(name, 3, **kw)
    # spread out the prediction convs so that scores are well separated (no near-ties whose
    # order would be decided by rounding noise)
    heads = ([m.roi_heads.head.rfcn_cls, m.rpn.head.cls_logits] if which == "rfcn"
             else [b[1] for b in m.head.branches])
    for conv in heads:
        nn.init.normal_(conv.weight, std=0.3 if which == "rfcn" else 1.0)
    return m


def _batch(device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(3)
    ims = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    tg = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
          {"boxes": torch.tensor([[10.0, 10.0, 30.0, 60.0], [2.0, 3.0, 20.0, 20.0]]),
           "labels": torch.tensor([0, 2])}]
    return ([i.to(device) for i in ims],
            [{k: v.to(device) for k, v in t.items()} for t in tg])


def _train_step(m: nn.Module, device: torch.device, autocast: bool
                ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    m.to(device).train()
    ims, tg = _batch(device)
    dt = torch.float16 if device.type == "cuda" else torch.bfloat16
    # R-FCN's RPN / RoI samplers draw their permutations from the global CPU generator (and
    # move them to the device), so one seed gives both devices the same samples
    torch.manual_seed(5)
    with torch.autocast(device.type, dtype=dt, enabled=autocast):
        losses = m(ims, tg)
    total = sum(losses.values())
    m.zero_grad()
    total.backward()
    grads = {k: p.grad.detach().float().cpu() for k, p in m.named_parameters()
             if p.grad is not None}
    return {k: float(v) for k, v in losses.items()}, grads


@torch.no_grad()
def _eval_step(m: nn.Module, device: torch.device, autocast: bool) -> list[dict]:
    m.to(device).eval()
    ims, _ = _batch(device)
    dt = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device.type, dtype=dt, enabled=autocast):
        dets = m(ims)
    return [{k: v.cpu() for k, v in d.items()} for d in dets]


@pytest.mark.parametrize("which", list(MODELS))
def test_detector_train_and_eval_step_follow_cpu(device: torch.device, which: str) -> None:
    base = _detector(which)
    ref_l, ref_g = _train_step(copy.deepcopy(base), torch.device("cpu"), False)
    got_l, got_g = _train_step(copy.deepcopy(base), device, False)
    assert ref_l.keys() == got_l.keys() and len(ref_l) >= 3
    for k in ref_l:
        assert abs(ref_l[k] - got_l[k]) <= 1e-4 * max(1.0, abs(ref_l[k])), (k, ref_l[k], got_l[k])
    assert ref_g.keys() == got_g.keys() and ref_g
    for k in ref_g:
        torch.testing.assert_close(got_g[k], ref_g[k], rtol=1e-3, atol=1e-4, msg=k)
    ref_d = _eval_step(copy.deepcopy(base), torch.device("cpu"), False)
    got_d = _eval_step(copy.deepcopy(base), device, False)
    for r, d in zip(ref_d, got_d):
        assert len(r["scores"]) >= 5
        n = min(10, len(r["scores"]))
        # the best detections: same labels, scores within 1e-4, boxes within 1e-2 px
        torch.testing.assert_close(d["scores"][:n], r["scores"][:n], rtol=0, atol=1e-4)
        assert torch.equal(d["labels"][:n], r["labels"][:n])
        torch.testing.assert_close(d["boxes"][:n], r["boxes"][:n], rtol=0, atol=1e-2)


@pytest.mark.parametrize("which", list(MODELS))
def test_detector_step_under_autocast(device: torch.device, which: str) -> None:
    base = _detector(which)
    fp_l, _ = _train_step(copy.deepcopy(base), device, False)
    m = copy.deepcopy(base)
    ac_l, ac_g = _train_step(m, device, True)
    assert all(torch.isfinite(torch.tensor(list(ac_l.values()))))
    assert abs(sum(ac_l.values()) - sum(fp_l.values())) <= 0.05 * sum(fp_l.values())
    assert ac_g and all(bool(torch.isfinite(g).all()) for g in ac_g.values())
    # parameters stay float32 under autocast (it casts inside ops only)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    dets = _eval_step(copy.deepcopy(base), device, True)
    for d in dets:
        assert d["boxes"].dtype == torch.float32 and len(d["scores"]) >= 1
        assert bool(torch.isfinite(d["boxes"]).all())
        assert float(d["scores"].min()) >= 0.0 and float(d["scores"].max()) <= 1.0
