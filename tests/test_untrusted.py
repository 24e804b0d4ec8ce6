"""Shared checkpoints are untrusted (issue 14, items 6-9): whoever made one can edit its config and
recompute every checksum. Whatever it says, loading it costs no more than the network it really
holds, reads only files corolla writes, and every refusal is one `corolla: error:` line, exit 2."""
import hashlib
import json
import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from corolla import cli, metrics
from corolla.config import preset
from corolla.storage import checkpoint, safefile
from corolla.training import build

TINY = preset("tiny").replace(train={"precision": "fp32"})
RESERVED = ("format", "version", "sha256")


@pytest.fixture
def release(tmp_path) -> Path:
    """A tiny checkpoint folder (config.json beside model.safetensors, both networks)."""
    model, _ = build(TINY, torch.device("cpu"))
    return checkpoint.save_pretrained(tmp_path / "model", model, TINY)


@pytest.fixture
def run(tmp_path) -> Path:
    """A tiny run folder with one training checkpoint."""
    model, optimizer = build(TINY, torch.device("cpu"))
    state = {"step": 1, "epoch": 0, "batch_in_epoch": 1, "running_loss": 0.5, "losses_since_log": 1,
             "log_lines": 0, "data_dir": None, "val_dir": None, "world_size": 1, "best": None, "reason": "epoch"}
    checkpoint.save_training(tmp_path / "run", model, TINY, optimizer, state)
    return tmp_path / "run"


def _sign(folder: Path) -> None:
    """Recompute every SHA-256 in config.json, as anyone editing a checkpoint can."""
    raw = json.loads((folder / "config.json").read_text())
    raw["sha256"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in raw["sha256"]}
    (folder / "config.json").write_text(json.dumps(raw))


def _forge_config(folder: Path, section: str | None, key: str, value) -> None:
    """Change one config field in config.json and in the config stored in model.safetensors alike,
    then re-sign: every integrity check passes, only the values are wrong."""
    raw = json.loads((folder / "config.json").read_text())
    (raw[section] if section else raw)[key] = value
    (folder / "config.json").write_text(json.dumps(raw))
    path = folder / "model.safetensors"
    payload = path.read_bytes()
    size = struct.unpack("<Q", payload[:8])[0]
    header = json.loads(payload[8:8 + size])
    header["__metadata__"]["config"] = json.dumps({k: v for k, v in raw.items() if k not in RESERVED})
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload[8 + size:])
    _sign(folder)


def _forge_tensors(folder: Path, change) -> None:
    """change(tensors) edits the weights in place; the file is rewritten with its metadata and re-signed."""
    path = folder / "model.safetensors"
    payload = path.read_bytes()
    metadata = json.loads(payload[8:8 + struct.unpack("<Q", payload[:8])[0]])["__metadata__"]
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata=metadata)
    _sign(folder)


def _no_big_reads_or_builds(monkeypatch) -> None:
    """Fail if a checkpoint's weights are read whole or a real network is built."""
    def fail(*args, **kwargs):
        pytest.fail("got as far as reading the weights or building the network")
    monkeypatch.setattr(safefile, "read_verified", fail)
    monkeypatch.setattr(checkpoint, "_model_for", fail)


def _one_line_refusal(argv: list[str], capsys, text: str) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("corolla: error: ") and err.count("\n") == 1 and text in err, err
    return err


def _command(*args: str, limit_memory: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m corolla ARGS` as a user runs it; limit_memory caps it at 3 GiB (a command that reads
    /dev/zero then fails instead of taking the machine's memory)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, 3 * 2 ** 30))
    return subprocess.run([sys.executable, "-m", "corolla", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap if limit_memory else None)


def _assert_refused(process: subprocess.CompletedProcess, text: str) -> None:
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2 and len(lines) == 1 and lines[0].startswith("corolla: error: "), process.stderr
    assert text in lines[0], lines[0]


# -- 6. the config cannot decide what is allocated ----------------------------------------------

@pytest.mark.parametrize("section, key, value, message", [
    # 212 KB with these took 14 minutes and 7.9 GB before a traceback
    ("unet", "block_depth", 1_000_000, "unet.block_depth = 1000000 is not allowed: must be a whole number from 1 to 8"),
    # 7 GB before it was refused: within every field's bound, 1.4 billion parameters
    ("unet", "widths", [4096, 4096], "1,427,782,483 parameters; corolla loads at most 100,000,000"),
    ("unet", "widths", [16, 32], "do not match the config's architecture"),  # a plausible network, not these weights
    ("unet", "embedding_size", 16, "has shape"),
    ("data", "image_size", 10 ** 9, "data.image_size = 1000000000 is not allowed"),
])
def test_a_config_is_checked_against_the_weights_header_before_anything_is_allocated(
        section, key, value, message, release, monkeypatch, capsys, tmp_path):
    _forge_config(release, section, key, value)
    _no_big_reads_or_builds(monkeypatch)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)):
        checkpoint.load_model(release)
    _one_line_refusal(["sample", str(release), "-n", "1", "--out", str(tmp_path / "x.png")], capsys, message)
    assert not (tmp_path / "x.png").exists()


def test_a_huge_sparse_weights_file_is_refused_from_its_header_not_read(release, monkeypatch):
    raw = json.loads((release / "config.json").read_text())
    raw.pop("sha256")  # a hand-made checkpoint without checksums
    (release / "config.json").write_text(json.dumps(raw))
    os.truncate(release / "model.safetensors", 20 * 2 ** 30)  # 20 GB of holes after the real tensors
    monkeypatch.setattr(safefile, "read_verified", lambda *a: pytest.fail("read the whole file"))
    with pytest.raises(checkpoint.CheckpointError, match="21,474,836,480 bytes where its tensors take"):
        checkpoint.load_model(release)


@pytest.mark.parametrize("name, content, message", [
    ("config.json", b"[" * 100_000 + b"]" * 100_000, "not readable JSON (maximum recursion depth"),
    ("config.json", None, "67,108,864 bytes; a checkpoint's is at most 1,048,576"),  # a sparse 64 MiB file
    ("model.safetensors", struct.pack("<Q", 2 ** 40) + b"{}", "contents do not match the SHA-256"),
])
def test_oversized_or_deeply_nested_files_are_one_line(name, content, message, release, capsys, tmp_path):
    if content is None:
        os.truncate(release / name, 64 * 2 ** 20)
    else:
        (release / name).write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)):
        checkpoint.load_model(release)
    _one_line_refusal(["sample", str(release), "-n", "1", "--out", str(tmp_path / "x.png")], capsys, message)


@pytest.mark.slow  # starts a subprocess
def test_a_refused_config_is_one_line_from_the_shell(release, tmp_path):
    _forge_config(release, "data", "image_size", 0)
    process = _command("sample", str(release), "-n", "1", "--out", str(tmp_path / "x.png"))
    _assert_refused(process, "data.image_size = 0 is not allowed: must be a whole number from 8 to 1,024")
    assert not (tmp_path / "x.png").exists()


# -- 7. the latest pointer ----------------------------------------------------------------------

def _replace_latest(run: Path, make) -> None:
    (run / "latest").unlink()
    make(run / "latest")


@pytest.mark.slow  # starts a subprocess
def test_a_fifo_as_latest_does_not_hang_the_command(run, tmp_path):
    _replace_latest(run, os.mkfifo)  # opening it for reading used to block forever
    process = _command("sample", str(run), "-n", "1", "--out", str(tmp_path / "x.png"), timeout=120)
    _assert_refused(process, "latest is not a regular file")


@pytest.mark.slow  # starts a subprocess
def test_latest_linked_to_dev_zero_is_refused_without_reading_it(run, tmp_path):
    _replace_latest(run, lambda p: p.symlink_to("/dev/zero"))  # used to read until memory ran out
    process = _command("sample", str(run), "-n", "1", "--out", str(tmp_path / "x.png"), limit_memory=True)
    _assert_refused(process, "latest is not a checkpoint pointer (a symbolic link)")


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/etc", "step-00000001/../../x", "checkpoints/step-00000001",
                                     "SECRET-TOKEN-12345"])
def test_latest_names_only_a_checkpoint_inside_the_run(pointer, run, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    checkpoint.save_pretrained(elsewhere, build(TINY, torch.device("cpu"))[0], TINY)  # a complete checkpoint outside
    (run / "latest").write_text(pointer + "\n")
    with pytest.raises(checkpoint.CheckpointError, match="does not name a checkpoint"):
        checkpoint.load_model(run)
    err = _one_line_refusal(["sample", str(run), "-n", "1", "--out", str(tmp_path / "x.png")], capsys,
                            "does not name a checkpoint")
    assert "SECRET" not in err  # a file's contents are never echoed


def test_latest_as_a_link_or_naming_a_linked_folder_is_refused(run, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("step-00000001\n")
    _replace_latest(run, lambda p: p.symlink_to(secret))
    with pytest.raises(checkpoint.CheckpointError, match="a symbolic link"):
        checkpoint.load_model(run)
    (run / "latest").unlink()
    (run / "latest").write_text("step-00000002\n")
    (run / "checkpoints" / "step-00000002").symlink_to(run / "checkpoints" / "step-00000001")
    with pytest.raises(checkpoint.CheckpointError, match="not a complete checkpoint"):
        checkpoint.load_model(run)


# -- 8. every config field, and state.json ------------------------------------------------------

BAD_FIELDS = [
    ("data", "image_size", 0, "must be a whole number from 8 to 1,024"),
    ("data", "image_size", -64, "must be a whole number from 8 to 1,024"),
    ("data", "image_size", "16", "data.image_size = '16' is not allowed"),
    ("data", "image_size", None, "data.image_size = None is not allowed"),
    ("data", "image_size", 18, "must be a multiple of 4"),
    ("unet", "widths", [], "unet.widths = () is not allowed"),
    ("unet", "widths", [8, 0], "unet.widths = (8, 0) is not allowed"),
    ("unet", "embedding_size", 9, "must be an even whole number"),
    ("unet", "channels", 1, "must be 3 (corolla's images are RGB)"),
    ("train", "schedule", "quadratic", "train.schedule = 'quadratic' is not allowed"),
    ("train", "ema", 1.5, "train.ema = 1.5 is not allowed"),
    ("data", "val_fraction", "0.05", "data.val_fraction = '0.05' is not allowed"),
    (None, "preset", "$\\frac{$", "preset = '$\\\\frac{$' is not allowed"),  # made matplotlib's mathtext fail
    (None, "preset", "x" * 200_000, "preset = 'xxxxxxxx"),  # 6 GB when drawn into a figure title
    ("unet", "widths", "not a list", "unet.widths = 'not a list' is not allowed"),
]


@pytest.mark.parametrize("section, key, value, message", BAD_FIELDS, ids=lambda v: str(v)[:20])
def test_every_config_field_is_checked_on_load(section, key, value, message, release, capsys, tmp_path):
    _forge_config(release, section, key, value)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.load_model(release)
    assert message in str(refused.value) and len(str(refused.value)) < 400
    _one_line_refusal(["trajectory", str(release), "--out", str(tmp_path / "t.png")], capsys, message)


@pytest.mark.parametrize("key, value, message", [
    ("step", "3", "step = '3' is not allowed"),
    ("step", -1, "step = -1 is not allowed"),
    ("running_loss", "nan", "running_loss = 'nan' is not allowed"),
    ("data_dir", 5, "data_dir = 5 is not allowed: must be a folder path or null"),
    ("best", "x", "best = 'x' is not allowed"),
    ("best", {"metric": "swd", "value": "low", "step": 1, "epoch": 1}, "best = {'metric'"),
    ("log_lines", 2.5, "log_lines = 2.5 is not allowed"),
])
def test_state_json_values_of_the_wrong_type_are_refused_before_training(key, value, message, run, capsys,
                                                                          monkeypatch):
    folder = checkpoint.resolve(run)
    state = json.loads((folder / "state.json").read_text())
    state[key] = value
    (folder / "state.json").write_text(json.dumps(state))
    _sign(folder)
    with pytest.raises(checkpoint.CheckpointError, match="state.json: " + key):
        checkpoint.load_state(run)
    from corolla.data import imagefolder
    monkeypatch.setattr(imagefolder, "load_folder", lambda *a, **k: pytest.fail("got as far as loading images"))
    _one_line_refusal(["train", "--preset", "tiny", "--out", str(run), "--resume", "--no-progress"], capsys, message)


def test_a_deeply_nested_state_json_is_one_line(run, capsys):
    folder = checkpoint.resolve(run)
    (folder / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    _sign(folder)
    with pytest.raises(checkpoint.CheckpointError, match="not readable JSON"):
        checkpoint.load_state(run)


# -- 9. values no trained model has ---------------------------------------------------------------

def _set(key: str, value: float):
    def change(tensors):
        tensors[key].fill_(value)
    return change


def _first(release: Path, suffix: str) -> str:
    return next(k for k in load_file(release / "model.safetensors") if k.endswith(suffix))


@pytest.mark.parametrize("what, message", [
    ("negative normaliser variance", "normalizer.variance holds a negative variance"),
    ("negative BatchNorm running variance", "holds a negative variance"),
    ("huge finite weight", "holds 1e+30; no trained network has values beyond 1e+06"),
    ("normaliser mean outside [0, 1]", "normalizer.mean holds 7"),
])
def test_impossible_values_are_refused_at_load(what, message, release, capsys, tmp_path):
    key, value = {"negative normaliser variance": ("normalizer.variance", -0.05),
                  "negative BatchNorm running variance": (_first(release, "running_var"), -1.0),
                  "huge finite weight": (_first(release, "conv1.weight"), 1e30),
                  "normaliser mean outside [0, 1]": ("normalizer.mean", 7.0)}[what]
    _forge_tensors(release, _set(key, value))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)):
        checkpoint.load_model(release)
    _one_line_refusal(["sample", str(release), "-n", "1", "--out", str(tmp_path / "x.png")], capsys, "holds")
    assert not (tmp_path / "x.png").exists()  # all-black PNGs were written with exit status 0


def test_weights_that_overflow_write_no_image(release, tmp_path, capsys):
    # within the bound at load, but every activation overflows: the images would be NaN, written black
    def change(tensors):
        for key, value in tensors.items():
            if key.startswith("ema_network.") and key.endswith("weight"):
                value.fill_(9e5)
    _forge_tensors(release, change)
    out, each = tmp_path / "x.png", tmp_path / "each"
    _one_line_refusal(["sample", str(release), "-n", "2", "--steps", "2", "--no-progress", "--out", str(out),
                       "--each", str(each)], capsys, "NaN or infinite")
    assert not out.exists() and not list(each.glob("*.png"))


def test_evaluate_writes_valid_json_with_null_and_the_reason_for_what_it_cannot_compute(
        release, make_flowers, monkeypatch, tmp_path, capsys):
    # a loss that overflowed
    monkeypatch.setattr(metrics.evaluation, "denoising_loss", lambda *a, **k: [float("nan")] * 10)
    out = tmp_path / "evaluation.json"
    assert cli.main(["evaluate", str(release), "--data", str(make_flowers(16)), "--samples", "4", "--steps", "1",
                     "--json", str(out), "--pairs", str(tmp_path / "pairs.png")]) == 0
    results = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert results["heldout_loss"] is None and results["train_loss"] is None
    assert results["heldout_loss_by_time"] == [None] * 10
    assert results["not_computed"]["heldout_loss"] == "not a finite number (nan)"
    assert results["not_computed"]["kid"] == "needs Inception weights" and results["swd"] > 0
    assert "not a finite number (nan)" in capsys.readouterr().out  # the table says it too
