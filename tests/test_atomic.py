"""Issue 14's promises about writing files: corolla replaces only a folder it wrote (export,
--keep-best), an interrupted or failed write leaves no temporary behind (and a killed one's is
removed by the next write or run), and a cache folder that cannot be written costs a warning,
not the command."""
import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from corolla import cli, figures
from corolla.config import preset
from corolla.data import imagefolder
from corolla.storage import atomic, checkpoint, grids
from corolla.storage.grids import save_grid
from corolla.training import build, train


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "COROLLA_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def run(tmp_path):
    """A run folder with one checkpoint, made without training."""
    config, folder = preset("tiny"), tmp_path / "run"
    model, optimizer = build(config, torch.device("cpu"))
    checkpoint.save_training(folder, model, config, optimizer, {"step": 3, "epoch": 1, "batch_in_epoch": 1})
    return folder


# -- 1. export and --keep-best replace only a checkpoint folder corolla wrote ----------------

def test_export_never_replaces_a_folder_it_did_not_write_nor_its_source(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    (tmp_path / "a file").write_text("the user's")
    (tmp_path / "link").symlink_to(mine, target_is_directory=True)
    source = checkpoint.resolve(run)
    cases = {mine: "holds files that are not a corolla checkpoint's (notes.txt)",
             tmp_path / "a file": "is not a folder (a file or a link)",
             tmp_path / "link": "is not a folder (a file or a link)",
             run: "is the checkpoint being exported or a folder holding it",
             tmp_path: "is the checkpoint being exported or a folder holding it",
             source: "is the checkpoint being exported or a folder holding it"}
    before = _files(tmp_path)
    for out, message in cases.items():
        assert cli.main(["export", str(run), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith("corolla: error: ") and err.count("\n") == 1 and message in err, err
        assert _files(tmp_path) == before and (tmp_path / "link").is_symlink()

    release = tmp_path / "release"
    for _ in range(2):  # new, then over the release it wrote
        assert cli.main(["export", str(run), "--out", str(release)]) == 0
    assert sorted(p.name for p in release.iterdir()) == ["config.json", "model.safetensors"]
    assert cli.main(["export", str(release), "--out", str(release)]) == 2  # the source itself
    (tmp_path / "empty").mkdir()
    assert cli.main(["export", str(release), "--out", str(tmp_path / "empty")]) == 0
    checkpoint.load_model(tmp_path / "empty")


@pytest.mark.slow  # starts a subprocess
def test_export_over_its_own_run_from_the_shell_is_refused(run, tmp_path):
    before = _files(run)
    done = subprocess.run([sys.executable, "-m", "corolla", "export", str(run), "--out", str(run)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert _files(run) == before


def test_keep_best_refuses_a_best_folder_it_did_not_write_before_training(make_flowers, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    (out / "best" / "weights.txt").write_text("the user's")
    assert cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--eval-every", "1", "--keep-best", "swd",
                     "--out", str(out)]) == 2
    assert "holds files that are not a corolla checkpoint's (weights.txt)" in capsys.readouterr().err
    assert _files(out) == {"best/weights.txt": b"the user's"}


# -- 15. temporaries ------------------------------------------------------------------------

def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if atomic.TEMPORARY.match(p.name))


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError], ids=["ctrl-c", "full-disk"])
def test_an_interrupted_or_failed_write_leaves_no_temporary_and_the_old_file(failure, tmp_path, monkeypatch):
    images = torch.rand(4, 3, 8, 8)
    writers = {"grid.png": lambda out: save_grid(images, out),
               "figure.png": lambda out: figures.plot_schedules(out),
               "frames.gif": lambda out: figures.save_gif(images.reshape(2, 2, 3, 8, 8), out)}
    for name, write in writers.items():
        write(tmp_path / name)
    before = _files(tmp_path)
    save = figures.Image.Image.save

    def torn(self, fp, *args, **kwargs):  # half a file, then Ctrl-C or a full disk
        Path(fp).write_bytes(b"\x89PNG half")
        raise failure(errno.ENOSPC, "No space left on device") if failure is OSError else failure()
    monkeypatch.setattr(figures.Image.Image, "save", torn)
    for name, write in writers.items():
        with pytest.raises(failure):
            write(tmp_path / name)
    monkeypatch.setattr(figures.Image.Image, "save", save)
    assert _temporaries(tmp_path) == [] and _files(tmp_path) == before


def test_sigterm_during_a_command_s_write_removes_its_temporary(tmp_path, monkeypatch, capsys):
    """The command turns SIGTERM into the same unwinding as Ctrl-C."""
    model, _ = build(preset("tiny"), torch.device("cpu"))
    model_dir = checkpoint.save_pretrained(tmp_path / "model", model, preset("tiny"))

    class Terminated(Exception):
        pass

    def unexpected(signum, frame):  # without corolla's handler: fail the test, not kill pytest
        raise Terminated

    def terminated_mid_write(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(figures.Image.Image, "save", terminated_mid_write)
    previous = signal.signal(signal.SIGTERM, unexpected)
    try:
        code = cli.main(["sample", str(model_dir), "-n", "1", "--steps", "1", "--out", str(tmp_path / "x.png")])
        assert signal.getsignal(signal.SIGTERM) is unexpected  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130 and "corolla: interrupted" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and _temporaries(tmp_path) == []


@pytest.mark.slow  # starts a subprocess
def test_a_killed_writer_s_temporary_is_removed_by_the_next_write_of_that_name(make_flowers, tmp_path):
    dead, alive = _dead_pid(), 1
    for name in (f".grid.png.tmp-{dead}", f".grid.png.tmp-{alive}", f".other.png.tmp-{dead}"):
        (tmp_path / name).write_bytes(b"left behind")
    save_grid(torch.rand(1, 3, 8, 8), tmp_path / "grid.png")
    assert _temporaries(tmp_path) == [f".grid.png.tmp-{alive}", f".other.png.tmp-{dead}"]

    cache = tmp_path / "cache"  # the conftest's COROLLA_CACHE_DIR
    cache.mkdir()
    for name in (f".0123abcd.safetensors.tmp-{dead}", f".notes.txt.tmp-{dead}"):
        (cache / name).write_bytes(b"an interrupted cache build")
    imagefolder.load_folder(make_flowers(16), 16)
    assert _temporaries(cache) == [f".notes.txt.tmp-{dead}"]
    assert len(list(cache.glob("*.safetensors"))) == 1


@pytest.mark.slow  # starts a subprocess
def test_writing_many_images_scans_their_folder_once(tmp_path, monkeypatch):
    """Looking for stale temporaries lists the folder: once per --each batch, not once per image
    (10,000 images into one folder would otherwise take minutes)."""
    scans, scan = [], atomic.remove_stale_temporaries
    monkeypatch.setattr(atomic, "remove_stale_temporaries", lambda *a: scans.append(a) or scan(*a))
    monkeypatch.setattr(grids, "remove_stale_temporaries", atomic.remove_stale_temporaries, raising=False)
    dead = _dead_pid()
    (tmp_path / f".00003.png.tmp-{dead}").write_bytes(b"left by a kill")
    assert len(grids.save_each(torch.rand(20, 3, 8, 8), tmp_path)) == 20
    assert len(scans) == 1 and _temporaries(tmp_path) == []


@pytest.mark.slow  # starts a subprocess
def test_a_resumed_run_removes_what_killed_writes_left_in_its_folder(make_flowers, tmp_path):
    """What made test_sigkill_at_random_moments... fail now and then: a kill inside a figure or
    grid write left .loss.png.tmp-PID, which nothing removed."""
    flowers, run, dead = make_flowers(16), tmp_path / "run", _dead_pid()
    config = preset("tiny").replace(train={"epochs": 3})
    train(config, flowers, run, progress=False, max_steps=1, log=lambda *_: None)
    left = [run / f".loss.png.tmp-{dead}", run / f".grid.png.tmp-{dead}", run / f".metrics.jsonl.tmp-{dead}",
            run / "samples" / f".epoch_002.png.tmp-{dead}", run / "checkpoints" / f".step-00000002.tmp-{dead}"]
    for path in left:
        path.write_bytes(b"left by a kill")
    (run / f".notes.txt.tmp-{dead}").write_text("not a name corolla writes: not corolla's to delete")
    train(config, flowers, run, resume=True, progress=False, max_steps=2, log=lambda *_: None)
    assert _temporaries(run) == [f".notes.txt.tmp-{dead}"]


# -- 11. a cache folder that cannot be written ------------------------------------------------

def _files_under_300k():
    """The child process cannot write a file over 300 kB (as an over-quota or full disk): the
    cache of 32 images at 64x64 (393 kB) fails, the run's checkpoints (210 kB) do not."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill


@pytest.mark.slow  # starts a subprocess
def test_a_cache_folder_that_cannot_be_written_costs_one_warning_not_the_command(make_flowers, tmp_path):
    flowers = make_flowers(32)
    commands = [["train", flowers, "--preset", "tiny", "--image-size", "64", "--out", tmp_path / "run",
                 "--max-steps", "1", "--no-progress"],
                ["evaluate", tmp_path / "run", "--data", flowers, "--samples", "4", "--steps", "2",
                 "--json", tmp_path / "evaluation.json", "--pairs", tmp_path / "pairs.png"]]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "corolla", *map(str, command)], env=_env(tmp_path),
                              preexec_fn=_files_under_300k, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        warnings = [line for line in done.stderr.splitlines() if line.startswith("corolla: warning: ")]
        assert warnings == [f"corolla: warning: cannot write the cache in {str(tmp_path / 'cache')!r} "
                            f"(File too large); carrying on without it (COROLLA_CACHE_DIR chooses another folder)"]
        assert os.listdir(tmp_path / "cache") == []  # no torn cache, no temporary
    assert (tmp_path / "evaluation.json").is_file() and checkpoint.resolve(tmp_path / "run")
