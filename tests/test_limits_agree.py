"""Limits derived from each other (issue 26, item 3): what training may write, loading must be
able to read, and the config a run will save is checked when the run starts, not after hours."""
import pytest
import torch

from corolla import checkpoint, cli, data, limits
from corolla.config import preset
from corolla.train import build

TINY = preset("tiny").replace(train={"precision": "fp32"})


def _conditional(classes: int, name_length: int):
    names = tuple(f"{i:05d}".rjust(name_length, "x") for i in range(classes))
    return TINY.replace(unet={"classes": names}, data={"class_counts": (1,) * classes})


def test_a_config_whose_config_json_loading_would_refuse_cannot_be_made():
    # 8,000 classes of 196 characters are each allowed, yet make a 1.7 MB config.json that loading refuses
    with pytest.raises(ValueError, match=r"config.json of [0-9,]+ bytes; a checkpoint's is at most 1,048,576: "
                                         r"fewer or shorter class names"):
        _conditional(8000, 196)


def test_the_largest_config_that_can_be_made_is_saved_and_loaded_back(tmp_path):
    classes = 4000  # near the bound: about 0.85 MB of class names
    config = _conditional(classes, 196)
    model, _ = build(config, torch.device("cpu"))
    folder = checkpoint.save_pretrained(tmp_path / "model", model, config)
    assert (folder / "config.json").stat().st_size <= limits.MAX_JSON_BYTES
    assert checkpoint.load_config(folder) == config


def test_a_conditional_run_whose_config_could_not_be_loaded_is_refused_before_its_first_step(
        class_folder, tmp_path, monkeypatch, capsys):
    images = sorted(p.relative_to(class_folder).as_posix() for p in data.scan(class_folder))
    (tmp_path / "labels.csv").write_text("image,class_name\n" + "".join(
        f"{name},{i:03d}{'x' * 190}\n" for i, name in enumerate(images)))
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 6 * 1024)  # 24 classes of 193 characters need 7 KiB
    code = cli.main(["train", str(class_folder), "--preset", "tiny", "--out", str(tmp_path / "run"), "--conditional",
                     "--labels", str(tmp_path / "labels.csv"), "--no-progress", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fewer or shorter class names" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()
