"""train --init-from: a new run starts from a trained model's weights (corolla.warmstart)."""
import json

import pytest
import torch
from conftest import CLASSES

from corolla import cli, warmstart
from corolla.config import WARM_START_LR_WARMUP, preset
from corolla.diffusion import DiffusionModel
from corolla.rates import resolve_lr_warmup
from corolla.storage import checkpoint, pretrained
from corolla.training import train


@pytest.fixture(scope="module")
def source(tmp_path_factory, make_flowers):
    """A tiny unconditional run of 2 steps whose EMA weights differ from any fresh network's."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(preset("tiny"), make_flowers(16), out, progress=False, max_steps=2)
    return out


def _conditional_tiny(classes=CLASSES, modulation="shift", with_noise=False):
    config = preset("tiny").replace(unet={"classes": classes, "class_modulation": modulation,
                                          "class_with_noise": with_noise})
    torch.manual_seed(3)
    return DiffusionModel(config.unet), config


@pytest.mark.parametrize("modulation, with_noise", [("shift", False), ("scale-shift", False), ("shift", True)])
def test_both_networks_start_as_the_sources_ema_and_a_conditional_one_as_its_unconditional_twin(
        source, modulation, with_noise):
    trained, _ = checkpoint.load_model(source)
    model, config = _conditional_tiny(modulation=modulation, with_noise=with_noise)
    assert warmstart.load_into(model, config, source) == str(checkpoint.resolve(source))
    for network in (model.network, model.ema_network):
        ours = network.state_dict()
        for key, value in trained.ema_network.state_dict().items():
            assert torch.equal(ours[key], value), key
        maps = [value for key, value in ours.items() if "class_shift" in key or "class_scale" in key]
        assert len(maps) == (2 if modulation == "scale-shift" else 1) * 6  # the tiny network's 6 residual blocks
        assert not any(m.any() for m in maps)  # untouched: zero, as a new conditional network's
    model.eval()
    x, v = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 1, 1)
    with torch.no_grad():
        expected = trained.ema_network(x, v)
        assert torch.equal(model.ema_network(x, v, torch.tensor([0, 1])), expected)
        assert torch.equal(model.network(x, v), expected)


# the parts a network option adds that start at zero, so that a run with them starts as its source
ADDED_AT_ZERO = {"noise_in_blocks": lambda net: [v for k, v in net.state_dict().items() if "noise_shift" in k],
                 "attention": lambda net: [net.attention.out.weight, net.attention.out.bias]}


@pytest.mark.parametrize("option", sorted(ADDED_AT_ZERO))
def test_a_run_with_an_added_part_starts_as_its_source_and_needs_it_in_a_source_that_has_it(source, tmp_path,
                                                                                           option):
    trained, _ = checkpoint.load_model(source)
    config = preset("tiny").replace(unet={option: True})
    model = DiffusionModel(config.unet)
    warmstart.load_into(model, config, source)
    added = ADDED_AT_ZERO[option](model.network)
    assert added and not any(part.any() for part in added)
    model.eval()
    x, v = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 1, 1)
    with torch.no_grad():
        assert torch.equal(model.ema_network(x, v), trained.ema_network(x, v))
    checkpoint.save_pretrained(tmp_path / option, model, config, ema_only=True)
    plain = preset("tiny")
    with pytest.raises(ValueError, match=f"not this run's.*--{option.replace('_', '-')}"):
        warmstart.load_into(DiffusionModel(plain.unet), plain, tmp_path / option)


def test_other_networks_and_classes_are_refused_and_another_schedule_continues(source, tmp_path):
    config = preset("tiny")
    wider = config.replace(unet={"widths": (8, 16, 32)})
    with pytest.raises(ValueError, match="not this run's"):
        warmstart.load_into(DiffusionModel(wider.unet), wider, source)
    # the network takes the noise variance, not the time: any schedule continues it
    linear = config.replace(train={"schedule": "linear"})
    model = DiffusionModel(linear.unet, schedule="linear")
    warmstart.load_into(model, linear, source)
    trained, _ = checkpoint.load_model(source)
    assert all(torch.equal(value, model.network.state_dict()[key])
               for key, value in trained.ema_network.state_dict().items())
    conditional, conditional_config = _conditional_tiny()
    checkpoint.save_pretrained(tmp_path / "cond", conditional, conditional_config, ema_only=True)
    other, other_config = _conditional_tiny(("tulip", "iris", "lily"))
    with pytest.raises(ValueError, match="its own 3 classes"):
        warmstart.load_into(other, other_config, tmp_path / "cond")
    film, film_config = _conditional_tiny(modulation="scale-shift")  # a shift model has no scales to start from
    with pytest.raises(ValueError, match="class design differ"):
        warmstart.load_into(film, film_config, tmp_path / "cond")
    joined, joined_config = _conditional_tiny(with_noise=True)  # nor a join to start from
    with pytest.raises(ValueError, match="class design differ.*--class-with-noise"):
        warmstart.load_into(joined, joined_config, tmp_path / "cond")
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        warmstart.load_into(DiffusionModel(config.unet), config, tmp_path / "nothing")


def _trained_conditional(tmp_path, modulation="shift", with_noise=True):
    """A saved conditional tiny model whose class terms and output layer are not zero, as after training."""
    model, config = _conditional_tiny(modulation=modulation, with_noise=with_noise)
    with torch.no_grad():
        for key, value in model.ema_network.state_dict().items():
            if ("class_" in key or key.startswith("head.")) and value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=torch.Generator().manual_seed(len(key))) * 0.3)
    folder = tmp_path / f"{modulation}-{with_noise}"
    checkpoint.save_pretrained(folder, model, config, ema_only=True)
    return model, folder


def test_a_conditional_source_starts_an_unconditional_run_as_its_null_label_network(tmp_path, make_flowers,
                                                                                    capsys):
    conditional, folder = _trained_conditional(tmp_path)
    config = preset("tiny").replace(unet={"noise_in_blocks": True})
    model = DiffusionModel(config.unet)
    warmstart.load_into(model, config, folder)
    model.eval(), conditional.eval()
    x, v = torch.randn(3, 3, 16, 16), torch.rand(3, 1, 1, 1)
    with torch.no_grad():
        null = conditional.ema_network(x, v)
        assert not torch.allclose(conditional.ema_network(x, v, torch.tensor([0, 1, 2])), null, atol=1e-3)
        assert torch.allclose(model.ema_network(x, v), null, atol=1e-5)
        assert torch.allclose(model.network(x, v), null, atol=1e-5)
    plain = preset("tiny")
    with pytest.raises(ValueError, match="only as its null-label network, which needs --noise-in-blocks"):
        warmstart.load_into(DiffusionModel(plain.unet), plain, folder)
    for design in ({"with_noise": False}, {"modulation": "scale-shift"}):  # a class term no noise shift computes
        _, other = _trained_conditional(tmp_path, **design)
        with pytest.raises(ValueError, match="only a conditional model with --class-with-noise, shifts alone"):
            warmstart.load_into(DiffusionModel(config.unet), config, other)
    out = tmp_path / "unconditional"
    assert cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--init-from", str(folder),
                     "--noise-in-blocks", "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
    trained, trained_config = checkpoint.load_model(out)
    assert trained_config.unet.noise_in_blocks and not trained_config.unet.classes
    capsys.readouterr()
    assert cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--init-from", str(folder),
                     "--out", str(tmp_path / "refused"), "--max-steps", "1", "--no-progress"]) == 2
    assert "needs --noise-in-blocks (or add --conditional)" in capsys.readouterr().err


def test_a_shipped_models_name_is_a_source():
    assert warmstart.source_path(pretrained.DEFAULT) == pretrained.path()


def test_the_command_starts_a_conditional_run_from_an_unconditional_one_and_resume_keeps_the_record(
        source, class_folder, tmp_path, capsys):
    out = tmp_path / "cond"
    assert cli.main(["train", str(class_folder), "--preset", "tiny", "--conditional", "--init-from", str(source),
                     "--class-modulation", "scale-shift", "--epochs", "3", "--out", str(out), "--max-steps", "1",
                     "--no-progress"]) == 0
    state = json.loads((checkpoint.resolve(out) / "state.json").read_text())
    assert state["init_from"] == str(checkpoint.resolve(source)) and state["step"] == 1
    unet = checkpoint.load_model(out)[1].unet
    assert unet.classes == CLASSES and unet.class_modulation == "scale-shift"
    assert cli.main(["train", "--preset", "tiny", "--conditional", "--out", str(out), "--resume",
                     "--max-steps", "2", "--no-progress"]) == 0
    state = json.loads((checkpoint.resolve(out) / "state.json").read_text())
    assert state["init_from"] == str(checkpoint.resolve(source)) and state["step"] == 2
    capsys.readouterr()
    assert cli.main(["train", "--preset", "tiny", "--out", str(out), "--resume", "--init-from", str(source)]) == 2
    assert "give one" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "tiny", "--out", str(out), "--resume", "--class-modulation", "shift"]) == 2
    assert "a resumed run keeps its own" in capsys.readouterr().err
    assert cli.main(["train", str(class_folder), "--preset", "tiny", "--class-modulation", "scale-shift",
                     "--out", str(tmp_path / "plain")]) == 2
    assert "add --conditional" in capsys.readouterr().err
    assert cli.main(["train", str(class_folder), "--preset", "demo", "--init-from", str(source),
                     "--out", str(tmp_path / "demo"), "--no-progress"]) == 2
    assert "not this run's" in capsys.readouterr().err


def test_the_command_continues_an_unconditional_model_with_noise_in_blocks_and_samples_it(
        source, make_flowers, tmp_path, capsys):
    out = tmp_path / "shifted"
    assert cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--init-from", str(source),
                     "--noise-in-blocks", "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
    model, config = checkpoint.load_model(out)
    assert config.unet.noise_in_blocks and not config.unet.classes
    assert any(m.any() for k, m in model.network.state_dict().items() if "noise_shift" in k)  # a step moved them
    assert cli.main(["sample", str(out), "-n", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["train", "--preset", "tiny", "--out", str(out), "--resume", "--noise-in-blocks"]) == 2
    assert "--noise-in-blocks set the shape of a new network" in capsys.readouterr().err


def test_the_command_continues_a_model_with_attention_and_samples_it(source, make_flowers, tmp_path, capsys):
    out = tmp_path / "attending"
    assert cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--init-from", str(source),
                     "--attention", "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
    model, config = checkpoint.load_model(out)
    assert config.unet.attention and not config.unet.noise_in_blocks
    assert model.network.attention.out.weight.any()  # a step moved it from zero
    assert cli.main(["sample", str(out), "-n", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["train", "--preset", "tiny", "--out", str(out), "--resume", "--attention"]) == 2
    assert "--attention set the shape of a new network" in capsys.readouterr().err


def test_the_command_keeps_the_sources_schedule_unless_one_is_named(tmp_path, make_flowers):
    folder = make_flowers(16)
    cosine = tmp_path / "cosine"
    train(preset("tiny").replace(train={"schedule": "cosine"}), folder, cosine, progress=False, max_steps=1)
    for named, expected in (([], "cosine"), (["--schedule", "offset_cosine"], "offset_cosine")):
        out = tmp_path / f"from-{expected}"
        assert cli.main(["train", str(folder), "--preset", "tiny", "--init-from", str(cosine), *named,
                         "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
        assert checkpoint.load_model(out)[1].train.schedule == expected


def test_a_warm_start_ramps_the_learning_rate_and_a_fresh_run_does_not(source, make_flowers, tmp_path):
    """Fresh Adam moments beside trained weights: the first steps' learning rate ramps from lr / N."""
    folder, tiny = make_flowers(16), preset("tiny").replace(train={"epochs": 5})  # a step per epoch
    warm = train(tiny, folder, tmp_path / "warm", progress=False, max_steps=3, init_from=source)
    fresh = train(tiny, folder, tmp_path / "fresh", progress=False, max_steps=1)
    assert checkpoint.load_config(warm).train.lr_warmup == WARM_START_LR_WARMUP
    assert checkpoint.load_config(fresh).train.lr_warmup == 0
    lr = preset("tiny").train.lr
    # the optimiser's state holds the rate of the last step taken (0-based step 2 of the warm run)
    assert _saved_lr(warm) == pytest.approx(lr * 3 / WARM_START_LR_WARMUP)
    assert _saved_lr(fresh) == pytest.approx(lr)
    explicit = train(tiny.replace(train={"lr_warmup": 4}), folder, tmp_path / "explicit", progress=False,
                     max_steps=2, init_from=source)
    assert _saved_lr(explicit) == pytest.approx(lr * 2 / 4)


def _saved_lr(folder) -> float:
    model, config = checkpoint.load_model(folder)
    optimizer = torch.optim.AdamW(model.network.parameters())
    checkpoint.load_training(folder, model, optimizer)
    return optimizer.param_groups[0]["lr"]


def test_a_warm_start_gets_the_default_warm_up_unless_one_is_given():
    assert resolve_lr_warmup(preset("seed64"), warm_start=True).train.lr_warmup == WARM_START_LR_WARMUP
    assert resolve_lr_warmup(preset("seed64"), warm_start=False).train.lr_warmup == 0
    explicit = preset("seed64").replace(train={"lr_warmup": 4})
    assert resolve_lr_warmup(explicit, warm_start=True).train.lr_warmup == 4


def test_the_command_takes_lr_warmup_and_a_resume_keeps_it(source, make_flowers, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", str(make_flowers(16)), "--preset", "tiny", "--init-from", str(source),
                     "--lr-warmup", "7", "--epochs", "3", "--out", str(out), "--max-steps", "1", "--no-progress"]) == 0
    assert checkpoint.load_config(checkpoint.resolve(out)).train.lr_warmup == 7
    assert cli.main(["train", "--preset", "tiny", "--out", str(out), "--resume", "--lr-warmup", "9",
                     "--no-progress"]) == 2
    assert "not train.lr_warmup" in capsys.readouterr().err
    assert cli.main(["train", "--preset", "tiny", "--lr-warmup", "-1", "--out", str(tmp_path / "x")]) == 2
