import json

import pytest
import torch
from PIL import Image

from corolla import cli
from corolla.cli import train as cli_train
from corolla.config import preset
from corolla.data import imagefolder
from corolla.rates import ema_decay
from corolla.storage import checkpoint
from corolla.training import resumed_config, train


@pytest.fixture(scope="module")
def flowers(make_flowers):
    return make_flowers(32)



def _train_losses(run):
    return [r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "train_loss" in r]


def test_short_training_lowers_the_loss_and_writes_a_sampleable_checkpoint(flowers, tmp_path):
    config = preset("tiny").replace(train={"epochs": 4, "lr": 2e-3}, data={"repetitions": 2})
    folder = train(config, flowers, tmp_path / "run", progress=False)
    losses = _train_losses(tmp_path / "run")
    # predicting zero noise gives E|eps| = 0.798; training must get clearly below where it started
    assert losses[0] > 0.6
    assert min(losses[-3:]) < losses[0] - 0.1
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (tmp_path / "run" / "samples" / "epoch_004.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_loss" in r] == [1, 2, 3, 4]
    assert all(r["val_loss"] > 0 for r in records if "val_loss" in r)

    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(tmp_path / "run"), "-n", "4", "--steps", "3", "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size == (2 + 2 * 18, 2 + 2 * 18)  # 2x2 grid of 16 px images, 2 px padding


def test_resume_continues_the_step_count(flowers, tmp_path):
    config = preset("tiny").replace(train={"epochs": 3})
    run = tmp_path / "run"
    first = train(config, flowers, run, progress=False, max_steps=5)
    assert json.loads((first / "state.json").read_text())["step"] == 5
    last = train(config, flowers, run, resume=True, progress=False)
    state = json.loads((last / "state.json").read_text())
    steps_per_epoch = imagefolder.batches_per_epoch(30, 1, 8)  # 32 images, 2 held out, batch 8
    assert state["step"] == 3 * steps_per_epoch and state["epoch"] == 3
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(steps) and steps[-1] == 3 * steps_per_epoch


def test_a_resumed_run_may_change_how_long_and_how_it_runs_but_not_what_it_learns():
    saved = preset("tiny").replace(train={"lr_warmup": 0, "precision": "fp32"})
    longer = saved.replace(train={"epochs": 9, "precision": "auto", "lr_warmup": None})
    assert resumed_config(saved, longer) == saved.replace(train={"epochs": 9, "precision": "auto"})
    with pytest.raises(ValueError, match=r"may change, not data.image_size, train.lr$"):
        resumed_config(saved, saved.replace(train={"lr": 0.5}, data={"image_size": 32}))


def test_the_library_refuses_a_resume_that_would_change_the_run(flowers, tmp_path):
    config = preset("tiny").replace(train={"epochs": 3})
    run = tmp_path / "run"
    train(config, flowers, run, progress=False, max_steps=1)
    with pytest.raises(ValueError, match="not train.batch_size"):
        train(config.replace(train={"batch_size": 4}), flowers, run, resume=True, progress=False)
    assert json.loads((checkpoint.resolve(run) / "state.json").read_text())["step"] == 1  # left as it was


def test_normaliser_statistics_come_from_the_training_images(flowers, tmp_path):
    config = preset("tiny").replace(data={"val_fraction": 0.0})
    folder = train(config, flowers, tmp_path / "run", progress=False, max_steps=1)
    model, _ = checkpoint.load_model(folder)
    images, _ = imagefolder.load_folder(flowers, 16)
    x = images.double() / 255
    assert torch.allclose(model.normalizer.mean.flatten().double(), x.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(model.normalizer.variance.flatten().double(), x.var(dim=(0, 2, 3), unbiased=False), atol=1e-6)


def test_ema_decay_warmup():
    warm = preset("demo")
    assert ema_decay(warm, 0) == pytest.approx(0.1)
    assert ema_decay(warm, 90) == pytest.approx(0.91)
    assert ema_decay(warm, 10 ** 6) == 0.999
    assert ema_decay(preset("seed64"), 0) == 0.999  # the reference: constant


def test_ema_update_covers_batchnorm_statistics():
    from corolla.diffusion import DiffusionModel
    model = DiffusionModel(preset("tiny").unet)
    bn = model.network.down[0].blocks[0].norm
    bn.running_mean.fill_(1.0)
    model.update_ema(0.9)
    assert torch.allclose(model.ema_network.down[0].blocks[0].norm.running_mean, torch.full_like(bn.running_mean, 0.1))


def test_eval_every_logs_metrics_and_keeps_the_best_ema_weights(flowers, tmp_path):
    config = preset("tiny").replace(train={"epochs": 2, "eval_every": 1, "eval_samples": 8, "eval_steps": 2,
                                           "keep_best": "swd"})
    run = tmp_path / "run"
    train(config, flowers, run, progress=False)
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_swd" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all(r["eval_swd"] > 0 and r["eval_heldout_loss"] > 0 and r["eval_kid"] is None for r in evals)
    best = json.loads((run / "best" / "state.json").read_text())
    assert best["value"] == min(r["eval_swd"] for r in evals)
    model, _ = checkpoint.load_model(run / "best")  # EMA-only weights load for sampling
    assert model.normalizer.mean.shape == (1, 3, 1, 1)


def test_keep_best_needs_eval_every(capsys):
    assert cli.main(["train", "--preset", "tiny", "--keep-best", "swd", "--out", "/nonexistent/x"]) == 2
    assert "--keep-best needs --eval-every" in capsys.readouterr().err


def test_val_data_holds_out_another_folder_and_the_whole_data_folder_trains(make_flowers, tmp_path):
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    for path in sorted(imagefolder.bundled_dir().glob("*.jpg"))[-3:]:
        (heldout / path.name).write_bytes(path.read_bytes())
    args = cli.parser().parse_args(["train", str(make_flowers(16)), "--preset", "tiny", "--val-data", str(heldout)])
    config = cli_train.train_config(args)
    assert config.data.val_fraction == 0.0
    run = tmp_path / "run"
    folder = train(config, make_flowers(16), run, progress=False, val_dir=heldout)
    state = json.loads((folder / "state.json").read_text())
    assert state["val_dir"] == str(heldout.resolve())
    assert state["step"] == imagefolder.batches_per_epoch(16, 1, 8)  # all 16 images train, none held out
    val = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
           if "val_loss" in line]
    assert len(val) == 1 and 0 < val[0] < 2
    # a resumed run finds its held-out folder in its state
    folder = train(config.replace(train={"epochs": 2}), None, run, resume=True, progress=False)
    assert json.loads((folder / "state.json").read_text())["val_dir"] == str(heldout.resolve())
    bad = cli.parser().parse_args(["train", "--val-data", str(heldout), "--val-fraction", "0.1"])
    with pytest.raises(ValueError, match="give one"):
        cli_train.train_config(bad)
