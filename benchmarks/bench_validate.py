"""Cost of the pre-training data check (:func:`lowbit.data.validate.validate_dataset`: parse
every annotation, read every image header) against one decode pass over the same images.

    OMP_NUM_THREADS=1 python benchmarks/bench_validate.py [DEVKIT]   # default: 200 digits

Prints per-image times, their ratio (measured in one run), the thread count and load average.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from lowbit.data.digits import generate_digits
from lowbit.data.validate import validate_dataset
from lowbit.data.voc import VOCDetection, load_image


def main() -> None:
    torch.set_num_threads(1)
    root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lowbit_bench_digits"
    if not os.path.isdir(os.path.join(root, "ImageSets")):
        generate_digits(root, train=200, test=1, size=256, workers=1)
    ds = VOCDetection(root, "trainval")
    t = time.perf_counter()
    bad = validate_dataset(ds)
    tv = time.perf_counter() - t
    fresh = VOCDetection(root, "trainval")
    t = time.perf_counter()
    for i in range(len(fresh)):
        load_image(fresh.image_path(i))
    td = time.perf_counter() - t
    n = len(ds)
    print(f"images={n} bad={len(bad)} threads={torch.get_num_threads()} "
          f"validate={1e3 * tv / n:.2f} ms/img decode={1e3 * td / n:.2f} ms/img "
          f"ratio validate/decode={tv / td:.3f} load={os.getloadavg()}")


if __name__ == "__main__":
    main()
