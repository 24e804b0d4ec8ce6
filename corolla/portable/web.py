"""The web export: a static folder that samples an exported model in the browser.

build(model, out, image_size) writes the ONNX export (corolla.portable.export: denoiser.onnx and
sampler.json), the page (index.html, app.js, sampler.js from corolla/portable/web/) and the
files of onnxruntime-web's WASM backend, so that any static file host serves a page that
generates images on the visitor's CPU, fetching nothing from elsewhere.

onnxruntime-web comes from the npm registry as the tarball of ORT_VERSION, checked against the
registry's sha512 pinned here, downloaded once into the cache folder (COROLLA_CACHE_DIR, else
$XDG_CACHE_HOME/corolla, else ~/.cache/corolla) and copied from there; `ort` (a .tgz or its
unpacked folder) gives it offline instead. Only the plain WASM CPU backend is copied: its
loader, its runtime module and its .wasm. The runtime module is an ES module named .mjs in the
package; it is written as .js, a name every static server (python -m http.server before Python
3.12 included) serves with a JavaScript MIME type, which browsers require of modules.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .export import export_onnx

ORT_VERSION = "1.23.2"
ORT_INTEGRITY = "sha512-T09JUtMn+CZLk3mFwqiH0lgQf+4S7+oYHHtk6uhaYAAJI95bTcKi5bOOZYwORXfS/RLZCjDDEXGWIuOCAFlEjg=="
REGISTRY = "https://registry.npmjs.org"
DOWNLOAD_TIMEOUT_S = 60
MAX_TARBALL_BYTES = 200 * 2 ** 20  # the 1.23.2 tarball is 25.6 MB
# the package's dist/ file -> its name in the folder (module docstring: why .mjs becomes .js)
ORT_FILES = {"ort.wasm.min.js": "ort.wasm.min.js",
             "ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.js",
             "ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm"}
PAGE_FILES = ("index.html", "app.js", "sampler.js")


def tarball_url() -> str:
    return f"{REGISTRY}/onnxruntime-web/-/onnxruntime-web-{ORT_VERSION}.tgz"


def cache_dir() -> Path:
    """corolla's cache folder: COROLLA_CACHE_DIR, else $XDG_CACHE_HOME/corolla, else ~/.cache/corolla."""
    if os.environ.get("COROLLA_CACHE_DIR"):
        return Path(os.environ["COROLLA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corolla"


def _integrity(payload: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(payload).digest()).decode()


def _unpack(tarball: bytes, dest: Path, origin: str) -> None:
    """Write ORT_FILES from the npm tarball's package/dist/ into dest (nothing else is read)."""
    if _integrity(tarball) != ORT_INTEGRITY:
        raise ValueError(f"{origin} is not onnxruntime-web {ORT_VERSION}'s npm tarball (its sha512 differs from "
                         f"the registry's)")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for name, written in ORT_FILES.items():
            (dest / written).write_bytes(archive.extractfile(f"package/dist/{name}").read())


def _download() -> bytes:
    url = tarball_url()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read(MAX_TARBALL_BYTES + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise ValueError(f"cannot download onnxruntime-web from {url} ({reason}); give it offline with "
                         f"--ort onnxruntime-web-{ORT_VERSION}.tgz") from None
    if len(payload) > MAX_TARBALL_BYTES:
        raise ValueError(f"{url} is larger than {MAX_TARBALL_BYTES} bytes: not onnxruntime-web's tarball")
    return payload


def cached_ort() -> Path:
    """The folder of ORT_FILES in the cache, downloaded and checked on first use. It is filled
    beside its final name and renamed into place, so it is complete or absent."""
    folder = cache_dir() / f"onnxruntime-web-{ORT_VERSION}"
    if not folder.is_dir():
        tarball = _download()
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            _unpack(tarball, staging, tarball_url())
            os.replace(staging, folder)
        except OSError:  # another process got there first
            if not folder.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def given_ort(path: str | os.PathLike, dest: Path) -> None:
    """--ort: write ORT_FILES into dest from onnxruntime-web's npm tarball (checked against the
    pinned sha512) or from its unpacked package folder (checked by the version its package.json says)."""
    path = Path(path)
    if path.is_file():
        _unpack(_read_tarball(path), dest, f"--ort {path}")
    else:
        _copy_package(path, dest)


def _read_tarball(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_TARBALL_BYTES:
            raise ValueError(f"--ort {path} is larger than {MAX_TARBALL_BYTES} bytes: not onnxruntime-web's tarball")
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"--ort {path} cannot be read ({error.strerror or error})") from None


def _copy_package(path: Path, dest: Path) -> None:
    """ORT_FILES from the unpacked package: `path` itself or the package/ folder `tar xzf` leaves."""
    package = path / "package" if (path / "package" / "package.json").is_file() else path
    try:
        version = json.loads((package / "package.json").read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"--ort {path} is neither onnxruntime-web's .tgz nor its unpacked package folder "
                         f"(no readable package.json)") from None
    if version != ORT_VERSION:
        raise ValueError(f"--ort {path} holds onnxruntime-web {version}; this corolla's page needs {ORT_VERSION}")
    for name, written in ORT_FILES.items():
        try:
            shutil.copyfile(package / "dist" / name, dest / written)
        except OSError as error:
            raise ValueError(f"--ort {path}: cannot copy dist/{name} ({error.strerror or error})") from None


def build(model, out: str | os.PathLike, image_size: int, ort: str | os.PathLike | None = None,
          class_counts: Sequence[int] = (), layout=None) -> Path:
    """Write the web folder for `model` (a DiffusionModel) into `out` -> out: onnxruntime-web is
    fetched or read first, so that a failure writes nothing; then the export (class_counts and a
    cascade's layout: export_onnx's; the page draws the cascade), the page and the runtime."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="corolla-ort-") as staging:
        source = Path(staging)
        if ort is None:
            source = cached_ort()
        else:
            given_ort(ort, source)
        export_onnx(model, out, image_size, class_counts=class_counts, layout=layout)
        for written in ORT_FILES.values():
            shutil.copyfile(source / written, out / written)
    page = resources.files("corolla.portable") / "web"
    for name in PAGE_FILES:
        (out / name).write_bytes((page / name).read_bytes())
    return out
