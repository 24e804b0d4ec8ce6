"""The models a page offers: every shipped model, and the checkpoints and run folders given on the
command line. Each is loaded when first asked for, in the server's precision and on its device; a
run folder follows its newest checkpoint (its `latest`), loaded again when training saves another,
and the page says which step it samples.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import cascade
from ..storage import checkpoint, pretrained
from ..storage.recipe import model_sha256
from .engine import Engine, Limits
from .guards import Turns


@dataclass(frozen=True)
class Source:
    label: str          # what the picker shows, and the recipe's model name
    path: Path          # the checkpoint or run folder
    shipped: bool

    @property
    def run_folder(self) -> bool:
        return not self.shipped and not (self.path / checkpoint.CONFIG_FILE).is_file()


def sources(given: list[str]) -> list[Source]:
    """The checkpoints and run folders given (first: the default), then the shipped models."""
    found = [Source(path, Path(path), False) for path in dict.fromkeys(given)]
    return found + [Source(name, pretrained.path(name), True) for name in pretrained.names()]


def step_of(folder: Path) -> int | None:
    """The training step of a run's checkpoint folder (step-00001234 -> 1234)."""
    digits = folder.name.removeprefix("step-").split("-")[0]
    return int(digits) if folder.name.startswith("step-") and digits.isdigit() else None


class Catalogue:
    """label -> Engine, loaded on first use and again when a run folder's newest checkpoint changes."""

    def __init__(self, given: list[str], device: torch.device, precision: str, limits: Limits, turns: Turns):
        self.sources: dict[str, Source] = {}
        for source in sources(given):  # a folder given as ./flowers64 keeps its label; the shipped one is dropped
            self.sources.setdefault(source.label, source)
        self.device, self.precision, self.limits, self.turns = device, precision, limits, turns
        self.loaded: dict[str, tuple[Path, Engine]] = {}
        self.loading = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.sources)

    def source(self, label: str) -> Source:
        if label not in self.sources:
            raise ValueError(f"model {label!r} is not served here: choose {', '.join(self.sources)}")
        return self.sources[label]

    def engine(self, label: str) -> Engine:
        """The model `label` now (a run folder: its newest checkpoint)."""
        source = self.source(label)
        folder = checkpoint.resolve(source.path)
        with self.loading:
            if label not in self.loaded or self.loaded[label][0] != folder:
                model, config = checkpoint.load_for_sampling(folder, self.device, self.precision)
                own = cascade.own_layout(folder, config)  # drawn first, as `corolla sample` draws it
                layout = None if own is None else cascade.load(own[0], model, config.data.image_size, self.device,
                                                               self.precision, own[1])
                self.loaded[label] = folder, Engine(model, config.data.image_size, label, self.limits, self.turns,
                                                    model_sha256(folder), config.data.class_counts, layout)
            return self.loaded[label][1]

    def describe(self, label: str) -> str:
        """One line for the page: the model, its images, what it is, where it runs."""
        source, engine = self.source(label), self.engine(label)
        folder = self.loaded[label][0]
        kind = ("shipped model" if source.shipped else
                f"run folder, following its newest checkpoint: step {step_of(folder):,}" if source.run_folder
                and step_of(folder) is not None else "checkpoint")
        classes = f", conditional on {len(engine.classes)} classes" if engine.classes else ""
        layout = (f", each drawn after its layout model {engine.layout.source}'s {engine.layout.image_size}x"
                  f"{engine.layout.image_size} image" if engine.layout else "")
        return (f"**{label}** ({kind}): {engine.image_size}x{engine.image_size} images{classes}{layout}; "
                f"on {engine.device}, {engine.model.precision}")
