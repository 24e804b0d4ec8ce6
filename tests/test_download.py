"""`corolla download flowers102`: against a local HTTP server serving small archives built here."""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from corolla import cli
from corolla.data import download, imagefolder

IMAGES = 30  # image 28 is valid and 5, 6, 24, 25, 29 are test in the Kaggle division
LABELS = [1 + i % 3 for i in range(IMAGES)]  # pink primrose, hard-leaved pocket orchid, canterbury bells
CLASSES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
SETID = {"trnid": [1, 2, 3], "valid": [4, 5, 6, 7, 8, 9], "tstid": list(range(10, IMAGES + 1))}
LABELS_CSV = Path("/work/shared/datasets/flowers102_64/labels.csv")


def jpeg(number: int) -> bytes:
    """A 16x16 JPEG of seeded noise (about 1 KB, which gzip cannot shrink)."""
    pixels = np.random.default_rng(number).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def tgz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return out.getvalue()


def image_members(count: int = IMAGES) -> list:
    folder = tarfile.TarInfo("jpg")
    folder.type = tarfile.DIRTYPE
    return [(folder, None)] + [(tarfile.TarInfo(f"jpg/image_{n:05d}.jpg"), jpeg(n)) for n in range(1, count + 1)]


def mat(**arrays) -> bytes:
    out = io.BytesIO()
    savemat(out, {key: np.array([value], dtype=np.uint16) for key, value in arrays.items()})
    return out.getvalue()


GOOD = {"102flowers.tgz": tgz(image_members()), "imagelabels.mat": mat(labels=LABELS), "setid.mat": mat(**SETID)}


class Server:
    """A local HTTP server: files by name, with Range support that can be switched off, a drop of
    the connection after some bytes, and a log of the requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.drop_after: dict[str, int] = {}  # name -> bytes sent before the connection closes (once)
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                payload, start = server.files[name], 0
                if server.ranges and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(payload):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(payload) - start))
                self.end_headers()
                drop = server.drop_after.pop(name, None)
                self.wfile.write(payload[start:] if drop is None else payload[start:start + drop])

            def log_message(self, *args):
                pass

        # bound and listening once constructed: a request made before serve_forever runs waits in the backlog
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/flowers/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, files: dict[str, bytes]) -> None:
        self.files.update(files)
        download.FILES.update({name: hashlib.md5(payload).hexdigest() for name, payload in files.items()})

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def http_server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def server(http_server, monkeypatch):
    """The module's server, serving the good files, with their MD5s as the expected ones."""
    monkeypatch.setattr(download, "FILES", dict(download.FILES))
    monkeypatch.delenv(download.URL_ENV, raising=False)
    for name in ("no_proxy", "NO_PROXY"):  # a proxy set for this machine must not take local requests
        monkeypatch.setenv(name, "127.0.0.1")
    http_server.files, http_server.ranges, http_server.drop_after, http_server.requests = {}, True, {}, []
    http_server.serve(GOOD)
    return http_server


def run(server, dest, *options, downloads=None):
    args = ["download", "flowers102", str(dest), "--url", server.url, "--no-progress",
            "--downloads", str(downloads or Path(dest).parent / "downloads"), *options]
    return cli.main(args)


def tree(folder: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()}


def expected_tree(numbers) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in numbers:
        out.setdefault(CLASSES[LABELS[n - 1] - 1], []).append(f"image_{n:05d}.jpg")
    return {name: sorted(files) for name, files in sorted(out.items())}


def leftovers(parent: Path) -> list[str]:
    """What a run left beside its destination, other than the downloads folder."""
    return sorted(p.name for p in parent.iterdir() if p.name != "downloads")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("corolla: error: ") and "Traceback" not in err, err
    return err


def test_the_bundled_names_and_splits_are_the_data_sets():
    names, splits = download.class_names(), download.kaggle_splits()
    assert len(names) == 102 == len(set(names)) and names[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert names[76] == "passion flower" and names[101] == "blackberry lily"
    assert sorted(splits) == list(range(1, 8190))
    assert [list(splits.values()).count(s) for s in download.SPLITS] == [6552, 818, 819]
    assert [splits[n] for n in (1, 5, 28)] == ["train", "test", "valid"]
    if LABELS_CSV.is_file():  # the project's copy of the data set, where present
        rows = list(csv.DictReader(LABELS_CSV.open()))
        assert {int(r["image"][6:11]): r["split"] for r in rows} == splits
        assert {names[int(r["label"]) - 1] == r["class_name"] for r in rows} == {True}


def test_download_lays_out_one_folder_per_class_and_split(server, tmp_path, capsys):
    dest = tmp_path / "flowers"
    assert run(server, dest) == 0
    assert tree(dest) == expected_tree(range(1, IMAGES + 1))
    assert (dest / "canterbury bells" / "image_00030.jpg").read_bytes() == jpeg(30)
    assert "30 images in 3 class folders" in capsys.readouterr().out
    assert len(imagefolder.scan(dest)) == IMAGES  # what `corolla train DEST` reads
    fetched = len(server.requests)
    assert fetched == 3

    # the Kaggle division (the default), from the files already downloaded
    for split, numbers in {"train": [n for n in range(1, IMAGES + 1) if n not in (5, 6, 24, 25, 28, 29)],
                           "valid": [28], "test": [5, 6, 24, 25, 29]}.items():
        assert run(server, tmp_path / split, "--split", split) == 0
        assert tree(tmp_path / split) == expected_tree(numbers)
    # the data set's own setid.mat
    assert run(server, tmp_path / "setid_valid", "--split", "valid", "--split-source", "setid") == 0
    assert tree(tmp_path / "setid_valid") == expected_tree(SETID["valid"])
    assert len(server.requests) == fetched  # nothing fetched again
    assert leftovers(tmp_path) == ["flowers", "setid_valid", "test", "train", "valid"]

    # the same command again: nothing to do; another split into a full folder: refused
    assert run(server, dest) == 0 and "already holds all images" in capsys.readouterr().out
    assert run(server, tmp_path / "valid", "--split", "test") == 2
    assert "already exists and is not empty" in one_error_line(capsys)


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "server_ignores_range"])
def test_a_partial_download_is_resumed(server, tmp_path, ranges):
    server.ranges = ranges
    archive = GOOD["102flowers.tgz"]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "102flowers.tgz.part").write_bytes(archive[:1000])
    assert run(server, tmp_path / "flowers") == 0
    assert ("102flowers.tgz", "bytes=1000-") in server.requests
    assert (tmp_path / "downloads" / "102flowers.tgz").read_bytes() == archive
    assert not (tmp_path / "downloads" / "102flowers.tgz.part").exists()
    assert tree(tmp_path / "flowers") == expected_tree(range(1, IMAGES + 1))


def test_fetch_from_python_shows_progress_from_where_it_resumes(server, tmp_path, capsys):
    archive = GOOD["102flowers.tgz"]
    (tmp_path / "102flowers.tgz.part").write_bytes(archive[:3000])
    path = download.fetch(server.url + "102flowers.tgz", tmp_path / "102flowers.tgz", download.FILES["102flowers.tgz"])
    assert path.read_bytes() == archive and server.requests == [("102flowers.tgz", "bytes=3000-")]
    bar = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line]
    assert bar[0].startswith("102flowers.tgz:  51%") and bar[-1].startswith("102flowers.tgz: 100%"), bar


@pytest.mark.parametrize("content", ["right", "wrong"])
def test_a_part_that_is_already_whole_is_checked_not_fetched_again(server, tmp_path, content):
    archive = GOOD["102flowers.tgz"]
    (tmp_path / "downloads").mkdir()
    part = archive if content == "right" else bytes(len(archive))  # a run killed before its rename
    (tmp_path / "downloads" / "102flowers.tgz.part").write_bytes(part)
    assert run(server, tmp_path / "flowers") == 0
    tries = [r for r in server.requests if r[0] == "102flowers.tgz"]
    # the server answers 416 (nothing after the last byte); a wrong .part is then fetched whole
    again = [("102flowers.tgz", None)] if content == "wrong" else []
    assert tries == [("102flowers.tgz", f"bytes={len(archive)}-")] + again
    assert (tmp_path / "downloads" / "102flowers.tgz").read_bytes() == archive
    assert tree(tmp_path / "flowers") == expected_tree(range(1, IMAGES + 1))


def test_a_dropped_connection_keeps_the_part_and_the_next_run_resumes(server, tmp_path, capsys):
    server.drop_after["102flowers.tgz"] = 2000
    assert run(server, tmp_path / "flowers") == 1
    err = one_error_line(capsys)
    assert f"dropped after 2,000 of {len(GOOD['102flowers.tgz']):,} bytes" in err and "again to resume" in err
    assert (tmp_path / "downloads" / "102flowers.tgz.part").stat().st_size == 2000
    assert leftovers(tmp_path) == []
    assert run(server, tmp_path / "flowers") == 0
    assert server.requests[-1] == ("102flowers.tgz", "bytes=2000-")
    assert tree(tmp_path / "flowers") == expected_tree(range(1, IMAGES + 1))


def test_a_checksum_mismatch_deletes_the_download(server, tmp_path, capsys):
    expected = download.FILES["102flowers.tgz"]
    server.files["102flowers.tgz"] = tgz(image_members(IMAGES - 1))  # another archive at the address
    assert run(server, tmp_path / "flowers") == 1
    err = one_error_line(capsys)
    assert "102flowers.tgz" in err and f"expected {expected}" in err
    assert not any(p.name.startswith("102flowers") for p in (tmp_path / "downloads").iterdir())
    assert leftovers(tmp_path) == []


def test_an_altered_finished_download_is_fetched_again(server, tmp_path):
    assert run(server, tmp_path / "a") == 0
    (tmp_path / "downloads" / "imagelabels.mat").write_bytes(b"altered")
    assert run(server, tmp_path / "b") == 0
    assert server.requests[-1] == ("imagelabels.mat", None)
    assert tree(tmp_path / "b") == tree(tmp_path / "a")


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_a_truncated_archive_extracts_nothing(server, tmp_path, capsys, cut):
    archive = GOOD["102flowers.tgz"]
    server.serve({"102flowers.tgz": archive[:int(len(archive) * cut)]})  # its MD5 is the one expected
    assert run(server, tmp_path / "flowers") == 1
    assert "damaged or truncated" in one_error_line(capsys)
    assert leftovers(tmp_path) == []


def test_an_archive_missing_labelled_images_extracts_nothing(server, tmp_path, capsys):
    server.serve({"imagelabels.mat": mat(labels=LABELS + [1])})  # 31 labels, 30 images
    assert run(server, tmp_path / "flowers") == 1
    assert "lacks 1 of the 31 labelled images (first: image_00031.jpg)" in one_error_line(capsys)
    assert leftovers(tmp_path) == []


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


HOSTILE = {
    "parent": ((tarfile.TarInfo("../escaped.jpg"), b"x"), "a path that climbs out with '..'"),
    "parent_inside": ((tarfile.TarInfo("jpg/../../escaped.jpg"), b"x"), "a path that climbs out with '..'"),
    "absolute": ((tarfile.TarInfo("/tmp/corolla-escaped.jpg"), b"x"), "an absolute path"),
    "symlink": (link("jpg/image_00031.jpg", "../../escaped.jpg"), "a link to '../../escaped.jpg'"),
    "symlink_absolute": (link("jpg/evil", "/etc"), "a link to '/etc'"),
    "hardlink": (link("jpg/image_00031.jpg", "/etc/passwd", tarfile.LNKTYPE), "a link to '/etc/passwd'"),
    "fifo": (link("jpg/fifo", "", tarfile.FIFOTYPE), "a device, FIFO or other special file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_and_nothing_is_kept(server, tmp_path, capsys, case):
    member, problem = HOSTILE[case]
    # the good images first: some are written before the hostile member is met
    server.serve({"102flowers.tgz": tgz(image_members() + [member])})
    assert run(server, tmp_path / "flowers") == 1
    err = one_error_line(capsys)
    assert f"member {member[0].name!r} is {problem}" in err and "nothing was extracted" in err
    assert leftovers(tmp_path) == []
    assert not (tmp_path.parent / "escaped.jpg").exists() and not Path("/tmp/corolla-escaped.jpg").exists()


def test_no_server_is_one_line_exit_1(server, tmp_path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["download", "flowers102", str(tmp_path / "flowers"), "--url", f"http://127.0.0.1:{port}/",
                     "--no-progress", "--downloads", str(tmp_path / "downloads")]) == 1
    err = one_error_line(capsys)
    assert f"cannot reach http://127.0.0.1:{port}/" in err and "Connection refused" in err
    assert leftovers(tmp_path) == []


def test_a_missing_file_on_the_server_is_one_line(server, tmp_path, capsys):
    del server.files["setid.mat"]
    assert run(server, tmp_path / "flowers") == 1
    assert "setid.mat: HTTP 404" in one_error_line(capsys)


def test_a_full_disk_while_downloading_keeps_what_was_written(server, tmp_path, capsys):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "imagelabels.mat.part").symlink_to("/dev/full")  # every write: ENOSPC
    assert run(server, tmp_path / "flowers") == 1
    assert "imagelabels.mat.part: No space left on device" in one_error_line(capsys)
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_extracting_leaves_nothing(server, tmp_path, capsys, monkeypatch):
    real, calls = download._copy_member, []

    def fill_up(source, target):
        calls.append(target)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real(source, target)
    monkeypatch.setattr(download, "_copy_member", fill_up)
    assert run(server, tmp_path / "flowers") == 1
    assert "No space left on device; nothing was kept" in one_error_line(capsys)
    assert leftovers(tmp_path) == [] and len(calls) == 5


def test_ctrl_c_while_extracting_leaves_nothing(server, tmp_path, capsys, monkeypatch):
    real, calls = download._copy_member, []

    def interrupted(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(source, target)
    monkeypatch.setattr(download, "_copy_member", interrupted)
    assert run(server, tmp_path / "flowers") == 130
    assert leftovers(tmp_path) == []


@pytest.mark.slow  # starts a subprocess
def test_a_killed_extraction_is_cleaned_up_by_the_next_run(server, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # its pid names no running process any more
    stale = tmp_path / f".flowers.tmp-{dead.pid}"
    (stale / "pink primrose").mkdir(parents=True)
    (stale / "pink primrose" / "image_00001.jpg").write_bytes(b"half")
    assert run(server, tmp_path / "flowers") == 0
    assert leftovers(tmp_path) == ["flowers"]
    assert tree(tmp_path / "flowers") == expected_tree(range(1, IMAGES + 1))


def test_bad_arguments_are_refused_with_exit_2(server, tmp_path, capsys, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    assert run(server, tmp_path / "full") == 2
    assert "already exists and is not empty" in one_error_line(capsys)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    assert run(server, tmp_path / "afile") == 2
    assert "is a file" in one_error_line(capsys)
    monkeypatch.setenv(download.URL_ENV, "ftp://example.org/flowers/")
    assert cli.main(["download", "flowers102", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "'ftp://example.org/flowers/' is not allowed: must start with http:// or https://" in one_error_line(capsys)
    for bad in (["mnist", "x"], ["flowers102", "x", "--split", "training"]):
        assert cli.main(["download", *bad]) == 2
        assert "invalid choice" in one_error_line(capsys)
    assert server.requests == []


def test_an_empty_destination_folder_is_filled(server, tmp_path):
    (tmp_path / "flowers").mkdir()
    assert run(server, tmp_path / "flowers", "--split", "valid") == 0
    assert tree(tmp_path / "flowers") == expected_tree([28])
