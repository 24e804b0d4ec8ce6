"""Issue 14's promises about run folders: a fresh run never takes over another run's files, one
writer per run folder (two real processes), the log keeps hand-edited lines, and a run knows its
data (resume on changed data is refused; a run inside the data folder is not scanned as data)."""
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from corolla import cli
from corolla.config import preset
from corolla.data import imagefolder
from corolla.storage import checkpoint, runfolder
from corolla.training import build, train


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "COROLLA_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def _corolla(*args: str, tmp_path: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corolla", *map(str, args)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300, **kwargs)


def _fake_run(run: Path) -> None:
    """A run folder as training leaves it (a checkpoint, the log, the grids), made without training."""
    config = preset("tiny")
    model, optimizer = build(config, torch.device("cpu"))
    checkpoint.save_training(run, model, config, optimizer, {"step": 3, "epoch": 1, "batch_in_epoch": 1})
    (run / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "train_loss": 0.5}\n')
    (run / "samples").mkdir()
    for name in ("grid.png", "loss.png", "samples/epoch_001.png"):
        (run / name).write_bytes(b"a picture")


# -- 2. a fresh run in a folder holding a run --------------------------------------------

@pytest.mark.slow  # starts a subprocess
def test_a_fresh_train_refuses_a_folder_holding_a_run_and_deletes_nothing(make_flowers, tmp_path):
    flowers, run = make_flowers(16), tmp_path / "run"
    _fake_run(run)
    before = _files(run)
    done = _corolla("train", flowers, "--preset", "tiny", "--out", run, "--no-progress", tmp_path=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("corolla: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "already holds a run (latest, metrics.jsonl, grid.png, loss.png, ...)" in done.stderr
    assert "--resume" in done.stderr and "--overwrite" in done.stderr
    assert _files(run) == before


def test_a_fresh_train_refuses_to_overwrite_ordinary_files_corolla_would_write(make_flowers, tmp_path, capsys):
    flowers = make_flowers(16)
    for name in ("grid.png", "loss.png", "samples/epoch_001.png", "checkpoints/step-00000001"):
        out = tmp_path / name.replace("/", "_")
        (out / name).parent.mkdir(parents=True)
        if name.endswith(".png"):
            (out / name).write_text(f"the user's {name}")
        else:  # a folder of the user's named as corolla names checkpoints
            (out / name).mkdir()
            (out / name / "notes.txt").write_text("the user's notes")
        before = _files(out)
        assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"already holds a run ({name}); it has no checkpoint to resume" in err, err
        assert _files(out) == before and (out / name).exists()

    out = tmp_path / "other files"
    out.mkdir()
    (out / "notes.txt").write_text("unrelated: never touched")
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert (out / "notes.txt").read_text() == "unrelated: never touched" and (out / "latest").is_file()


def test_overwrite_replaces_a_run_but_keeps_other_files(make_flowers, tmp_path, capsys):
    flowers, run = make_flowers(16), tmp_path / "run"
    _fake_run(run)
    (run / "notes.txt").write_text("mine")
    (run / "best").mkdir()
    (run / "best" / "my.txt").write_text("not a checkpoint corolla wrote")
    assert cli.main(["train", "--out", str(run), "--resume", "--overwrite"]) == 2
    assert "give one" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text().startswith('{"step": 1')

    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(run), "--overwrite",
                     "--no-progress"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "best" / "my.txt").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]  # 15 images, batch 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 1]  # the new run's train and validation records only
    assert (run / "grid.png").read_bytes().startswith(b"\x89PNG")


# -- 3. one writer per run folder ----------------------------------------------------------

@pytest.mark.slow  # starts a subprocess
def test_a_second_writer_is_refused_while_a_run_trains_and_allowed_once_it_is_killed(make_flowers, tmp_path):
    """Two real processes: the first trains (holding the lock); a --resume and a fresh --overwrite
    of the same folder are refused and change nothing; after a SIGKILL the kernel has released
    the lock and a resume goes on."""
    flowers, run = make_flowers(16), tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "corolla", "train", str(flowers), "--preset", "tiny",
                              "--out", str(run), "--epochs", "1000", "--repetitions", "1", "--no-progress"],
                             env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "latest").exists():  # its first checkpoint: it holds the folder
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint from the first process"
            time.sleep(0.01)
        first_record = (run / "metrics.jsonl").read_text().splitlines()[0]
        second = [subprocess.Popen([sys.executable, "-m", "corolla", "train", *args, "--out", str(run),
                                    "--no-progress"], env=_env(tmp_path), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
                  for args in (["--resume", "--max-steps", "1"], [str(flowers), "--overwrite"])]
        for process in second:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 2, err
            assert err == (f"corolla: error: run folder {str(run)!r} is in use by another corolla process "
                           f"(pid {first.pid}): one process writes a run at a time; wait for it to end, or stop "
                           f"it (Ctrl-C writes a checkpoint) and --resume\n")
        assert first.poll() is None  # still training, undisturbed
        assert (run / "metrics.jsonl").read_text().splitlines()[0] == first_record
        checkpoint.resolve(run)  # its checkpoints are all there
    finally:
        first.kill()
        first.communicate(timeout=60)
    step = json.loads((checkpoint.resolve(run) / "state.json").read_text())["step"]
    assert cli.main(["train", "--out", str(run), "--resume", "--max-steps", str(step + 1), "--no-progress"]) == 0
    assert json.loads((checkpoint.resolve(run) / "state.json").read_text())["step"] == step + 1


def test_the_lock_is_released_when_training_fails(make_flowers, tmp_path, capsys):
    """An error inside training (here: no images) must not leave the folder locked for the next try."""
    run = tmp_path / "run"
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", str(tmp_path / "empty"), "--preset", "tiny", "--out", str(run)]) == 2
    assert "no usable image" in capsys.readouterr().err
    with runfolder.claim(run, resume=False):
        with pytest.raises(runfolder.RunFolderError, match="in use by another corolla process"):
            with runfolder.claim(run, resume=False):
                pass


# -- 5. the log keeps every line but a torn last one ---------------------------------------

def test_resume_keeps_a_hand_edited_log_line_and_drops_only_a_torn_last_line(make_flowers, tmp_path):
    flowers, run = make_flowers(16), tmp_path / "run"
    config = preset("tiny").replace(train={"epochs": 4})  # 15 images, batch 8: one step an epoch
    train(config, flowers, run, progress=False, max_steps=3, log=lambda *_: None)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 6  # train and validation records of 3 epochs
    lines[1] = "this line was edited by hand\n"
    (run / "metrics.jsonl").write_text("".join(lines) + '{"step": 4, "epoch": 4, "train_lo')  # torn by a kill
    assert cli.main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--no-progress"]) == 0
    after = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert after[:6] == lines  # every record before the checkpoint, the edited one too
    assert [json.loads(line)["step"] for line in after[6:]] == [4, 4]


# -- 12. a run knows its data ---------------------------------------------------------------

def _copy(flowers: Path, to: Path) -> Path:
    shutil.copytree(flowers, to)
    return to


def test_resume_refuses_data_that_changed_and_warns_for_files_only_touched(make_flowers, tmp_path, capsys):
    flowers, run = _copy(make_flowers(16), tmp_path / "flowers"), tmp_path / "run"
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(run), "--no-progress"]) == 0
    state = json.loads((checkpoint.resolve(run) / "state.json").read_text())
    assert state["data_identity"]["files"] == 16 and set(state["data_identity"]) == {"files", "names_key", "cache_key"}
    before = _files(run)

    for path in sorted(flowers.iterdir())[:4]:  # 12 images left: still a batch, so training would go on
        shutil.move(path, tmp_path / path.name)
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not the data this run was trained on (16 image files when the run started, 12 now)" in err, err
    assert err.count("\n") == 1 and _files(run) == before

    for path in sorted(tmp_path.glob("*.jpg")):  # the same files back, touched: the same data
        shutil.move(path, flowers / path.name)
        os.utime(flowers / path.name, ns=(time.time_ns(), time.time_ns()))
    with pytest.warns(UserWarning, match="the image files of .* were moved, copied or touched since the run started"):
        assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0

    renamed = sorted(flowers.iterdir())[0]
    renamed.rename(renamed.with_name("renamed.jpg"))
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 2
    assert "as many image files as when the run started, but renamed, replaced or resized" in capsys.readouterr().err


def test_a_run_inside_the_data_folder_is_never_scanned_as_data(make_flowers, tmp_path, capsys):
    flowers = _copy(make_flowers(16), tmp_path / "flowers")
    run = flowers / "runs" / "first"
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(run), "--no-progress"]) == 0
    assert (run / "grid.png").is_file() and (run / "samples" / "epoch_001.png").is_file()
    assert len(imagefolder.scan(flowers)) == 16  # the run's PNGs are not images to train on
    with warnings.catch_warnings(record=True) as caught:
        assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert not [w for w in caught if "image files" in str(w.message)]  # the same data: not even a warning

    with pytest.raises(imagefolder.DataError, match="is a corolla run folder"):
        imagefolder.scan(run)
    before = _files(flowers)
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(flowers), "--no-progress"]) == 2
    assert "is the data folder" in capsys.readouterr().err
    assert _files(flowers) == before
