"""PyTorch at 1 vs 2 intra-op threads, alone and next to one busy process (oversubscription).

Two CPU workloads, each timed in its own child process at ``torch.set_num_threads(T)``:

* ``small``: 300 forward passes of a 3x3 conv (batch 1, 32 -> 32 channels, 28x28) -- many
  short parallel regions, where OpenMP workers spin-wait between ops;
* ``large``: 3 forward passes of a 3x3 conv (batch 8, 64 -> 64 channels, 56x56).

Each (workload, threads) pair runs with no competitor, then with one extra process spinning on
one core (a pure-Python busy loop) for the whole measurement; rounds alternate and the median
is kept. Printed: seconds, the ratio 2 threads / 1 thread in each condition, thread settings
and the load average before and after. Rerun on an idle machine:

    .venv/bin/python benchmarks/bench_threads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import torch
threads, which = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(threads)
torch.manual_seed(0)
if which == "small":
    x, w, n = torch.randn(1, 32, 28, 28), torch.randn(32, 32, 3, 3), 300
else:
    x, w, n = torch.randn(8, 64, 56, 56), torch.randn(64, 64, 3, 3), 3
f = torch.nn.functional.conv2d
with torch.no_grad():
    for _ in range(3):
        f(x, w, padding=1)
    t = time.perf_counter()
    for _ in range(n):
        f(x, w, padding=1)
    dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "threads": torch.get_num_threads()}))
"""

BUSY = "while True:\n    pass\n"


def _time(threads: int, which: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(threads), which], capture_output=True,
                       text=True, check=True, env=env)
    out = json.loads(r.stdout)
    assert out["threads"] == threads
    return float(out["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load0 = os.getloadavg()
    res: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for cond in ("alone", "+1 busy process"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if cond != "alone" else None
            try:
                for which in ("small", "large"):
                    for t in (1, 2):
                        res.setdefault((cond, which, t), []).append(_time(t, which))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    load1 = os.getloadavg()
    print(f"torch CPU, {os.cpu_count()} CPUs; load average before {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; median of "
          f"{args.rounds} rounds")
    print(f"{'condition':<18} {'workload':<6} {'1 thread':>9} {'2 threads':>10} {'2T / 1T':>8}")
    for cond in ("alone", "+1 busy process"):
        for which in ("small", "large"):
            a = statistics.median(res[(cond, which, 1)])
            b = statistics.median(res[(cond, which, 2)])
            print(f"{cond:<18} {which:<6} {a:8.3f}s {b:9.3f}s {b / a:7.2f}x")


if __name__ == "__main__":
    main()
