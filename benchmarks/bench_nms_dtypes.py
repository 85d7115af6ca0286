"""NMS cost of the dtype-safe implementation, as ratios measured in one run.

Compares, on the same clustered boxes:

* ``batched_nms`` (no coordinate shift: a category test inside the suppression up to 1000
  boxes, one ``nms`` per category above) and the single pass alone, against torchvision's
  coordinate-offset trick run through the same ``nms`` (what lowbit did before);
* ``nms`` on float16 / bfloat16 / int32 boxes (computed in float32 / float32 / float64) against
  float32 boxes.

Both sides of each ratio run alternately in the same process; the median of ``--repeats``
timings is reported, with the thread count and the load average. Rerun on an idle machine:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_nms_dtypes.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lowbit.detection.ops import batched_nms, nms
from lowbit.detection.ops.nms import _nms


def clustered(n: int, gen: torch.Generator) -> torch.Tensor:
    centres = torch.rand(max(n // 8, 1), 2, generator=gen) * 600
    pick = torch.randint(0, centres.shape[0], (n,), generator=gen)
    c = centres[pick] + torch.randn(n, 2, generator=gen) * 8
    wh = torch.rand(n, 2, generator=gen) * 60 + 8
    return torch.cat((c - wh / 2, c + wh / 2), dim=1)


def offset_trick(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, thr: float):
    lo = boxes.min()
    span = boxes.max() - lo
    return nms(boxes - lo + (idxs.to(boxes.dtype) * (span + 1))[:, None], scores, thr)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ratio(new: list[float], old: list[float]) -> str:
    mn, mo = statistics.median(new), statistics.median(old)
    return f"{mn / mo:.2f}x ({mn * 1e3:.1f} ms vs {mo * 1e3:.1f} ms)"


def bench_size(n: int, classes: int, repeats: int, gen: torch.Generator) -> None:
    b = clustered(n, gen)
    s = torch.rand(n, generator=gen)
    k = torch.randint(0, classes, (n,), generator=gen)
    want = offset_trick(b, s, k, 0.5).tolist()
    assert batched_nms(b, s, k, 0.5).tolist() == want
    assert _nms(b, s, 0.5, k).tolist() == want
    auto, single, old = [], [], []
    for _ in range(repeats):
        auto += timed(lambda: batched_nms(b, s, k, 0.5), 1)
        single += timed(lambda: _nms(b, s, 0.5, k), 1)
        old += timed(lambda: offset_trick(b, s, k, 0.5), 1)
    print(f"N={n:5d} batched_nms / offset trick: {ratio(auto, old)}")
    print(f"N={n:5d} single pass with class test / offset trick: {ratio(single, old)}")
    cast = {"float16": b.half(), "bfloat16": b.bfloat16(), "int32": b.round().int()}
    base: list[float] = []
    other: dict[str, list[float]] = {name: [] for name in cast}
    for _ in range(repeats):
        base += timed(lambda: nms(b, s, 0.5), 1)
        for name, bb in cast.items():
            other[name] += timed(lambda bb=bb: nms(bb, s, 0.5), 1)
    for name, ts in other.items():
        print(f"N={n:5d} nms {name} / float32: {ratio(ts, base)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 4000])
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    gen = torch.Generator().manual_seed(0)
    for n in args.sizes:
        bench_size(n, args.classes, args.repeats, gen)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
