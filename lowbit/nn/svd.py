"""SVD compression of fully connected layers (as in the clipping-based 8-bit method, 002).

A ``Linear(in, out)`` with weight ``W = U S V^T`` (``Tensor[out, in]``) becomes two thinner
layers ``Linear(in, r, bias=False)`` with weight ``sqrt(S_r) V_r^T`` and ``Linear(r, out)``
with weight ``U_r sqrt(S_r)`` and the original bias: ``r (in + out) (+ out)`` parameters
instead of ``in * out (+ out)``. At full rank ``r = min(in, out)`` the product is ``W`` up to
float rounding (the SVD runs in float64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.nn.recipe import _match

__all__ = ["SVDLinear", "svd_compress", "svd_factors"]


class SVDLinear(nn.Sequential):
    """``Sequential(Linear(in, r, bias=False), Linear(r, out))`` made by :func:`svd_compress`.

    Children ``"0"`` and ``"1"``; both are ordinary ``nn.Linear`` (quantizable by prepare)."""

    @property
    def rank(self) -> int:
        return self[0].out_features


@torch.no_grad()
def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A: Tensor[r, in], B: Tensor[out, r])`` with ``B @ A`` the best rank-``r`` approximation
    of ``weight: Tensor[out, in]`` (Eckart-Young), balanced as ``sqrt(S)`` on each side."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    r = rank
    sq = s[:r].sqrt()
    a = sq[:, None] * vh[:r]
    b = u[:, :r] * sq[None, :]
    return a.to(weight.dtype), b.to(weight.dtype)


def _rank_for_energy(s: torch.Tensor, energy: float) -> int:
    e = torch.cumsum(s.double() ** 2, 0)
    tot = float(e[-1])
    if tot == 0.0:
        return 1
    return int(torch.searchsorted(e / tot, torch.tensor([energy], dtype=e.dtype) - 1e-12)[0]) + 1


def _nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def svd_compress(
    model: nn.Module,
    energy: float | None = None,
    rank: int | None = None,
    include: tuple[str, ...] | str = ("*",),
    exclude: tuple[str, ...] | str = (),
    force: bool = False,
) -> dict[str, Any]:
    """Replace matching ``nn.Linear`` layers by :class:`SVDLinear` (in place).

    Exactly one of ``energy`` (keep the smallest rank whose singular values hold this share of
    ``sum S**2``, in (0, 1]; default 0.9 when neither is given) and ``rank`` (a fixed rank,
    capped at ``min(in, out)``). With ``energy`` a layer is replaced only if that saves
    parameters (``force=True`` replaces anyway); with ``rank`` it is always replaced.
    ``include`` / ``exclude``: glob patterns on module names.

    Returns ``{"layers": {name: {"in", "out", "rank", "energy", "params_before",
    "params_after", "replaced"}}, "params_before", "params_after"}`` (whole-model parameter
    counts).
    """
    if energy is not None and rank is not None:
        raise ValueError("give energy or rank, not both")
    if energy is None and rank is None:
        energy = 0.9
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    include = (include,) if isinstance(include, str) else tuple(include)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    before = _nparams(model)
    report: dict[str, Any] = {"layers": {}}
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and _match(n, include) and not _match(n, exclude)]
    mods = dict(model.named_modules())
    for name, lin in targets:
        w = lin.weight
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"svd_compress: layer {name!r} has non-finite weights")
        out_f, in_f = w.shape
        s = torch.linalg.svdvals(w.detach().double())
        r = min(rank, min(in_f, out_f)) if rank is not None else _rank_for_energy(s, energy)
        nb = 1 if lin.bias is not None else 0
        p_before = in_f * out_f + nb * out_f
        p_after = r * (in_f + out_f) + nb * out_f
        tot = float((s**2).sum())
        kept = float((s[:r] ** 2).sum()) / tot if tot > 0 else 1.0
        replace = rank is not None or force or p_after < p_before
        report["layers"][name] = {"in": in_f, "out": out_f, "rank": r, "energy": kept,
                                  "params_before": p_before,
                                  "params_after": p_after if replace else p_before,
                                  "replaced": replace}
        if not replace:
            continue
        a, b = svd_factors(w, r)
        first = nn.Linear(in_f, r, bias=False, device=w.device, dtype=w.dtype)
        second = nn.Linear(r, out_f, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
        first.weight.copy_(a)
        second.weight.copy_(b)
        if lin.bias is not None:
            second.bias.copy_(lin.bias)
        new = SVDLinear(first, second)
        new.train(lin.training)
        parent_name, _, key = name.rpartition(".")
        if not name:
            raise ValueError("svd_compress needs a container module, not a bare Linear")
        (mods[parent_name] if parent_name else model)._modules[key] = new
    report["params_before"] = before
    report["params_after"] = _nparams(model)
    return report
