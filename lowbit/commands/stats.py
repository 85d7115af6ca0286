"""`lowbit stats`: the paper's weight statistics (Tables 3.2-3.3, Fig. 3.2) for trained runs."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from lowbit.analysis.pictures import save_histogram
    from lowbit.analysis.stats import (
        auto_min_exponent,
        format_magnitude_table,
        magnitude_table,
        select_layers,
        weight_stats,
    )
    from lowbit.commands._common import check_run_path
    from lowbit.runs import effective_weights, load_run

    if args.layers:  # before any run is loaded: a bad pattern fails in a second
        try:
            re.compile(args.layers)
        except re.error as e:
            raise ValueError(f"--layers {args.layers!r}: not a regular expression ({e})") from None
    if args.min_exp is not None and args.min_exp < 1:
        raise ValueError(f"--min-exp must be >= 1, got {args.min_exp}")
    for p in args.runs:
        check_run_path(p)
    if args.out:
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {args.out}: cannot create the folder ({e.strerror})") from None
    runs = [Path(p) for p in args.runs]
    labels = args.labels.split(",") if args.labels else [p.name for p in runs]
    if len(labels) != len(runs):
        raise ValueError(f"--labels has {len(labels)} names for {len(runs)} runs")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels: duplicate column names in {args.labels or labels}")
    weights = {lab: effective_weights(load_run(p)[2]) for lab, p in zip(labels, runs)}
    names = list(weights[labels[0]])
    chosen = select_layers(names, args.layers)
    out: dict = {"layers": {}}
    for lname in chosen:
        cols_w = {lab: w[lname] for lab, w in weights.items() if lname in w}
        k_min = args.min_exp or auto_min_exponent(list(cols_w.values()))
        table = {lab: magnitude_table(w, k_min) for lab, w in cols_w.items()}
        shape = {lab: vars(weight_stats(w)) for lab, w in cols_w.items()}
        entry = {"k_min": k_min, "table": table, "stats": shape}
        if args.out:
            png = Path(args.out) / f"hist_{lname.replace('.', '_')}.png"
            save_histogram(cols_w[labels[0]], f"{lname} ({labels[0]})", png)
            entry["histogram"] = str(png)
        out["layers"][lname] = entry
        if not args.json:
            print(f"\n### {lname}\n")
            print(format_magnitude_table(table, k_min))
            for lab, st in shape.items():
                print(f"{lab}: sparsity {100 * st['sparsity']:.2f}%, excess kurtosis "
                      f"{st['excess_kurtosis']:.3f}, skewness {st['skewness']:.3f}, "
                      f"normality p {st['normality_p']:.2e}")
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    if args.out:
        (Path(args.out) / "stats.json").write_text(json.dumps(out, indent=2, default=float))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="weight statistics of trained runs (magnitude bins, kurtosis, sparsity)",
        description="For the chosen conv layers of one or more runs (FP32 and low-bit side by "
        "side): share of weights per magnitude bin [2^-k, 2^-k+1) with exact zeros first "
        "(the paper's Tables 3.2-3.3), excess kurtosis, skewness, normality p-value and "
        "sparsity (Fig. 3.2). Quantized runs are measured on the weights the forward uses.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders written by `lowbit train`, or checkpoints inside their "
                        "checkpoints/ (ckpt-*.json); the first run's layers are listed")
    p.add_argument("--labels",
                   help="comma-separated column names, one per RUN (default: folder names)")
    p.add_argument("--layers", metavar="REGEX",
                   help="Python regular expression searched in the conv layer names, e.g. "
                        "'layer1' or 'conv1$' (default: all convs)")
    p.add_argument("--min-exp", type=int, metavar="K",
                   help="smallest magnitude bin 2^-K; smaller non-zero weights share one row "
                        "(default: automatic, per layer)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for stats.json and one histogram PNG per layer (files 0644)")
    p.add_argument("--json", action="store_true",
                   help="print the tables and statistics as JSON instead of markdown")
    p.set_defaults(func=_run)
