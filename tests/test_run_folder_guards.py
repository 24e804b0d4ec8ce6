"""Smaller findings of issue 26 (item 6): a release is never written over another run's training
checkpoint, --resume refuses a preset it would ignore, and a planted lock file is a clear error."""
import os
import shutil
from pathlib import Path

import pytest

from corolla import cli
from corolla.storage import runfolder


@pytest.fixture(scope="module")
def trained(make_flowers, tmp_path_factory):
    """(data folder, a tiny run folder with a training checkpoint)."""
    flowers = make_flowers(16)
    run = tmp_path_factory.mktemp("guards") / "run"
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(run), "--no-progress"]) == 0
    return flowers, run


def _refused(code: int, capsys, text: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("corolla: error: ") and err.count("\n") == 1 and text in err, err


def test_export_never_replaces_another_run_s_training_checkpoint(trained, tmp_path, capsys):
    flowers, original = trained
    other = tmp_path / "other"
    shutil.copytree(original, other)
    [step] = (other / "checkpoints").iterdir()
    before = {p.name: p.read_bytes() for p in step.iterdir()}
    _refused(cli.main(["export", str(original), "--out", str(step)]), capsys, "training checkpoint")
    assert {p.name: p.read_bytes() for p in step.iterdir()} == before
    capsys.readouterr()
    assert cli.main(["train", str(flowers), "--preset", "tiny", "--out", str(other), "--resume", "--no-progress",
                     "--epochs", "2"]) == 0  # the other run still resumes


def test_resume_refuses_a_preset_other_than_the_run_s(trained, capsys):
    flowers, run = trained
    _refused(cli.main(["train", str(flowers), "--preset", "demo", "--out", str(run), "--resume", "--no-progress"]),
             capsys, "--preset demo")


@pytest.mark.parametrize("plant", [os.mkfifo, os.mkdir, lambda p: p.symlink_to("/etc/passwd")],
                         ids=["fifo", "folder", "link"])
def test_a_planted_lock_that_is_not_a_regular_file_is_a_clear_error(plant, make_flowers, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    plant(tmp_path / "run" / runfolder.LOCK_FILE)
    code = cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--out", str(tmp_path / "run"),
                     "--no-progress"])
    _refused(code, capsys, f"{runfolder.LOCK_FILE} is not a regular file")
    assert Path("/etc/passwd").stat().st_size > 0
