import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from corolla.data import imagefolder

# Tests use tiny networks, where one thread is as fast as two and several pytest processes
# (or a busy machine) do not oversubscribe the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache, never the user's ~/.cache/corolla."""
    monkeypatch.setenv("COROLLA_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def make_flowers(tmp_path_factory):
    """make_flowers(n) -> a folder holding the first n bundled flowers (made once per n), without
    the bundle's deliberately empty image_00303.jpg."""
    folders = {}

    def make(count: int):
        if count not in folders:
            folders[count] = tmp_path_factory.mktemp(f"flowers{count}")
            for path in [p for p in sorted(imagefolder.bundled_dir().glob("*.jpg")) if p.stat().st_size][:count]:
                shutil.copy(path, folders[count] / path.name)
        return folders[count]
    return make


CLASSES = ("daisy", "rose", "sunflower")


def load_script(*parts: str):
    """A script of the repository that is not a package module (a benchmark, the docs' hooks),
    loaded from its path below the repository root as a module."""
    path = Path(__file__).parent.parent.joinpath(*parts)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_labels_matter(network: torch.nn.Module, generator: torch.Generator) -> None:
    """Draw a network's head, class shifts and scales, noise shifts and attention output at random
    (all start at zero), so that an untrained network's output is not zero and depends on the label."""
    with torch.no_grad():
        network.head.weight.normal_(0.0, 0.2, generator=generator)
        for name, weight in network.named_parameters():
            if any(part in name for part in ("class_shift", "class_scale", "noise_shift", "attention.out")):
                weight.normal_(0.0, 0.5, generator=generator)


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory):
    """DIR/<class>/: the first 24 bundled flowers dealt in turn into the 3 CLASSES folders."""
    root = tmp_path_factory.mktemp("classes")
    flowers = [p for p in sorted(imagefolder.bundled_dir().glob("*.jpg")) if p.stat().st_size][:24]
    for i, path in enumerate(flowers):
        (root / CLASSES[i % 3]).mkdir(exist_ok=True)
        shutil.copy(path, root / CLASSES[i % 3] / path.name)
    return root


def pytest_collection_modifyitems(items):
    """A test that drives Chromium (the `browser` fixture) is slow, as the subprocess ones are."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser(request):
    """Debian's Chromium driven by Playwright; its waiting assertions wait up to the test module's WAIT_S."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    sync_api.expect.set_options(timeout=request.module.WAIT_S * 1000)
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium); "
                    f"the browser tests need it")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
