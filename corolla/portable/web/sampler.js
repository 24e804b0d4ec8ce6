// corolla's samplers in the browser: the schedules, the two time grids, DDIM and DPM-Solver++(2M),
// and a cascade's hand-over (bicubic upsampling, the forward process, the grid below the hand-over),
// written again from corolla/schedules.py, corolla/samplers.py and corolla/portable/upsampling.py
// (the one second copy of that maths: tests/test_web_export.py holds it to Python's images). Times and rates in float64,
// images in Float32Array (B, C, H, W); no DOM here.

const LOG_SNR_LIMIT = 5.0;  // samplers.LOG_SNR_LIMIT
const LINEAR_STEPS = 1000, BETA_MIN = 1e-4, BETA_MAX = 0.02;

// the linear schedule's log(abar) at i / LINEAR_STEPS, as schedules.linear_continuous sums it
const linearLogAbar = (() => {
  const sums = new Float64Array(LINEAR_STEPS + 1);
  for (let i = 1; i <= LINEAR_STEPS; i++) {
    sums[i] = sums[i - 1] + Math.log1p(-(BETA_MIN + (i / LINEAR_STEPS) * (BETA_MAX - BETA_MIN)));
  }
  return sums;
})();

// t -> [noise rate, signal rate]
export const SCHEDULES = {
  offset_cosine(t) {
    const start = Math.acos(0.95), end = Math.acos(0.02);
    const angle = start + t * (end - start);
    return [Math.sin(angle), Math.cos(angle)];
  },
  cosine(t) {
    const angle = t * (Math.PI / 2);
    return [Math.sin(angle), Math.cos(angle)];
  },
  linear(t) {
    const pos = Math.min(Math.max(t, 0), 1) * LINEAR_STEPS;
    const lo = Math.min(Math.floor(pos), LINEAR_STEPS - 1), frac = pos - lo;
    const abar = Math.exp(linearLogAbar[lo] * (1 - frac) + linearLogAbar[lo + 1] * frac);
    return [Math.sqrt(1 - abar), Math.sqrt(abar)];
  },
};

export function logSnr(schedule, t) {
  const [noise, signal] = schedule(t);
  return Math.log(signal) - Math.log(noise);
}

function linspace(start, stop, count) {  // numpy's: start + i * step, the last exactly stop
  const step = (stop - start) / (count - 1);
  const values = Array.from({length: count}, (_, i) => start + i * step);
  if (count > 1) values[count - 1] = stop;
  else values[0] = start;
  return values;
}

function timeAtLogSnr(schedule, lambda) {  // samplers.times_at_log_snr: bisection
  let lo = 0, hi = 1;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (logSnr(schedule, mid) > lambda) lo = mid; else hi = mid;
  }
  return (lo + hi) / 2;
}

const clip = (value) => Math.min(Math.max(value, -LOG_SNR_LIMIT), LOG_SNR_LIMIT);

// samplers.uniform_grid and samplers.log_snr_grid, ending at t = 0: steps + 1 times
export const GRIDS = {
  uniform(steps, schedule) {
    const start = logSnr(schedule, 1) >= -LOG_SNR_LIMIT ? 1 : timeAtLogSnr(schedule, -LOG_SNR_LIMIT);
    return linspace(start, 0, steps + 1);
  },
  logsnr(steps, schedule) {
    const lambdas = linspace(clip(logSnr(schedule, 1)), clip(logSnr(schedule, 0)), steps);
    const times = lambdas.map((lambda) => timeAtLogSnr(schedule, lambda));
    if (Math.abs(logSnr(schedule, 1)) <= LOG_SNR_LIMIT) times[0] = 1;
    if (times.length > 1 && Math.abs(logSnr(schedule, 0)) <= LOG_SNR_LIMIT) times[times.length - 1] = 0;
    return [...times, times[times.length - 1]];
  },
};

// samplers.times_from: the grid's part from `start` down (a cascade's hand-over)
export function timesFrom(times, start) {
  if (start >= 1) return times;
  const below = times.slice(0, -1).filter((t) => t < start - 1e-9);
  return [start, ...below, times[times.length - 1]];
}

// samplers.noised: the forward process at time t (pure noise at t = 1)
export function noised(schedule, images, noise, t) {
  if (t >= 1) return noise;
  const [noiseRate, signalRate] = schedule(t), out = new Float32Array(images.length);
  for (let j = 0; j < images.length; j++) out[j] = signalRate * images[j] + noiseRate * noise[j];
  return out;
}

// corolla.portable.upsampling: torch's bicubic upsampling (Keys' a = -0.75, half-pixel centres,
// indices clamped to the edge), (B, C, small, small) -> (B, C, size, size), clamped to [0, 1]
function bicubicMatrix(small, size) {  // size x small weights, row-major
  const a = -0.75, near = (x) => ((a + 2) * x - (a + 3)) * x * x + 1;
  const far = (x) => ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  const matrix = new Float64Array(size * small);
  for (let j = 0; j < size; j++) {
    const source = (j + 0.5) * small / size - 0.5, first = Math.floor(source), t = source - first;
    const weights = [far(t + 1), near(t), near(1 - t), far(2 - t)];
    for (let k = 0; k < 4; k++) {
      const index = Math.min(Math.max(first - 1 + k, 0), small - 1);
      matrix[j * small + index] += weights[k];
    }
  }
  return matrix;
}

export function upsampleBicubic(images, planes, small, size) {
  const matrix = bicubicMatrix(small, size), out = new Float32Array(planes * size * size);
  const rows = new Float64Array(size * small);  // one plane upsampled along its width
  for (let p = 0; p < planes; p++) {
    const plane = images.subarray(p * small * small, (p + 1) * small * small);
    for (let h = 0; h < small; h++) {
      for (let j = 0; j < size; j++) {
        let sum = 0;
        for (let w = 0; w < small; w++) sum += matrix[j * small + w] * plane[h * small + w];
        rows[h * size + j] = sum;
      }
    }
    for (let i = 0; i < size; i++) {
      for (let j = 0; j < size; j++) {
        let sum = 0;
        for (let h = 0; h < small; h++) sum += matrix[i * small + h] * rows[h * size + j];
        out[p * size * size + i * size + j] = Math.min(Math.max(sum, 0), 1);
      }
    }
  }
  return out;
}

export const SAMPLERS = {ddim, dpmpp_2m: dpmpp2m};
export const DEFAULT_GRID = {ddim: "uniform", dpmpp_2m: "logsnr"};  // samplers.default_grid

// denoise(x, noiseRate, signalRate) -> Promise of [predNoises, predImages];
// onStep(i, predImages) after each evaluation, awaited. Returns the last predicted images.
async function ddim(denoise, schedule, x, times, onStep) {
  let predImages = x;
  for (let i = 0; i + 1 < times.length; i++) {
    const [noise, signal] = schedule(times[i]);
    const [nextNoise, nextSignal] = schedule(times[i + 1]);
    let predNoises;
    [predNoises, predImages] = await denoise(x, noise, signal);
    const next = new Float32Array(x.length);
    for (let j = 0; j < x.length; j++) next[j] = nextSignal * predImages[j] + nextNoise * predNoises[j];
    x = next;
    await onStep(i, predImages);
  }
  return predImages;
}

// DPM-Solver++(2M) as samplers._multistep runs it with dpmpp_2m_weights (order 2, no corrector)
async function dpmpp2m(denoise, schedule, x, times, onStep) {
  const evaluations = times.slice(0, -1), last = evaluations.length - 1;
  const rates = evaluations.map((t) => schedule(t));
  const lambdas = rates.map(([noise, signal]) => Math.log(signal) - Math.log(noise));
  let preds = [];  // predicted images, newest first
  for (let i = 0; i <= last; i++) {
    const [, predImages] = await denoise(x, rates[i][0], rates[i][1]);
    await onStep(i, predImages);
    if (i === last) return predImages;
    preds = [predImages, ...preds].slice(0, 2);
    const used = Math.min(2, i + 1);
    const weights = dpmpp2mWeights(lambdas.slice(i - used + 1, i + 1).reverse(), lambdas[i], lambdas[i + 1]);
    const scale = rates[i + 1][0] / rates[i][0], signal = rates[i + 1][1];
    const next = new Float32Array(x.length);
    for (let j = 0; j < x.length; j++) {
      let mixed = 0;
      for (let k = 0; k < weights.length; k++) mixed += weights[k] * preds[k][j];
      next[j] = scale * x[j] + signal * mixed;
    }
    x = next;
  }
  return x;  // no evaluation: nothing was denoised
}

function dpmpp2mWeights(nodes, lambdaS, lambdaT) {  // samplers.dpmpp_2m_weights
  const h = lambdaT - lambdaS, ddimWeight = -Math.expm1(-h);
  if (nodes.length === 1) return [ddimWeight];
  const r = (lambdaS - nodes[1]) / h;
  return [ddimWeight * (1 + 1 / (2 * r)), -ddimWeight / (2 * r)];
}

// The page's own initial noise (torch's generator would cost too much here): image `index` of
// `seed` from its own xoshiro128** stream, seeded by mixing (seed, index), so that batches and
// counts never change an image; Box-Muller turns pairs of uniforms into unit Gaussians.
function mix32(value) {  // a 32-bit finaliser: nearby inputs give unrelated outputs
  value = Math.imul(value ^ (value >>> 16), 0x7feb352d);
  value = Math.imul(value ^ (value >>> 15), 0x846ca68b);
  return (value ^ (value >>> 16)) >>> 0;
}

function xoshiro128(seed, index) {
  const s = [mix32(seed ^ 0x9e3779b9), mix32(index + 0x85ebca6b), mix32(seed + index * 0x27d4eb2f), mix32(~seed)];
  if (!(s[0] | s[1] | s[2] | s[3])) s[0] = 1;  // the all-zero state never leaves zero
  return () => {
    const result = Math.imul(((Math.imul(s[1], 5) << 7) | (Math.imul(s[1], 5) >>> 25)), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t;
    s[3] = (s[3] << 11) | (s[3] >>> 21);
    return result;
  };
}

// The class of image `index` of `seed` drawn with chances in proportion to `weights` (sampler.json's
// class_mix): one uniform against the cumulative weights, from the stream of image index + 2^31,
// which no image's noise uses (the page makes at most 64), so a drawn class never moves the noise.
export function imageClass(seed, index, weights) {
  const next = xoshiro128(seed >>> 0, (index + 0x80000000) >>> 0);
  const total = weights.reduce((sum, weight) => sum + weight, 0);
  const target = (next() / 4294967296) * total;
  let cumulative = 0;
  for (let c = 0; c < weights.length; c++) {
    cumulative += weights[c];
    if (target < cumulative) return c;
  }
  return weights.findLastIndex((weight) => weight > 0);  // where rounding reached the total
}

export function imageNoise(seed, index, size) {
  const next = xoshiro128(seed >>> 0, index >>> 0);
  const uniform = () => (next() + 0.5) / 4294967296;  // in (0, 1): log never sees 0
  const out = new Float32Array(size);
  for (let i = 0; i < size; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(uniform())), angle = 2 * Math.PI * uniform();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < size) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}
