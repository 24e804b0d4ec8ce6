"""`train --log tensorboard|wandb`: what the trackers hold, read back with their own readers."""
from __future__ import annotations

import json
import struct
import sys
import time
import warnings

import pytest

from corolla import cli, loggers
from corolla.config import preset
from corolla.rates import ema_decay
from corolla.training import train

# 38 training images x 3 repetitions in batches of 8: 14 steps an epoch, so train losses are
# logged at steps 10, 14 | 24, 28 | 38, 42 and the epoch ends at 14, 28, 42
CONFIG = preset("tiny").replace(train={"epochs": 3}, data={"repetitions": 3})
TRAIN_STEPS, EPOCH_STEPS = [10, 14, 24, 28, 38, 42], [14, 28, 42]


@pytest.fixture(scope="module")
def flowers(make_flowers):
    return make_flowers(40)


def quiet_train(config, flowers, out, **kwargs):
    train(config, flowers, out, device="cpu", progress=False, log=lambda *_: None, **kwargs)


def jsonl(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def logged(run, key):
    return {r["step"]: r[key] for r in jsonl(run) if r.get(key) is not None}


def read_tensorboard(folder):
    """Every scalar and image tag of an event folder, through TensorBoard's own reader (which
    applies the purges that resumed runs ask for)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    images = {tag: [(e.step, e.width, e.height) for e in events.Images(tag)] for tag in events.Tags()["images"]}
    return scalars, images


def test_tensorboard_holds_each_metric_once_per_step_after_a_stop_and_a_resume(flowers, tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "run"
    quiet_train(CONFIG, flowers, run, max_steps=14, report_to=["tensorboard"])
    # what a run killed after its step-14 checkpoint leaves behind: events the resumed run redoes
    with SummaryWriter(str(run / "tensorboard")) as stale:
        for step in range(15, 29):
            stale.add_scalar("loss/train", 99.0, step)
    quiet_train(CONFIG, flowers, run, resume=True, report_to=["tensorboard"])

    scalars, images = read_tensorboard(run / "tensorboard")
    train_losses, val_losses, speeds = logged(run, "train_loss"), logged(run, "val_loss"), logged(run, "images_per_s")
    assert [s for s, _ in scalars["loss/train"]] == TRAIN_STEPS == sorted(train_losses)
    for step, value in scalars["loss/train"]:  # float32 in the event file
        assert value == pytest.approx(train_losses[step], rel=1e-6) and value != 99.0
    assert [s for s, _ in scalars["loss/val"]] == EPOCH_STEPS == sorted(val_losses)
    assert [v for _, v in scalars["loss/val"]] == pytest.approx([val_losses[s] for s in EPOCH_STEPS], rel=1e-6)
    assert [v for _, v in scalars["speed/images_per_s"]] == pytest.approx([speeds[s] for s in EPOCH_STEPS], rel=1e-6)
    assert scalars["optimizer/lr"] == [(s, pytest.approx(CONFIG.train.lr)) for s in TRAIN_STEPS]
    # the decay of the update that made step s (warm-up: (1 + i) / (10 + i) for update i = s - 1)
    assert scalars["optimizer/ema_decay"] == [(s, pytest.approx(ema_decay(CONFIG, s - 1))) for s in TRAIN_STEPS]
    assert scalars["optimizer/ema_decay"][0][1] == pytest.approx(10 / 19)
    # the per-epoch grid: 4 images of 16x16 tiled 2x2 with 2-pixel borders, as grid.png
    assert images["samples"] == [(s, 38, 38) for s in EPOCH_STEPS]
    # metrics.jsonl is unchanged by the tracker: the same records as a run without it
    plain = tmp_path / "plain"
    quiet_train(CONFIG, flowers, plain)
    assert [{k: v for k, v in r.items() if k != "images_per_s"} for r in jsonl(plain)] == \
           [{k: v for k, v in r.items() if k != "images_per_s"} for r in jsonl(run)]
    assert not (plain / "tensorboard").exists()


def test_a_fresh_run_hides_events_left_in_its_folder(flowers, tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "run"
    with SummaryWriter(str(run / "tensorboard")) as old:  # an earlier run that never checkpointed
        old.add_scalar("loss/train", 99.0, 10)
        old.add_scalar("loss/train", 99.0, 50)
    quiet_train(CONFIG.replace(train={"epochs": 1}), flowers, run, report_to=["tensorboard"])
    scalars, _ = read_tensorboard(run / "tensorboard")
    assert scalars["loss/train"] == [(10, pytest.approx(logged(run, "train_loss")[10], rel=1e-6)),
                                     (14, pytest.approx(logged(run, "train_loss")[14], rel=1e-6))]


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_that_is_not_installed_is_a_one_line_error_before_any_work(tracker, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, tracker, None)  # importlib then finds no such module
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", "--out", str(out), "--no-progress", "--log", tracker]) == 2
    err = capsys.readouterr().err
    assert err == f"corolla: error: --log {tracker} needs the {tracker} package: pip install 'corolla[{tracker}]'\n"
    assert not out.exists()


def test_a_failing_tracker_becomes_a_warning_and_training_goes_on():
    class Broken:
        def scalars(self, step, values):
            raise OSError("disk full")

    class Kept:
        def __init__(self):
            self.seen = []

        def scalars(self, step, values):
            self.seen.append((step, values))

    kept = Kept()
    reporter = loggers.Reporter([Broken(), kept])
    with pytest.warns(UserWarning, match="Broken logging failed and is turned off: disk full"):
        reporter.record({"step": 10, "epoch": 1, "train_loss": 0.5}, lr=1e-3, ema_decay=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the broken tracker is gone
        reporter.record({"step": 20, "epoch": 1, "val_loss": 0.4, "images_per_s": float("nan")}, lr=1e-3, ema_decay=0.6)
    assert kept.seen == [(10, {"loss/train": 0.5, "optimizer/lr": 1e-3, "optimizer/ema_decay": 0.5}),
                         (20, {"loss/val": 0.4})]  # NaN is not plotted


def wandb_history(run_file):
    """The history rows of a W&B run file: its LevelDB-style log of protobuf records (a 7-byte
    ':W&B' header, then 32 KiB blocks of chunks, each with a 7-byte header: crc, length, type).
    W&B's own process writes it, after run.finish() returns: the rows are read once the run's
    exit record is there."""
    deadline = time.monotonic() + 60
    while True:
        rows, finished = _wandb_records(run_file)
        if finished:
            return rows
        assert time.monotonic() < deadline, f"{run_file} has no exit record"
        time.sleep(0.05)  # polling the condition


def _wandb_records(run_file):
    from wandb.proto import wandb_internal_pb2
    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    rows, finished, position, pending = [], False, 7, b""
    while position + 7 <= len(raw):
        room = 32768 - position % 32768
        if room < 7:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        if position + 7 + length > len(raw):  # a chunk still being written
            break
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            finished |= record.WhichOneof("record_type") == "exit"
    return rows, finished


@pytest.mark.slow  # starts a subprocess
def test_wandb_logs_offline_without_a_key_and_a_resumed_run_keeps_its_id(flowers, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc key, no user settings
    run = tmp_path / "run"
    first = CONFIG.replace(train={"epochs": 1})
    quiet_train(first, flowers, run, report_to=["wandb"])
    assert "W&B logs offline" in capsys.readouterr().out
    run_id = (run / "wandb" / "corolla-run-id").read_text().strip()
    run_file, = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    rows = wandb_history(run_file)
    losses = {row["_step"]: row["loss/train"] for row in rows if "loss/train" in row}
    assert losses == pytest.approx(logged(run, "train_loss"), rel=1e-6)
    grids = [row for row in rows if "samples/path" in row]
    assert [row["_step"] for row in grids] == [14] and (run_file.parent / "files" / grids[0]["samples/path"]).is_file()
    assert [row["loss/val"] for row in rows if "loss/val" in row] == pytest.approx([logged(run, "val_loss")[14]])

    quiet_train(CONFIG.replace(train={"epochs": 2}), flowers, run, resume=True, report_to=["wandb"])
    assert (run / "wandb" / "corolla-run-id").read_text().strip() == run_id
    _, resumed = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))  # the same run, continued
    assert [row["_step"] for row in wandb_history(resumed) if "loss/train" in row] == [24, 28]
