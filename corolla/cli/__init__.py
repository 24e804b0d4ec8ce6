"""The `corolla` command: one module per family of commands (train, sample, classes, edit,
figures, evaluate, models, download, serve), the options they share in options, the parser and
the table from errors to exit statuses in command.

main and parser import the command line (and with it torch) only when called, so that Ctrl-C
while it loads ends as any Ctrl-C does: one line and exit status 130, no traceback."""
from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # Ctrl-C, or SIGTERM (the shell's 128 + SIGINT)
INTERRUPTED = "corolla: interrupted"


def main(argv: list[str] | None = None) -> int:
    try:
        from .command import main as run
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    return run(argv)


def parser():
    """The argparse parser of every command (command.parser)."""
    from .command import parser as make
    return make()


__all__ = ["main", "parser"]
