"""torch's CPU generator in numpy (corolla.portable.noise): the same bits as torch.randn and
torch.rand, for every size rule of torch's kernel, continued draws and corolla's image streams;
and the class a mix draws (corolla.portable.mix), torch.multinomial's."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from corolla import generation
from corolla.portable import mix, noise

# this machine's torch.randn kernel; the other one is checked in a subprocess below
KERNEL = noise.kernel_for_capability(torch.backends.cpu.get_cpu_capability())
# under 16 (float64 Box-Muller with a cached value), 16, not a multiple of 16 (the last 16 drawn
# again), and corolla's image shapes
SHAPES = [(1,), (5,), (15,), (16,), (17,), (3, 4, 4), (2, 3, 7), (31,), (1, 8, 8), (3, 16, 16), (3, 64, 64)]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.int32)


@pytest.mark.parametrize("shape", SHAPES)
def test_randn_has_torchs_bits(shape):
    for seed in [0, 1, 7, 2 ** 32 + 5, 2 ** 63 - 1, *range(100, 140)]:
        expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
        got = noise.TorchGenerator(seed, KERNEL).randn(shape)
        assert got.shape == shape and got.dtype == np.float32
        assert np.array_equal(_bits(got), _bits(expected)), f"seed {seed}"


def test_continued_draws_and_the_cached_value_follow_torch():
    sequence = [(5,), (3, 4, 4), (3,), (17,), (1,), (16,), (7,)]  # odd sizes leave a cached value behind
    for seed in range(20):
        g, mine = torch.Generator().manual_seed(seed), noise.TorchGenerator(seed, KERNEL)
        for shape in sequence:
            assert np.array_equal(_bits(mine.randn(shape)), _bits(torch.randn(shape, generator=g).numpy()))
        assert np.array_equal(mine.uniform(40), torch.rand(40, generator=g).numpy())


def test_doubles_are_torchs_and_exponentials_within_one_rounding():
    for seed in [0, 3, 2 ** 40 + 1]:
        expected = torch.rand(40, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).numpy()
        assert np.array_equal(noise.TorchGenerator(seed).uniform64(40), expected)
        expected = torch.empty(300, dtype=torch.float64).exponential_(generator=torch.Generator().manual_seed(seed))
        got = noise.TorchGenerator(seed).exponential64(300)
        assert np.all(np.abs(got - expected.numpy()) <= np.spacing(expected.numpy()))


def test_a_mix_draws_torch_multinomials_classes_in_proportion_to_its_weights():
    """corolla drew with torch.multinomial before portable.mix: the same seeds keep their classes."""
    flowers = mix.ClassMix(tuple(int(w) for w in np.random.default_rng(0).integers(0, 200, 102)))
    for weights in [(1, 0, 3), flowers.weights]:
        drawn = mix.ClassMix(weights).draw(11, range(1500), len(weights))
        expected = [int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1,
                                          generator=generation.seeded_generator(11, i, mix.CLASS_DRAW)))
                    for i in range(1500)]
        assert drawn == expected
    counts = np.bincount(mix.ClassMix((1, 0, 3)).draw(0, range(4000), 3), minlength=3)
    assert counts[1] == 0 and abs(counts[2] / 4000 - 0.75) < 0.03  # 0.75 +- 4.4 standard deviations
    with pytest.raises(ValueError, match="a mix of 3 class weights for a model of 2 classes"):
        mix.ClassMix((1, 0, 3)).draw(0, range(2), 2)
    with pytest.raises(ValueError, match="none negative, not all 0"):
        mix.ClassMix((1, -1)).draw(0, range(2), 2)


def test_image_streams_are_generations():
    for seed, index in [(0, 0), (0, 1), (1, 0), (123, 45), (2 ** 40, 7)]:
        assert noise.stream_seed(seed, index) == generation.seeded_generator(seed, index).initial_seed()
    shape = (3, 16, 16)
    expected = generation.initial_noise(4, range(3, 9), shape).numpy()
    assert np.array_equal(_bits(noise.initial_noise(4, range(3, 9), shape, KERNEL)), _bits(expected))
    # stochastic steps continue each image's stream past its initial noise
    torch_streams = [generation.seeded_generator(4, i) for i in range(2)]
    streams = [noise.image_generator(4, i, KERNEL) for i in range(2)]
    for _ in range(3):
        assert np.array_equal(_bits(noise.draw_noise(streams, shape)),
                              _bits(generation.draw_noise(torch_streams, shape).numpy()))


def test_the_kernels_differ_by_their_polynomials_rounding_only():
    # avx_mathfun's polynomials against the C library: a third of the values differ, by < 1e-5
    a = noise.TorchGenerator(3, "avx2").randn((3, 64, 64))
    b = noise.TorchGenerator(3, "default").randn((3, 64, 64))
    assert 0 < (a != b).mean() < 0.5 and np.abs(a - b).max() < 1e-5


def test_fused_multiply_add_rounds_once():
    a = np.float32(1 + 2 ** -12)  # a * a = 1 + 2^-11 + 2^-24: halfway between two float32
    assert noise._fma(a, a, np.float32(2 ** -70)) == np.float32(1 + 2 ** -11 + 2 ** -23)  # just above: up
    assert noise._fma(a, a, np.float32(-2 ** -70)) == np.float32(1 + 2 ** -11)  # just below: down
    assert noise._fma(np.float32(3), np.float32(5), np.float32(0.25)) == np.float32(15.25)


def test_an_unknown_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="avx2, default"):
        noise.TorchGenerator(0, "sse")


@pytest.mark.slow  # starts a subprocess
@pytest.mark.skipif(KERNEL != "avx2", reason="torch already runs its default kernel here (tested above)")
def test_the_default_kernel_is_torchs_without_avx2(tmp_path, monkeypatch):
    # ATEN_CPU_CAPABILITY=default makes torch use the kernel of machines without AVX2 (ARM, ...)
    out = tmp_path / "randn.npy"
    script = f"""
        import numpy as np, torch
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        np.save({str(out)!r}, np.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(s)).numpy()
                                        for s in range(20)]))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    assert done.returncode == 0, done.stderr
    draw = lambda: np.stack([noise.TorchGenerator(s, "default").randn((3, 32, 32)) for s in range(20)])
    if noise._libm() is not None:
        assert np.array_equal(_bits(draw()), _bits(np.load(out)))  # the C library torch calls: the same bits
    # without a C library to call, float64 results rounded: a few values differ, in the last bits
    monkeypatch.setattr(noise, "_libm", lambda: None)
    rounded, expected = draw(), np.load(out)
    assert (rounded != expected).mean() < 0.05 and np.abs(rounded - expected).max() < 1e-6
