"""The screenshots of the web page for the docs, taken from the real page (`make figures` runs it).

    python docs/screenshot.py docs/figures/serve.png [--model flowers64]

Starts `corolla serve` with a shipped model on a free loopback port, as a user would, opens the
page in Debian's Chromium (Playwright), asks for 16 images of seed 0 in 20 steps, waits for them,
opens the first and writes a PNG of the page; then the same page at a phone's width (390 px) as
OUT-phone.png. The training tab shows the recorded loss curves of the run that made flowers64
(docs/flowers64/metrics.jsonl).
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 300_000  # a generous bound on each step of the page on a busy CPU; each ends far sooner


def start_server(model: str, run: Path) -> tuple[subprocess.Popen, str]:
    """`corolla serve --port 0`; returns the process and the address it printed."""
    process = subprocess.Popen([sys.executable, "-m", "corolla", "serve", "--model", model, "--port", "0",
                                "--run", str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:  # the address line comes once the model is loaded
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return process, found.group(1)
    process.wait()
    raise SystemExit(f"corolla serve stopped before serving (exit status {process.returncode})")


def fill(page, selector: str, value) -> None:
    field = page.locator(f"{selector} input").first
    field.fill(str(value))
    field.press("Enter")


def take(page, url: str, out: Path) -> None:
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.wait_for_selector("#generate-button")
    fill(page, "#seed", 0)
    fill(page, "#count", 16)
    fill(page, "#steps", 20)
    page.click("#generate-button")
    page.wait_for_selector("#generate-status:has-text('done')")
    page.locator("#results img").first.click()  # enlarged, with its recipe
    page.wait_for_selector("#chosen-recipe:has-text('seed 0')")
    page.screenshot(path=str(out), full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="flowers64", help="a shipped model (default flowers64)")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"needs Debian's Chromium at {CHROMIUM}: apt-get install -y chromium (make chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as temporary:
        run = Path(temporary) / args.model  # the panel names the run by its folder
        run.mkdir()
        shutil.copy(ROOT / "docs" / "flowers64" / "metrics.jsonl", run)
        server, url = start_server(args.model, run)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    take(browser.new_page(viewport={"width": 1100, "height": 800}), url, args.out)
                    phone = args.out.with_name(f"{args.out.stem}-phone{args.out.suffix}")
                    take(browser.new_page(viewport={"width": 390, "height": 844}), url, phone)
                finally:
                    browser.close()
        finally:
            server.send_signal(signal.SIGINT)  # corolla serve stops on Ctrl-C
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"wrote {args.out} and its phone-width twin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
