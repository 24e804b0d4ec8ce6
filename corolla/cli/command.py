"""The `corolla` command: builds the parser from the command families and turns what the library
raises into one line and an exit status."""
from __future__ import annotations

import importlib
import signal
import sys
import warnings

from .. import limits
from ..training import Interrupted, TrainingError
from . import EXIT_INTERRUPTED, INTERRUPTED
from .options import EXIT_BAD_INPUT, Parser

# The command families: each module's register(subparsers) adds its commands, whose parsers
# set_defaults(func=...).
FAMILIES = ("train", "sample", "classes", "edit", "figures", "evaluate", "models", "download", "serve")

# What a failure means for the command, first match first: (exception types, exit status, prefix).
# Bad input (ValueError covers DataError and CheckpointError) is 2, as argparse's refusals are.
EXIT_STATUS: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    ((ValueError,), EXIT_BAD_INPUT, "error: "),
    ((TrainingError,), 1, "error: "),
    ((OSError,), 1, "error: "),  # a full disk, a vanished folder
    ((Interrupted,), EXIT_INTERRUPTED, ""),
    ((KeyboardInterrupt,), EXIT_INTERRUPTED, ""),
)


def parser() -> Parser:
    p = Parser(prog="corolla", description="Train and sample denoising diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        importlib.import_module(f"{__package__}.{family}").register(sub)
    return p


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds as Ctrl-C does: a file being written removes its temporary


def _failure(error: BaseException) -> tuple[int, str] | None:
    """(exit status, the line to print) for an error the command reports, else None (a bug: raise)."""
    for types, status, prefix in EXIT_STATUS:
        if isinstance(error, types):
            return status, INTERRUPTED if isinstance(error, KeyboardInterrupt) else f"corolla: {prefix}{error}"
    message = limits.out_of_memory(error) if isinstance(error, (MemoryError, RuntimeError)) else None
    return None if message is None else (EXIT_BAD_INPUT, f"corolla: error: {message}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:  # argparse refused the arguments (one line, Parser.error) or printed --help
        return exit.code
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *rest: f"corolla: warning: {message}\n"
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return args.func(args)
    except BaseException as error:
        failure = _failure(error)
        if failure is None:
            raise
        print(failure[1], file=sys.stderr)
        return failure[0]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
