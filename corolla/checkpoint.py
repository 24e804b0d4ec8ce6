"""Checkpoints: a folder of config.json + model.safetensors (+ training state to resume).

Loading reads JSON and safetensors only, so a checkpoint can never execute code. Writes are
atomic: a new checkpoint is written into a temporary folder, fsynced, and published by renaming
it and then atomically replacing the run folder's `latest` pointer, so a crash at any moment
leaves the previous complete checkpoint or the new complete one.

Layout of a run folder:
    run/latest                      name of the newest checkpoint folder (replaced atomically)
    run/checkpoints/step-00001234/  config.json, model.safetensors, training.safetensors, state.json
A checkpoint folder alone (config.json beside model.safetensors) is the Hugging Face
save_pretrained layout and loads anywhere a path is accepted.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config
from .diffusion import DiffusionModel

FORMAT = "corolla-checkpoint"
VERSION = 1
MODEL_FILE, CONFIG_FILE, TRAINING_FILE, STATE_FILE = (
    "model.safetensors", "config.json", "training.safetensors", "state.json")


class CheckpointError(ValueError):
    """A path that does not hold a usable corolla checkpoint."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def model_tensors(model: DiffusionModel, ema_only: bool = False, dtype: torch.dtype | None = None
                  ) -> dict[str, torch.Tensor]:
    """The weights and normaliser as flat tensors; ema_only keeps what sampling needs."""
    out = {}
    for key, value in model.state_dict().items():
        if ema_only and key.startswith("network."):
            continue
        if dtype is not None and value.is_floating_point() and not key.startswith("normalizer."):
            value = value.to(dtype)
        out[key] = value
    return out


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (safetensors) and plain values (JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_pretrained(folder: str | os.PathLike, model: DiffusionModel, config: Config, ema_only: bool = False,
                    dtype: torch.dtype | None = None, extra_state: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete checkpoint folder atomically (temporary folder, fsync, rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_tensors(tmp / MODEL_FILE, model_tensors(model, ema_only, dtype), {"format": FORMAT})
    _write_json(tmp / CONFIG_FILE, {"format": FORMAT, "version": VERSION, **config.to_dict()})
    if extra_tensors is not None:
        _write_tensors(tmp / TRAINING_FILE, extra_tensors, {"format": FORMAT})
    if extra_state is not None:
        _write_json(tmp / STATE_FILE, extra_state)
    _fsync_dir(tmp)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    return folder


def save_training(run_dir: str | os.PathLike, model: DiffusionModel, config: Config,
                  optimizer: torch.optim.Optimizer, state: dict, rng_states: dict[str, torch.Tensor]) -> Path:
    """A resumable checkpoint under run_dir/checkpoints, then `latest` points at it; the
    previous one is removed only after the pointer moved."""
    run_dir = Path(run_dir)
    name = f"step-{state['step']:08d}"
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    folder = save_pretrained(run_dir / "checkpoints" / name, model, config,
                             extra_state={**state, "optimizer": opt_meta},
                             extra_tensors={**opt_tensors, **{f"rng.{k}": v for k, v in rng_states.items()}})
    previous = _latest_name(run_dir)
    tmp = run_dir / f".latest.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / "latest")
    _fsync_dir(run_dir)
    if previous and previous != name:
        shutil.rmtree(run_dir / "checkpoints" / previous, ignore_errors=True)
    return folder


def _latest_name(run_dir: Path) -> str | None:
    try:
        return (run_dir / "latest").read_text().strip() or None
    except OSError:
        return None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint folder, a run folder (its latest checkpoint), or config.json / model.safetensors
    inside a checkpoint folder -> the checkpoint folder."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, MODEL_FILE):
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    name = _latest_name(path) if path.is_dir() else None
    if name and (path / "checkpoints" / name / CONFIG_FILE).is_file():
        return path / "checkpoints" / name
    raise CheckpointError(f"{str(path)!r} is not a corolla checkpoint: expected a folder with {CONFIG_FILE} "
                          f"and {MODEL_FILE}, or a run folder with a 'latest' checkpoint")


def load_config(folder: Path) -> Config:
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not readable JSON ({error})") from None
    if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a corolla config (no \"format\": \"{FORMAT}\")")
    version = raw.pop("version", None)
    if version != VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: checkpoint format version {version}, this corolla reads {VERSION}")
    try:
        return Config.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid config ({error})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(error).splitlines()[0]})") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DiffusionModel, Config]:
    """Load a checkpoint for sampling -> (model in eval mode, config). When only EMA weights are
    stored (a release checkpoint), the online network gets them too."""
    folder = resolve(path)
    config = load_config(folder)
    tensors = _read_tensors(folder / MODEL_FILE)
    model = DiffusionModel(config.unet, config.train.schedule)
    _load_weights(model, tensors, folder / MODEL_FILE)
    return model.to(device).eval(), config


def _load_weights(model: DiffusionModel, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = model.state_dict()
    if not any(k.startswith("network.") for k in tensors):
        tensors = {**tensors, **{"network." + k[len("ema_network."):]: v
                                 for k, v in tensors.items() if k.startswith("ema_network.")}}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{where}: weights do not match the config's architecture ({detail})")
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise CheckpointError(f"{where}: {key} has shape {tuple(tensors[key].shape)}, "
                                  f"the config's architecture needs {tuple(value.shape)}")
        if value.is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise CheckpointError(f"{where}: {key} holds NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def load_training(path: str | os.PathLike, model: DiffusionModel, optimizer: torch.optim.Optimizer
                  ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore weights and optimiser in place -> (state dict from state.json, RNG states)."""
    folder = resolve(path)
    _load_weights(model, _read_tensors(folder / MODEL_FILE), folder / MODEL_FILE)
    tensors = _read_tensors(folder / TRAINING_FILE)
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{folder / STATE_FILE}: not readable ({error})") from None
    _restore_optimizer(optimizer, tensors, state.pop("optimizer"))
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return state, rng
