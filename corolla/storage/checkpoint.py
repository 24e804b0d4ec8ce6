"""Checkpoints: a folder of config.json + model.safetensors (+ training state to resume).

Loading reads JSON and safetensors only, bounded and checked (corolla.storage.safefile), so a checkpoint
can never execute code. Every other file's SHA-256 is recorded in config.json and the config is
also stored inside model.safetensors, so a torn, altered or mixed-up file is a clear
CheckpointError, never wrong weights.

Writes are atomic: a checkpoint is written into a temporary folder, each file fsynced, then
published by renaming the folder; a run folder's `latest` pointer is then replaced atomically.
A new training checkpoint never replaces the folder `latest` names, so a process killed at any
moment (SIGKILL, power loss after fsync) leaves `latest` naming a complete checkpoint.
Temporaries left by killed processes are removed by the next save.

Layout of a run folder:
    run/latest                      name of the newest checkpoint folder (replaced atomically)
    run/checkpoints/step-00001234/  config.json, model.safetensors, training.safetensors, state.json
A checkpoint folder alone (config.json beside model.safetensors) is the Hugging Face
save_pretrained layout and loads anywhere a path is accepted.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save as dump_safetensors

from .. import precision as precisions
from ..config import Config
from ..diffusion import DiffusionModel
from ..limits import MAX_ABS_WEIGHT, MAX_JSON_BYTES, MAX_PARAMETERS, json_file, short
from .atomic import remove_stale_temporaries
from .safefile import CheckpointError, HeaderCheck, read_bounded, read_tensors, read_verified
from .trainstate import parse_state

FORMAT = "corolla-checkpoint"
VERSION = 1
MODEL_FILE, CONFIG_FILE, TRAINING_FILE, STATE_FILE = (
    "model.safetensors", "config.json", "training.safetensors", "state.json")
RESERVED_KEYS = ("format", "version", "sha256")  # config.json keys that are not the Config
CHECKPOINT_FILES = {MODEL_FILE, CONFIG_FILE, TRAINING_FILE, STATE_FILE}


class OutputError(ValueError):
    """A run folder that cannot take checkpoints (not writable, or too little free space)."""


# -- writing ----------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, payload: bytes) -> None:
    """The one place checkpoint bytes reach the disk: write, flush, fsync."""
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return dump_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


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


def check_replaceable(folder: Path) -> None:
    """save_pretrained replaces only what corolla wrote: a missing or empty folder, or a checkpoint
    folder holding nothing but a checkpoint's files. Anything else is an OutputError, before any work."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{str(folder)!r} exists and is not a folder (a file or a link); refusing to replace it "
                          f"with a checkpoint: choose another output folder")
    names = sorted(entry.name for entry in folder.iterdir())
    others = [name for name in names if name not in CHECKPOINT_FILES]
    config_file = folder / CONFIG_FILE
    if names and not others:
        try:
            ours = json.loads(read_bounded(config_file, MAX_JSON_BYTES)).get("format") == FORMAT
            others = [] if ours else [CONFIG_FILE]
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            others = names  # no readable config.json: not known to be ours
    if others:
        raise OutputError(f"{str(folder)!r} holds files that are not a corolla checkpoint's ({', '.join(others[:3])}"
                          f"{', ...' if len(others) > 3 else ''}); corolla replaces only a missing or empty folder "
                          f"or a checkpoint it wrote: choose another output folder")


def save_pretrained(folder: str | os.PathLike, model: DiffusionModel, config: Config, ema_only: bool = False,
                    dtype: torch.dtype | None = None, extra_state: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete checkpoint folder atomically (temporary folder, fsync, rename).

    Replacing an existing folder takes two renames (it to .NAME.old-PID, the new one in); a kill
    between them is repaired by the next save, which renames the old one back."""
    folder = Path(folder)
    check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent, {folder.name})
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    config_dict = config.to_dict()
    try:
        tmp.mkdir()
        files = {MODEL_FILE: _tensor_bytes(model_tensors(model, ema_only, dtype),
                                           {"format": FORMAT, "config": json.dumps(config_dict)})}
        if extra_tensors is not None:
            files[TRAINING_FILE] = _tensor_bytes(extra_tensors, {"format": FORMAT})
        if extra_state is not None:
            files[STATE_FILE] = json_file(extra_state)
        sha256 = {name: hashlib.sha256(payload).hexdigest() for name, payload in files.items()}
        files[CONFIG_FILE] = json_file({"format": FORMAT, "version": VERSION, **config_dict, "sha256": sha256})
        for name, payload in files.items():  # config.json last: a folder with it is complete
            _write_file(tmp / name, payload)
        _fsync_dir(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not keep a half checkpoint
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def save_training(run_dir: str | os.PathLike, model: DiffusionModel, config: Config,
                  optimizer: torch.optim.Optimizer, state: dict) -> Path:
    """A resumable checkpoint under run_dir/checkpoints, then `latest` points at it; the older
    ones are removed only after the pointer moved. The folder `latest` names is never written
    to: a second save at the same step gets the name step-N-1."""
    run_dir = Path(run_dir)
    try:
        previous = read_latest(run_dir)
    except CheckpointError:
        previous = None  # not a pointer corolla wrote: replaced below
    name = f"step-{state['step']:08d}"
    if name == previous:
        name += "-1"
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    folder = save_pretrained(run_dir / "checkpoints" / name, model, config,
                             extra_state={**state, "optimizer": opt_meta},
                             extra_tensors=opt_tensors)
    remove_stale_temporaries(folder.parent)
    remove_stale_temporaries(run_dir, {"latest", "write-test"})
    tmp = run_dir / f".latest.tmp-{os.getpid()}"
    try:
        _write_file(tmp, (name + "\n").encode())
        os.replace(tmp, run_dir / "latest")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(run_dir)
    for entry in (run_dir / "checkpoints").iterdir():  # the previous one, and any a kill orphaned
        if entry.name.startswith("step-") and entry.name != name and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    return folder


def training_bytes(model: DiffusionModel, optimizer: torch.optim.Optimizer) -> int:
    """About the size of one training checkpoint: weights, buffers and AdamW's two moments."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = 2 * sum(p.numel() * p.element_size() for group in optimizer.param_groups for p in group["params"])
    return weights + moments


def ensure_writable(folder: str | os.PathLike, needed_bytes: int = 0) -> Path:
    """Create `folder` and prove a file can be written there and that `needed_bytes` are free,
    so a run fails before training rather than at its first checkpoint."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.tmp-{os.getpid()}"
        _write_file(probe, b"corolla")
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise OutputError(f"output folder {str(folder)!r} is not writable ({error.strerror or error})") from None
    if free < needed_bytes:
        raise OutputError(f"output folder {str(folder)!r} has {free / 2**20:.1f} MiB free; checkpoints "
                          f"need at least {needed_bytes / 2**20:.1f} MiB")
    return folder


# what save_training writes into `latest`: step-N (8 digits or more), -1 for a second save at a step
LATEST_NAME = re.compile(r"step-[0-9]{8,}(-1)?")
MAX_LATEST_BYTES = 256


def read_latest(run_dir: Path) -> str | None:
    """The checkpoint name in run_dir/latest, None when there is no such file. Accepted only as
    save_training writes it: a small regular file (a link is not followed) holding a name of
    run_dir/checkpoints; a FIFO, a device, a link, ../x or /x is a CheckpointError."""
    path = run_dir / "latest"
    try:
        payload = read_bounded(path, MAX_LATEST_BYTES, follow_links=False, error=CheckpointError)
    except FileNotFoundError:
        return None
    except OSError as error:
        reason = "a symbolic link" if error.errno == errno.ELOOP else error.strerror or str(error)
        raise CheckpointError(f"{path} is not a checkpoint pointer ({reason})") from None
    name = payload.decode("ascii", errors="replace").strip()
    if not LATEST_NAME.fullmatch(name):
        raise CheckpointError(f"{path} does not name a checkpoint: it should hold a folder name of "
                              f"{run_dir / 'checkpoints'} such as step-00000430")
    return name


# -- reading ----------------------------------------------------------------------------------

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
    name = read_latest(path) if path.is_dir() else None
    named = path / "checkpoints" / name if name else None
    if named and (named / CONFIG_FILE).is_file() and not named.is_symlink():
        return named
    if name:
        raise CheckpointError(f"{path / 'latest'} names {name!r}, which is not a complete checkpoint in "
                              f"{path / 'checkpoints'}")
    raise CheckpointError(f"{str(path)!r} is not a corolla checkpoint: expected a folder with {CONFIG_FILE} "
                          f"and {MODEL_FILE}, or a run folder with a 'latest' checkpoint")


def _read_config_json(folder: Path) -> dict:
    try:
        payload = read_bounded(folder / CONFIG_FILE, MAX_JSON_BYTES, error=CheckpointError)
    except OSError as error:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not readable ({error.strerror or error})") from None
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError) as error:  # ValueError: undecodable or not JSON
        raise CheckpointError(f"{folder / CONFIG_FILE}: not readable JSON ({str(error)[:100]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a corolla config (no \"format\": \"{FORMAT}\")")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: checkpoint format version {raw.get('version')}, "
                              f"this corolla reads {VERSION}")
    return raw


def _checksums(raw: dict) -> dict[str, str]:
    """{file name: SHA-256} from config.json; none (older or hand-made checkpoints): no check."""
    sha256 = raw.get("sha256")
    return sha256 if isinstance(sha256, dict) else {}


def _config_from(raw: dict, where: Path) -> Config:
    try:  # Config checks every field (corolla.limits) before anything is built
        return Config.from_dict({k: v for k, v in raw.items() if k not in RESERVED_KEYS})
    except (TypeError, ValueError, AttributeError, RecursionError) as error:
        raise CheckpointError(f"{where}: invalid config ({error})") from None


def expected_shapes(config: Config, where: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor a checkpoint of `config` holds, from the model built on the
    meta device (no memory) once its parameter count is within MAX_PARAMETERS: a config that
    claims a huge network is refused before anything is allocated or read."""
    try:
        with torch.device("meta"):
            model = DiffusionModel(config.unet, config.train.schedule)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{where}: the config describes no valid network ({error})") from None
    count = sum(p.numel() for p in model.network.parameters())
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: the config describes a network of {count:,} parameters; corolla loads "
                              f"at most {MAX_PARAMETERS:,}")
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def load_config(folder: Path) -> Config:
    """The config of a checkpoint folder, checked field by field and for the size of its network."""
    config = _config_from(_read_config_json(folder), folder / CONFIG_FILE)
    expected_shapes(config, folder / CONFIG_FILE)
    return config


def _model_check(config: Config, where: Path) -> HeaderCheck:
    """The HeaderCheck of model.safetensors: its config matches (_check_same_config), then the
    names and shapes of the config's network, EMA-only (a release) or both networks."""
    expected = expected_shapes(config, where.parent / CONFIG_FILE)

    def check(header, metadata) -> None:
        _check_same_config(config, metadata, where)
        wanted = expected
        if not any(k.startswith("network.") for k in header):
            wanted = {k: v for k, v in expected.items() if not k.startswith("network.")}
        missing, unexpected = sorted(set(wanted) - set(header)), sorted(set(header) - set(wanted))
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {short(unexpected[:3], 100)}"
            raise CheckpointError(f"{where}: weights do not match the config's architecture ({detail})")
        for key, shape in wanted.items():
            if header[key][1] != shape:
                raise CheckpointError(f"{where}: {key} has shape {short(header[key][1])}, the config's "
                                      f"architecture needs {shape}")
    return check


def _training_check(optimizer: torch.optim.Optimizer, where: Path) -> HeaderCheck:
    """The HeaderCheck of training.safetensors: optimizer.I.NAME is a scalar or the shape of
    parameter I (nothing else: a run's randomness is a function of its seed and step)."""
    shapes = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"]]

    def check(header, metadata) -> None:
        for name, (_, shape) in header.items():
            parts = name.split(".")
            ok = parts[0] == "optimizer" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < len(shapes)
            if not ok or shape not in ((), shapes[int(parts[1])]):
                raise CheckpointError(f"{where}: {short(name)} of shape {short(shape)} is not part of the training "
                                      f"state of this network")
    return check


def _flat(tree, prefix: str = "") -> dict:
    """{"data": {"image_size": 64}} -> {"data.image_size": 64}."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _check_same_config(config: Config, metadata: dict[str, str], where: Path) -> None:
    """config.json must describe the weights: the config saved inside them must match it, all but
    its `sampling` section, which says how to draw from the weights, not what they are (a released
    model's may be set after measuring, without rewriting the weights' file)."""
    if "config" not in metadata:
        return
    try:
        stored = json.loads(metadata["config"])
    except (TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{where}: its stored config is not JSON") from None
    try:  # through Config, so fields added since the weights were saved take their defaults
        stored = _flat(json.loads(json.dumps(Config.from_dict(stored).to_dict())))
    except (TypeError, ValueError, AttributeError, RecursionError) as error:
        raise CheckpointError(f"{where}: its stored config is not a corolla config ({error})") from None
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored
    differences = [f"{key}: {stored.get(key)!r} in the weights, {value!r} in {CONFIG_FILE}"
                   for key, value in _flat(current).items()
                   if stored.get(key) != value and not key.startswith("sampling.")]
    if differences:
        raise CheckpointError(f"{where.parent / CONFIG_FILE} does not describe these weights "
                              f"({'; '.join(differences[:3])})")


def _model_for(config: Config, where: Path) -> DiffusionModel:
    try:
        return DiffusionModel(config.unet, config.train.schedule, eps_scale=config.sampling.eps_scale,
                              multistep_eps_scale=config.sampling.multistep_eps_scale,
                              handover_eps_scale=config.sampling.handover_eps_scale)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{where}: the config describes no valid network ({error})") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DiffusionModel, Config]:
    """Load a checkpoint for sampling -> (model in eval mode, config). When only EMA weights are
    stored (a release checkpoint), the online network gets them too."""
    folder = resolve(path)
    raw = _read_config_json(folder)
    config = _config_from(raw, folder / CONFIG_FILE)
    tensors, _ = read_tensors(folder / MODEL_FILE, _checksums(raw).get(MODEL_FILE),
                               _model_check(config, folder / MODEL_FILE))
    model = _model_for(config, folder / CONFIG_FILE)
    _load_weights(model, tensors, folder / MODEL_FILE)
    return model.to(device).eval(), config


def load_for_sampling(path: str | os.PathLike, device: torch.device,
                      precision: str = "auto") -> tuple[DiffusionModel, Config]:
    """load_model on the fast sampling path every command takes: channels-last, BatchNorm folded
    (README Performance; rounding aside, the same images) and the precision resolved for the device."""
    model, config = load_model(path, device)
    return model.accelerate(channels_last=True, fold=True, precision=precisions.resolve(precision, device)), config


def _check_values(key: str, value: torch.Tensor, where: Path) -> None:
    """Refuse values no trained model has: NaN, infinities, magnitudes beyond MAX_ABS_WEIGHT, a
    negative variance, pixel statistics outside [0, 1]. Each would make every image NaN or black."""
    if value.numel() == 0:
        return
    if not value.is_floating_point():
        if value.min() < 0:
            raise CheckpointError(f"{where}: {key} holds a negative count")
        return
    if not torch.isfinite(value).all():
        raise CheckpointError(f"{where}: {key} holds NaN or infinite values")
    largest = value.abs().max().item()
    if largest > MAX_ABS_WEIGHT:
        raise CheckpointError(f"{where}: {key} holds {largest:.3g}; no trained network has values beyond "
                              f"{MAX_ABS_WEIGHT:g} (they overflow into NaN images)")
    if (key.endswith("running_var") or key == "normalizer.variance") and value.min() < 0:
        raise CheckpointError(f"{where}: {key} holds a negative variance ({value.min().item():.3g})")
    if key.startswith("normalizer.") and value.max() > 1:
        raise CheckpointError(f"{where}: {key} holds {value.max().item():.3g}; the statistics of pixels in [0, 1] "
                              f"lie in [0, 1]")


def _load_weights(model: DiffusionModel, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Weights whose names and shapes the header check has matched, checked for their values."""
    expected = model.state_dict()
    if not any(k.startswith("network.") for k in tensors):
        tensors = {**tensors, **{"network." + k[len("ema_network."):]: v
                                 for k, v in tensors.items() if k.startswith("ema_network.")}}
    for key, value in tensors.items():
        _check_values(key, value, where)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def load_state(path: str | os.PathLike) -> dict:
    """state.json of a training checkpoint (step, epoch, data folder...), checked against its
    SHA-256 and for the types of its values."""
    folder = resolve(path)
    payload = read_verified(folder / STATE_FILE, _checksums(_read_config_json(folder)).get(STATE_FILE),
                             MAX_JSON_BYTES)
    return parse_state(payload, folder / STATE_FILE)


def load_training(path: str | os.PathLike, model: DiffusionModel, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights and optimiser in place -> the training state (state.json)."""
    folder = resolve(path)
    raw = _read_config_json(folder)
    sha256 = _checksums(raw)
    config = _config_from(raw, folder / CONFIG_FILE)
    tensors, _ = read_tensors(folder / MODEL_FILE, sha256.get(MODEL_FILE), _model_check(config, folder / MODEL_FILE))
    if config.unet != model.network.config:
        raise CheckpointError(f"{folder / CONFIG_FILE}: its network ({config.unet}) is not the one being "
                              f"resumed ({model.network.config})")
    _load_weights(model, tensors, folder / MODEL_FILE)
    training, _ = read_tensors(folder / TRAINING_FILE, sha256.get(TRAINING_FILE),
                                _training_check(optimizer, folder / TRAINING_FILE))
    payload = read_verified(folder / STATE_FILE, sha256.get(STATE_FILE), MAX_JSON_BYTES)
    state = parse_state(payload, folder / STATE_FILE, ("step", "epoch", "batch_in_epoch", "optimizer"))
    try:
        _restore_optimizer(optimizer, training, state.pop("optimizer"))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise CheckpointError(f"{folder}: training state not usable to resume ({str(error)[:200]})") from None
    return state
