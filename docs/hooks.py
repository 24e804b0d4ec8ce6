"""MkDocs hooks: the pages made from the code at build time, so that they cannot drift from it.

- reference/cli.md: every command and option of `corolla.cli.parser()`, the parser that
  `corolla` itself runs (names, values, defaults and help as argparse holds them).
- reference/models/NAME/: each shipped model's card (corolla/assets/models/NAME/README.md) and
  the pictures beside it, included as they are in the package.

`cli_reference()` is also what tests/test_docs.py checks against the parser.
"""
from __future__ import annotations

import argparse
import html
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "corolla" / "assets" / "models"
CLI_PAGE = "reference/cli.md"
PICTURES = (".png", ".jpg", ".jpeg", ".gif", ".svg")  # what a card may show from its folder


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """{name: (one-line help, parser)} of the subcommands, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user gives, without --help."""
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _cell(text: str) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "&#124;")


def _value(action: argparse.Action) -> str:
    if action.nargs == 0 or not action.option_strings and action.choices is None:
        return ""
    if action.choices is not None:
        shown = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        shown = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if action.nargs in ("+", "*"):
        shown += " ..."
    return f"`{shown}`"


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default is argparse.SUPPRESS or action.nargs == 0 and default is False:
        return ""
    if isinstance(action, argparse.BooleanOptionalAction):
        return f"`--{'' if default else 'no-'}{action.dest.replace('_', '-')}`"
    return f"`{default}`"


def help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion (%(default)s and the like)
        try:
            text = text % {**vars(action), "prog": prog}
        except (KeyError, TypeError, ValueError):
            pass
    return text


def _name(action: argparse.Action) -> str:
    if action.option_strings:
        return ", ".join(f"`{option}`" for option in action.option_strings)
    return f"`{action.metavar or action.dest}`" + (" (optional)" if action.nargs in ("?", "*") else "")


def usage(parser: argparse.ArgumentParser) -> str:
    """argparse's usage line at a fixed width, whatever the terminal."""
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown of the command reference: one section per subcommand, a row per argument."""
    if parser is None:
        from corolla.cli import parser as make_parser
        parser = make_parser()
    commands = subcommands(parser)
    lines = ["# Commands and options", "",
             "Generated from `corolla.cli.parser()` when the site is built: this is the parser the "
             "`corolla` command runs, so the page cannot disagree with it. `corolla COMMAND --help` "
             "prints the same in a terminal. Every number has a bound and every refusal is one line "
             "(`corolla: error: ...`, exit status 2), before any work.", "",
             "| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{name}`](#{name}) | {_cell(text)} |" for name, (text, _) in commands.items()]
    for name, (text, sub) in commands.items():
        lines += ["", f"## `corolla {name}` {{#{name}}}", "", _cell(text) + ("." if text else ""), "",
                  "```text", usage(sub), "```", "",
                  "| argument | value | default | what it does |", "| --- | --- | --- | --- |"]
        for action in arguments(sub):
            lines.append(f"| {_name(action)} | {_value(action)} | {_default(action)} | "
                         f"{_cell(help_text(action, sub.prog))} |")
    return "\n".join(lines) + "\n"


def model_names() -> list[str]:
    return sorted(p.parent.name for p in MODELS.glob("*/README.md"))


def card_page(name: str) -> str:
    """A model card as shipped; its front matter (a model hub's metadata) becomes the page's meta."""
    return (MODELS / name / "README.md").read_text(encoding="utf-8")


# -- the MkDocs side --------------------------------------------------------------------------------

def on_files(files, config):
    from mkdocs.structure.files import File
    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    for name in model_names():
        folder = f"reference/models/{name}"
        files.append(File.generated(config, f"{folder}/index.md", abs_src_path=str(MODELS / name / "README.md")))
        for picture in sorted((MODELS / name).iterdir()):
            if picture.suffix.lower() in PICTURES and picture.is_file():
                files.append(File.generated(config, f"{folder}/{picture.name}", abs_src_path=str(picture)))
    return files
