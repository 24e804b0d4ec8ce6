"""The `corolla` command: one module per family of commands (train, sample, classes, edit,
figures, evaluate, models, download, serve), the options they share in options, and main."""
from .main import main, parser

__all__ = ["main", "parser"]
