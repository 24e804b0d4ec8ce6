"""The training state of a checkpoint (state.json): where a run stands and what it trained on.
A user's file, so every value a resumed run reads is checked for its type and range first."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..limits import KEEP_BEST_METRICS, boolean, integer, number, optional, sequence, short
from .safefile import CheckpointError


def _path_or_null(value) -> str | None:
    return None if value is None or isinstance(value, str) and len(value) <= 4096 else "a folder path or null"


def _best(value) -> str | None:
    count = integer(0, 2 ** 62)
    ok = value is None or (isinstance(value, dict) and set(value) == {"metric", "value", "step", "epoch"}
                           and value["metric"] in KEEP_BEST_METRICS and number(-1e300)(value["value"]) is None
                           and count(value["step"]) is None and count(value["epoch"]) is None)
    return None if ok else "null or {\"metric\", \"value\", \"step\", \"epoch\"} of an evaluation"


# AdamW's settings as torch saves them, which a resumed run restores (a parameter group's other keys are not read)
OPTIMIZER_GROUP_RULES = {
    "lr": number(0, low_open=True), "betas": sequence(number(0, 1, high_open=True), 2, 2),
    "eps": number(0, low_open=True), "weight_decay": number(0), "params": sequence(integer(0, 2 ** 20), 0, 2 ** 20),
    **{flag: optional(boolean) for flag in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused",
                                            "decoupled_weight_decay")},
}


def _optimizer_values(optimizer: dict):
    """(name, value, rule) of each AdamW setting a resumed run restores."""
    for index, group in enumerate(optimizer.get("param_groups", [])):
        yield f"optimizer.param_groups[{index}]", group, lambda v: None if isinstance(v, dict) else "a JSON object"
        for key, rule in OPTIMIZER_GROUP_RULES.items():
            if isinstance(group, dict) and key in group:
                yield f"optimizer.param_groups[{index}].{key}", group[key], rule


# the types of the state.json values a resumed run uses (others are not read)
STATE_RULES = {
    "step": integer(0, 2 ** 62), "epoch": integer(0, 2 ** 62), "batch_in_epoch": integer(0, 2 ** 62),
    "running_loss": number(0), "losses_since_log": integer(0, 2 ** 62), "log_lines": integer(0, 2 ** 62),
    "world_size": integer(1, 2 ** 20), "data_dir": _path_or_null, "val_dir": _path_or_null,
    "labels_file": _path_or_null, "init_from": _path_or_null,
    "reason": lambda v: None if isinstance(v, str) else "text", "best": _best,
    "optimizer": lambda v: None if isinstance(v, dict) and isinstance(v.get("param_groups"), list) \
        and isinstance(v.get("scalars"), dict) else "the optimiser's settings (a JSON object of param_groups and "
                                                    "scalars)",
}


def parse_state(payload: bytes, where: Path, required: tuple[str, ...] = ()) -> dict:
    """state.json's bytes -> its dict, with the `required` keys and every known value checked."""
    try:
        state = json.loads(payload)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{where}: not readable JSON ({str(error)[:100]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: not a training state")
    for key in required:
        if key not in state:
            raise CheckpointError(f"{where}: training state not usable to resume (no {key!r})")
    values = [(key, state[key], rule) for key, rule in STATE_RULES.items() if key in state]
    if STATE_RULES["optimizer"](state.get("optimizer")) is None:
        values += _optimizer_values(state["optimizer"])
    for key, value, rule in values:
        allowed = rule(value)
        if allowed is not None:
            raise CheckpointError(f"{where}: {key} = {short(value)} is not allowed: must be {allowed}")
    return state


@dataclass
class Progress:
    """Where a run stands: the counters a checkpoint's state.json keeps, so that a resumed run goes
    on exactly (the same data order and noise, the same log lines and loss means)."""
    step: int = 0
    epoch: int = 0                # epochs finished
    batch_in_epoch: int = 0
    running_loss: float = 0.0     # the loss summed since the last log line, and how many losses
    losses_since_log: int = 0
    log_lines: int = 0            # the lines of metrics.jsonl this state accounts for
    best: dict | None = None      # --keep-best's best evaluation so far

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        """From a state parse_state checked (a missing counter: an older checkpoint's, its default)."""
        return cls(**{f.name: state.get(f.name, f.default) for f in fields(cls)})


@dataclass(frozen=True)
class Sources:
    """Where a run's images and starting weights come from. A resumed run keeps its recorded ones
    unless others are given; every checkpoint records them."""
    data_dir: str | Path | None = None
    val_dir: str | Path | None = None
    labels_file: str | Path | None = None
    init_from: str | Path | None = None   # a model's weights a new run started from

    def resumed(self, state: dict) -> "Sources":
        """The folders given, else those the run recorded; the starting weights are the run's own."""
        return Sources(self.data_dir or state.get("data_dir"), self.val_dir or state.get("val_dir"),
                       self.labels_file or state.get("labels_file"), state.get("init_from"))

    def to_state(self) -> dict:
        def absolute(path):
            return str(Path(path).resolve()) if path else None
        return {"data_dir": absolute(self.data_dir), "val_dir": absolute(self.val_dir),
                "labels_file": absolute(self.labels_file), "init_from": self.init_from}
