"""Editing real images with a trained unconditional model: SDEdit, inpainting (RePaint), DDIM
inversion and the decoding of inverted noise.

The first half works on the stateless pieces the samplers use (a denoiser, a schedule, images in
the model's normalised space, a time grid), so it can be tested against Gaussian data whose
denoiser is exact. The second half applies it to a DiffusionModel and images in [0, 1]: it
normalises, batches and seeds each output exactly like corolla.generation (output i of a seed draws
from its own stream, so it is the same whatever the batch), and loads photos and masks.

Grid convention (samplers' module docstring): evaluations at times[:-1], the result is the
predicted image of the last one. The offset-cosine schedule never reaches noise 0 (noise rate 0.31
at t = 0), so "the image" at the end of a grid is the prediction at its last evaluation time.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import samplers
from .data import imagefolder
from .diffusion import Denoiser, DiffusionModel
from .generation import draw_noise, sample_from_noise, seeded_generator
from .limits import check_evaluation_memory
from .samplers import SamplingSettings
from .schedules import Schedule

# Fixed-point evaluations that place the last state of an inversion (ddim_invert). On the shipped
# 32x32 model (8 held-out photos, 50 log-SNR steps) the round trip's RMSE was 12.6 / 6.2 / 3.2 /
# 2.5 / 2.3 / 2.3 (0-255) after 0 / 1 / 3 / 6 / 10 / 20: 6 is within a tenth of the limit.
INVERT_REFINE = 6
# The defaults of the operations that step with DDIM themselves (_check_ddim): inpainting walks
# RePaint's stochastic DDPM-like steps (eta 1) on the reference's grid; inversion and its decoding
# run deterministic DDIM, most exactly on the log-SNR grid, and decode without epsilon scaling, the
# exact reverse of the inversion (which walks the plain ODE up). SDEdit scales as edit_eps_scale says.
EDITING = SamplingSettings()  # SDEdit: corolla sample's sampler
INPAINTING = SamplingSettings(steps=50, eta=1.0, grid="uniform", eps_scale=1.0)
INVERSION = SamplingSettings(steps=50, grid="logsnr", eps_scale=1.0)
RESAMPLE, JUMP = 5, 5  # RePaint's R and J (repaint_walk): about 5 times the evaluations of plain replacement


_rates = samplers._rates  # (B, 1, 1, 1) noise and signal rates at one time


def check_strength(strength: float) -> float:
    if not 0 <= strength <= 1:  # also refuses NaN
        raise ValueError(f"strength {strength} is not allowed: it is a diffusion time in [0, 1] "
                         f"(0 returns the image, 1 is plain sampling)")
    return float(strength)


# --- SDEdit -------------------------------------------------------------------------------------

def sdedit(denoise: Denoiser, schedule: Schedule, images: torch.Tensor, noise: torch.Tensor,
           times: torch.Tensor, strength: float, sampler: str = "ddim", eta: float = 0.0,
           noise_fn: samplers.NoiseFn | None = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise `images` to t = strength, then solve the reverse process
    with `sampler` over the part of `times` below it. Strength 0 returns the images untouched (at
    t = 0 the offset cosine would still add noise 0.31); strength 1 is sampling from `noise`."""
    strength = check_strength(strength)
    if strength == 0:
        return images
    start = samplers.noised(schedule, images, noise, strength)
    return samplers.get(sampler)(denoise, schedule, start, samplers.times_from(times, strength), eta=eta,
                                 noise_fn=noise_fn)


# --- DDIM inversion -----------------------------------------------------------------------------

def ddim_invert(denoise: Denoiser, schedule: Schedule, images: torch.Tensor, times: torch.Tensor,
                refine: int = INVERT_REFINE) -> torch.Tensor:
    """The initial noise from which deterministic DDIM on `times` gives back `images`.

    First the state at the last evaluation time t_K whose prediction is the image: the fixed point
    of x = s x0 + n eps(x), iterated `refine` times from x = s x0 (each iteration one evaluation;
    for Gaussian data it contracts by n^2 / (s^2 var + n^2) per pixel). Then DDIM steps run up the
    grid, each taking the noise predicted at its lower end (one evaluation per step): first order,
    like DDIM itself. Cost: refine + len(times) - 2 evaluations."""
    if refine < 0:
        raise ValueError(f"refine must be 0 or more, got {refine}")
    evaluations = times[:-1].tolist()
    noise_rates, signal_rates = _rates(schedule, evaluations[-1], images)
    x = signal_rates * images
    for _ in range(refine):
        pred_noises, _ = denoise(x, noise_rates, signal_rates)
        x = signal_rates * images + noise_rates * pred_noises
    for t, t_up in zip(evaluations[:0:-1], evaluations[-2::-1]):
        x, _ = samplers.ddim_step(denoise, schedule, x, t, t_up)
    return x


# --- inpainting ---------------------------------------------------------------------------------

def repaint_walk(steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """The grid positions (0 = first evaluation time, steps - 1 = last) RePaint visits (Lugmayr et
    al. 2022, its jump schedule): down one position at a time; on reaching a multiple of `jump` (or
    the last position), go back up `jump` positions and come down again, resample - 1 times.
    resample 1 is the plain replacement method: 0, 1, ..., steps - 1."""
    if steps < 1 or resample < 1 or jump < 1:
        raise ValueError(f"steps, resample and jump must be 1 or more, got {steps}, {resample}, {jump}")
    last = steps - 1
    walk, position, back_jumps = [0], 0, [0] * steps
    while position < last:
        position += 1
        walk.append(position)
        if (position % jump == 0 or position == last) and back_jumps[position] < resample - 1:
            back_jumps[position] += 1
            position -= min(jump, position)
            walk.append(position)
    return walk


def repaint_evaluations(steps: int, resample: int = 1, jump: int = 1) -> int:
    """Network evaluations of an inpainting: one per step down the walk, plus the last prediction."""
    walk = repaint_walk(steps, resample, jump)
    return 1 + sum(there == here + 1 for here, there in zip(walk, walk[1:]))


def forward_jump(schedule: Schedule, x: torch.Tensor, t: float, t_up: float, noise: torch.Tensor) -> torch.Tensor:
    """A sample of q(x_{t_up} | x_t) for t_up > t: scale the signal down and add the missing noise,
    (s_up / s) x + sqrt(n_up^2 - (s_up / s)^2 n^2) z."""
    noise_rates, signal_rates = _rates(schedule, t, x)
    up_noise_rates, up_signal_rates = _rates(schedule, t_up, x)
    ratio = up_signal_rates / signal_rates
    return ratio * x + torch.sqrt((up_noise_rates ** 2 - (ratio * noise_rates) ** 2).clamp_min(0)) * noise


def repaint(denoise: Denoiser, schedule: Schedule, images: torch.Tensor, fill: torch.Tensor,
            initial_noise: torch.Tensor, times: torch.Tensor, noise_fn: samplers.NoiseFn,
            resample: int = 1, jump: int = 1, eta: float = 1.0) -> torch.Tensor:
    """Fill the pixels where `fill` is True (broadcast over channels) so that they fit the rest.

    RePaint (Lugmayr et al. 2022): every state on the walk is the model's reverse step (DDIM with
    `eta`; 1 = DDPM's posterior, as RePaint) where filling, and a fresh sample of the forward
    process of `images` elsewhere; going back up the grid (repaint_walk) re-noises the whole image,
    which lets the filled part adapt to the known one. Returns the last prediction in the hole and
    `images` itself outside it. `noise_fn` draws the known part's noise (and eta's, and the jumps')."""
    evaluations = times[:-1].tolist()

    def known_at(t: float) -> torch.Tensor:
        noise_rates, signal_rates = _rates(schedule, t, images)
        return signal_rates * images + noise_rates * noise_fn()

    x = torch.where(fill, initial_noise, known_at(evaluations[0]))
    walk = repaint_walk(len(evaluations), resample, jump)
    for here, there in zip(walk, walk[1:]):
        t, t_next = evaluations[here], evaluations[there]
        if there == here + 1:
            x, _ = samplers.ddim_step(denoise, schedule, x, t, t_next, eta, noise_fn)
            x = torch.where(fill, x, known_at(t_next))
        else:
            x = forward_jump(schedule, x, t, t_next, noise_fn())
    noise_rates, signal_rates = _rates(schedule, evaluations[-1], x)
    _, pred_images = denoise(x, noise_rates, signal_rates)
    return torch.where(fill, pred_images, images)


# --- on a model: images in [0, 1], per-image seeds ----------------------------------------------

Work = Callable[[torch.Tensor, torch.Tensor, Callable[[], torch.Tensor], slice], torch.Tensor]


@torch.inference_mode()
def _per_image(model: DiffusionModel, images: torch.Tensor, seed: int, indices: Sequence[int] | None,
               batch_size: int, work: Work) -> torch.Tensor:
    """Run work(normalised images, initial noise, noise_fn, rows) batch by batch -> denormalised
    [0, 1] images on the CPU. Row r draws from seeded_generator(seed, indices[r]): first its initial
    noise (the one `corolla sample` starts image indices[r] from), then whatever work asks for."""
    model.eval()
    device = next(model.parameters()).device
    indices = list(range(images.shape[0])) if indices is None else list(indices)
    if len(indices) != images.shape[0]:
        raise ValueError(f"{len(indices)} indices for {images.shape[0]} images")
    shape = tuple(images.shape[1:])
    check_evaluation_memory(model.network, min(batch_size, images.shape[0]), shape[-1], device)
    out = []
    for first in range(0, images.shape[0], batch_size):
        rows = slice(first, min(first + batch_size, images.shape[0]))
        generators = [seeded_generator(seed, i) for i in indices[rows]]
        noise = draw_noise(generators, shape, device)
        x0 = model.normalizer.normalize(images[rows].to(device=device, dtype=torch.float32))
        result = work(x0, noise, lambda generators=generators: draw_noise(generators, shape, device), rows)
        out.append(model.normalizer.denormalize(result).float().cpu())
    return torch.cat(out)


def _check_eta(eta: float) -> None:
    if eta < 0:
        raise ValueError(f"eta {eta} is not allowed: must be 0 (deterministic) or more")


def _check_ddim(settings: SamplingSettings, what: str, deterministic: bool = False) -> None:
    """Inpainting, inversion and interpolation step with DDIM themselves: a sampler they would
    ignore is refused, and so is an eta where they are deterministic."""
    if settings.sampler != "ddim":
        raise ValueError(f"{what} steps with DDIM itself: sampler {settings.sampler!r} cannot be used (leave it ddim)")
    if deterministic and settings.eta != 0:
        raise ValueError(f"{what} is deterministic DDIM: eta must be 0, got {settings.eta:g}")
    _check_eta(settings.eta)


def edit_eps_scale(model: DiffusionModel, strength: float, settings: SamplingSettings) -> float:
    """The epsilon scale an edit at `strength` draws at: settings.eps_scale, else below strength 1
    the model's hand-over scale (a photo noised to t and restarted is a cascade's hand-over: from
    t = 0.5 and 0.3 flowers64's finest level is 28.9 and 29.4 x1e-3 from the photos at 1.04 against
    48.4 and 40.0 unscaled; benchmarks/README.md, "A cascade"), at 1 its own (generate's image)."""
    if strength < 1:
        return model.handover_scale(settings.eps_scale, settings.sampler)
    return model.sampling_eps_scale(settings.eps_scale, settings.sampler)


def edit(model: DiffusionModel, images: torch.Tensor, strength: float, settings: SamplingSettings = SamplingSettings(),
         *, indices: Sequence[int] | None = None) -> torch.Tensor:
    """SDEdit of images (N, C, H, W) in [0, 1] at the model's size -> (N, C, H, W) in [0, 1].

    settings.steps counts the whole grid (settings.time_grid, as `corolla sample`'s); an edit
    evaluates at t = strength and at the grid's times below it. Output r uses the stream of image
    indices[r] (default r) of settings.seed, so at strength 1 it is `generate`'s image indices[r]
    with the same settings, bit for bit."""
    check_strength(strength)
    _check_eta(settings.eta)
    times = samplers.get_grid(settings.time_grid, settings.steps, model.schedule)
    samplers.get(settings.sampler)  # an unknown name fails before any work

    denoise = samplers.scaled_noise(model.ema_denoiser(), edit_eps_scale(model, strength, settings))

    def work(x0, noise, noise_fn, rows):
        return sdedit(denoise, model.schedule, x0, noise, times, strength, settings.sampler,
                      settings.eta, noise_fn if settings.eta > 0 else None)
    return _per_image(model, images, settings.seed, indices, settings.batch_size, work)


def inpaint(model: DiffusionModel, images: torch.Tensor, fill: torch.Tensor, settings: SamplingSettings = INPAINTING,
            *, resample: int = RESAMPLE, jump: int = JUMP, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Fill the pixels of images (N, C, H, W) in [0, 1] where fill (N, 1, H, W) is True ->
    (N, C, H, W) in [0, 1], equal to the input wherever fill is False. resample 1: the plain
    replacement method; resample R > 1 with jump J: RePaint (about R times the evaluations).
    settings: steps, time_grid, eta, seed and batch_size; the steps are DDIM's, so the sampler is ddim."""
    if fill.dtype != torch.bool or fill.shape != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(f"fill must be a bool mask of shape {(images.shape[0], 1, *images.shape[2:])}, "
                         f"got {fill.dtype} {tuple(fill.shape)}")
    _check_ddim(settings, "inpainting")
    times = samplers.get_grid(settings.time_grid, settings.steps, model.schedule)
    repaint_walk(settings.steps, resample, jump)  # bad counts fail before any work
    device = next(model.parameters()).device

    def work(x0, noise, noise_fn, rows):
        return repaint(model.ema_denoiser(), model.schedule, x0, fill[rows].to(device), noise, times, noise_fn,
                       resample, jump, settings.eta)
    filled = _per_image(model, images, settings.seed, indices, settings.batch_size, work)
    return torch.where(fill, filled, images.float())  # known pixels exactly, not through the normaliser


@torch.inference_mode()
def invert(model: DiffusionModel, images: torch.Tensor, settings: SamplingSettings = INVERSION, *,
           refine: int = INVERT_REFINE) -> torch.Tensor:
    """The initial noises (N, C, H, W) from which `decode` (deterministic DDIM, the same settings)
    gives back images (N, C, H, W) in [0, 1]. settings: steps, time_grid and batch_size."""
    _check_ddim(settings, "inversion", deterministic=True)
    model.eval()
    device = next(model.parameters()).device
    times = samplers.get_grid(settings.time_grid, settings.steps, model.schedule)
    out = []
    for first in range(0, images.shape[0], settings.batch_size):
        batch = images[first:first + settings.batch_size]
        x0 = model.normalizer.normalize(batch.to(device=device, dtype=torch.float32))
        out.append(ddim_invert(model.ema_denoiser(), model.schedule, x0, times, refine).float().cpu())
    return torch.cat(out)


def decode(model: DiffusionModel, noise: torch.Tensor, settings: SamplingSettings = INVERSION) -> torch.Tensor:
    """Deterministic DDIM from initial noises (N, C, H, W) -> images in [0, 1] (what `corolla
    sample` does with its seeded noise). settings: steps, time_grid, eps_scale and batch_size."""
    _check_ddim(settings, "decoding", deterministic=True)
    s = settings
    return torch.cat([sample_from_noise(model, noise[i:i + s.batch_size], s.steps, grid=s.time_grid,
                                        eps_scale=s.eps_scale)
                      for i in range(0, noise.shape[0], s.batch_size)])


FRAMES = 10  # an interpolation's images, ends included, unless told: `corolla interpolate` and the page


def interpolation_weights(frames: int) -> list[float]:
    """The slerp weight of each frame, 0 (the first end) to 1 (the second), ends included."""
    if frames < 2:
        raise ValueError(f"frames must be at least 2 (the two end images), got {frames}")
    return [i / (frames - 1) for i in range(frames)]


def interpolation_noises(first: torch.Tensor, second: torch.Tensor, frames: int) -> torch.Tensor:
    """Two initial noises (C, H, W) -> (frames, C, H, W) from `first` to `second`: the reference's
    slerp a sin(pi/2 w) + b cos(pi/2 w) (samplers.slerp gives b at w = 0, so b is `first`), in
    float64: there sin(pi/2) = 1 and cos(pi/2) = 6e-17, so the end frames round back to the ends'
    float32 noises bit for bit and decode to their images."""
    return samplers.slerp(second.double(), first.double(), interpolation_weights(frames)).float()


def interpolate(model: DiffusionModel, ends: Sequence[torch.Tensor], frames: int,
                settings: SamplingSettings = SamplingSettings()) -> torch.Tensor:
    """Pairs of initial noises (ends[0] -> ends[1], ends[2] -> ends[3], ...; each (C, H, W)) ->
    (pairs, frames, C, H, W) in [0, 1], each pair's interpolation_noises decoded with
    deterministic DDIM (decode: settings' steps, time_grid and batch_size)."""
    if len(ends) < 2 or len(ends) % 2:
        raise ValueError(f"interpolation takes pairs of ends, got {len(ends)}")
    _check_ddim(settings, "interpolation", deterministic=True)
    noise = torch.cat([interpolation_noises(a, b, frames) for a, b in zip(ends[::2], ends[1::2])])
    images = decode(model, noise, settings)
    return images.view(len(ends) // 2, frames, *images.shape[1:])


# --- photos and masks ---------------------------------------------------------------------------

def _decode(path: str | os.PathLike, what: str) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        return imagefolder.decode_image(path)
    except Exception as error:  # any decoder failure means: not a usable image
        message = f"{what} {str(path)!r} is not an image corolla can read ({error})"
        raise ValueError(message.replace("\n", " ")) from None


def _square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top:top + side, left:left + side]


def load_photo(path: str | os.PathLike, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Any image file -> ((3, size, size) float in [0, 1], its (width, height) as decoded). Not
    square: the central square is cut out, with a warning. Resized like the training images
    (bilinear, no antialiasing: imagefolder.resize)."""
    pixels = _decode(path, "image")
    h, w = pixels.shape[:2]
    if h != w:
        side = min(h, w)
        warnings.warn(f"{path} is {w}x{h}, not square: using its central {side}x{side}, resized to {size}x{size}",
                      stacklevel=2)
    return imagefolder.resize(pixels, size, crop=True).float() / 255.0, (w, h)


def _fill_at(covered: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) bool at the photo's size -> (1, size, size) bool after the photo's crop: a model pixel
    is filled when any part of it is covered, so a thin mask never vanishes in the resize."""
    area = torch.from_numpy(np.ascontiguousarray(_square(covered))).float()[None, None]
    return (F.interpolate(area, size=(size, size), mode="area") > 0)[0]


def load_mask(path: str | os.PathLike, photo_size: tuple[int, int], size: int) -> torch.Tensor:
    """A mask image (white = fill, any mode; read as grey >= 128) of the photo's size -> (1, size,
    size) bool at the model's size, cropped as the photo is."""
    pixels = _decode(path, "mask")
    h, w = pixels.shape[:2]
    if (w, h) != tuple(photo_size):
        raise ValueError(f"mask {str(path)!r} is {w}x{h} but the image is {photo_size[0]}x{photo_size[1]}: "
                         f"a mask must have the image's size")
    grey = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return _checked(_fill_at(grey >= 128, size), f"mask {str(path)!r}", photo_size)


def box_mask(box: Sequence[int], photo_size: tuple[int, int], size: int) -> torch.Tensor:
    """x, y, w, h in the photo's pixels (origin top left) -> (1, size, size) bool fill mask."""
    x, y, w, h = box
    width, height = photo_size
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"box {x},{y},{w},{h} is not inside the {width}x{height} image "
                         f"(x,y,w,h: top-left corner, width and height, each 1 or more)")
    covered = np.zeros((height, width), bool)
    covered[y:y + h, x:x + w] = True
    return _checked(_fill_at(covered, size), f"box {x},{y},{w},{h}", photo_size)


def _checked(fill: torch.Tensor, what: str, photo_size: tuple[int, int]) -> torch.Tensor:
    if not fill.any():
        width, height = photo_size
        cropped = " (outside the central square used)" if width != height else ""
        raise ValueError(f"{what} marks nothing to fill{cropped}: white pixels are filled, black ones kept")
    return fill


def centre_box(size: int, fraction: float = 0.5) -> torch.Tensor:
    """(1, size, size) bool: the centred square of side round(fraction * size) (the benchmark's hole)."""
    side = max(1, round(fraction * size))
    start = (size - side) // 2
    fill = torch.zeros(1, size, size, dtype=torch.bool)
    fill[:, start:start + side, start:start + side] = True
    return fill


def rmse_255(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """RMS difference on the 0-255 scale of images in [0, 1], over `where` (broadcast) if given."""
    diff = (a.double() - b.double()) * 255.0
    if where is not None:
        where = where.expand_as(diff)
        diff = diff[where]
    return math.sqrt(diff.pow(2).mean().item())
