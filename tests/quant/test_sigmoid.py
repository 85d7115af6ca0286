"""Quantization Networks' soft staircase: convergence to the hard one, gradients."""

from __future__ import annotations

import torch

from lowbit.quant.sigmoid import hard_staircase, init_biases, levels_for_bits, soft_staircase


def _hard_oracle(x: torch.Tensor, levels: list[float], biases: list[float], a: float, b: float):
    out = []
    for v in x.tolist():
        j = sum(1 for bi in biases if b * v >= bi)  # number of steps passed
        out.append(a * levels[j])
    return torch.tensor(out, dtype=x.dtype)


def test_hard_staircase_matches_loop_oracle() -> None:
    lv = levels_for_bits(3)  # -3..3
    biases = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)
    got = hard_staircase(x, lv, biases, alpha=0.7, beta=1.9)
    ref = _hard_oracle(x, lv.tolist(), biases.tolist(), 0.7, 1.9)
    assert torch.allclose(got, ref, atol=1e-12)


def test_soft_converges_to_hard_as_temperature_grows() -> None:
    lv = levels_for_bits(2)
    biases = torch.tensor([-0.5, 0.5])
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x[((x.abs() - 0.5).abs() > 1e-2)]  # away from the steps
    hard = hard_staircase(x, lv, biases, alpha=1.3, beta=1.0)
    errs = [
        float((soft_staircase(x, lv, biases, t, alpha=1.3) - hard).abs().max())
        for t in (1.0, 10.0, 100.0, 1000.0)
    ]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-3


def test_gradcheck_float64() -> None:
    lv = levels_for_bits(2).double()
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    biases = torch.tensor([-0.4, 0.6], dtype=torch.float64, requires_grad=True)

    def f(x, alpha, beta, biases):
        return soft_staircase(x, lv, biases, 5.0, alpha=alpha, beta=beta)

    assert torch.autograd.gradcheck(f, (x, alpha, beta, biases))


def test_unsigned_activation_levels_and_offset() -> None:
    lv = levels_for_bits(2, signed=False)  # 0..3
    biases = torch.tensor([0.5, 1.5, 2.5])
    y = hard_staircase(torch.tensor([-1.0, 0.6, 2.0, 9.0]), lv, biases)
    assert y.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_init_biases_are_midpoints_of_kmeans_centroids() -> None:
    x = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.1), torch.full((20,), 2.0)])
    b = init_biases(x, levels_for_bits(2))
    assert b.tolist() == [-0.44999998807907104, 1.0499999523162842] or torch.allclose(
        b, torch.tensor([-0.45, 1.05])
    )


def test_windowed_soft_staircase_matches_the_broadcast_reference() -> None:
    """Biases without gradient take the windowed path (QN weights); biases with one take the
    reference broadcast over every bias. Same values and x/alpha/beta gradients."""
    gen = torch.Generator().manual_seed(3)
    lv = levels_for_bits(8).double()  # -127..127: 254 biases
    b = torch.sort(torch.rand(254, generator=gen, dtype=torch.float64) * 254 - 127)[0]
    x0 = torch.randn(500, generator=gen, dtype=torch.float64) * 0.3
    for t in (1.0, 20.0, 500.0):
        grads, vals = [], []
        for ref in (False, True):
            x = x0.clone().requires_grad_(True)
            alpha = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
            beta = torch.tensor(300.0, dtype=torch.float64, requires_grad=True)
            bb = b.clone().requires_grad_(ref)
            y = soft_staircase(x, lv, bb, t, alpha=alpha, beta=beta)
            (y * torch.linspace(-1, 2, 500, dtype=torch.float64)).sum().backward()
            vals.append(y.detach())
            grads.append((x.grad, alpha.grad, beta.grad))
        torch.testing.assert_close(vals[0], vals[1], rtol=0, atol=1e-12)
        for g_win, g_ref in zip(*grads):
            torch.testing.assert_close(g_win, g_ref, rtol=1e-10, atol=1e-12)
