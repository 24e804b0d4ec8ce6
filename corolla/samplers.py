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
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .diffusion import Denoiser
from .schedules import Schedule

NoiseFn = Callable[[], torch.Tensor]
Sampler = Callable[..., torch.Tensor]
Grid = Callable[[int, Schedule, float], torch.Tensor]


def uniform_times(steps: int, end: float = 0.0) -> torch.Tensor:
    """The reference grid: t_s = 1 - s / steps for s = 0..steps (from 1 down to `end`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, end, steps + 1, dtype=torch.float64)


def _rates(schedule: Schedule, t: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise_rate, signal_rate = schedule(torch.full((like.shape[0], 1, 1, 1), float(t), dtype=like.dtype,
                                                  device=like.device))
    return noise_rate, signal_rate


def ddim_step(denoise: Denoiser, schedule: Schedule, x: torch.Tensor, t: float, t_next: float,
              eta: float = 0.0, noise_fn: NoiseFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from time t to t_next -> (x at t_next, predicted image at t). With eta = 0
    it also runs backwards in time (t_next > t), which is DDIM inversion (corolla.editing)."""
    noise_rates, signal_rates = _rates(schedule, t, x)
    pred_noises, pred_images = denoise(x, noise_rates, signal_rates)
    next_noise_rates, next_signal_rates = _rates(schedule, t_next, x)
    if eta > 0:
        sigma = eta * (next_noise_rates / noise_rates) * torch.sqrt(
            (1 - (signal_rates / next_signal_rates) ** 2).clamp_min(0))
        sigma = torch.minimum(sigma, next_noise_rates)
        direction = torch.sqrt(next_noise_rates ** 2 - sigma ** 2)
        return next_signal_rates * pred_images + direction * pred_noises + sigma * noise_fn(), pred_images
    return next_signal_rates * pred_images + next_noise_rates * pred_noises, pred_images


def ddim(denoise: Denoiser, schedule: Schedule, initial_noise: torch.Tensor, times: torch.Tensor,
         eta: float = 0.0, noise_fn: NoiseFn | None = None) -> torch.Tensor:
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


def slerp(a: torch.Tensor, b: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """The reference's spherical interpolation of two noises, a sin(pi/2 w) + b cos(pi/2 w).

    Since sin^2 + cos^2 = 1, the mix of two independent unit Gaussians is a unit Gaussian for
    every w. Returns (len(weights), *a.shape): w = 0 gives b, w = 1 gives a."""
    w = torch.tensor(list(weights), dtype=a.dtype, device=a.device).view(-1, *([1] * a.dim()))
    return a.unsqueeze(0) * torch.sin(math.pi / 2 * w) + b.unsqueeze(0) * torch.cos(math.pi / 2 * w)




# --- log-SNR time and grids --------------------------------------------------------------------

# Grids clip the log-SNR to +-5 (a signal or noise rate of 0.0067) so that schedules reaching
# noise 0 or signal 0 get finite grids; the offset cosine spans lambda in [-3.9, 1.1], untouched.
LOG_SNR_LIMIT = 5.0
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


def log_snr(schedule: Schedule, times: torch.Tensor | float) -> torch.Tensor:
    """lambda = log(signal_rate / noise_rate) at `times`, in float64; it falls as t grows."""
    noise_rates, signal_rates = schedule(torch.as_tensor(times, dtype=torch.float64))
    return torch.log(signal_rates) - torch.log(noise_rates)


def times_at_log_snr(schedule: Schedule, lambdas: torch.Tensor) -> torch.Tensor:
    """The times in [0, 1] where the schedule's log-SNR equals `lambdas`, by bisection (works for
    any schedule whose log-SNR falls with t; none here needs its own inverse)."""
    lo = torch.zeros_like(lambdas, dtype=torch.float64)
    hi = torch.ones_like(lo)
    for _ in range(60):  # 2^-60: below float64 resolution near 1
        mid = (lo + hi) / 2
        early = log_snr(schedule, mid) > lambdas  # still less noise than wanted: t lies later
        lo, hi = torch.where(early, mid, lo), torch.where(early, hi, mid)
    return (lo + hi) / 2


def _grid_from_log_snrs(schedule: Schedule, lambdas: torch.Tensor, end: float) -> torch.Tensor:
    """Evaluation times at `lambdas` (first and last snapped to 1 and `end` unless clipped), with
    `end` repeated as the discarded final remix point (module docstring)."""
    times = times_at_log_snr(schedule, lambdas)
    if abs(log_snr(schedule, 1.0).item()) <= LOG_SNR_LIMIT:
        times[0] = 1.0
    if len(times) > 1 and abs(log_snr(schedule, end).item()) <= LOG_SNR_LIMIT:
        times[-1] = end
    return torch.cat([times, times[-1:]])


def _log_snr_span(schedule: Schedule, end: float) -> tuple[float, float]:
    first, last = log_snr(schedule, torch.tensor([1.0, end])).clamp(-LOG_SNR_LIMIT, LOG_SNR_LIMIT).tolist()
    return first, last


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def uniform_grid(steps: int, schedule: Schedule, end: float = 0.0) -> torch.Tensor:
    """The reference's grid (uniform_times); its last evaluation is at t = 1/steps.

    It starts where the log-SNR and Karras grids start: at t = 1 unless the log-SNR there is below
    -LOG_SNR_LIMIT, else at the time where it reaches the limit, spaced uniformly from there. The
    cosine's signal rate is 0 at t = 1 (-4.4e-8 in float32), where dividing by it amplifies the
    network's error 10**7 times; it starts at t = 0.9957. The offset cosine (lambda = -3.9 at t = 1)
    keeps the reference's grid exactly."""
    _check_steps(steps)
    if log_snr(schedule, 1.0).item() >= -LOG_SNR_LIMIT:
        return uniform_times(steps, end)
    start = times_at_log_snr(schedule, torch.tensor(-LOG_SNR_LIMIT, dtype=torch.float64)).item()
    return torch.linspace(start, end, steps + 1, dtype=torch.float64)


def log_snr_grid(steps: int, schedule: Schedule, end: float = 0.0) -> torch.Tensor:
    """`steps` evaluations equally spaced in lambda from t = 1 to t = end, the last one at end.
    Equal steps in lambda are what the exponential integrators' error terms (powers of h) favour
    (one of the step spacings of Lu et al. 2022, DPM-Solver)."""
    _check_steps(steps)
    first, last = _log_snr_span(schedule, end)
    return _grid_from_log_snrs(schedule, torch.linspace(first, last, steps, dtype=torch.float64), end)


def karras_grid(steps: int, schedule: Schedule, end: float = 0.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5) on sigma = noise / signal = e^-lambda: sigma^(1/rho) equally
    spaced from t = 1 to t = end, which crowds the evaluations at low noise."""
    _check_steps(steps)
    first, last = _log_snr_span(schedule, end)
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    inv_rho = 1.0 / KARRAS_RHO
    sigmas = (math.exp(-first * inv_rho) + ramp * (math.exp(-last * inv_rho) - math.exp(-first * inv_rho))) ** KARRAS_RHO
    lambdas = -torch.log(sigmas)
    lambdas[0], lambdas[-1] = first, last  # exact ends despite rounding of the power
    return _grid_from_log_snrs(schedule, lambdas, end)


GRIDS: dict[str, Grid] = {"uniform": uniform_grid, "logsnr": log_snr_grid, "karras": karras_grid}


def get_grid(name: str, steps: int, schedule: Schedule, end: float = 0.0) -> torch.Tensor:
    """The named grid of `steps` network evaluations for `schedule` -> (steps + 1,) float64 times."""
    try:
        grid = GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}") from None
    return grid(steps, schedule, end)


# --- multistep solvers in lambda ---------------------------------------------------------------

# A weight rule turns the log-SNRs of the predictions a step may use (newest first; the first is
# lambda_s when predicting, lambda_t when correcting) and the step's (lambda_s, lambda_t) into
# weights w_j: x_t = (n_t / n_s) x_s + a_t * sum_j w_j D_j.
WeightRule = Callable[[list[float], float, float], list[float]]

# Below this many evaluations the last steps use no more predictions than steps remain, as
# DPM-Solver++ does ("lower order final", Lu et al. 2022): with few, long steps the highest-order
# extrapolation overshoots. On the demo checkpoint it cut dpmpp_2m's error at 5 steps by a third.
LOWER_ORDER_FINAL_BELOW = 15


def _phi(k: int, h: float) -> float:
    """phi_k(-h) = integral_0^1 e^(-h (1 - u)) u^(k-1) / (k-1)! du, so that
    integral_0^h e^(-(h - v)) v^i dv = i! h^(i+1) phi_(i+1)(-h) (exponential integrators)."""
    if abs(h) < 0.5:  # the series: the closed form cancels catastrophically for small h
        return sum((-h) ** j / math.factorial(j + k) for j in range(25))
    phi = math.exp(-h)  # phi_0, then phi_(j+1)(z) = (phi_j(z) - 1/j!) / z
    for j in range(k):
        phi = (phi - 1.0 / math.factorial(j)) / (-h)
    return phi


def exact_weights(nodes: list[float], lambda_s: float, lambda_t: float) -> list[float]:
    """Integrate exactly the polynomial through the predictions at `nodes`: in u = (lambda -
    lambda_s) / h, P(u) = sum_i c_i u^i and the step's integral is a_t * sum_i c_i i! h phi_(i+1)(-h);
    with c = V^-1 D (V_ji = u_j^i) the weights are w = V^-T m. Order len(nodes) per step."""
    h = lambda_t - lambda_s
    u = torch.tensor([(node - lambda_s) / h for node in nodes], dtype=torch.float64)
    vandermonde = u[:, None] ** torch.arange(len(nodes), dtype=torch.float64)[None, :]
    moments = torch.tensor([math.factorial(i) * h * _phi(i + 1, h) for i in range(len(nodes))],
                           dtype=torch.float64)
    return torch.linalg.solve(vandermonde.T, moments).tolist()


def dpmpp_2m_weights(nodes: list[float], lambda_s: float, lambda_t: float) -> list[float]:
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
               initial_noise: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Evaluate at times[:-1]; between evaluations step with the last `order` predictions
    (fewer at the start, and at the end below LOWER_ORDER_FINAL_BELOW evaluations); with
    `correct`, redo each step once its end's prediction is known (UniC: one order more at no
    extra evaluation). Returns the last prediction."""
    evaluation_times = times[:-1].tolist()
    last = len(evaluation_times) - 1
    noise64, signal64 = schedule(times[:-1].to(torch.float64))
    noise, signal = noise64.tolist(), signal64.tolist()
    lambdas = (torch.log(signal64) - torch.log(noise64)).tolist()

    def step(x: torch.Tensor, s: int, t: int, nodes: list[int], preds: list[torch.Tensor]) -> torch.Tensor:
        weights = rule([lambdas[j] for j in nodes], lambdas[s], lambdas[t])
        return (noise[t] / noise[s]) * x + signal[t] * sum(w * d for w, d in zip(weights, preds))

    x = initial_noise
    start = x  # where the step that led to x began (for the corrector)
    preds: list[torch.Tensor] = []  # predicted images, newest first
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
        if len(evaluation_times) < LOWER_ORDER_FINAL_BELOW:
            used = min(used, last - i)
        x = step(x, i, i + 1, list(range(i, i - used, -1)), preds[:used])
    return x  # an empty evaluation grid: nothing was denoised


def dpmpp_2m(denoise: Denoiser, schedule: Schedule, initial_noise: torch.Tensor, times: torch.Tensor,
             eta: float = 0.0, noise_fn: NoiseFn | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022: second order, one evaluation per step."""
    _require_deterministic("dpmpp_2m", eta)
    return _multistep(dpmpp_2m_weights, 2, False, denoise, schedule, initial_noise, times)


def dpmpp_3m(denoise: Denoiser, schedule: Schedule, initial_noise: torch.Tensor, times: torch.Tensor,
             eta: float = 0.0, noise_fn: NoiseFn | None = None) -> torch.Tensor:
    """Third-order multistep in the manner of DPM-Solver++(3M): the quadratic through the last
    three predictions, integrated exactly (exponential Adams-Bashforth in lambda)."""
    _require_deterministic("dpmpp_3m", eta)
    return _multistep(exact_weights, 3, False, denoise, schedule, initial_noise, times)


def unipc(denoise: Denoiser, schedule: Schedule, initial_noise: torch.Tensor, times: torch.Tensor,
          eta: float = 0.0, noise_fn: NoiseFn | None = None) -> torch.Tensor:
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
