"""What still ended in a traceback (issue 26, item 5): each is now one `corolla: error:` line
saying what is allowed."""
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_untrusted import run  # noqa: F401 - the fixture: a tiny run folder with one training checkpoint

from corolla import cli, figures, generation, limits
from corolla.config import preset
from corolla.storage import checkpoint
from corolla.training import build

TINY = preset("tiny").replace(train={"precision": "fp32"})


def _one_line(code: int, capsys, text: str, status: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == status and err.startswith("corolla: error: ") and err.count("\n") == 1 and text in err, err
    return err


@pytest.mark.parametrize("key, value, message", [
    ("lr", "fast", "optimizer.param_groups[0].lr = 'fast' is not allowed: must be a finite number above 0"),
    ("betas", [2, 3], "optimizer.param_groups[0].betas = [2, 3] is not allowed: must be a list of 2 to 2 entries"),
    ("eps", None, "eps = None is not allowed"),
    ("params", "all", "params = 'all' is not allowed"),
    ("amsgrad", "yes", "amsgrad = 'yes' is not allowed: must be null or true or false"),
])
def test_optimiser_values_of_state_json_are_checked_before_resuming(key, value, message, run, capsys, monkeypatch):
    folder = checkpoint.resolve(run)
    state = json.loads((folder / "state.json").read_text())
    state["optimizer"]["param_groups"][0][key] = value
    (folder / "state.json").write_text(json.dumps(state))
    raw = json.loads((folder / "config.json").read_text())
    raw["sha256"]["state.json"] = hashlib.sha256((folder / "state.json").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(checkpoint.CheckpointError, match="state.json: optimizer.param_groups"):
        checkpoint.load_state(run)
    from corolla.data import imagefolder
    monkeypatch.setattr(imagefolder, "load_folder", lambda *a, **k: pytest.fail("got as far as loading images"))
    _one_line(cli.main(["train", "--preset", "tiny", "--out", str(run), "--resume", "--no-progress"]), capsys, message)


@pytest.mark.parametrize("option", [["--box", ""], ["--box", " "], ["--mask", ""]])
def test_an_empty_box_or_mask_is_refused(option, tmp_path, capsys):
    code = cli.main(["inpaint", "photo.png", *option, "--out", str(tmp_path / "x.png")])
    _one_line(code, capsys, option[0])


@pytest.mark.parametrize("make", [lambda p: p.write_text("x"), os.mkfifo], ids=["a file", "a fifo"])
def test_a_tracker_folder_that_cannot_be_written_is_refused_before_any_work(make, make_flowers, tmp_path, capsys,
                                                                           monkeypatch):
    pytest.importorskip("tensorboard")
    (tmp_path / "run").mkdir()
    make(tmp_path / "run" / "tensorboard")
    from corolla.data import imagefolder
    monkeypatch.setattr(imagefolder, "load_folder", lambda *a, **k: pytest.fail("got as far as loading images"))
    code = cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--out", str(tmp_path / "run"),
                     "--log", "tensorboard", "--no-progress", "--max-steps", "1"])
    _one_line(code, capsys, "--log tensorboard")


def test_a_labelled_figure_is_measured_with_its_margins_and_its_drawing_memory():
    rows = [f"photo_{i:04d}.png #{i}" for i in range(4000)]  # edit -n 4000 --figure: 6.7 GB before
    with pytest.raises(ValueError, match=r"the figure would have 4,000 x 2 images of 64 px, [0-9,]+ x [0-9,]+ pixels "
                                         r"with its labels \(about [0-9.]+ GiB to draw\); at most"):
        figures.check_grid_size(4000, 2, 64, ["input", "strength 0.6"], rows, "SDEdit")
    figures.check_grid_size(40, 2, 64, ["input", "strength 0.6"], rows[:40], "SDEdit")  # small ones are drawn


def test_edit_with_a_figure_too_big_to_draw_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    from corolla import editing
    monkeypatch.setattr(editing, "edit", lambda *a, **k: pytest.fail("got as far as sampling"))
    photo = str(next(Path(__file__).parent.parent.glob("corolla/assets/flowers/*.jpg")))
    code = cli.main(["edit", photo, "-n", "4000", "--figure", str(tmp_path / "f.png"),
                     "--out", str(tmp_path / "x.png")])
    _one_line(code, capsys, "with its labels")


@pytest.mark.slow  # starts a subprocess
def test_running_out_of_memory_is_one_line_saying_what_to_lower(tmp_path):
    config = TINY.replace(data={"image_size": 512})
    model, _ = build(config, torch.device("cpu"))
    checkpoint.save_pretrained(tmp_path / "big", model, config, ema_only=True)

    # 2 GiB: a batch of 64 images of 512x512 (about 5.5 GiB for this network) cannot be sampled,
    # and the machine is not put at risk; the free memory (more than that) lets the allocator fail
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2 ** 30, 2 * 2 ** 30))
    process = subprocess.run([sys.executable, "-m", "corolla", "sample", str(tmp_path / "big"), "-n", "64",
                              "--steps", "1", "--out", str(tmp_path / "x.png"), "--no-progress"],
                             capture_output=True, text=True, timeout=300, preexec_fn=cap)
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
    assert lines[-1].startswith("corolla: error: ") and "--batch-size" in lines[-1], process.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_memory_check_counts_the_bottom_s_attention(monkeypatch):
    config = TINY.replace(unet={"attention": True}, data={"image_size": 64})  # bottom 16 wide: one head
    model, _ = build(config, torch.device("cpu"))
    widths, bottom = config.unet.widths, config.unet.bottom_width
    plain = limits.evaluation_bytes(widths, bottom, 4, 64)
    # 16 x 16 positions at the bottom of 64 px (two halvings): 3 float32 arrays of 256 x 256 per image
    one = limits.evaluation_bytes(widths, bottom, 1, 64, attention_heads=1)
    assert one == math.ceil(limits.EVALUATION_BYTES_PER_PIXEL / 8 * 64 * 64 + 3 * 4 * 256 ** 2)
    monkeypatch.setattr(limits, "available_bytes", lambda device: plain)  # 4 fit without the attention
    with pytest.raises(ValueError, match=f"at most {plain // one} images at once at this size"):
        limits.check_evaluation_memory(model.network, 4, 64, torch.device("cpu"))
    assert plain // one == 2
    limits.check_evaluation_memory(model.network, 2, 64, torch.device("cpu"))


def test_a_batch_that_cannot_fit_is_refused_before_sampling(tmp_path, monkeypatch, capsys):
    config = TINY.replace(data={"image_size": 64})  # widths 8/16, bottom 16: 1/8 of the reference's per pixel
    model, _ = build(config, torch.device("cpu"))
    checkpoint.save_pretrained(tmp_path / "model", model, config, ema_only=True)
    per_pixel = limits.EVALUATION_BYTES_PER_PIXEL
    assert limits.evaluation_bytes((32, 64, 96), 128, 1, 64) == per_pixel * 64 * 64
    one = limits.evaluation_bytes(config.unet.widths, config.unet.bottom_width, 1, 64)
    assert one == math.ceil(per_pixel / 8 * 64 * 64)
    # the bottom's attention: 3 float32 (heads, P, P) arrays for P = 8 x 8 positions at 64 px, 16 x 16 at 128
    assert limits.evaluation_bytes((32, 64, 96), 128, 2, 64, attention_heads=4) == 2 * (
        per_pixel * 64 * 64 + 3 * 4 * 4 * 64 ** 2)
    assert limits.evaluation_bytes((32, 64, 96), 128, 1, 128, attention_heads=4) == (
        per_pixel * 128 * 128 + 3 * 4 * 4 * 256 ** 2)
    monkeypatch.setattr(limits, "available_bytes", lambda device: 10 * one + 1)
    monkeypatch.setattr(generation.samplers, "get_grid", lambda *a: pytest.fail("got as far as sampling"))
    code = cli.main(["sample", str(tmp_path / "model"), "-n", "16", "--batch-size", "16", "--steps", "1",
                     "--out", str(tmp_path / "x.png"), "--no-progress"])
    _one_line(code, capsys, "at most 10 images at once at this size")
    assert not (tmp_path / "x.png").exists()
