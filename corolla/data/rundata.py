"""A training run's images: the training and held-out images, their statistics and, for a
conditional run, their labels, checked against what a resumed run trained on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from . import imagefolder, labels


@dataclass
class RunData:
    train: torch.Tensor
    val: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    labels: labels.Labels | None = None       # a conditional run's classes and the folder's labels
    train_labels: torch.Tensor | None = None  # (N_train,) class numbers
    val_labels: torch.Tensor | None = None    # (N_val,)


def split_images(config: Config, images: torch.Tensor, val_dir: str | Path | None,
                 labels: torch.Tensor | None = None) -> tuple[imagefolder.Split, list[str]]:
    """A folder's images as a run splits them -> (training and held-out images, the held-out
    files' names): a val_fraction of `images` with the config's seed, or all of val_dir."""
    parts = imagefolder.split(images, 0.0 if val_dir else config.data.val_fraction, config.data.shuffle_seed, labels)
    val_names: list[str] = []
    if val_dir:
        parts.val, val_names = imagefolder.load_folder(val_dir, config.data.image_size, config.data.crop)
    return parts, val_names


def prepare_data(config: Config, data_dir: str | Path | None, val_dir: str | Path | None = None,
                 conditional: bool = False, labels_file: str | Path | None = None) -> RunData:
    """The training images and the held-out ones: a val_fraction of the folder, or all of val_dir.
    A conditional run labels both (corolla.data.labels: sub-folders, or labels_file), in the config's
    classes when it has them (a resumed run)."""
    root = data_dir or imagefolder.bundled_dir()
    images, names = imagefolder.load_folder(root, config.data.image_size, config.data.crop)
    known = config.unet.classes or None
    found = labels.read(names, root, labels_file, known) if conditional or known else None
    parts, val_names = split_images(config, images, val_dir, None if found is None else found.numbers)
    if val_dir and found is not None:
        parts.val_labels = labels.read(val_names, val_dir, labels_file, found.classes).numbers
    if imagefolder.batches_per_epoch(parts.train.shape[0], config.data.repetitions, config.train.batch_size) == 0:
        raise imagefolder.DataError(f"{parts.train.shape[0]} training image(s) x {config.data.repetitions} "
                                    f"repetitions do not fill one batch of {config.train.batch_size}; "
                                    f"lower --batch-size")
    mean, variance = imagefolder.channel_statistics(parts.train)
    return RunData(parts.train, parts.val, mean, variance, found, parts.train_labels, parts.val_labels)


def load(config: Config, data_dir: str | Path | None, val_dir: str | Path | None, conditional: bool,
              labels_file: str | Path | None, saved: dict) -> tuple[Config, RunData, dict]:
    """The run's images, checked against what a resumed run trained on -> (the config with a
    conditional run's classes and counts, the data, the data identity every checkpoint records)."""
    folder = data_dir or imagefolder.bundled_dir()
    identity = imagefolder.identity(folder, config.data.image_size, config.data.crop)
    imagefolder.check_same_data(saved.get("data_identity"), identity, folder)
    run = prepare_data(config, data_dir, val_dir, conditional, labels_file)
    if run.labels is not None:  # the classes, and the training images of each, go into every checkpoint
        counts = torch.bincount(run.train_labels, minlength=len(run.labels.classes))
        config = config.replace(unet={"classes": run.labels.classes}, data={"class_counts": tuple(counts.tolist())})
        identity["labels_key"] = run.labels.key()
        recorded = saved.get("data_identity") if isinstance(saved.get("data_identity"), dict) else {}
        if recorded.get("labels_key", identity["labels_key"]) != identity["labels_key"]:
            raise imagefolder.DataError(f"the images of {folder} are not labelled as when the run started (the labels "
                                 f"file or the class folders changed); start a new run")
    return config, run, identity
