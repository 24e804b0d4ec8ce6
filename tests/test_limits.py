"""Bounds (issue 14, items 8, 13 and 14): every config field is checked when a Config is made, every
number on the command line has an upper bound, and every refusal is one `corolla: error:` line with
exit status 2 before any work; memory stays bounded where the input grows."""
import dataclasses
import subprocess
import sys

import pytest
import torch

from corolla import cli, figures, limits
from corolla.cli import options
from corolla.config import Config, DataConfig, SamplingConfig, TrainConfig, preset
from corolla.data import imagefolder
from corolla.unet import UNet, UNetConfig

HUGE = "99999999999999999999999"


# -- 8. configs ---------------------------------------------------------------------------------

def test_every_config_field_has_a_rule_and_every_preset_follows_them():
    for kind in (UNetConfig, DataConfig, TrainConfig, SamplingConfig, Config):
        fields = {f.name for f in dataclasses.fields(kind)} - {"unet", "data", "train", "sampling"}
        assert fields == set(limits.SECTION_RULES[kind.__name__]), kind.__name__
    for name in ("seed64", "demo", "tiny"):
        limits.check_config(preset(name))


@pytest.mark.parametrize("changes, message", [
    ({"data": {"image_size": 0}}, "data.image_size = 0 is not allowed: must be a whole number from 8 to 1,024"),
    ({"data": {"image_size": 36}}, "must be a multiple of 8"),
    ({"data": {"repetitions": 10 ** 8}},
     "data.repetitions = 100000000 is not allowed: must be a whole number from 1 to 1,000"),
    ({"train": {"eval_samples": 10 ** 7}}, "train.eval_samples = 10000000 is not allowed"),
    ({"train": {"lr": float("inf")}}, "train.lr = inf is not allowed: must be a finite number above 0"),
    ({"train": {"epochs": True}}, "train.epochs = True is not allowed"),
    ({"train": {"keep_best": "loss"}}, "train.keep_best = 'loss' is not allowed: must be one of '', 'swd'"),
    ({"train": {"loss": "huber"}}, "train.loss = 'huber' is not allowed: must be one of 'l1', 'mse'"),
    ({"unet": UNetConfig(embedding_size=31)}, "unet.embedding_size = 31 is not allowed: must be an even whole number"),
    ({"unet": UNetConfig(widths=(32,) * 7)}, "unet.widths = (32, 32, 32, 32, 32, 32, 32) is not allowed"),
])
def test_a_config_refuses_a_bad_value_when_it_is_made(changes, message):
    with pytest.raises(ValueError) as refused:
        preset("seed64").replace(**changes)
    assert message in str(refused.value)


def test_eval_samples_are_bounded_by_the_memory_they_take_at_the_image_size():
    preset("demo").replace(train={"eval_samples": 50_000})  # 32x32: 0.6 GiB
    with pytest.raises(ValueError, match=r"train.eval_samples: 50,000 images of 1024x1024 would take 585.9 GiB at "
                                         r"once; at most 341 at this size"):
        preset("demo").replace(data={"image_size": 1024}, train={"eval_samples": 50_000})


def test_a_unet_checks_its_config_before_allocating():
    with pytest.raises(ValueError, match="unet.widths = \\(\\) is not allowed"):
        UNet(UNetConfig(widths=()))


def test_a_formula_or_dollar_in_a_figure_title_is_drawn_as_text(tmp_path):
    # an image named "$\frac{$.png" put matplotlib's mathtext parser into the title and failed
    out = figures.plot_noising(torch.rand(3, 16, 16), tmp_path / "n.png", [0.0, 1.0], title="$\\frac{$ x $a^$")
    assert out.is_file()


# -- 14. arguments ------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (["sample", "MODEL", "-n", HUGE], "must be at most 10,000,000"),
    (["sample", "MODEL", "--steps", HUGE], "must be at most 10,000"),
    (["sample", "MODEL", "--batch-size", HUGE], "must be at most 4,096"),
    (["sample", "MODEL", "--seed", HUGE], "must be at most 4,294,967,295"),  # said "Overflow when unpacking long long"
    (["sample", "MODEL", "--eta", "nan"], "must be 0 (deterministic) up to 1"),  # was taken as 0
    (["sample", "MODEL", "--eta", "inf"], "must be 0 (deterministic) up to 1"),  # was accepted
    (["sample", "MODEL", "--eta", "-1"], "must be 0 (deterministic) up to 1"),
    (["sample", "MODEL", "--eps-scale", "nan"], "must be 0.8 to 1.2 (1: the reference's sampling"),
    (["sample", "MODEL", "--eps-scale", "2"], "must be 0.8 to 1.2 (1: the reference's sampling"),
    (["evaluate", "MODEL", "--eps-scale", "x"], "'x' is not a number"),
    (["sample", "", "-n", "1"], "an empty path is not allowed"),  # silently meant the shipped model
    (["evaluate", "", "--samples", "1"], "an empty path is not allowed"),
    (["trajectory", ""], "an empty path is not allowed"),
    (["train", "", "--preset", "tiny"], "an empty path is not allowed"),  # silently meant the bundled flowers
    (["train", "--out", ""], "an empty path is not allowed"),  # silently meant runs/seed64
    (["evaluate", "MODEL", "--samples", HUGE], "must be at most 50,000"),
    (["noising", "--size", HUGE], "must be at most 1,024"),
    (["interpolate", "MODEL", "--frames", HUGE], "must be at most 1,000"),
    (["interpolate", "MODEL", "--frames", "1"], "must be 2 or more"),
    (["interpolate", "MODEL", "--seeds", "3", HUGE], "must be at most 4,294,967,295"),
    (["train", "--repetitions", HUGE], "must be at most 1,000"),
    (["train", "--repetitions", "100000000"], "must be at most 1,000"),
    (["train", "--eval-samples", "10000000"], "must be at most 50,000"),
    (["train", "--epochs", HUGE], "must be at most 1,000,000"),
    (["train", "--image-size", "2048"], "must be at most 1,024"),
    (["sweep", "MODEL", "--steps", f"1,{HUGE}"], "give whole numbers from 1 to 10,000"),
    (["sample", "MODEL", "-n", "x" * 10_000], "is not a whole number"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from corolla.storage import checkpoint
    from corolla.training import build
    config = preset("tiny").replace(train={"precision": "fp32"})
    model, _ = build(config, torch.device("cpu"))
    return checkpoint.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model", model, config)


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS,
                         ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None)
def test_every_number_has_a_bound_and_every_refusal_is_one_line(argv, message, model_dir, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setattr(imagefolder, "load_folder", lambda *a, **k: pytest.fail("got as far as loading images"))
    monkeypatch.chdir(tmp_path)
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("corolla: error: ") and err.count("\n") == 1 and message in err, err
    assert len(err) < 700 and not any(tmp_path.iterdir())


@pytest.mark.slow  # starts a subprocess
def test_an_argparse_refusal_from_the_shell_is_one_line():
    process = subprocess.run([sys.executable, "-m", "corolla", "sample", "-n", HUGE], capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 2
    assert process.stderr.splitlines() == [f"corolla: error: argument -n/--num-images: {HUGE} is not allowed: must be "
                                           f"at most 10,000,000 (see corolla sample --help)"]


def test_figures_too_big_to_draw_are_refused_before_sampling(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(figures, "ddim_trajectory", lambda *a, **k: pytest.fail("got as far as sampling"))
    code = cli.main(["trajectory", str(model_dir), "--steps", "10000", "--per-row", "1",
                     "--out", str(tmp_path / "t.png")])
    err = capsys.readouterr().err
    assert code == 2 and "the figure would have 20,000 x 1 images of 64 px" in err and err.count("\n") == 1, err


# -- 13. memory where the input grows -----------------------------------------------------------

def test_channel_statistics_match_float64_over_the_whole_set():
    images = torch.randint(0, 256, (700, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = images.to(torch.float64) / 255.0
    mean, variance = imagefolder.channel_statistics(images)
    assert torch.equal(mean, x.mean(dim=(0, 2, 3)).float())
    assert torch.equal(variance, x.var(dim=(0, 2, 3), unbiased=False).float())


# VmHWM: this process's own peak resident memory (ru_maxrss would carry over pytest's)
PEAK = """
import torch
from corolla.data import imagefolder

def peak_mib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) // 1024

images = torch.randint(0, 256, (4000, 3, 64, 64), dtype=torch.uint8)
imagefolder.channel_statistics(images[:2])
before = peak_mib()
imagefolder.channel_statistics(images)
print(peak_mib() - before)
"""


@pytest.mark.slow  # starts a subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_channel_statistics_never_hold_a_float_copy_of_the_data_set():
    # 4,000 images of 64x64 are 47 MiB as uint8 and 375 MiB as float64: the peak grew by 750 MiB
    rise = int(subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True,
                              timeout=120).stdout)
    assert rise < 100, f"peak memory rose by {rise} MiB"


def test_a_huge_grid_of_samples_is_bounded_before_work():
    with pytest.raises(ValueError, match="at most 1,398,101 at this size"):
        limits.check_held_images(10 ** 7, 16, "-n")
    limits.check_held_images(1_398_101, 16, "-n")
    assert options.whole_number(1, limits.MAX_IMAGES)("10000000") == 10 ** 7
