"""Every file corolla reads goes through one guarded reader (corolla.storage.safefile): a regular file
only (a FIFO would hang the reader, a link to /dev/zero would read until memory runs out), no link
followed out of a run folder, its size bounded per kind of file, and the data cache checked by
its SHA-256 (issue 26, items 1 and 6)."""
import json
import os
import resource
import subprocess
import sys

import pytest
import torch

from corolla import cli, figures
from corolla.data import imagefolder, labels
from corolla.storage import safefile


def _command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m corolla ARGS` capped at 3 GiB, so reading /dev/zero fails instead of taking the
    machine's memory; the timeout ends a command that a FIFO hangs (the test then fails)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, 3 * 2 ** 30))
    return subprocess.run([sys.executable, "-m", "corolla", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)


def _assert_refused(process: subprocess.CompletedProcess, text: str) -> None:
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2 and lines and lines[-1].startswith("corolla: error: "), process.stderr
    assert "Traceback" not in process.stderr and text in lines[-1], process.stderr


HOSTILE = {"fifo": os.mkfifo, "link to /dev/zero": lambda p: p.symlink_to("/dev/zero")}
IN_A_RUN = {"fifo": "is not a regular file", "link to /dev/zero": "is a symbolic link"}  # a run's links: not followed


@pytest.fixture(scope="module")
def trained_run(make_flowers, tmp_path_factory):
    """(data folder, a tiny run folder holding a checkpoint and its metrics.jsonl)."""
    flowers = make_flowers(16)
    run = tmp_path_factory.mktemp("guarded") / "run"
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(run), "--max-steps", "2",
                     "--no-progress"]) == 0
    return flowers, run


@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("kind", HOSTILE)
def test_a_run_s_log_that_is_not_a_regular_file_is_refused_on_resume(kind, trained_run, tmp_path):
    flowers, original = trained_run
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(original), str(run)], check=True)
    (run / "metrics.jsonl").unlink()
    HOSTILE[kind](run / "metrics.jsonl")
    process = _command("train", str(flowers), "--preset", "tiny", "--out", str(run), "--resume", "--no-progress",
                       "--max-steps", "3")
    _assert_refused(process, f"metrics.jsonl {IN_A_RUN[kind]}")


@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("kind", HOSTILE)
def test_a_labels_file_that_is_not_a_regular_file_is_refused(kind, class_folder, tmp_path):
    HOSTILE[kind](tmp_path / "labels.csv")
    process = _command("train", str(class_folder), "--preset", "tiny", "--out", str(tmp_path / "run"),
                       "--conditional", "--labels", str(tmp_path / "labels.csv"), "--no-progress", "--max-steps", "1")
    _assert_refused(process, "labels.csv is not a regular file")


def test_a_labels_file_over_its_bound_is_refused_from_its_size(class_folder, tmp_path, monkeypatch):
    path = tmp_path / "labels.csv"
    path.write_text("image,label\n")
    os.truncate(path, labels.MAX_LABELS_BYTES + 1)  # sparse: refused from its size, never read
    monkeypatch.setattr(labels.csv, "DictReader", lambda *a, **k: pytest.fail("read the file"))
    with pytest.raises(ValueError, match="268,435,457 bytes; a labels file is at most 268,435,456"):
        labels.from_csv(path, ["daisy/a.jpg"])


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_log_read_for_figures_and_the_page_is_a_regular_file_of_the_run(kind, tmp_path):
    HOSTILE[kind](tmp_path / "metrics.jsonl")
    with pytest.raises(safefile.FileRefused, match=f"metrics.jsonl {IN_A_RUN[kind]}"):
        figures.read_metrics(tmp_path / "metrics.jsonl")


def test_a_link_planted_in_a_run_is_not_followed(tmp_path):
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"step": 1, "train_loss": 0.5}) + "\n")
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "metrics.jsonl").symlink_to(secret)
    with pytest.raises(safefile.FileRefused, match="a symbolic link"):
        figures.read_metrics(run / "metrics.jsonl")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "epoch_001.png").write_bytes(b"\x89PNG secret")
    (run / "samples").rmdir()
    (run / "samples").symlink_to(tmp_path / "elsewhere")  # a folder link: the grid's own name, another place
    with pytest.raises(safefile.FileRefused, match="a symbolic link"):
        safefile.read_run_file(run, "samples/epoch_001.png", 2 ** 20, "a sample grid")


def test_a_corrupted_data_cache_is_rebuilt_not_trusted(make_flowers):
    flowers = make_flowers(4)
    fresh, names = imagefolder.load_folder(flowers, 16)
    [cache] = list(imagefolder.cache_dir().glob("*.safetensors"))
    payload = bytearray(cache.read_bytes())
    payload[-100] ^= 0xFF  # one pixel of the cached images, the header intact
    cache.write_bytes(bytes(payload))
    again, again_names = imagefolder.load_folder(flowers, 16)
    assert torch.equal(again, fresh) and again_names == names
    assert imagefolder.load_folder(flowers, 16)[0].equal(fresh)  # and the rebuilt cache is good


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_cache_that_is_not_a_regular_file_is_not_read(kind, make_flowers):
    flowers = make_flowers(4)
    fresh, _ = imagefolder.load_folder(flowers, 16, use_cache=False)
    key = imagefolder._cache_key(imagefolder.scan(flowers), 16, False)
    imagefolder.cache_dir().mkdir(parents=True, exist_ok=True)
    HOSTILE[kind](imagefolder.cache_dir() / f"{key}.safetensors")
    assert torch.equal(imagefolder.load_folder(flowers, 16)[0], fresh)


READERS = {  # every other reader of a file corolla did not just write, given what would hang or exhaust it
    "a checkpoint folder's config.json before it is replaced": (  # 20 GB of holes, read under a 3 GiB cap
        "folder.mkdir(); (folder / 'config.json').write_bytes(b'{'); os.truncate(folder / 'config.json', 20 * 2 ** 30);"
        "from corolla.storage import checkpoint; checkpoint.check_replaceable(folder)", "not a corolla checkpoint's"),
    "a download's marker": (
        "folder.mkdir(); os.mkfifo(folder / '.corolla-download.json');"
        "from corolla.data import download; download._finished(folder, None, 'kaggle')", "is not empty"),
    "Inception weights": (
        "folder.mkdir(); os.mkfifo(folder / 'w.pth');"
        "from corolla import inception; inception.read_state_dict(folder / 'w.pth')", "is not a regular file"),
}


@pytest.mark.slow  # starts a subprocess
@pytest.mark.parametrize("reader", READERS)
def test_every_other_reader_is_bounded_and_refuses_a_fifo(reader, tmp_path):
    code, message = READERS[reader]
    program = (f"import os, pathlib, resource; folder = pathlib.Path({str(tmp_path / 'x')!r})\n"
               f"resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, 3 * 2 ** 30))\n"
               f"try:\n    {code}\nexcept ValueError as error:\n    print('refused:', error)")
    process = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0 and "refused:" in process.stdout and message in process.stdout, process
