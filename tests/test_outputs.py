"""Where the commands write (issue 14, item 4): every output path is checked before any work, never
replaced when it is not a regular file, and `corolla sample --each` writes images as they are made."""
import os
from pathlib import Path

import pytest
import torch

from corolla import cli, figures, generation
from corolla.config import preset
from corolla.storage import checkpoint, grids
from corolla.training import build

TINY = preset("tiny").replace(train={"precision": "fp32"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model, _ = build(TINY, torch.device("cpu"))
    return checkpoint.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model", model, TINY)


@pytest.fixture
def no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("got as far as sampling")
    stages = ((generation, "sample_from_noise"), (figures, "sample_from_noise"), (figures, "ddim_trajectory"))
    for module, name in stages:
        monkeypatch.setattr(module, name, fail)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    # a reader holds it open, so that a writer that wrongly opens it is not blocked forever
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    _READERS.append(reader)
    return path


_READERS: list[int] = []


@pytest.fixture(autouse=True)
def _close_readers():
    yield
    while _READERS:
        os.close(_READERS.pop())


def _link(path: Path) -> Path:
    target = path.with_name("target.png")
    target.write_bytes(b"the user's own file")
    path.symlink_to(target)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _inside_a_file(path: Path) -> Path:
    path.with_name("plain").write_text("x")
    return path.with_name("plain") / "x.png"


KINDS = {"fifo": (_fifo, "is a device, FIFO or socket"),
         "symlink": (_link, "is a symbolic link (corolla does not write through links"),
         "folder": (_folder, "is a folder"),
         "inside a file": (_inside_a_file, "a folder above it is a file")}


def _snapshot(folder: Path) -> dict:
    """What each entry is: its type and, for links, where it points and what the target holds."""
    out = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            out[entry.name] = ("link", os.readlink(entry), entry.resolve().read_bytes())
        else:
            out[entry.name] = ("fifo" if entry.is_fifo() else "dir" if entry.is_dir() else "file",
                               entry.read_bytes() if entry.is_file() else None)
    return out


def _refused(argv: list[str], capsys, message: str) -> None:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("corolla: error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("command", ["sample --out", "sample --each", "trajectory --out", "interpolate --gif",
                                     "evaluate --json", "evaluate --pairs", "schedules --out", "noising --out"])
def test_an_output_that_is_not_a_regular_file_is_refused_before_any_work(kind, command, model_dir, tmp_path,
                                                                         no_sampling, capsys):
    if command == "sample --each" and kind in ("folder", "symlink"):
        pytest.skip("--each names a folder")
    make, message = KINDS[kind]
    work = tmp_path / "work"
    work.mkdir()
    path = make(work / "out.png")
    before = _snapshot(work)
    name, option = command.split()
    argv = [name, *([str(model_dir)] if name not in ("schedules", "noising") else []), option, str(path)]
    if name == "sample":
        argv += ["-n", "2", "--steps", "1"]
    _refused(argv, capsys, "is not a folder" if option == "--each" and kind == "fifo" else message)
    assert _snapshot(work) == before  # nothing replaced, nothing written


@pytest.mark.parametrize("argv", [["sample", "MODEL", "--out", ""], ["sample", "MODEL", "--each", " "],
                                  ["evaluate", "MODEL", "--json", ""], ["schedules", "--out", ""]])
def test_an_empty_output_path_is_refused(argv, model_dir, no_sampling, capsys):
    # --out '' said "PosixPath('.') has an empty name" after all the sampling
    _refused([str(model_dir) if a == "MODEL" else a for a in argv], capsys, "an empty path is not allowed")


def test_the_library_writers_refuse_a_fifo_too(tmp_path):
    fifo = _fifo(tmp_path / "grid.png")
    with pytest.raises(ValueError, match="is a device, FIFO or socket"):
        grids.save_grid(torch.rand(4, 3, 8, 8), fifo)
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_each_image_is_written_as_soon_as_its_batch_is_made_and_no_grid_without_out(
        model_dir, tmp_path, monkeypatch, capsys):
    each, seen = tmp_path / "each", []
    original = generation.sample_from_noise

    def recording(*args, **kwargs):  # what is on disk when each batch starts
        seen.append(sorted(p.name for p in each.iterdir()))
        return original(*args, **kwargs)
    monkeypatch.setattr(generation, "sample_from_noise", recording)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sample", str(model_dir), "-n", "5", "--batch-size", "2", "--steps", "1", "--each", str(each),
                     "--no-progress"]) == 0
    assert seen == [[], ["00000.png", "00001.png"], ["00000.png", "00001.png", "00002.png", "00003.png"]]
    assert sorted(p.name for p in each.iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert not (tmp_path / "samples.png").exists()  # --each alone makes no grid
    assert "wrote 5 images to" in capsys.readouterr().out


def test_streamed_images_are_the_images_of_a_grid_run(model_dir, tmp_path):
    common = ["sample", str(model_dir), "-n", "3", "--batch-size", "2", "--steps", "2", "--no-progress"]
    assert cli.main(common + ["--each", str(tmp_path / "a")]) == 0
    assert cli.main(common + ["--each", str(tmp_path / "b"), "--out", str(tmp_path / "grid.png")]) == 0
    for name in ("00000.png", "00001.png", "00002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "grid.png").is_file()


def test_a_grid_that_would_not_fit_in_memory_is_refused_before_sampling(model_dir, tmp_path, no_sampling, capsys):
    _refused(["sample", str(model_dir), "-n", "10000000", "--out", str(tmp_path / "x.png")], capsys,
             "-n (a grid holds every image; --each DIR without --out writes them one batch at a time): "
             "10,000,000 images of 16x16 would take 28.6 GiB at once; at most 1,398,101 at this size")


def test_evaluate_checks_its_outputs_before_generating(model_dir, tmp_path, no_sampling, capsys):
    (tmp_path / "taken").mkdir()
    _refused(["evaluate", str(model_dir), "--json", str(tmp_path / "taken")], capsys, "is a folder")
    assert not list((tmp_path / "taken").iterdir())
