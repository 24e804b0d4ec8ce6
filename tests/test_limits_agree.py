"""Limits derived from each other (issue 26, item 3): what training may write, loading must be
able to read, and the config a run will save is checked when the run starts, not after hours.
Properties (Hypothesis): any value of a config or state.json field, and any text given to a
command's option, is accepted or refused in one line."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corolla import cli, limits
from corolla.config import Config, preset
from corolla.data import imagefolder
from corolla.storage import checkpoint, trainstate
from corolla.training import build

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
    images = sorted(p.relative_to(class_folder).as_posix() for p in imagefolder.scan(class_folder))
    (tmp_path / "labels.csv").write_text("image,class_name\n" + "".join(
        f"{name},{i:03d}{'x' * 190}\n" for i, name in enumerate(images)))
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 6 * 1024)  # 24 classes of 193 characters need 7 KiB
    code = cli.main(["train", str(class_folder), "--preset", "tiny", "--out", str(tmp_path / "run"), "--conditional",
                     "--labels", str(tmp_path / "labels.csv"), "--no-progress", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "fewer or shorter class names" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- properties: whatever a file or a command line holds, it is accepted or refused in one line ------

VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                      lambda inner: st.lists(inner, max_size=4), max_leaves=6)
SECTIONS = {"unet": TINY.unet, "data": TINY.data, "train": TINY.train, "sampling": TINY.sampling}
FIELDS = [(section, field.name) for section, values in SECTIONS.items() for field in dataclasses.fields(values)]


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3))
def test_any_config_field_value_is_accepted_or_refused_in_one_line(changes):
    raw = json.loads(json.dumps(TINY.to_dict()))
    for (section, name), value in changes:
        raw[section][name] = value
    try:
        config = Config.from_dict(raw)
    except (TypeError, ValueError) as refusal:  # what checkpoint._config_from turns into a CheckpointError
        assert "\n" not in str(refusal) and len(str(refusal)) < 600
        return
    assert len(limits.json_file(config.to_dict())) + limits.CONFIG_FILE_KEYS <= limits.MAX_JSON_BYTES


STATE_KEYS = [*trainstate.STATE_RULES, *trainstate.OPTIMIZER_GROUP_RULES]


@settings(max_examples=300, deadline=None)
@given(state=st.dictionaries(st.sampled_from(STATE_KEYS), VALUES, max_size=5),
       group=st.dictionaries(st.sampled_from(list(trainstate.OPTIMIZER_GROUP_RULES)), VALUES, max_size=4))
def test_any_state_json_value_is_accepted_or_refused_in_one_line(state, group):
    state = {**state, "optimizer": {"param_groups": [group], "scalars": {}}}
    try:
        trainstate.parse_state(json.dumps(state).encode(), Path("state.json"))
    except checkpoint.CheckpointError as refusal:
        assert "\n" not in str(refusal)


NUMBER_OPTIONS = [["sample", "--steps"], ["sample", "-n"], ["sample", "--seed"], ["sample", "--batch-size"],
                  ["sample", "--eta"], ["sample", "--guidance"], ["train", "--epochs"], ["train", "--lr"],
                  ["train", "--image-size"], ["train", "--val-fraction"], ["train", "--lr-warmup"],
                  ["inpaint", "x.png", "--box"], ["interpolate", "--frames"], ["edit", "x.png", "--strength"]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMBER_OPTIONS), text=st.text(max_size=30) | st.integers().map(str))
def test_any_argument_text_is_parsed_or_refused_in_one_line(option, text, capsys):
    try:
        cli.parser().parse_args([*option, text])
    except SystemExit as refused:
        err = capsys.readouterr().err
        assert refused.code == 2 and err.startswith("corolla: error: ") and err.count("\n") == 1, err
