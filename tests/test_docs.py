"""The docs: the site builds in strict mode and reads offline, the command reference is the parser's,
and the README stays short with links that resolve."""
from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

from corolla import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 200


hooks = load_script("docs", "hooks.py")


def sections(page: str) -> dict[str, str]:
    """The command reference page -> {command: its section}."""
    parts = re.split(r"^## `corolla ([a-z0-9-]+)` \{#[a-z0-9-]+\}$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_rows(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_cli_reference_has_every_command_and_every_option_of_the_parser():
    parser = cli.parser()
    commands = hooks.subcommands(parser)
    page = hooks.cli_reference(parser)
    found = sections(page)
    assert list(found) == list(commands) and len(commands) >= 18  # train, sample, ... class-grid
    for name, (_, sub) in commands.items():
        rows = table_rows(found[name])
        arguments = hooks.arguments(sub)
        assert len(rows) == len(arguments), name
        for action, row in zip(arguments, rows):
            names = action.option_strings or [action.metavar or action.dest]
            assert all(f"`{option}`" in row.split(" | ")[0] for option in names), (name, row)
            if action.help:
                assert html.escape(" ".join(hooks.help_text(action, sub.prog).split()), quote=False) in row
        assert f"[`{name}`](#{name})" in page  # the index at the top links to it
    train = found["train"]
    assert "`--preset` | `{demo,seed64,tiny}` | `seed64`" in train
    assert "`--ema-warmup`, `--no-ema-warmup`" in train
    assert "`--init-from` | `MODEL`" in train


def test_the_cli_reference_follows_whatever_the_parser_holds():
    parser = argparse.ArgumentParser(prog="corolla")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("grow", help="grow a | pipe <b>")
    p.add_argument("garden", nargs="?", help="where")
    p.add_argument("--petals", type=int, default=5, metavar="N", help="petals per flower (%(default)s)")
    p.add_argument("--colour", choices=["red", "white"], default="red")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--water", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--quiet", action="store_true")
    page = hooks.cli_reference(parser)
    assert sections(page) and list(sections(page)) == ["grow"]
    assert "| [`grow`](#grow) | grow a &#124; pipe &lt;b&gt; |" in page
    assert table_rows(sections(page)["grow"]) == [
        "| `garden` (optional) |  |  | where |",
        "| `--petals` | `N` | `5` | petals per flower (5) |",
        "| `--colour` | `{red,white}` | `red` |  |",
        "| `--seeds` | `SEEDS ...` |  |  |",
        "| `--water`, `--no-water` |  | `--water` |  |",
        "| `--quiet` |  |  |  |",
    ]
    assert "usage" not in page and "corolla grow [-h] [--petals N]" in page


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `make docs` builds it (strict), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    assert "WARNING" not in built.stderr, built.stderr[-3000:]
    return out


@pytest.mark.slow  # starts a subprocess
def test_the_site_builds_strictly_with_every_page_of_the_nav(site):
    import yaml

    def pages(nav):
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    nav = list(pages(config["nav"]))
    assert len(nav) >= 24
    for page in nav:
        assert (site / page).with_suffix(".html").is_file(), page
    built_cli = (site / "reference" / "cli.html").read_text()
    for name, (_, sub) in hooks.subcommands(cli.parser()).items():
        assert f'id="{name}"' in built_cli
        for action in hooks.arguments(sub):
            for option in action.option_strings:
                assert f"<code>{option}</code>" in built_cli, (name, option)
    for name in hooks.model_names():  # the cards, with the pictures they show
        card = (site / "reference" / "models" / name / "index.html").read_text()
        title = next(line for line in hooks.card_page(name).splitlines() if line.startswith("# "))
        assert f">{html.escape(title[2:], quote=False)}<" in card.replace("'", "'"), name
        for picture in re.findall(r'<img[^>]+src="([^"]+)"', card):
            assert (site / "reference" / "models" / name / picture).is_file(), (name, picture)
    api = (site / "reference" / "api.html").read_text()
    for documented in ("corolla.load_pretrained", "corolla.generation.generate", "corolla.training.train",
                       "corolla.samplers.dpmpp_2m", "corolla.editing.inpaint", "corolla.metrics"):
        assert f'id="{documented}"' in api, documented


def test_the_site_loads_nothing_from_the_internet_and_searches_from_disk(site):
    remote = re.compile(r"""<(?:script|img|iframe|source)\b[^>]*\ssrc=["']?(?:https?:)?//"""
                        r"""|<link\b[^>]*\shref=["']?(?:https?:)?//|@import\s+url\(["']?(?:https?:)?//""", re.I)
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 24
    for page in pages + list(site.rglob("*.css")):
        text = page.read_text(errors="replace")
        assert not remote.search(text), (page, remote.search(text).group(0))
        assert "fonts.googleapis" not in text and "googletagmanager" not in text, page
    # the offline plugin: the search index as a script, which file:// pages can load
    assert (site / "search" / "search_index.js").is_file()
    assert 'href="index.html"' in (site / "tutorials" / "generate.html").read_text().replace("../", "")


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    into_docs = [link for link in local if link.startswith("docs/")]
    assert len(into_docs) >= 15  # tutorials, how-to guides, explanation, reference, performance
    for link in local:
        path = link.split("#")[0]
        assert (ROOT / path).exists(), link
    for section in ("tutorials/", "how-to/", "explanation/", "reference/", "performance.md"):
        assert any(section in link for link in into_docs), section
