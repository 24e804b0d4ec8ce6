"""The page's results on disk: each job's images as PNGs that carry their recipes
(storage/recipe.py), its grid, a zip of them all (and a GIF for an interpolation), in a folder of
its own named by a random id, under the server's private temporary folder. The newest KEEP are
kept. A browser's history names results by id (checked, never a path), so that a reload finds
them again; their recipes are read back from the PNGs themselves.
"""
from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import figures
from ..storage import recipe as recipes
from ..storage.grids import save_each, save_grid
from ..storage.recipe import Recipe

ID = re.compile(r"[0-9a-f]{32}")
KEEP = 200
GRID, ARCHIVE, GIF = "grid.png", "images.zip", "frames.gif"
SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Result:
    id: str
    images: tuple[Path, ...]
    grid: Path | None

    @property
    def folder(self) -> Path:
        return self.images[0].parent

    @property
    def archive(self) -> Path:
        return self.folder / ARCHIVE

    @property
    def gif(self) -> Path | None:
        return self.folder / GIF if (self.folder / GIF).is_file() else None

    def recipe(self, index: int) -> Recipe:
        return recipes.read(self.images[index])

    def captions(self) -> list[str]:
        return [caption(recipes.read(path)) for path in self.images]


def caption(recipe: Recipe) -> str:
    """What the gallery shows under an image: its own seed and index, and its class or edit."""
    what = {"edit": f"SDEdit, strength {recipe.details.get('strength')}", "inpaint": "inpainted",
            "interpolate": f"w = {recipe.details.get('weight', 0):.2f}"}.get(recipe.kind)
    parts = [f"seed {recipe.seed}", f"image {recipe.index}"] if recipe.kind == "sample" else [what]
    if recipe.classes:  # a row of a generation by species
        parts.append(recipe.classes[0] or "any")
    if recipe.class_mix:
        parts.append("species drawn")
    return " · ".join(parts)


def title(recipe: Recipe) -> str:
    """A result's title in the history: what made it, its seed and images."""
    if recipe.kind != "sample":
        return f"{recipe.kind} · seed {recipe.seed}"
    rows = "every species" if recipe.class_mix else ", ".join("any" if c is None else c for c in recipe.classes)
    return f"{Path(recipe.model).name} · seed {recipe.seed} · {recipe.count} images" + (f" · {rows}" if rows else "")


class Results:
    """The result folders under `root`."""

    def __init__(self, root: Path, keep: int = KEEP):
        self.root, self.keep = root, keep
        root.mkdir(parents=True, exist_ok=True)

    def _new(self) -> tuple[str, Path]:
        folders = sorted((p for p in self.root.iterdir() if ID.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)
        for old in folders[:max(0, len(folders) - self.keep + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        name = secrets.token_hex(16)
        (self.root / name).mkdir()
        return name, self.root / name

    def _finish(self, name: str, folder: Path, images: list[Path], grid: Path | None) -> Result:
        with zipfile.ZipFile(folder / ARCHIVE, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed
            for path in images + ([grid] if grid else []):
                archive.write(path, path.name)
        return Result(name, tuple(images), grid)

    def samples(self, images: torch.Tensor, recipe: Recipe) -> Result:
        """A generation's images, recipe.count per row, each with its own recipe; and their grid."""
        name, folder = self._new()
        slug = SLUG.sub("_", Path(recipe.model).name)[:40] or "model"
        paths = []
        for row, rows_images in enumerate(images.split(recipe.count)):
            row_recipe = dataclasses.replace(recipe, index=0).image(0, row)  # save_each adds each image's index
            named = row_recipe.classes[0] if row_recipe.classes else None
            label = f"row{row:03d}-{SLUG.sub('_', named or 'any')[:40]}-" if recipe.classes else ""  # sorts as chosen
            paths += save_each(rows_images, folder, recipe.index, f"{slug}-seed{recipe.seed}-{label}", row_recipe)
        grid = save_grid(images, folder / GRID, recipes.columns(recipe), recipe)
        return self._finish(name, folder, paths, grid)

    def edited(self, images: torch.Tensor, recipe: Recipe, stem: str) -> Result:
        """An edit's results (one image, or frames), recipe.image(i) each."""
        name, folder = self._new()
        paths = save_each(images, folder, 0, f"{stem}-", recipe)
        return self._finish(name, folder, paths, None)

    def frames(self, frames: torch.Tensor, recipe: Recipe) -> Result:
        """An interpolation's frames, each recipe with its weight, and the GIF of them."""
        name, folder = self._new()
        weights = [i / (len(frames) - 1) for i in range(len(frames))]
        paths = [save_each(frame[None], folder, i, "frame-", recipe.adding(weight=w))[0]
                 for i, (frame, w) in enumerate(zip(frames, weights))]
        figures.save_gif(frames[None], folder / GIF)
        return self._finish(name, folder, paths, None)

    def load(self, name: object) -> Result | None:
        """The result of a history entry, if it is still kept."""
        if not isinstance(name, str) or not ID.fullmatch(name) or not (self.root / name).is_dir():
            return None
        folder = self.root / name
        images = tuple(sorted(p for p in folder.glob("*.png") if p.name != GRID and not p.is_symlink()))
        grid = folder / GRID if (folder / GRID).is_file() else None
        return Result(name, images, grid) if images else None
