"""`lowbit <verb>`: the command-line entry point.

Thin by design: each verb lives in ``lowbit/commands/<verb>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``. Errors derived from :class:`LowbitError`, ``ValueError``,
``FileNotFoundError`` are printed as one line ``error: ...`` with exit code 2.

Computing verbs (:data:`COMPUTING_VERBS`) get ``--threads N`` here, on every leaf parser (a
verb's own ``--threads`` is kept), applied through :func:`lowbit.runtime.set_threads` before
the verb runs, with one line on stderr giving the threads and the load average at start.

Only the verb being run is imported: ``lowbit voc-eval`` never loads torch (``--help`` and
unknown verbs import all of them).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown in `lowbit --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "lowbit.commands.demo",
    "lowbit.commands.pretrain",
    "lowbit.commands.bench",
    "lowbit.commands.data",
    "lowbit.commands.voc_eval",
    "lowbit.commands.train",
    "lowbit.commands.eval",
    "lowbit.commands.export",
    "lowbit.commands.stats",
    "lowbit.commands.compare", "lowbit.commands.datafree", "lowbit.commands.sweep_mu",
)

#: Verbs that compute with torch / onnxruntime: they take ``--threads`` (see the module doc).
COMPUTING_VERBS: frozenset[str] = frozenset({
    "train", "eval", "demo", "pretrain", "compare", "datafree", "sweep-mu", "export", "bench",
    "stats",
})  # fmt: skip


def _verb(module: str) -> str:
    """``lowbit.commands.sweep_mu`` -> ``sweep-mu`` (each module registers the verb it names)."""
    return module.rsplit(".", 1)[1].replace("_", "-")


def _threads_arg(text: str) -> int:
    from lowbit.runtime import parse_threads

    try:
        return parse_threads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--threads ")) from None


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` itself, or the leaves below its sub-verbs (``bench quantizers``, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    leaves: list[argparse.ArgumentParser] = []
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
            leaves.extend(_leaf_parsers(child))
    return leaves


def _add_threads(parser: argparse.ArgumentParser) -> None:
    for leaf in _leaf_parsers(parser):
        if "--threads" not in leaf._option_string_actions:
            leaf.add_argument(
                "--threads", type=_threads_arg, default=None, metavar="N",
                help="torch and onnxruntime threads for this run (default: torch's, one per "
                "physical core; on a shared or busy machine 1 avoids OpenMP spin-wait "
                "collapse, see docs/threads.md)",
            )
        leaf.set_defaults(_computing=True)


def build_parser(only: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with every registered verb (or the modules in ``only``)."""
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="lowbit: quantize and train low bit-width CNNs and object detectors.",
    )
    from lowbit import __version__

    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for name in COMMAND_MODULES if only is None else [m for m in COMMAND_MODULES if m in only]:
        importlib.import_module(name).register(sub)
    for verb, p in sub.choices.items():
        if verb in COMPUTING_VERBS:
            _add_threads(p)
    return parser


def _modules_for(argv: Sequence[str]) -> list[str] | None:
    """The one command module needed for ``argv`` (its first word is a verb), else None."""
    if argv and not argv[0].startswith("-"):
        hit = [m for m in COMMAND_MODULES if _verb(m) == argv[0]]
        if hit:
            return hit
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_modules_for(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 0
    try:
        if getattr(args, "_computing", False):
            from lowbit.runtime import set_threads, start_line

            set_threads(getattr(args, "threads", None))
            print(start_line(), file=sys.stderr, flush=True)
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
