"""torch's CPU random numbers in numpy, so that sampling without PyTorch starts from the same noise.

corolla draws image i of a seed from torch.randn(shape, generator=g), g a CPU torch.Generator
seeded from (seed, i) (corolla.generation.seeded_generator). TorchGenerator reproduces that
generator and its draws:

- the engine: torch's CPU generator is the 32-bit Mersenne Twister (mt19937) seeded with the low
  32 bits of the seed by the standard initialisation, the one numpy's legacy RandomState uses,
  whose full-range 32-bit integers are the engine's raw outputs.
- uniform floats: the low 24 bits of one output, times 2^-24.
- torch.randn of a float32 tensor of 16 or more elements ("normal_fill"): one uniform per
  element first, then Box-Muller over blocks of 16 (radius from the first 8, angle from the last
  8: cos into the first half, sin into the second); when the size is not a multiple of 16, 16
  more uniforms make the last 16 elements again. Under 16 elements, each element is a float64
  Box-Muller draw from 53-bit uniforms, whose second value the generator keeps for its next call.

The transcendental functions are where machines differ. On x86-64 with AVX2 (AVX-512 machines
too: torch does not dispatch this kernel to AVX-512), torch computes log, sin and cos with the
float32 polynomials of avx_mathfun (Cephes' coefficients), which the compiler turns into fused
multiply-adds: the "avx2" kernel repeats that arithmetic operation by operation, with exact
fused multiply-adds, and equals torch bit for bit. Elsewhere (ARM, or ATEN_CPU_CAPABILITY=default)
torch calls the C library's logf, cosf and sinf: the "default" kernel calls them too (ctypes),
bit for bit where torch uses the same C library, and otherwise rounds float64 results (within 2
units in the last place).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Sequence

import numpy as np

KERNELS = ("avx2", "default")
BLOCK = 16  # torch's Box-Muller block
F32 = np.float32


def kernel_for_capability(capability: str) -> str:
    """The kernel torch.randn runs at torch.backends.cpu.get_cpu_capability() `capability`."""
    return "avx2" if capability.upper() in ("AVX2", "AVX512") else "default"


def stream_seed(*keys: int) -> int:
    """The seed of the random stream of `keys` (image i of a seed: (seed, i); a training step's
    micro-batch: (seed, step, slot)): numpy's SeedSequence mixes them, so that nearby seeds and
    indices do not collide as seed + index would. corolla.generation.seeded_generator's too."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]
    return int(state) & (2 ** 63 - 1)


class TorchGenerator:
    """torch.Generator().manual_seed(seed) on the CPU, drawing with randn as torch.randn does."""

    def __init__(self, seed: int, kernel: str = "avx2"):
        if kernel not in KERNELS:
            raise ValueError(f"unknown noise kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self._engine = np.random.RandomState(seed & 0xFFFFFFFF)  # mt19937, standard seeding
        self._next_normal: float | None = None  # the float64 path's second Box-Muller value

    def _uint32(self, count: int) -> np.ndarray:
        return self._engine.randint(0, 2 ** 32, size=count, dtype=np.uint32)

    def uniform(self, count: int) -> np.ndarray:
        """`count` float32 uniforms in [0, 1), as torch.rand."""
        return (self._uint32(count) & 0xFFFFFF).astype(F32) * F32(2.0 ** -24)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """The next float32 unit Gaussians of this generator, as torch.randn(shape, generator=g)."""
        count = math.prod(shape)
        if count < BLOCK:
            return np.array([self._normal64() for _ in range(count)], dtype=F32).reshape(shape)
        box_muller = _box_muller_avx2 if self.kernel == "avx2" else _box_muller_libm
        out = np.empty(count, dtype=F32)
        whole = count - count % BLOCK
        out[:whole] = box_muller(self.uniform(count)[:whole].reshape(-1, BLOCK)).ravel()
        if whole < count:  # the last 16 drawn again, over the tail and the end of the last block
            out[-BLOCK:] = box_muller(self.uniform(BLOCK).reshape(1, BLOCK)).ravel()
        return out.reshape(shape)

    def uniform64(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in [0, 1), as torch's doubles: 53 bits of two outputs (the first high)."""
        raw = self._uint32(2 * count).astype(np.uint64)
        bits = (raw[0::2] << np.uint64(32) | raw[1::2]) & np.uint64(2 ** 53 - 1)
        return bits.astype(np.float64) * 2.0 ** -53

    def exponential64(self, count: int) -> np.ndarray:
        """`count` float64 Exp(1) draws, as torch.empty(count, dtype=torch.float64).exponential_():
        -log1p(-u) of uniform64's u, where torch's vectorised log1p may round to the neighbouring
        double (1 in 14 values, never further)."""
        return -np.log1p(-self.uniform64(count))

    def _normal64(self) -> float:
        """torch's at::normal_distribution<double>: two 53-bit uniforms per pair of values."""
        if self._next_normal is not None:
            value, self._next_normal = self._next_normal, None
            return value
        u1, u2 = (float(u) for u in self.uniform64(2))
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_normal = radius * math.sin(theta)
        return radius * math.cos(theta)


def image_generator(seed: int, index: int, kernel: str = "avx2") -> TorchGenerator:
    """corolla.generation.seeded_generator(seed, index) without torch: image `index`'s stream of
    `seed`."""
    return TorchGenerator(stream_seed(seed, index), kernel)


def draw_noise(generators: list[TorchGenerator], shape: tuple[int, ...]) -> np.ndarray:
    """The next draw of each image's stream, stacked -> (len(generators), *shape) float32."""
    return np.stack([g.randn(shape) for g in generators])


def initial_noise(seed: int, indices: Sequence[int], shape: tuple[int, int, int], kernel: str = "avx2") -> np.ndarray:
    """(len(indices), C, H, W): the starting noise of images `indices`, as corolla.generation.initial_noise."""
    return draw_noise([image_generator(seed, i, kernel) for i in indices], shape)


# --- Box-Muller over blocks of 16 uniforms: (N, 16) -> (N, 16) ---------------------------------

def _box_muller_libm(u: np.ndarray) -> np.ndarray:
    """torch's scalar normal_fill_16: float32 arithmetic around the C library's logf, cosf, sinf."""
    log, cos, sin = _libm() or _ROUNDED
    radius = np.sqrt(F32(-2) * log(F32(1) - u[:, :8]))
    theta = (2.0 * math.pi * u[:, 8:].astype(np.float64)).astype(F32)  # 2 pi in double, as torch
    return np.concatenate([radius * cos(theta), radius * sin(theta)], axis=1) + F32(0)


# float64 results rounded to float32: within a unit in the last place of any C library's
_ROUNDED = tuple(lambda x, f=f: f(x.astype(np.float64)).astype(F32) for f in (np.log, np.cos, np.sin))


@functools.cache
def _libm():
    """(logf, cosf, sinf) of the C library, vectorised; None where it cannot be found."""
    path = ctypes.util.find_library("m")
    if path is None:
        return None
    library = ctypes.CDLL(path)

    def vectorised(name: str):
        function = getattr(library, name)
        function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
        each = np.frompyfunc(function, 1, 1)
        return lambda x: each(x).astype(F32)
    return tuple(vectorised(name) for name in ("logf", "cosf", "sinf"))


def _box_muller_avx2(u: np.ndarray) -> np.ndarray:
    """torch's normal_fill_16_AVX2: radius sqrt(-2 log(1 - u[:8])), angle 2 pi u[8:], in avx_mathfun's
    float32 arithmetic."""
    radius = np.sqrt(F32(-2) * _log_avx2(F32(1) - u[:, :8]))
    sin, cos = _sincos_avx2(F32(2 * math.pi) * u[:, 8:])
    return np.concatenate([radius * cos, radius * sin], axis=1) + F32(0)  # torch adds the mean 0: no -0


def _fma(a: np.ndarray, b, c) -> np.ndarray:
    """float32 a * b + c with one rounding, as the FMA instruction: the product is exact in
    float64; the sum's float64 rounding is corrected where it would round twice (a float32 tie)."""
    product = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    total = product + c
    # the exact error of the float64 sum (Knuth's TwoSum)
    c_part = total - product
    error = (product - (total - c_part)) + (c - c_part)
    tie = (total.view(np.int64) & (2 ** 29 - 1)) == 2 ** 28  # halfway between two float32
    nudged = np.nextafter(total, np.where(error > 0, np.inf, -np.inf))
    return np.where(tie & (error != 0), nudged, total).astype(F32)


# Cephes' single-precision coefficients, as avx_mathfun has them
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_LOG_Q1, _LOG_Q2 = F32(-2.12194440e-4), F32(0.693359375)  # ln 2 split in two
_SQRT_HALF = F32(0.707106781186547524)
_FOUR_OVER_PI = F32(1.27323954473516)
_PI_OVER_4 = (F32(-0.78515625), F32(-2.4187564849853515625e-4), F32(-3.77489497744594108e-8))  # minus, in 3 parts
_SIN_P = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_COS_P = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)


def _log_avx2(x: np.ndarray) -> np.ndarray:
    """avx_mathfun's log256_ps for x in (0, 1]: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
    log(m) by a degree-9 polynomial in m - 1 (Horner's steps fused), plus e ln 2 in two parts."""
    bits = x.view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(F32) + F32(1)
    m = ((bits & ~0x7F800000) | np.array(0.5, F32).view(np.int32)).view(F32)  # in [0.5, 1)
    small = m < _SQRT_HALF
    e = e - np.where(small, F32(1), F32(0))
    m = (m - F32(1)) + np.where(small, m, F32(0))  # 2m - 1 below sqrt(1/2), m - 1 above
    z = m * m
    y = np.full_like(m, F32(_LOG_P[0]))
    for p in _LOG_P[1:]:
        y = _fma(y, m, F32(p))
    y = _fma(y * m, z, e * _LOG_Q1)
    y = _fma(z, F32(-0.5), y)
    return _fma(e, _LOG_Q2, m + y)


def _sincos_avx2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """avx_mathfun's sincos256_ps for x >= 0: reduce by multiples j of pi/4 (j even, pi/4 in three
    parts), then a sine and a cosine polynomial on [-pi/4, pi/4], swapped and signed by j."""
    j = (x * _FOUR_OVER_PI).astype(np.int32)  # truncation, as cvttps
    j = (j + 1) & ~1
    y = j.astype(F32)
    for part in _PI_OVER_4:
        x = _fma(y, part, x)
    z = x * x
    cos = _fma(_fma(np.full_like(z, F32(_COS_P[0])), z, F32(_COS_P[1])), z, F32(_COS_P[2])) * z
    cos = _fma(cos, z, -(z * F32(0.5))) + F32(1)
    sin = _fma(_fma(np.full_like(z, F32(_SIN_P[0])), z, F32(_SIN_P[1])), z, F32(_SIN_P[2])) * z
    sin = _fma(sin, x, x)
    swap = (j & 2) != 0
    sin_negative = (j & 4) != 0
    cos_negative = ((j - 2) & 4) == 0
    sin, cos = np.where(swap, cos, sin), np.where(swap, sin, cos)
    return np.where(sin_negative, -sin, sin), np.where(cos_negative, -cos, cos)
