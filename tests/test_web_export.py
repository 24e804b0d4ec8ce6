"""`corolla export --web`: the static page samples the exported model in Chromium (Playwright
driving Debian's Chromium, as tests/test_serve.py does) and gives corolla.portable.sampling's
images for the same initial noise; onnxruntime-web is fetched once from the registry, checked
against its pinned sha512, or given with --ort; what cannot be done is one line.

The page is served by Python's own static server (http.server's handler, as `python -m
http.server` serves it), so the MIME types it gives are the ones a user gets. The tests wait on
conditions (body[data-state]), never a guessed time. onnxruntime-web's tarball is downloaded once
per module from the npm registry (25.6 MB); without the registry these tests skip, saying why.
"""
from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime", reason="corolla.portable needs onnxruntime (pip install onnxruntime)")
pytest.importorskip("onnxscript", reason="torch.onnx's exporter needs onnxscript (pip install onnx onnxscript)")
from conftest import CLASSES  # noqa: E402
from test_portable import SIZE, _checkpoint, _tiny  # noqa: E402

from corolla import samplers, schedules  # noqa: E402
from corolla.cli import main  # noqa: E402
from corolla.config import preset  # noqa: E402
from corolla.portable import folder, noise, sampling, upsampling, web  # noqa: E402
from corolla.samplers import SamplingSettings  # noqa: E402
from corolla.storage import checkpoint  # noqa: E402

WAIT_S = 180  # the longest a page may take to finish (a few seconds on an idle machine)
COUNT, STEPS, SEED = 3, 4, 3
TOLERANCE = 2 / 255  # onnxruntime-web's float32 kernels against onnxruntime's


class StaticServer:
    """Python's static file server (as `python -m http.server -d ROOT`) on a free loopback port,
    recording the paths asked for."""

    def __init__(self, root: Path):
        served = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # recorded, not printed
                served.append(self.path)

        self.served = served
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ort_tarball(tmp_path_factory) -> Path:
    """onnxruntime-web's npm tarball, downloaded once for the module."""
    try:
        payload = web._download()
    except ValueError as error:
        pytest.skip(f"the npm registry cannot be reached, and these tests need onnxruntime-web: {error}")
    path = tmp_path_factory.mktemp("ort") / f"onnxruntime-web-{web.ORT_VERSION}.tgz"
    path.write_bytes(payload)
    return path


@pytest.fixture(scope="module")
def sites(ort_tarball, tmp_path_factory) -> Path:
    """ROOT/tiny, ROOT/conditional and ROOT/attention: `corolla export --web` of an unconditional,
    a conditional and an attending (unet.attention) tiny model."""
    root = tmp_path_factory.mktemp("sites")
    for name, model in (("tiny", _tiny()), ("conditional", _tiny(CLASSES, seed=5)),
                        ("attention", _tiny(seed=3, attention=True))):
        saved = _checkpoint(model, tmp_path_factory.mktemp("checkpoint") / name)
        assert main(["export", str(saved), "--web", "--out", str(root / name), "--ort", str(ort_tarball)]) == 0
    # ROOT/cascade: the unconditional tiny model (hand-over scale 1.04) after an 8 px layout model of the species
    made = tmp_path_factory.mktemp("checkpoint")
    model, small = _tiny(), _tiny(CLASSES, seed=11)
    config = preset("tiny").replace(unet=dict(model.ema_network.config.__dict__), data={"image_size": SIZE},
                                    sampling={"handover_eps_scale": 1.04})
    layout_config = preset("tiny").replace(unet=dict(small.ema_network.config.__dict__),
                                           data={"image_size": SIZE // 2, "class_counts": (3, 0, 1)})
    saved = checkpoint.save_pretrained(made / "model", model, config)
    layout = checkpoint.save_pretrained(made / "layout", small, layout_config)
    assert main(["export", str(saved), "--web", "--layout", str(layout), "--layout-start", "0.7",
                 "--out", str(root / "cascade"), "--ort", str(ort_tarball)]) == 0
    return root


@pytest.fixture(scope="module")
def server(sites):
    served = StaticServer(sites)
    yield served
    served.stop()


def open_page(browser, url: str, until: str = "done, error"):
    """A fresh page at `url`, its requests recorded, once body[data-state] is one of `until`."""
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_S * 1000)
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(url)
    page.wait_for_selector(", ".join(f"body[data-state={state.strip()}]" for state in until.split(",")))
    return page


def write_noise(site: Path, seed: int = SEED) -> np.ndarray:
    """The initial noise corolla's samplers start image 0..COUNT-1 of `seed` from, as noise.bin."""
    spec = folder.read(site)
    generators = [noise.image_generator(seed, i, spec.noise_kernel) for i in range(COUNT)]
    initial = noise.draw_noise(generators, (spec.channels, spec.image_size, spec.image_size))
    initial.astype("<f4").tofile(site / "noise.bin")
    return initial


def page_images(page) -> np.ndarray:
    assert page.evaluate("document.body.dataset.state") == "done", page.text_content("#message")
    return np.float32(page.evaluate("Array.from(window.corollaImages)")).reshape(COUNT, 3, SIZE, SIZE)


def downloaded_png(page) -> np.ndarray:
    """The PNG behind the page's download link, as the page offers it."""
    payload = page.evaluate("""async () => {
        const response = await fetch(document.querySelector('#download').href);
        return Array.from(new Uint8Array(await response.arrayBuffer())); }""")
    return np.asarray(Image.open(io.BytesIO(bytes(payload))).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_the_page_gives_the_portable_samplers_images_and_loads_nothing_from_elsewhere(browser, server, sites,
                                                                                       sampler):
    site = sites / "tiny"
    initial = write_noise(site)
    page = open_page(browser, f"{server.url}/tiny/?seed={SEED}&n={COUNT}&steps={STEPS}&sampler={sampler}"
                              f"&noise=noise.bin")
    try:
        got = page_images(page)
        expected = sampling.load(site, threads=1).sample_from_noise(initial, STEPS, sampler)
        assert np.abs(got - expected).max() <= TOLERANCE
        assert np.abs(expected[0] - expected[1]).mean() > 0.01  # images that differ, not a constant
        assert page.text_content("#message") == f"done: {COUNT} images, seed {SEED}, {STEPS} steps, {sampler}"
        # the download: the images side by side on a 2-pixel white border
        png = downloaded_png(page)
        assert png.shape == (SIZE + 4, COUNT * (SIZE + 2) + 2, 3)
        for i in range(COUNT):
            shown = png[2:2 + SIZE, 2 + i * (SIZE + 2):2 + i * (SIZE + 2) + SIZE]
            assert np.abs(shown - np.round(expected[i].transpose(1, 2, 0) * 255)).max() <= 2
        elsewhere = [url for url in page.requests if not url.startswith((server.url, "data:", "blob:"))]
        assert elsewhere == []
        assert "/tiny/ort-wasm-simd-threaded.wasm" in server.served  # the runtime came from the folder
    finally:
        page.context.close()


@pytest.mark.slow
def test_the_page_runs_a_network_with_attention_as_onnxruntime_does(browser, server, sites):
    site = sites / "attention"
    initial = write_noise(site)
    page = open_page(browser, f"{server.url}/attention/?seed={SEED}&n={COUNT}&steps={STEPS}&noise=noise.bin")
    try:
        expected = sampling.load(site, threads=1).sample_from_noise(initial, STEPS, "ddim")
        assert np.abs(page_images(page) - expected).max() <= TOLERANCE
    finally:
        page.context.close()


@pytest.mark.slow
def test_the_page_scales_the_noise_as_the_export_says(browser, server, sites):
    """sampler.json's eps_scale (the model's own epsilon scaling) divides the page's predicted noise
    with ddim as it divides the portable sampler's, and its multistep_eps_scale with dpmpp_2m."""
    site = sites / "scaled"
    shutil.copytree(sites / "tiny", site, dirs_exist_ok=True)
    spec = json.loads((site / folder.SAMPLER_FILE).read_text())
    (site / folder.SAMPLER_FILE).write_text(json.dumps({**spec, "eps_scale": 1.05, "multistep_eps_scale": 0.95}))
    initial = write_noise(site)
    portable = sampling.load(site, threads=1)
    for sampler, scale in (("ddim", 1.05), ("dpmpp_2m", 0.95)):
        page = open_page(browser, f"{server.url}/scaled/?seed={SEED}&n={COUNT}&steps={STEPS}&sampler={sampler}"
                                  f"&noise=noise.bin")
        try:
            expected = portable.sample_from_noise(initial, STEPS, sampler)
            assert np.array_equal(expected, portable.sample_from_noise(initial, STEPS, sampler, eps_scale=scale))
            assert np.abs(expected - portable.sample_from_noise(initial, STEPS, sampler, eps_scale=1.0)).mean() > 0.005
            assert np.abs(page_images(page) - expected).max() <= TOLERANCE
        finally:
            page.context.close()


@pytest.mark.slow
def test_the_page_guides_towards_the_species_asked_as_the_portable_sampler_does(browser, server, sites):
    site = sites / "conditional"
    initial = write_noise(site)
    page = open_page(browser, f"{server.url}/conditional/?seed={SEED}&n={COUNT}&steps={STEPS}&sampler=dpmpp_2m"
                              f"&class={CLASSES[1]}&guidance=2.5&noise=noise.bin")
    try:
        got = page_images(page)
        portable = sampling.load(site, threads=1)
        labels = np.full(COUNT, 1, np.int64)
        expected = portable.sample_from_noise(initial, STEPS, "dpmpp_2m", labels=labels, guidance=2.5)
        assert np.abs(got - expected).max() <= TOLERANCE
        unguided = portable.sample_from_noise(initial, STEPS, "dpmpp_2m")
        assert np.abs(got - unguided).mean() > 0.005  # the species changed the images
        # the form offers the species and shows what the query asked
        assert page.locator("#class option").all_text_contents() == [
            "(none: unconditional)", "(every species, at the data set's mix)", *CLASSES]
        assert (page.input_value("#class"), page.input_value("#guidance")) == ("1", "2.5")
        assert page.text_content("#message").endswith(f", {CLASSES[1]} at guidance 2.5")
    finally:
        page.context.close()


@pytest.mark.slow
def test_the_page_draws_each_species_at_the_training_mix_and_guides_it_as_the_portable_sampler(browser, server,
                                                                                               sites):
    """random-class: each image's species drawn from the export's class_mix (3, 0, 1: never the
    second), from its own stream of the page; the images are the portable sampler's for those species."""
    site = sites / "conditional"
    initial = write_noise(site)
    page = open_page(browser, f"{server.url}/conditional/?seed={SEED}&n={COUNT}&steps={STEPS}&random-class"
                              f"&guidance=2&noise=noise.bin")
    try:
        got, labels = page_images(page), page.evaluate("window.corollaLabels")
        portable = sampling.load(site, threads=1)
        expected = portable.sample_from_noise(initial, STEPS, labels=np.int64(labels), guidance=2.0)
        assert np.abs(got - expected).max() <= TOLERANCE
        assert [page.get_attribute(f"#images canvas >> nth={i}", "title") for i in range(COUNT)] == [
            CLASSES[label] for label in labels]  # each image says its species
        assert (page.input_value("#class"), page.text_content("#message").split(", ", 4)[-1]) == (
            "mix", "every species at the data set's mix at guidance 2")
        drawn = np.bincount(page.evaluate("""async () => {
            const {imageClass} = await import('./sampler.js');
            return Array.from({length: 4000}, (_, i) => imageClass(5, i, [3, 0, 1])); }"""), minlength=3)
        assert drawn[1] == 0 and abs(drawn[0] / 4000 - 0.75) < 0.03  # 0.75 +- 4.4 standard deviations
        assert page.evaluate("""async () => {
            const {imageClass} = await import('./sampler.js');
            return [imageClass(5, 7, [3, 0, 1]), imageClass(5, 7, [3, 0, 1])]; }""") in ([0, 0], [2, 2])  # seeded
    finally:
        page.context.close()
    for where, message in (("tiny/?seed=0&n=1&random-class", "this model is not class-conditional"),
                           (f"conditional/?seed=0&n=1&random-class&class={CLASSES[0]}", "not both")):
        page = open_page(browser, f"{server.url}/{where}")
        try:
            assert page.evaluate("document.body.dataset.state") == "error"
            assert message in page.text_content("#message.error")
        finally:
            page.context.close()


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_the_page_draws_an_exported_cascade_as_the_portable_sampler_does(browser, server, sites, sampler):
    """A cascade's page: each image's layout noise, then its hand-over noise (noise.bin holds both);
    the species menu is the conditional layout model's, and the unconditional model finishes."""
    site = sites / "cascade"
    portable = sampling.load(site, threads=1)
    generators = [noise.image_generator(SEED, i, portable.spec.noise_kernel) for i in range(COUNT)]
    first, second = noise.draw_noise(generators, portable.layout.shape), noise.draw_noise(generators, portable.shape)
    np.concatenate([first.reshape(COUNT, -1), second.reshape(COUNT, -1)], axis=1).astype("<f4").tofile(
        site / "noise.bin")
    page = open_page(browser, f"{server.url}/cascade/?seed={SEED}&n={COUNT}&steps={STEPS}&sampler={sampler}"
                              f"&class={CLASSES[2]}&guidance=2&noise=noise.bin")
    try:
        layouts = portable.layout.sample_from_noise(first, STEPS, sampler, labels=np.full(COUNT, 2), guidance=2.0)
        handed = samplers.noised(portable.schedule, portable.normalize(upsampling.upsample(layouts, SIZE)), second,
                                 0.7)
        expected = portable.sample_from_noise(handed, STEPS, sampler, start=0.7)  # at the hand-over scale
        assert np.array_equal(expected, portable.generate(COUNT, SamplingSettings(steps=STEPS, seed=SEED,
                                                                                  sampler=sampler),
                                                          classes=CLASSES[2], guidance=2.0))
        assert np.abs(page_images(page) - expected).max() <= TOLERANCE
        assert np.abs(expected - portable.sample_from_noise(handed, STEPS, sampler, start=0.7, eps_scale=1.0)
                      ).mean() > 0.002  # the hand-over scale matters
        assert page.locator("#class option").all_text_contents() == [
            "(none: unconditional)", "(every species, at the data set's mix)", *CLASSES]
        assert page.text_content("#message").endswith(f", {CLASSES[2]} at guidance 2")
        # the page's bicubic upsampling is numpy's (and so torch's), overshoots clamped
        small = np.random.default_rng(0).random((2, 3, 5, 5), dtype=np.float32)
        small[0, 0] = np.arange(25).reshape(5, 5) % 2
        got = page.evaluate("""async (data) => {
            const {upsampleBicubic} = await import('./sampler.js');
            return Array.from(upsampleBicubic(Float32Array.from(data), 6, 5, 12)); }""", small.ravel().tolist())
        assert np.abs(np.float32(got).reshape(2, 3, 12, 12) - upsampling.upsample(small, 12)).max() <= 1e-6
    finally:
        page.context.close()


@pytest.mark.slow
def test_the_pages_grids_are_pythons_and_its_own_noise_is_seeded_unit_gaussian(browser, server):
    page = open_page(browser, f"{server.url}/tiny/", until="ready")
    try:
        grids = page.evaluate("""async () => {
            const {GRIDS, SCHEDULES} = await import('./sampler.js');
            const out = {};
            for (const schedule of Object.keys(SCHEDULES))
                for (const grid of Object.keys(GRIDS))
                    for (const steps of [1, 4, 25])
                        out[`${schedule} ${grid} ${steps}`] = GRIDS[grid](steps, SCHEDULES[schedule]);
            return out; }""")
        for key, got in grids.items():
            name, grid, steps = key.split()
            expected = samplers.get_grid(grid, int(steps), schedules.get(name), backend="numpy")
            assert np.allclose(got, expected, rtol=0, atol=1e-9), key
        draws = page.evaluate("""async () => {
            const {imageNoise} = await import('./sampler.js');
            return [0, 1].flatMap((seed) => [0, 1].map((i) => Array.from(imageNoise(seed, i, 40000)))); }""")
        draws = np.float32(draws)
        assert np.array_equal(draws[0], page.evaluate("""async () =>
            Array.from((await import('./sampler.js')).imageNoise(0, 0, 40000))"""))  # seeded: the same again
        for values in draws:
            assert abs(values.mean()) < 0.03 and abs(values.std() - 1) < 0.03
        assert np.abs(np.corrcoef(draws)[np.triu_indices(4, 1)]).max() < 0.03  # streams unrelated
    finally:
        page.context.close()


@pytest.mark.slow
def test_the_form_generates_with_the_pages_noise_and_refuses_bad_values_in_a_message(browser, server):
    page = open_page(browser, f"{server.url}/tiny/", until="ready")
    try:
        assert page.is_hidden("#class-field")  # an unconditional model has no species
        for field, value, message in (("#seed", "-1", "seed must be a whole number from 0 to 4294967295"),
                                      ("#count", "2.5", "count must be a whole number from 1 to 64"),
                                      ("#steps", "0", "steps must be a whole number from 1 to 1000")):
            page.fill(field, value)
            page.click("#generate")
            expect(page.locator("#message.error")).to_have_text(message)
            assert page.evaluate("document.body.dataset.state") == "error"
            page.fill(field, {"#seed": "7", "#count": "2", "#steps": "2"}[field])
        page.click("#generate")
        page.wait_for_selector("body[data-state=done]")
        first = np.float32(page.evaluate("Array.from(window.corollaImages)"))
        assert first.shape == (2 * 3 * SIZE * SIZE,) and np.isfinite(first).all()
        assert not page.is_hidden("#download") and page.get_attribute("#download", "href").startswith("blob:")
        page.evaluate("document.body.dataset.state = 'ready'")  # to see the next run finish
        page.click("#generate")
        page.wait_for_selector("body[data-state=done]")
        assert np.array_equal(np.float32(page.evaluate("Array.from(window.corollaImages)")), first)  # same seed
    finally:
        page.context.close()


def expect(locator):
    """Playwright's waiting assertions (imported late: playwright is a test extra)."""
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def test_onnxruntime_web_is_downloaded_once_checked_and_cached(ort_tarball, tmp_path, monkeypatch):
    registry = tmp_path / "registry"
    (registry / "onnxruntime-web" / "-").mkdir(parents=True)
    (registry / "onnxruntime-web" / "-" / ort_tarball.name).write_bytes(ort_tarball.read_bytes())
    local = StaticServer(registry)
    try:
        monkeypatch.setattr(web, "REGISTRY", local.url)
        cached = web.cached_ort()
        assert cached == web.cache_dir() / f"onnxruntime-web-{web.ORT_VERSION}"
        assert sorted(p.name for p in cached.iterdir()) == sorted(web.ORT_FILES.values())
        assert web.cached_ort() == cached and len(local.served) == 1  # the second time from the cache
    finally:
        local.stop()
    # a tarball that is not the pinned one is refused and nothing is cached
    monkeypatch.setenv("COROLLA_CACHE_DIR", str(tmp_path / "other"))
    monkeypatch.setattr(web, "_download", lambda: b"not the tarball")
    with pytest.raises(ValueError, match=f"is not onnxruntime-web {web.ORT_VERSION}'s npm tarball"):
        web.cached_ort()
    assert not (tmp_path / "other" / f"onnxruntime-web-{web.ORT_VERSION}").exists()


def test_the_cache_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("COROLLA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert web.cache_dir() == tmp_path / "corolla"


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _package_folder(path: Path, version: str) -> Path:
    (path / "package" / "dist").mkdir(parents=True)
    (path / "package" / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": version}))
    return path


def test_what_the_web_export_cannot_do_is_one_line_and_writes_nothing(ort_tarball, tmp_path, capsys, monkeypatch):
    saved = _checkpoint(_tiny(), tmp_path / "checkpoint")
    monkeypatch.setattr(web, "REGISTRY", f"http://127.0.0.1:{_closed_port()}")
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8b not a tarball")
    incomplete = _package_folder(tmp_path / "incomplete", web.ORT_VERSION)
    out = tmp_path / "site"
    cases = [(["--web", "--onnx"], "--web writes its own float32 ONNX export: leave out --onnx"),
             (["--web", "--float32"], "leave out --float32"),
             (["--ort", str(ort_tarball)], "--ort is for --web"),
             (["--web"], f"cannot download onnxruntime-web from {web.tarball_url()} ("),
             (["--web", "--ort", str(junk)], f"is not onnxruntime-web {web.ORT_VERSION}'s npm tarball"),
             (["--web", "--ort", str(tmp_path / "missing")], "neither onnxruntime-web's .tgz nor its unpacked"),
             (["--web", "--ort", str(_package_folder(tmp_path / "old", "1.17.0"))], "holds onnxruntime-web 1.17.0"),
             (["--web", "--ort", str(incomplete)], "cannot copy dist/ort.wasm.min.js")]
    for options, message in cases:
        assert main(["export", str(saved), "--out", str(out), *options]) == 2, options
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (options, err)
        if options == ["--web"]:
            assert "--ort" in err
    assert not (out / folder.ONNX_FILE).exists()


def test_an_unpacked_package_serves_as_the_tarball(ort_tarball, tmp_path):
    with tarfile.open(ort_tarball) as archive:  # what `tar xzf` leaves, of the files the page needs
        for name in ["package.json", *(f"dist/{name}" for name in web.ORT_FILES)]:
            (tmp_path / "unpacked" / "package" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "unpacked" / "package" / name).write_bytes(archive.extractfile(f"package/{name}").read())
    given = tmp_path / "given"
    given.mkdir()
    web.given_ort(tmp_path / "unpacked", given)  # the folder tar leaves, holding package/
    for name, written in web.ORT_FILES.items():
        assert (given / written).read_bytes() == (tmp_path / "unpacked" / "package" / "dist" / name).read_bytes()
