"""The reference article's analyses as figures: schedules, a noising strip, a step-count sweep,
latent interpolation, a reverse-diffusion trajectory, and training curves.

Each figure is a data function (tensors and numbers, tested against the library) and a plot
function that writes a PNG. Plots draw on matplotlib's Agg canvas directly, without pyplot: no
global backend or figure state, so they are safe to call from a training loop or a notebook. Image
grids are placed pixel for pixel
with `figimage` and labelled with figure text, so every PNG has a size known in advance.
"""
from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image

from . import editing, samplers, schedules
from .diffusion import DiffusionModel
from .generation import initial_noise, sample_from_noise
from .limits import FIGURE_BYTES_PER_PIXEL, MAX_FIGURE_PIXELS, MAX_GRID_BYTES, MAX_LOG_BYTES
from .samplers import SamplingSettings
from .storage.atomic import replacing
from .storage.grids import split_grid, to_uint8
from .storage.outputs import refuse_unless_file
from .storage.safefile import read_run_file

DPI = 100
SCHEDULE_NAMES = ("linear", "cosine", "offset_cosine")

# -- writing figures ------------------------------------------------------------------------------


def _save(fig: Figure, out: str | os.PathLike) -> Path:
    """Render with Agg and publish by renaming, so a reader never sees a half-written PNG."""
    out = Path(out)
    refuse_unless_file(out, "figure")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    with replacing(out) as tmp:
        # RGB rather than matplotlib's RGBA: a tenth smaller, and figures have no transparency
        Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(tmp, format="PNG", optimize=True)
    return out


# -- labelled image grids -------------------------------------------------------------------------

MIN_CELL_PX = 64        # smaller images are enlarged (nearest) by an integer factor to at least this
PAD_PX = 4              # white gap between cells and around the grid
LABEL_PT, TITLE_PT, CELL_LABEL_PT = 9, 11, 7
LINE_PX = 16            # height of one line of 9-point label text at 100 dpi, with its spacing
TITLE_PX = 22


@dataclass(frozen=True)
class GridGeometry:
    """Where a labelled grid puts things, in pixels from the top-left corner of the PNG."""
    width: int
    height: int
    left: int   # x of the first column
    top: int    # y of the first cell
    pitch: int  # distance between column starts: the cell, or a wider column label, plus a gap
    cell: int   # enlarged image side
    scale: int  # enlargement factor

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of cell (row, col); cells are centred in their column."""
        x = self.left + col * self.pitch + (self.pitch - PAD_PX - self.cell) // 2
        return x, self.top + row * (self.cell + PAD_PX)


def _text_size(labels: Sequence[str], points: float = LABEL_PT, bold: bool = False) -> tuple[int, int]:
    """(lines, pixel width of the widest line) of the labels, measured by the Agg renderer."""
    renderer = RendererAgg(1, 1, DPI)
    font = FontProperties(size=points, weight="bold" if bold else "normal")
    lines = [line for label in labels for line in label.split("\n")]
    width = max((renderer.get_text_width_height_descent(line, font, ismath=False)[0] for line in lines), default=0)
    return max((label.count("\n") + 1 for label in labels), default=0), math.ceil(width)


def check_grid_size(rows: int, cols: int, image_side: int, col_labels: Sequence[str] = (),
                    row_labels: Sequence[str] = (), title: str | None = None) -> None:
    """Refuse a labelled grid whose canvas, labels and margins included, has more than
    limits.MAX_FIGURE_PIXELS pixels (what drawing it takes: FIGURE_BYTES_PER_PIXEL each), before
    any image of it is made (the commands call it first; save_labelled_grid again)."""
    cell = image_side * math.ceil(MIN_CELL_PX / image_side)
    width, height = cols * (cell + PAD_PX), rows * (cell + PAD_PX)  # the cells alone: no label measured yet
    if width * height <= MAX_FIGURE_PIXELS:
        geometry = grid_geometry(rows, cols, image_side, col_labels, row_labels, title)
        width, height = geometry.width, geometry.height
    if width * height > MAX_FIGURE_PIXELS:
        gib = width * height * FIGURE_BYTES_PER_PIXEL / 2 ** 30
        raise ValueError(f"the figure would have {rows:,} x {cols:,} images of {cell} px, {width:,} x {height:,} "
                         f"pixels with its labels (about {gib:.1f} GiB to draw); "
                         f"at most {MAX_FIGURE_PIXELS / 1e6:,.0f} million pixels: ask for fewer images or steps")


def grid_geometry(rows: int, cols: int, image_side: int, col_labels: Sequence[str] = (),
                  row_labels: Sequence[str] = (), title: str | None = None) -> GridGeometry:
    scale = math.ceil(MIN_CELL_PX / image_side)
    cell = image_side * scale
    col_lines, col_width = _text_size(col_labels)
    row_width = _text_size(row_labels)[1]
    pitch = max(cell, col_width + PAD_PX) + PAD_PX
    top = PAD_PX + (TITLE_PX if title else 0) + col_lines * LINE_PX
    left = PAD_PX + (row_width + 2 * PAD_PX if row_width else 0)
    width = max(left + cols * pitch, _text_size([title or ""], TITLE_PT, bold=True)[1] + 2 * PAD_PX)
    height = top + rows * (cell + PAD_PX)
    return GridGeometry(width, height, left, top, pitch, cell, scale)


def save_labelled_grid(images: torch.Tensor, out: str | os.PathLike, col_labels: Sequence[str] = (),
                       row_labels: Sequence[str] = (), title: str | None = None,
                       cell_labels: Sequence[Sequence[str]] | None = None) -> Path:
    """images (R, C, 3, H, W) in [0, 1] -> a PNG with column labels above, row labels to the left,
    an optional small label in each cell's corner, and a title; its layout is grid_geometry's."""
    rows, cols, _, side, _ = images.shape
    check_grid_size(rows, cols, side, col_labels, row_labels, title)
    geo = grid_geometry(rows, cols, side, col_labels, row_labels, title)
    canvas = np.full((geo.height, geo.width, 3), 255, np.uint8)
    pixels = to_uint8(images.reshape(rows * cols, *images.shape[2:]))  # (R*C, H, W, 3)
    for index, tile in enumerate(pixels):
        x, y = geo.cell_origin(*divmod(index, cols))
        canvas[y:y + geo.cell, x:x + geo.cell] = tile.repeat(geo.scale, 0).repeat(geo.scale, 1)
    fig = Figure(figsize=(geo.width / DPI, geo.height / DPI), dpi=DPI)
    fig.figimage(canvas, 0, 0, origin="upper")

    def text(x: float, y: float, label: str, **kwargs) -> None:  # pixel coordinates from the top left
        # plain text as measured (a title may hold a file name): "$...$" must not start mathtext
        fig.text(x / geo.width, 1 - y / geo.height, label, parse_math=False, **{"fontsize": LABEL_PT, **kwargs})

    if title is not None:
        text(geo.width / 2, PAD_PX, title, ha="center", va="top", fontsize=TITLE_PT, fontweight="bold")
    for col, label in enumerate(col_labels):
        x, y = geo.cell_origin(0, col)
        text(x + geo.cell / 2, y - 2, label, ha="center", va="bottom", linespacing=1.1)
    for row, label in enumerate(row_labels):
        x, y = geo.cell_origin(row, 0)
        text(x - PAD_PX - 2, y + geo.cell / 2, label, ha="right", va="center", linespacing=1.1)
    for row, labels in enumerate(cell_labels or ()):
        for col, label in enumerate(labels):
            x, y = geo.cell_origin(row, col)
            text(x + 2, y + 2, label, ha="left", va="top", fontsize=CELL_LABEL_PT,
                 bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.75))
    return _save(fig, out)


# -- 1. schedules and the noising strip -----------------------------------------------------------

def schedule_curves(steps: int = schedules.LINEAR_STEPS) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """name -> (t, noise_rates, signal_rates) on the article's grid t = i / T, i = 0..T-1.

    The linear schedule is the reference's discrete cumulative product along that grid."""
    t = torch.arange(steps, dtype=torch.float64) / steps
    curves = {"linear": schedules.linear(t), "cosine": schedules.cosine(t),
              "offset_cosine": schedules.offset_cosine(t)}
    return {name: (t, noise, signal) for name, (noise, signal) in curves.items()}


def plot_schedules(out: str | os.PathLike) -> Path:
    """Rates (left) and their squares, the signal and noise variances abar and 1 - abar (right)."""
    fig = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
    rates, powers = fig.subplots(1, 2)
    for (name, (t, noise, signal)), color in zip(schedule_curves().items(), ("C0", "C1", "C2")):
        rates.plot(t, signal, color=color, label=f"{name} signal")
        rates.plot(t, noise, color=color, linestyle="--", label=f"{name} noise")
        powers.plot(t, signal ** 2, color=color, label=f"{name} signal")
        powers.plot(t, noise ** 2, color=color, linestyle="--", label=f"{name} noise")
    rates.set(title="rates: signal sqrt(abar), noise sqrt(1 - abar)", xlabel="diffusion time t", ylabel="rate")
    powers.set(title="variances: signal abar, noise 1 - abar", xlabel="diffusion time t", ylabel="variance")
    for ax in (rates, powers):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    powers.legend(fontsize=8, loc="center right")
    return _save(fig, out)


def noised_images(image: torch.Tensor, times: Sequence[float], seed: int = 0,
                  names: Sequence[str] = SCHEDULE_NAMES) -> torch.Tensor:
    """One uint8 image (3, H, W) noised at each time under each schedule -> (len(names), len(times),
    3, H, W) in [0, 1].

    As in training, the image is standardised per channel (here with its own statistics, standing
    in for the data set's) and noised as signal_rate * x + noise_rate * eps with the same eps for
    every schedule and time, so only the schedule differs between rows."""
    x = image.double().unsqueeze(0) / 255.0
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False).clamp_min(1e-3)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = torch.tensor(list(times), dtype=torch.float64).view(-1, 1, 1, 1)
    rows = []
    for name in names:
        noise_rates, signal_rates = schedules.get(name)(t)
        noisy = signal_rates * (x - mean) / std + noise_rates * eps
        rows.append((mean + noisy * std).clamp(0, 1))
    return torch.stack(rows).float()


def plot_noising(image: torch.Tensor, out: str | os.PathLike, times: Sequence[float], seed: int = 0,
                 title: str = "forward diffusion") -> Path:
    grid = noised_images(image, times, seed)
    t = torch.tensor(list(times), dtype=torch.float64)
    signal = [schedules.get(name)(t)[1].tolist() for name in SCHEDULE_NAMES]
    return save_labelled_grid(grid, out, col_labels=[f"t = {v:.2f}" for v in times], row_labels=SCHEDULE_NAMES,
                              title=title, cell_labels=[[f"signal {s:.2f}" for s in row] for row in signal])


# -- 2. step-count sweep --------------------------------------------------------------------------

@dataclass
class SweepResult:
    steps: int
    images: torch.Tensor      # (n, 3, H, W) in [0, 1]
    seconds: float            # wall time for all n images

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images.shape[0]


def step_sweep(model: DiffusionModel, step_counts: Sequence[int], num_images: int, seed: int,
               image_size: int, eps_scale: float | None = None) -> list[SweepResult]:
    """The same initial noises (images 0..n-1 of `seed`) decoded with each number of DDIM steps
    (eps_scale: sample_from_noise's; None is the model's own)."""
    noise = initial_noise(seed, range(num_images), (model.network.config.channels, image_size, image_size))
    sample_from_noise(model, noise[:1], 1)  # warm-up: first-call allocations are not the sampler's time
    results = []
    for steps in step_counts:
        started = time.perf_counter()
        # returns on the CPU, so the device has finished
        images = sample_from_noise(model, noise, steps, eps_scale=eps_scale)
        results.append(SweepResult(steps, images, time.perf_counter() - started))
    return results


def sweep_table(results: Sequence[SweepResult]) -> str:
    lines = [f"{'steps':>6} {'seconds':>9} {'s/image':>9} {'ms/step/image':>14}"]
    for r in results:
        lines.append(f"{r.steps:>6} {r.seconds:>9.3f} {r.seconds_per_image:>9.4f} "
                     f"{1000 * r.seconds_per_image / r.steps:>14.3f}")
    return "\n".join(lines)


def plot_sweep(results: Sequence[SweepResult], out: str | os.PathLike, title: str | None = None) -> Path:
    """One column per step count, one row per initial noise."""
    grid = torch.stack([r.images for r in results], dim=1)  # (n, counts, 3, H, W)
    return save_labelled_grid(grid, out, col_labels=sweep_labels(results), title=title or "DDIM steps vs image")


def sweep_labels(results: Sequence[SweepResult]) -> list[str]:
    """'20 steps\n12.3 ms/image' above each column."""
    def seconds(s: float) -> str:
        return f"{s * 1000:.3g} ms" if s < 1 else f"{s:.3g} s"
    return [f"{r.steps} step{'s' if r.steps > 1 else ''}\n{seconds(r.seconds_per_image)}/image" for r in results]


# -- 3. interpolation -----------------------------------------------------------------------------

def interpolation_noises(first: int, second: int, frames: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """(frames, C, H, W): image 0's initial noise of seed `first` turning into that of `second`
    (editing.interpolation_noises: the end frames are the seeds' noises bit for bit)."""
    return editing.interpolation_noises(initial_noise(first, [0], shape)[0], initial_noise(second, [0], shape)[0],
                                        frames)


def interpolate(model: DiffusionModel, pairs: Sequence[tuple[int, int]], frames: int,
                settings: SamplingSettings = SamplingSettings(), *, image_size: int = 64) -> torch.Tensor:
    """-> (len(pairs), frames, 3, H, W) in [0, 1], decoded with deterministic DDIM
    (editing.interpolate: settings' steps, time_grid and batch_size)."""
    shape = (model.network.config.channels, image_size, image_size)
    ends = [initial_noise(seed, [0], shape)[0] for pair in pairs for seed in pair]
    return editing.interpolate(model, ends, frames, settings)


def plot_interpolation(images: torch.Tensor, pairs: Sequence[tuple[int, int]], out: str | os.PathLike,
                       title: str | None = None) -> Path:
    weights = editing.interpolation_weights(images.shape[1])
    return save_labelled_grid(images, out, col_labels=[f"w = {w:.2f}" for w in weights],
                              row_labels=[f"seed {a} -> {b}" for a, b in pairs],
                              title=title or "spherical interpolation of initial noise")


def save_gif(images: torch.Tensor, out: str | os.PathLike, frame_ms: int = 120) -> Path:
    """(rows, frames, 3, H, W) -> an animated GIF: frame i shows every row's frame i side by side,
    enlarged as in the grids, playing forward then back so the loop has no jump."""
    rows, frames = images.shape[:2]
    scale = math.ceil(MIN_CELL_PX / images.shape[-1])
    pixels = to_uint8(images.transpose(0, 1).reshape(rows * frames, *images.shape[2:]))
    pixels = pixels.reshape(frames, rows, *pixels.shape[1:])
    tiles = [np.concatenate(list(p), axis=1).repeat(scale, 0).repeat(scale, 1) for p in pixels]
    sequence = tiles + tiles[-2:0:-1]
    out = Path(out)
    refuse_unless_file(out, "GIF")
    out.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [Image.fromarray(t) for t in sequence]
    with replacing(out) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=frame_ms, loop=0)
    return out


# -- 4. trajectory and training curves ------------------------------------------------------------

@dataclass
class Trajectory:
    times: list[float]             # t before each step (1 ... step)
    pred_images: torch.Tensor      # (steps, C, H, W) normalised: the image predicted at each step
    noisy_images: torch.Tensor     # (steps + 1, C, H, W) normalised: x before the first and after each step

    @property
    def final(self) -> torch.Tensor:
        """What samplers.ddim returns: the last predicted image."""
        return self.pred_images[-1]


@torch.inference_mode()
def ddim_trajectory(model: DiffusionModel, noise: torch.Tensor, steps: int,
                    eps_scale: float | None = None) -> Trajectory:
    """samplers.ddim at eta = 0 for one image (noise: (C, H, W)), keeping every step's state:
    each samplers.ddim_step separates x_t into the predicted image and noise, then remixes them
    at t_next (DDIM eq. 12, sigma = 0). eps_scale: None is the model's own, as corolla sample's."""
    model.eval()
    device = next(model.parameters()).device
    times = samplers.uniform_times(steps).tolist()
    denoise = samplers.scaled_noise(model.ema_denoiser(), model.sampling_eps_scale(eps_scale))
    x = noise.unsqueeze(0).to(device)
    preds, xs = [], [x]
    for t, t_next in zip(times[:-1], times[1:]):
        x, pred_images = samplers.ddim_step(denoise, model.schedule, x, t, t_next)
        preds.append(pred_images)
        xs.append(x)
    return Trajectory(times[:-1], torch.cat(preds).cpu(), torch.cat(xs).cpu())


def plot_trajectory(model: DiffusionModel, trajectory: Trajectory, out: str | os.PathLike,
                    per_row: int = 10, title: str | None = None) -> Path:
    """Bands of two rows, `per_row` steps wide: the predicted image at t, then x after the step."""
    steps = len(trajectory.times)
    pred = model.normalizer.denormalize(trajectory.pred_images.to(model.normalizer.mean.device)).cpu()
    noisy = model.normalizer.denormalize(trajectory.noisy_images[1:].to(model.normalizer.mean.device)).cpu()
    bands = math.ceil(steps / per_row)
    cols = min(steps, per_row)
    blank = torch.ones_like(pred[0])
    cells, labels, row_labels = [], [], []
    times = trajectory.times + [0.0]
    for band in range(bands):
        idx = list(range(band * cols, min((band + 1) * cols, steps)))
        fill = [blank] * (cols - len(idx))
        cells.append(torch.stack([pred[i] for i in idx] + fill))
        cells.append(torch.stack([noisy[i] for i in idx] + fill))
        labels.append([f"{i + 1}: t={times[i]:.2f}" for i in idx])
        labels.append([f"t={times[i + 1]:.2f}" for i in idx])
        row_labels += ["predicted\nimage", "noisy\nimage"]
    return save_labelled_grid(torch.stack(cells), out, row_labels=row_labels, cell_labels=labels,
                              title=title or f"reverse diffusion, {steps} DDIM steps")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl; unreadable lines (a line being written) are skipped.
    Read as a run's own file (safefile.read_run_file): a FIFO, a device or a link is FileRefused."""
    records = []
    path = Path(path)
    try:
        text = read_run_file(path.parent, path.name, MAX_LOG_BYTES, "a run's log").decode(errors="replace")
        lines = text.splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def loss_series(records: Sequence[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """'train' and 'val' -> (steps, losses), skipping missing, null and non-finite values."""
    series: dict[str, tuple[list[float], list[float]]] = {"train": ([], []), "val": ([], [])}
    for record in records:
        for name, key in (("train", "train_loss"), ("val", "val_loss")):
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[name][0].append(record["step"])
                series[name][1].append(value)
    return series


def plot_training(run_dir: str | os.PathLike) -> Path | None:
    """run_dir/metrics.jsonl -> run_dir/loss.png (train and validation loss against step).

    Called at every epoch end, so it never raises: with no loss logged yet it writes nothing and
    returns None, and any failure to draw becomes a warning (a figure must not stop training)."""
    run_dir = Path(run_dir)
    try:
        records = read_metrics(run_dir / "metrics.jsonl")
        series = loss_series(records)
        if not series["train"][0] and not series["val"][0]:
            return None
        fig = Figure(figsize=(7, 4), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        if series["train"][0]:
            ax.plot(*series["train"], color="C0", linewidth=1, label="train (mean of each logged interval)")
        if series["val"][0]:
            ax.plot(*series["val"], color="C1", marker="o", label="validation (EMA network)")
        speeds = [r["images_per_s"] for r in records if isinstance(r.get("images_per_s"), (int, float))]
        epochs = max((r.get("epoch", 0) for r in records if isinstance(r.get("epoch"), (int, float))), default=0)
        speed = f", {speeds[-1]:.1f} images/s" if speeds else ""
        ax.set(xlabel="optimiser step", ylabel="L1 noise loss")
        ax.set_title(f"{run_dir.name}: epoch {epochs}{speed}", parse_math=False)
        ax.grid(alpha=0.3)
        ax.legend()
        return _save(fig, run_dir / "loss.png")
    except Exception as error:  # noqa: BLE001 - see the docstring
        warnings.warn(f"could not draw {run_dir / 'loss.png'}: {error}", stacklevel=2)
        return None


# -- how a run learned: its per-epoch grids side by side --------------------------------------------

def epoch_grids(run_dir: str | os.PathLike) -> dict[int, Path]:
    """epoch -> RUN/samples/epoch_NNN.png, the grid train draws from fixed noise after each epoch."""
    found = {}
    for path in (Path(run_dir) / "samples").glob("epoch_*.png"):
        number = path.stem[len("epoch_"):]
        if number.isdigit():
            found[int(number)] = path
    return dict(sorted(found.items()))


def learning_progress(run_dir: str | os.PathLike, image_size: int, grid_images: int,
                      epochs: Sequence[int] | None = None, images: int = 8) -> tuple[torch.Tensor, list[int]]:
    """The first `images` tiles of each chosen epoch's grid -> ((epochs, images, 3, H, W) in [0, 1],
    the epochs). The grids come from the same noise every epoch, so a column follows one image."""
    grids = epoch_grids(run_dir)
    chosen = list(grids) if epochs is None else list(epochs)
    missing = [e for e in chosen if e not in grids]
    if not chosen or missing:
        have = f"epochs {min(grids)}-{max(grids)}" if grids else "none"
        raise ValueError(f"no per-epoch grid for epoch(s) {missing or 'any'} in {Path(run_dir) / 'samples'} "
                         f"(it has {have})")
    images = min(images, grid_images)
    rows = []
    for epoch in chosen:
        payload = read_run_file(Path(run_dir), f"samples/{grids[epoch].name}", MAX_GRID_BYTES, "a sample grid")
        with Image.open(io.BytesIO(payload)) as grid:
            tiles = split_grid(np.asarray(grid.convert("RGB")), grid_images, image_size)[:images]
        rows.append(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0)
    return torch.stack(rows), chosen


def plot_progress(images: torch.Tensor, epochs: Sequence[int], out: str | os.PathLike,
                  title: str | None = None) -> Path:
    return save_labelled_grid(images, out, row_labels=[f"epoch {e}" for e in epochs],
                              title=title or "the EMA network's samples from fixed noise after each epoch")
