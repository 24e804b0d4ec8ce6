import ast
import errno
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from corolla import cli
from corolla.config import preset
from corolla.storage import checkpoint
from corolla.training import build

ROOT = Path(__file__).resolve().parents[1]
CONFIG = preset("tiny")


def _trained(seed: int = 0):
    """A tiny model and optimiser after one step, so the AdamW moments exist."""
    model, optimizer = build(CONFIG, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2, 3, 16, 16), generator=g)
    model.noise_loss(x, torch.randn(x.shape, generator=g), torch.rand((2, 1, 1, 1), generator=g)).backward()
    optimizer.step()
    return model, optimizer


def _save(run: Path, model, optimizer, step: int) -> Path:
    state = {"step": step, "epoch": 0, "batch_in_epoch": step}
    return checkpoint.save_training(run, model, CONFIG, optimizer, state)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hidden_entries(run: Path) -> list[str]:
    return sorted(p.name for folder in (run, run / "checkpoints") for p in folder.iterdir() if p.name.startswith("."))


# -- atomic saves: a crash at every file-system operation ----------------------------------

class Crash(BaseException):
    """Stands for SIGKILL: raised at one operation, after which the file system is frozen."""


@pytest.fixture
def crash_at(monkeypatch):
    """crash_at(n): the n-th file-system operation of a save (and every one after it) raises
    Crash, so nothing after that point, clean-up included, reaches the disk. -> a control."""
    control = {"at": None, "count": 0, "crashed": False}

    def guard(function):
        def wrapper(*args, **kwargs):
            if control["at"] is not None:
                if control["crashed"] or control["count"] == control["at"]:
                    control["crashed"] = True
                    raise Crash
                control["count"] += 1
            return function(*args, **kwargs)
        return wrapper

    for name in ("replace", "rename", "unlink", "rmdir", "mkdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(checkpoint, "_write_file", guard(checkpoint._write_file))
    monkeypatch.setattr(checkpoint, "_fsync_dir", guard(checkpoint._fsync_dir))

    def arm(n):
        control.update(at=n, count=0, crashed=False)
    arm.control = control
    return arm


@pytest.mark.parametrize("second_step", [2, 1], ids=["new-step", "same-step-again"])
def test_a_crash_at_any_point_of_a_save_leaves_a_complete_checkpoint(tmp_path, crash_at, second_step):
    old_model, old_opt = _trained(0)
    new_model, new_opt = _trained(1)
    old, new = _weights(old_model), _weights(new_model)
    point = 0
    while True:
        run = tmp_path / f"run{point}"
        _save(run, old_model, old_opt, 1)
        crash_at(point)
        try:
            _save(run, new_model, new_opt, second_step)
            finished = True
        except Crash:
            finished = False
        crash_at(None)

        model, optimizer = build(CONFIG, torch.device("cpu"))
        state = checkpoint.load_training(run, model, optimizer)  # latest is always complete
        loaded = _weights(model)
        assert _same(loaded, new) if finished else (_same(loaded, old) or _same(loaded, new)), point
        assert state["step"] in (1, second_step)
        # the next save removes whatever the crash left behind
        _save(run, new_model, new_opt, 3)
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000003"]
        assert _hidden_entries(run) == []
        if finished:
            break
        point += 1
    assert point > 8  # every mkdir, write, fsync and rename of a save was a crash point


def test_a_folder_replaced_in_place_is_repaired_after_a_crash_between_the_renames(tmp_path, crash_at):
    """save_pretrained over an existing folder (an export, say) cannot swap folders atomically;
    a crash between its two renames leaves .export.old-PID, which the next save renames back."""
    old_model, new_model = _trained(0)[0], _trained(1)[0]
    old, new = _weights(old_model.eval()), _weights(new_model.eval())
    folder = tmp_path / "export"
    crash_at(10 ** 6)  # count the operations of a replacing save
    checkpoint.save_pretrained(folder, old_model, CONFIG)
    checkpoint.save_pretrained(folder, new_model, CONFIG)
    operations = crash_at.control["count"] // 2
    assert operations > 5
    for point in range(operations):
        checkpoint.save_pretrained(folder, old_model, CONFIG)
        crash_at(point)
        with pytest.raises(Crash):
            checkpoint.save_pretrained(folder, new_model, CONFIG)
        crash_at(None)
        checkpoint.remove_stale_temporaries(folder.parent, {folder.name})
        loaded = _weights(checkpoint.load_model(folder)[0])
        assert _same(loaded, old) or _same(loaded, new), point
        assert sorted(p.name for p in tmp_path.iterdir()) == ["export"], point


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model, optimizer = _trained(0)
    first = _save(run, model, optimizer, 1)
    files = {p.name: p.read_bytes() for p in first.iterdir()}
    write = checkpoint._write_file
    calls = []

    def full_disk(path, payload):  # the second file gets half its bytes, then ENOSPC
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, payload)
    monkeypatch.setattr(checkpoint, "_write_file", full_disk)
    model2, optimizer2 = _trained(1)
    with pytest.raises(OSError, match="No space left"):
        _save(run, model2, optimizer2, 2)
    assert (run / "latest").read_text().strip() == "step-00000001"
    assert {p.name: p.read_bytes() for p in first.iterdir()} == files
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]  # no half folder left
    fresh, fresh_opt = build(CONFIG, torch.device("cpu"))
    checkpoint.load_training(run, fresh, fresh_opt)
    assert _same(_weights(fresh), _weights(model))


def test_only_the_latest_checkpoint_is_kept_and_saves_record_checksums(tmp_path):
    run = tmp_path / "run"
    model, optimizer = _trained(0)
    for step in (1, 2, 3):
        folder = _save(run, model, optimizer, step)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000003"]
    raw = json.loads((folder / "config.json").read_text())
    assert set(raw["sha256"]) == {"model.safetensors", "training.safetensors", "state.json"}
    tensors = load_file(folder / "model.safetensors")
    assert _same(tensors, model.state_dict())


# -- bad checkpoints: one clear CheckpointError each, exit 2 from the CLI -------------------

class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _drop_checksums(folder: Path) -> None:
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("sha256")
    (folder / "config.json").write_text(json.dumps(raw))


def _edit_config(folder: Path, section: str, key: str, value) -> None:
    raw = json.loads((folder / "config.json").read_text())
    raw[section][key] = value
    (folder / "config.json").write_text(json.dumps(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_weight_byte(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[-5] ^= 0x10
    path.write_bytes(bytes(payload))


def _swap_in_a_pickle(folder: Path) -> None:
    marker = folder.parent / "code-ran"
    torch.save({"weights": torch.zeros(3), "payload": _RunsCode(marker)}, folder / "model.safetensors")


BAD_CHECKPOINTS = {
    # name: (how to break a good checkpoint folder (None: use another path), what the error says)
    "missing folder": (None, "does not exist"),
    "empty folder": (lambda f: [p.unlink() for p in f.iterdir()], "not a corolla checkpoint"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "truncated weights": (lambda f: _truncate(f / "model.safetensors"), "SHA-256"),
    "truncated weights, no checksum": (lambda f: (_drop_checksums(f), _truncate(f / "model.safetensors")),
                                       "not a valid safetensors file"),
    "altered weights": (lambda f: _flip_a_weight_byte(f / "model.safetensors"), "SHA-256"),
    "another architecture": (lambda f: _edit_config(f, "unet", "widths", [16, 32]), "unet.widths"),
    "another architecture, no stored config": (
        lambda f: (_drop_checksums(f), _edit_config(f, "unet", "widths", [16, 32]), _strip_metadata(f)),
        "do not match the config.s architecture"),
    "another image size": (lambda f: _edit_config(f, "data", "image_size", 64), "data.image_size"),
    "a random JSON config": (lambda f: (f / "config.json").write_text('{"model_type": "bert", "hidden": 768}'),
                             "not a corolla config"),
    "binary config": (lambda f: (f / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00"), "not readable JSON"),
    "config with nonsense values": (lambda f: (_drop_checksums(f), _edit_config(f, "unet", "block_depth", "two")),
                                    "unet.block_depth = 'two' is not allowed"),
    "config with nonsense values, no stored config": (
        lambda f: (_drop_checksums(f), _edit_config(f, "unet", "block_depth", "two"), _strip_metadata(f)),
        "unet.block_depth = 'two' is not allowed"),
    "newer format version": (lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"version": 1', '"version": 99')), "version 99"),
    "torch.save pickle as the weights": (_swap_in_a_pickle, "SHA-256"),
    "torch.save pickle as the weights, no checksum": (lambda f: (_drop_checksums(f), _swap_in_a_pickle(f)),
                                                      "not a valid safetensors file"),
}


def _strip_metadata(folder: Path) -> None:
    """The same weights without their __metadata__ (the stored config), as another writer makes them."""
    path = folder / "model.safetensors"
    payload = path.read_bytes()
    size = struct.unpack("<Q", payload[:8])[0]
    header = json.loads(payload[8:8 + size])
    header.pop("__metadata__", None)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload[8 + size:])


@pytest.fixture
def good_checkpoint(tmp_path):
    model, optimizer = _trained(0)
    return _save(tmp_path / "run", model, optimizer, 1)


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_clear_error(case, good_checkpoint, tmp_path, capsys):
    breaker, message = BAD_CHECKPOINTS[case]
    path = good_checkpoint
    if breaker is None:
        path = tmp_path / "no" / "such" / "checkpoint"
    else:
        breaker(good_checkpoint)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_model(path)
    if breaker is not None:
        with pytest.raises(checkpoint.CheckpointError):  # resuming reads the same files
            checkpoint.load_training(tmp_path / "run", *build(CONFIG, torch.device("cpu")))

    code = cli.main(["sample", str(path), "-n", "1", "--steps", "1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("corolla: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "code-ran").exists()  # nothing was unpickled
    assert not (tmp_path / "x.png").exists()


def test_the_sampling_section_says_how_to_draw_and_may_change_beside_the_weights(good_checkpoint):
    """config.json's sampling.eps_scale is not checked against the config stored in the weights
    (a released model's is set after measuring) and becomes the model's; a config.json written
    before the section existed is the reference's sampling."""
    assert checkpoint.load_model(good_checkpoint)[0].eps_scale == 1.0
    _edit_config(good_checkpoint, "sampling", "eps_scale", 1.01)
    model, config = checkpoint.load_model(good_checkpoint)
    assert model.eps_scale == config.sampling.eps_scale == 1.01
    raw = json.loads((good_checkpoint / "config.json").read_text())
    del raw["sampling"]
    (good_checkpoint / "config.json").write_text(json.dumps(raw))
    assert checkpoint.load_model(good_checkpoint)[0].eps_scale == 1.0
    raw["sampling"] = {"eps_scale": 3}
    (good_checkpoint / "config.json").write_text(json.dumps(raw))
    with pytest.raises(checkpoint.CheckpointError, match="sampling.eps_scale = 3 is not allowed"):
        checkpoint.load_model(good_checkpoint)
    raw["sampling"] = {"eps_scale": 1.01, "multistep_eps_scale": 1.02}
    (good_checkpoint / "config.json").write_text(json.dumps(raw))
    model = checkpoint.load_model(good_checkpoint)[0]
    assert (model.sampling_eps_scale(None), model.sampling_eps_scale(None, "unipc")) == (1.01, 1.02)
    raw["sampling"] = {"multistep_eps_scale": "1.02"}
    (good_checkpoint / "config.json").write_text(json.dumps(raw))
    with pytest.raises(checkpoint.CheckpointError, match="sampling.multistep_eps_scale = '1.02' is not allowed"):
        checkpoint.load_model(good_checkpoint)
    _edit_config(good_checkpoint, "sampling", "multistep_eps_scale", None)
    _edit_config(good_checkpoint, "sampling", "eps_scale", 1.0)
    _edit_config(good_checkpoint, "train", "seed", 7)  # every other section must still match
    with pytest.raises(checkpoint.CheckpointError, match="train.seed: 0 in the weights, 7 in config.json"):
        checkpoint.load_model(good_checkpoint)


def test_foreign_files_and_broken_run_folders_are_clear_errors(tmp_path, good_checkpoint):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, tmp_path / "model.pt")
    (tmp_path / "weights.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    for path in (tmp_path / "model.pt", tmp_path / "weights.pkl"):
        with pytest.raises(checkpoint.CheckpointError, match="not a corolla checkpoint"):
            checkpoint.load_model(path)
    assert not marker.exists()

    run = tmp_path / "run"
    (run / "latest").write_text("step-00000099\n")  # names a folder that is not there
    with pytest.raises(checkpoint.CheckpointError, match="names 'step-00000099'"):
        checkpoint.load_model(run)

    (run / "latest").write_text(good_checkpoint.name)
    (good_checkpoint / "training.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="training.safetensors is missing"):
        checkpoint.load_training(run, *build(CONFIG, torch.device("cpu")))
    _save(run, *_trained(0), 2)
    _drop_checksums(run / "checkpoints" / "step-00000002")
    (run / "checkpoints" / "step-00000002" / "state.json").write_text('{"step": 2}')
    with pytest.raises(checkpoint.CheckpointError, match="training state not usable"):
        checkpoint.load_training(run, *build(CONFIG, torch.device("cpu")))


def _unsafe_loads(tree: ast.AST) -> list[int]:
    """Lines calling torch.load without weights_only=True, or pickle / numpy loaders that unpickle."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        keywords = {k.arg: k.value for k in node.keywords}
        if owner == "torch" and node.func.attr == "load":
            safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
            lines += [] if safe else [node.lineno]
        elif owner in ("pickle", "cPickle", "dill", "joblib") and node.func.attr in ("load", "loads"):
            lines.append(node.lineno)
        elif owner in ("np", "numpy") and node.func.attr == "load":
            allow = keywords.get("allow_pickle")
            lines += [node.lineno] if isinstance(allow, ast.Constant) and allow.value else []
    return lines


def test_nothing_in_the_project_unpickles():
    offenders = {}
    sources = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "site-packages" not in p.parts]
    assert any(p.name == "checkpoint.py" for p in sources)
    for path in sources:
        lines = _unsafe_loads(ast.parse(path.read_text(), str(path)))
        if lines:
            offenders[str(path.relative_to(ROOT))] = lines
    assert offenders == {}
    # the check itself finds what it must
    assert _unsafe_loads(ast.parse("torch.load(f)\ntorch.load(f, weights_only=False)\npickle.loads(b)")) == [1, 2, 3]
    assert _unsafe_loads(ast.parse("torch.load(f, weights_only=True)\nnp.load(f)")) == []
