"""`lowbit <verb>`: the command-line entry point.

Thin by design: each verb lives in ``lowbit/commands/<verb>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``. Errors derived from :class:`LowbitError`, ``ValueError``,
``FileNotFoundError`` are printed as one line ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown in `lowbit --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "lowbit.commands.demo",
    "lowbit.commands.bench",
    "lowbit.commands.data",
    "lowbit.commands.voc_eval",
    "lowbit.commands.train",
    "lowbit.commands.eval",
    "lowbit.commands.export",
    "lowbit.commands.stats",
    "lowbit.commands.compare", "lowbit.commands.datafree", "lowbit.commands.sweep_mu",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered verb."""
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="lowbit: quantize and train low bit-width CNNs and object detectors.",
    )
    from lowbit import __version__

    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, RuntimeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
