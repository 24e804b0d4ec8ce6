"""Stateless samplers: each integrates the reverse process over a grid of diffusion times.

A sampler takes a denoiser `(x, noise_rates, signal_rates) -> (pred_noises, pred_images)`, a
schedule `t -> (noise_rates, signal_rates)`, the initial noise and a descending time grid
(times[0] = 1, ..., times[-1] = end), and returns the last predicted image, as the reference does.

Grid convention (the reference's): a grid of `steps + 1` times evaluates the network at
times[:-1] (`steps` evaluations) and the result is the predicted image of the last evaluation,
at times[-2]; times[-1] is only where the reference's final, discarded remix lands. The uniform
grid thus ends its evaluations at t = 1/steps; the log-SNR and Karras grids put the last one at
`end` itself (and repeat `end` as times[-1]).

The higher-order solvers work in lambda = log(signal / noise), where the probability-flow ODE
for data prediction D has the exact solution (Lu et al. 2022, DPM-Solver++, eq. 9)
    x_t = (n_t / n_s) x_s + n_t * integral_{lambda_s}^{lambda_t} e^lambda D(x_lambda) dlambda,
and differ only in how they approximate D over a step from the predictions already made.

Arrays: the samplers run on torch tensors or on numpy arrays, whichever the initial noise is, and
the grids are torch tensors unless asked for with backend="numpy" (corolla.portable.arrays). The
numpy path never imports torch: corolla.portable.sampling runs these same functions on an ONNX
network with onnxruntime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .portable import arrays
from .schedules import Schedule

if TYPE_CHECKING:
    from .portable.arrays import Array

# (x, noise_rates, signal_rates) -> (pred_noises, pred_images), as corolla.diffusion.Denoiser
Denoiser = Callable[["Array", "Array", "Array"], "tuple[Array, Array]"]
NoiseFn = Callable[[], "Array"]
Sampler = Callable[..., "Array"]
Grid = Callable[..., "Array"]  # (steps, schedule, end=0.0, backend="torch") -> (steps + 1,) float64 times


def default_grid(sampler: str) -> str:
    """The time grid a sampler uses unless one is chosen: the reference's for DDIM, log-SNR for the
    multistep solvers (whose error terms favour equal steps in log-SNR)."""
    return "uniform" if sampler == "ddim" else "logsnr"


@dataclass(frozen=True)
class SamplingSettings:
    """How images are drawn from a model, with the defaults every command and library function
    starts from (an operation may start from its own, e.g. corolla.editing.INPAINTING). It lives
    here, free of torch, so that corolla.portable.sampling takes it too. grid None: default_grid."""
    steps: int = 20
    sampler: str = "ddim"
    grid: str | None = None
    eta: float = 0.0
    batch_size: int = 64
    seed: int = 0
    eps_scale: float | None = None  # scaled_noise's; None: the model's own (1, the reference's, unless it says)

    @property
    def time_grid(self) -> str:
        return self.grid or default_grid(self.sampler)


EPS_SCALES = (0.8, 1.2)  # scaled_noise's allowed range (useful values: 1 to about 1.03)


def own_eps_scale(sampler: str, eps_scale: float, multistep_eps_scale: float | None,
                  handover_eps_scale: float | None = None) -> float:
    """A model's own epsilon scale for `sampler` (its Config.sampling): eps_scale for DDIM, and for
    the multistep solvers multistep_eps_scale where the model has one. They take a larger scale
    than DDIM at its 20 steps (benchmarks/README.md, "Epsilon scaling for each sampler").
    handover_eps_scale, given where an image handed over below t = 1 is finished (a cascade's, an
    edit's), comes first where the model has one."""
    if handover_eps_scale is not None:
        return handover_eps_scale
    return eps_scale if sampler == "ddim" or multistep_eps_scale is None else multistep_eps_scale


def scaled_noise(denoise: Denoiser, eps_scale: float) -> Denoiser:
    """Epsilon scaling (Ning et al. 2024, "Elucidating the exposure bias in diffusion models"): the
    predicted noise divided by eps_scale, the predicted image recomputed from it. A network's noise
    prediction on its own samples runs larger than on the noised photos it was trained on, so each
    step takes out more than noise, texture first; dividing by a little more than 1 leaves it in.
    The paper's scale falls linearly in t; a constant is its simplest form. 1: the denoiser itself."""
    if eps_scale == 1:
        return denoise

    def scaled(x: Array, noise_rates: Array, signal_rates: Array) -> tuple[Array, Array]:
        pred_noises, _ = denoise(x, noise_rates, signal_rates)
        pred_noises = pred_noises / eps_scale
        return pred_noises, (x - noise_rates * pred_noises) / signal_rates
    return scaled


def uniform_times(steps: int, end: float = 0.0, backend: str = "torch") -> Array:
    """The reference grid: t_s = 1 - s / steps for s = 0..steps (from 1 down to `end`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return arrays.backend(backend).linspace(1.0, end, steps + 1)


def _rates(schedule: Schedule, t: float, like: Array) -> tuple[Array, Array]:
    noise_rate, signal_rate = schedule(arrays.of(like).full((like.shape[0], 1, 1, 1), float(t), like))
    return noise_rate, signal_rate


def times_from(times: Array, start: float) -> Array:
    """The part of a time grid from `start` down, for a trajectory that starts from an image noised
    to `start` (an edit, a cascade's hand-over): [start, the grid's evaluation times below it,
    times[-1]]; the whole grid at start 1. A grid time within 1e-9 of start is start."""
    if start >= 1:
        return times
    values = times.tolist()
    below = [t for t in values[:-1] if t < start - 1e-9]
    return arrays.of(times).like([start, *below, values[-1]], times)


def noised(schedule: Schedule, images: Array, noise: Array, t: float) -> Array:
    """The forward process at time t: signal(t) x0 + noise(t) eps. At t = 1 it is the noise alone:
    every sampler, as the reference's, starts from pure noise there, although the offset cosine
    keeps a signal rate of 0.02 at t = 1; so starting at 1 is plain sampling from the same noise."""
    if t >= 1:
        return noise
    noise_rates, signal_rates = _rates(schedule, t, images)
    return signal_rates * images + noise_rates * noise


def ddim_step(denoise: Denoiser, schedule: Schedule, x: Array, t: float, t_next: float,
              eta: float = 0.0, noise_fn: NoiseFn | None = None) -> tuple[Array, Array]:
    """One DDIM step from time t to t_next -> (x at t_next, predicted image at t). With eta = 0
    it also runs backwards in time (t_next > t), which is DDIM inversion (corolla.editing)."""
    noise_rates, signal_rates = _rates(schedule, t, x)
    pred_noises, pred_images = denoise(x, noise_rates, signal_rates)
    next_noise_rates, next_signal_rates = _rates(schedule, t_next, x)
    if eta > 0:
        xp = arrays.of(x)
        sigma = eta * (next_noise_rates / noise_rates) * xp.sqrt(
            xp.clamp_min(1 - (signal_rates / next_signal_rates) ** 2, 0))
        sigma = xp.minimum(sigma, next_noise_rates)
        direction = xp.sqrt(next_noise_rates ** 2 - sigma ** 2)
        return next_signal_rates * pred_images + direction * pred_noises + sigma * noise_fn(), pred_images
    return next_signal_rates * pred_images + next_noise_rates * pred_noises, pred_images


def ddim(denoise: Denoiser, schedule: Schedule, initial_noise: Array, times: Array,
         eta: float = 0.0, noise_fn: NoiseFn | None = None) -> Array:
    """DDIM (Song et al. 2021, eq. 12): separate the noisy image into predicted image and noise,
    then remix them at the next time. eta = 0 is deterministic (the reference); eta = 1 adds the
    DDPM posterior's variance, sigma_t^2 = eta^2 (n_next^2 / n^2) (1 - s^2 / s_next^2)."""
    if eta > 0 and noise_fn is None:
        raise ValueError("eta > 0 needs a noise_fn")
    x = initial_noise
    pred_images = x
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        x, pred_images = ddim_step(denoise, schedule, x, t, t_next, eta, noise_fn)
    return pred_images


def slerp(a: Array, b: Array, weights: Sequence[float]) -> Array:
    """The reference's spherical interpolation of two noises, a sin(pi/2 w) + b cos(pi/2 w).

    Since sin^2 + cos^2 = 1, the mix of two independent unit Gaussians is a unit Gaussian for
    every w. Returns (len(weights), *a.shape): w = 0 gives b, w = 1 gives a."""
    xp = arrays.of(a)
    w = xp.like(weights, a).reshape(-1, *([1] * a.ndim))
    return a[None] * xp.sin(math.pi / 2 * w) + b[None] * xp.cos(math.pi / 2 * w)




# --- log-SNR time and grids --------------------------------------------------------------------

# Grids clip the log-SNR to +-5 (a signal or noise rate of 0.0067) so that schedules reaching
# noise 0 or signal 0 get finite grids; the offset cosine spans lambda in [-3.9, 1.1], untouched.
LOG_SNR_LIMIT = 5.0
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


def log_snr(schedule: Schedule, times: Array | float) -> Array:
    """lambda = log(signal_rate / noise_rate) at `times`, in float64; it falls as t grows. A
    numpy array gives a numpy array, anything else a torch tensor."""
    xp = arrays.of(times)
    noise_rates, signal_rates = schedule(xp.float64(times))
    return xp.log(signal_rates) - xp.log(noise_rates)


def times_at_log_snr(schedule: Schedule, lambdas: Array) -> Array:
    """The times in [0, 1] where the schedule's log-SNR equals `lambdas`, by bisection (works for
    any schedule whose log-SNR falls with t; none here needs its own inverse)."""
    xp = arrays.of(lambdas)
    lo = xp.zeros64(lambdas)
    hi = xp.ones_like(lo)
    for _ in range(60):  # 2^-60: below float64 resolution near 1
        mid = (lo + hi) / 2
        early = log_snr(schedule, mid) > lambdas  # still less noise than wanted: t lies later
        lo, hi = xp.where(early, mid, lo), xp.where(early, hi, mid)
    return (lo + hi) / 2


def _log_snr_at(schedule: Schedule, t: float, xp: arrays.Ops) -> float:
    return log_snr(schedule, xp.float64(t)).item()


def _grid_from_log_snrs(schedule: Schedule, lambdas: Array, end: float) -> Array:
    """Evaluation times at `lambdas` (first and last snapped to 1 and `end` unless clipped), with
    `end` repeated as the discarded final remix point (module docstring)."""
    xp = arrays.of(lambdas)
    times = times_at_log_snr(schedule, lambdas)
    if abs(_log_snr_at(schedule, 1.0, xp)) <= LOG_SNR_LIMIT:
        times[0] = 1.0
    if len(times) > 1 and abs(_log_snr_at(schedule, end, xp)) <= LOG_SNR_LIMIT:
        times[-1] = end
    return xp.concat([times, times[-1:]])


def _log_snr_span(schedule: Schedule, end: float, xp: arrays.Ops) -> tuple[float, float]:
    # the ends pass through float32, as they always have (exact for the ends 0 and 1)
    first, last = xp.clip(log_snr(schedule, xp.float32([1.0, end])), -LOG_SNR_LIMIT, LOG_SNR_LIMIT).tolist()
    return first, last


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def uniform_grid(steps: int, schedule: Schedule, end: float = 0.0, backend: str = "torch") -> Array:
    """The reference's grid (uniform_times); its last evaluation is at t = 1/steps.

    It starts where the log-SNR and Karras grids start: at t = 1 unless the log-SNR there is below
    -LOG_SNR_LIMIT, else at the time where it reaches the limit, spaced uniformly from there. The
    cosine's signal rate is 0 at t = 1 (-4.4e-8 in float32), where dividing by it amplifies the
    network's error 10**7 times; it starts at t = 0.9957. The offset cosine (lambda = -3.9 at t = 1)
    keeps the reference's grid exactly."""
    _check_steps(steps)
    xp = arrays.backend(backend)
    if _log_snr_at(schedule, 1.0, xp) >= -LOG_SNR_LIMIT:
        return uniform_times(steps, end, backend)
    start = times_at_log_snr(schedule, xp.float64(-LOG_SNR_LIMIT)).item()
    return xp.linspace(start, end, steps + 1)


def log_snr_grid(steps: int, schedule: Schedule, end: float = 0.0, backend: str = "torch") -> Array:
    """`steps` evaluations equally spaced in lambda from t = 1 to t = end, the last one at end.
    Equal steps in lambda are what the exponential integrators' error terms (powers of h) favour
    (one of the step spacings of Lu et al. 2022, DPM-Solver)."""
    _check_steps(steps)
    xp = arrays.backend(backend)
    first, last = _log_snr_span(schedule, end, xp)
    return _grid_from_log_snrs(schedule, xp.linspace(first, last, steps), end)


def karras_grid(steps: int, schedule: Schedule, end: float = 0.0, backend: str = "torch") -> Array:
    """Karras et al. 2022 (eq. 5) on sigma = noise / signal = e^-lambda: sigma^(1/rho) equally
    spaced from t = 1 to t = end, which crowds the evaluations at low noise."""
    _check_steps(steps)
    xp = arrays.backend(backend)
    first, last = _log_snr_span(schedule, end, xp)
    ramp = xp.linspace(0.0, 1.0, steps)
    inv_rho = 1.0 / KARRAS_RHO
    sigma_first, sigma_last = math.exp(-first * inv_rho), math.exp(-last * inv_rho)  # sigma^(1/rho)
    sigmas = (sigma_first + ramp * (sigma_last - sigma_first)) ** KARRAS_RHO
    lambdas = -xp.log(sigmas)
    lambdas[0], lambdas[-1] = first, last  # exact ends despite rounding of the power
    return _grid_from_log_snrs(schedule, lambdas, end)


GRIDS: dict[str, Grid] = {"uniform": uniform_grid, "logsnr": log_snr_grid, "karras": karras_grid}


def get_grid(name: str, steps: int, schedule: Schedule, end: float = 0.0, backend: str = "torch") -> Array:
    """The named grid of `steps` network evaluations for `schedule` -> (steps + 1,) float64 times,
    a torch tensor or (backend="numpy") a numpy array."""
    try:
        grid = GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}") from None
    return grid(steps, schedule, end, backend=backend)


# --- multistep solvers in lambda ---------------------------------------------------------------

# A weight rule turns the log-SNRs of the predictions a step may use (newest first; the first is
# lambda_s when predicting, lambda_t when correcting) and the step's (lambda_s, lambda_t) into
# weights w_j: x_t = (n_t / n_s) x_s + a_t * sum_j w_j D_j. Keyword backend: the array backend
# of the sampling, for a rule that solves with arrays (so that torch's weights are torch's).
WeightRule = Callable[..., list[float]]


def _phi(k: int, h: float) -> float:
    """phi_k(-h) = integral_0^1 e^(-h (1 - u)) u^(k-1) / (k-1)! du, so that
    integral_0^h e^(-(h - v)) v^i dv = i! h^(i+1) phi_(i+1)(-h) (exponential integrators)."""
    if abs(h) < 0.5:  # the series: the closed form cancels catastrophically for small h
        return sum((-h) ** j / math.factorial(j + k) for j in range(25))
    phi = math.exp(-h)  # phi_0, then phi_(j+1)(z) = (phi_j(z) - 1/j!) / z
    for j in range(k):
        phi = (phi - 1.0 / math.factorial(j)) / (-h)
    return phi


def exact_weights(nodes: list[float], lambda_s: float, lambda_t: float, backend: str = "torch") -> list[float]:
    """Integrate exactly the polynomial through the predictions at `nodes`: in u = (lambda -
    lambda_s) / h, P(u) = sum_i c_i u^i and the step's integral is a_t * sum_i c_i i! h phi_(i+1)(-h);
    with c = V^-1 D (V_ji = u_j^i) the weights are w = V^-T m. Order len(nodes) per step."""
    xp = arrays.backend(backend)
    h = lambda_t - lambda_s
    u = xp.float64([(node - lambda_s) / h for node in nodes])
    vandermonde = u[:, None] ** xp.arange(len(nodes))[None, :]
    moments = xp.float64([math.factorial(i) * h * _phi(i + 1, h) for i in range(len(nodes))])
    return xp.solve(vandermonde.T, moments).tolist()


def dpmpp_2m_weights(nodes: list[float], lambda_s: float, lambda_t: float, backend: str = "torch") -> list[float]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): D held at (1 + 1/2r) D_i - (1/2r) D_(i-1),
    r = h_(i-1) / h_i, over the step; the first step (one prediction) is DDIM's."""
    h = lambda_t - lambda_s
    ddim_weight = -math.expm1(-h)  # 1 - e^-h
    if len(nodes) == 1:
        return [ddim_weight]
    r = (lambda_s - nodes[1]) / h
    return [ddim_weight * (1 + 1 / (2 * r)), -ddim_weight / (2 * r)]


def _require_deterministic(name: str, eta: float) -> None:
    if eta != 0:
        raise ValueError(f"sampler {name} is deterministic: eta must be 0, got {eta} "
                         f"(use --sampler ddim for stochastic sampling)")


def _multistep(rule: WeightRule, order: int, correct: bool, denoise: Denoiser, schedule: Schedule,
               initial_noise: Array, times: Array) -> Array:
    """Evaluate at times[:-1]; between evaluations step with the last `order` predictions
    (fewer at the start only); with `correct`, redo each step once its end's prediction is known
    (UniC: one order more at no extra evaluation). Returns the last prediction.

    Full order to the last step, as k-diffusion's and diffusers' solvers: DPM-Solver++'s "lower
    order final" below 15 evaluations was worse on flowers64 in 26 of 27 solver x grid x step
    cases (issue 27 item 6, docs/explanation/samplers.md)."""
    xp = arrays.of(initial_noise)
    evaluation_times = times[:-1].tolist()
    last = len(evaluation_times) - 1
    noise64, signal64 = schedule(xp.float64(times[:-1]))
    noise, signal = noise64.tolist(), signal64.tolist()
    lambdas = (xp.log(signal64) - xp.log(noise64)).tolist()

    def step(x: Array, s: int, t: int, nodes: list[int], preds: list[Array]) -> Array:
        weights = rule([lambdas[j] for j in nodes], lambdas[s], lambdas[t], backend=xp.name)
        return (noise[t] / noise[s]) * x + signal[t] * sum(w * d for w, d in zip(weights, preds))

    x = initial_noise
    start = x  # where the step that led to x began (for the corrector)
    preds: list[Array] = []  # predicted images, newest first
    used = 0  # predictions the last step used
    for i, t in enumerate(evaluation_times):
        noise_rates, signal_rates = _rates(schedule, t, x)
        _, pred_images = denoise(x, noise_rates, signal_rates)  # (B,C,H,W)
        if i == last:
            return pred_images
        preds = [pred_images, *preds][:order + 1]
        if correct and i > 0:
            nodes = used + 1  # the predictor's, plus this evaluation
            x = step(start, i - 1, i, list(range(i, i - nodes, -1)), preds[:nodes])
        start = x
        used = min(order, i + 1)
        x = step(x, i, i + 1, list(range(i, i - used, -1)), preds[:used])
    return x  # an empty evaluation grid: nothing was denoised


def dpmpp_2m(denoise: Denoiser, schedule: Schedule, initial_noise: Array, times: Array,
             eta: float = 0.0, noise_fn: NoiseFn | None = None) -> Array:
    """DPM-Solver++(2M), Lu et al. 2022: second order, one evaluation per step."""
    _require_deterministic("dpmpp_2m", eta)
    return _multistep(dpmpp_2m_weights, 2, False, denoise, schedule, initial_noise, times)


def dpmpp_3m(denoise: Denoiser, schedule: Schedule, initial_noise: Array, times: Array,
             eta: float = 0.0, noise_fn: NoiseFn | None = None) -> Array:
    """Third-order multistep in the manner of DPM-Solver++(3M): the quadratic through the last
    three predictions, integrated exactly (exponential Adams-Bashforth in lambda)."""
    _require_deterministic("dpmpp_3m", eta)
    return _multistep(exact_weights, 3, False, denoise, schedule, initial_noise, times)


def unipc(denoise: Denoiser, schedule: Schedule, initial_noise: Array, times: Array,
          eta: float = 0.0, noise_fn: NoiseFn | None = None) -> Array:
    """UniPC (Zhao et al. 2023) with varying coefficients: the second-order predictor UniP-2,
    then the corrector UniC, which reuses the prediction at the new point to redo the step with
    one more node: third order, one evaluation per step (the last step is not corrected)."""
    _require_deterministic("unipc", eta)
    return _multistep(exact_weights, 2, True, denoise, schedule, initial_noise, times)


SAMPLERS: dict[str, Sampler] = {"ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc}


def get(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
