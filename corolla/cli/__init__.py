"""The `corolla` command: one module per family of commands (train, sample, classes, edit,
figures, evaluate, models, download, serve), the options they share in options, the parser and
the table from errors to exit statuses in command.

main and parser import the command line (and with it torch) only when called, so that Ctrl-C
while it loads ends as any Ctrl-C does: one line and exit status 130, no traceback. console is the
installed `corolla` command and `python -m corolla`."""
from __future__ import annotations

import os
import sys

from ..heap import keep_freed_memory

EXIT_INTERRUPTED = 130  # Ctrl-C, or SIGTERM (the shell's 128 + SIGINT)
INTERRUPTED = "corolla: interrupted"


def main(argv: list[str] | None = None) -> int:
    try:
        from .command import main as run
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    return run(argv)


def console() -> None:
    """main in a process of its own, then exit with its status. The process keeps the memory it frees
    for reuse (corolla.heap: sampling and training 10-30 % faster on a 2-core EPYC); main alone,
    as tests and Python callers run it, leaves the process's allocator as it is. Interrupted,
    the process ends at once: every `finally` of the command has run by then (temporaries
    removed, checkpoints closed), but threads a library left working (torch.compile's pool of
    compiler threads, waiting on g++) would keep the interpreter alive, silently, until their
    work ends."""
    keep_freed_memory()
    status = main()
    if status == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def parser():
    """The argparse parser of every command (command.parser)."""
    from .command import parser as make
    return make()


__all__ = ["console", "main", "parser"]
