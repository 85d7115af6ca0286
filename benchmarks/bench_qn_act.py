"""8-bit Quantization Networks activations: windowed staircase vs the full 255-sigmoid loop vs
PACT, forward + backward of one activation tensor, all measured in this one run.

    .venv/bin/python benchmarks/bench_qn_act.py [--shape 8 64 64 64] [--threads 1] [--t 20]

The loop reference is the previous implementation (every bias, every element, forward at
``T``, backward at ``Tb = 1``); the windowed one is :func:`lowbit.quant.sigmoid.soft_stairs`
inside :class:`lowbit.nn.QNActQuant`. Prints milliseconds (median of ``--reps``) and ratios,
and checks the two agree (max |difference| of the outputs, relative to the output range).
"""

from __future__ import annotations

import argparse
import time

import torch

from lowbit.nn import QNActQuant, UniformActQuant


class _Loop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
        ctx.save_for_backward(z, b)
        out = torch.zeros_like(z)
        for bi in b.tolist():
            out += torch.sigmoid(t * (z - bi))
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        z, b = ctx.saved_tensors
        d = torch.zeros_like(z)
        for bi in b.tolist():
            s = torch.sigmoid(z - bi)
            d += s * (1 - s)
        return g * d, None, None


def _ms(fn, x: torch.Tensor, reps: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(reps):
        xx = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        out = fn(xx)
        out.sum().backward()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2], out.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[8, 64, 64, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--t", type=float, default=20.0, help="forward temperature")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.relu(torch.randn(*args.shape))
    q = QNActQuant(bits=8)
    q.train()
    q(x)  # initialise beta and the 255 biases from the data
    q.temperature.fill_(args.t)
    pact = UniformActQuant(bits=8, mode="pact").train()
    pact(x)
    ms_q, yq = _ms(q, x, args.reps)
    ms_p, _ = _ms(pact, x, args.reps)
    beta, alpha = q.beta.detach(), q.alpha.detach()
    ms_l, yl = _ms(lambda v: alpha * _Loop.apply(beta * v, q.biases, args.t), x,
                   max(1, args.reps // 5))
    err = float((yq - yl).abs().max() / (yl.max() - yl.min()))
    print(f"shape {tuple(args.shape)}, {args.threads} thread(s), T = {args.t:g}, fwd + bwd:")
    print(f"  QN-A8 windowed {ms_q:.0f} ms | full loop {ms_l:.0f} ms ({ms_l / ms_q:.1f}x) | "
          f"PACT {ms_p:.0f} ms (QN / PACT {ms_q / ms_p:.1f}x) | max diff {err:.1e} of range")


if __name__ == "__main__":
    main()
