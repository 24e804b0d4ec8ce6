"""Metric arithmetic against torchmetrics and closed forms; the Inception network's shapes and
loading; the evaluator and `corolla evaluate` end to end on tiny models."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
from conftest import load_script
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from corolla import cascade, inception, metrics, samplers
from corolla import config as configs
from corolla.cli import main
from corolla.data import imagefolder
from corolla.diffusion import DiffusionModel
from corolla.generation import SamplingSettings, generate, seeded_generator
from corolla.metrics.evaluation import quantise
from corolla.storage import checkpoint


@pytest.fixture(autouse=True)
def no_inception_weights(monkeypatch):
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)


class SmallFeatures(nn.Module):
    """A fixed random conv net: uint8 images -> 12 features (torchmetrics' custom `feature`)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 12, 3, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images):
        return self.net(images.float() / 255.0)


def random_images(n, seed, size=16, low=0, high=256):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, size), generator=generator, dtype=torch.uint8)


@pytest.fixture(scope="module")
def flowers16():
    images, _ = imagefolder.load_folder(imagefolder.bundled_dir(), 16, use_cache=False)
    return images


# --- FID ------------------------------------------------------------------------------------

def test_fid_matches_torchmetrics_on_identical_features():
    net = SmallFeatures().eval()
    real, fake = random_images(40, 0), random_images(30, 1, high=200)
    reference = FrechetInceptionDistance(feature=net, input_img_size=(3, 16, 16))
    reference.update(real, real=True)
    reference.update(fake, real=False)
    with torch.no_grad():
        ours = metrics.fid(net(real), net(fake))
    assert ours > 1e-3
    assert ours == pytest.approx(float(reference.compute()), rel=1e-4)


def test_frechet_distance_closed_forms():
    # diagonal covariances: Tr(a + b - 2 sqrt(ab)) = sum (sqrt a - sqrt b)^2
    a, b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    mean1, mean2 = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    expected = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert metrics.frechet_distance(mean1, torch.diag(a), mean2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    # full covariances: against scipy's sqrtm of the product, as pytorch-fid computes it
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov1, cov2 = x @ x.T + 0.1 * torch.eye(6, dtype=torch.float64), y @ y.T
    sqrt_product = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = float(np.trace(cov1.numpy() + cov2.numpy() - 2 * sqrt_product))
    same_mean = mean1[:1].repeat(6)
    assert metrics.frechet_distance(same_mean, cov1, same_mean, cov2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_even_when_rank_deficient():
    g = torch.Generator().manual_seed(4)
    for n, d in [(200, 8), (10, 64)]:  # the second: fewer images than features, as FID on small sets
        f = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1
        scale = float(metrics.feature_statistics(f)[1].trace())
        assert abs(metrics.fid(f, f)) < 1e-9 * scale
        stats = metrics.feature_statistics(f)
        assert abs(metrics.frechet_distance(*stats, *stats)) < 1e-9 * scale
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid(f[:1], f)


def test_fid_small_set_route_equals_the_covariance_route():
    g = torch.Generator().manual_seed(12)
    real = torch.randn(30, 40, generator=g, dtype=torch.float64)
    fake = torch.randn(20, 40, generator=g, dtype=torch.float64) * 1.5 + 0.3  # 30 x 20 < 40 x 40: small route
    expected = metrics.frechet_distance(*metrics.feature_statistics(real), *metrics.feature_statistics(fake))
    assert expected > 10
    assert metrics.fid(real, fake) == pytest.approx(expected, rel=1e-9)


# --- KID ------------------------------------------------------------------------------------

def test_kid_matches_torchmetrics_on_identical_features_and_subsets():
    net = SmallFeatures().eval()
    real, fake = random_images(40, 0), random_images(30, 1, high=200)
    reference = KernelInceptionDistance(feature=net, subsets=7, subset_size=20)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    torch.manual_seed(11)  # torchmetrics draws its subsets from the global generator, in our order
    mean_ref, std_ref = reference.compute()
    with torch.no_grad():
        mean, std, size = metrics.kid(net(real), net(fake), subsets=7, subset_size=20, seed=11)
    assert size == 20 and mean > 0 and std > 0
    assert mean == pytest.approx(float(mean_ref), rel=1e-4)
    assert std == pytest.approx(float(std_ref), rel=1e-3)


def test_kid_of_one_distribution_is_about_zero_and_subsets_clip():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64)
    y = torch.randn(300, 16, generator=g, dtype=torch.float64) * 1.3 + 0.2
    x_again = torch.randn(300, 16, generator=g, dtype=torch.float64)
    between, _, _ = metrics.kid(x, y, subsets=20, subset_size=100)
    within, _, _ = metrics.kid(x, x_again, subsets=20, subset_size=100)
    assert between > 0.1
    assert abs(within) < 0.05 * between
    # a set against itself: every clipped subset is the whole set, and the unbiased estimate is
    # exactly -(2/n)(mean k(x_i, x_i) - mean k(x_i, x_j)), which vanishes as 1/n
    same, std, size = metrics.kid(x, x, subsets=5, subset_size=1000)
    assert size == 300 and std < 1e-12
    k = metrics.polynomial_kernel(x, x)
    off_diagonal = (k.sum() - k.diagonal().sum()) / (300 * 299)
    assert same == pytest.approx(float(-(2 / 300) * (k.diagonal().mean() - off_diagonal)), rel=1e-9)
    assert abs(same) < 0.25 * between


def test_mmd2_unbiased_against_its_definition():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert float(metrics.mmd2_unbiased(x, y)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


# --- SWD ------------------------------------------------------------------------------------

def test_pyramid_steps_match_mirrored_convolution():
    x = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    kernel = metrics.GAUSSIAN_5X5.double().numpy()[None, None]
    down = scipy.ndimage.convolve(x.numpy(), kernel, mode="mirror")[:, :, ::2, ::2]
    assert torch.allclose(metrics.pyramid_down(x), torch.from_numpy(down), atol=1e-12)
    spread = np.zeros((2, 3, 32, 24))
    spread[:, :, ::2, ::2] = x.numpy()
    up = scipy.ndimage.convolve(spread, 4 * kernel, mode="mirror")
    assert torch.allclose(metrics.pyramid_up(x), torch.from_numpy(up), atol=1e-12)


def test_laplacian_pyramid_reconstructs_the_image():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    levels = metrics.laplacian_pyramid(x, 3)
    assert [level.shape[-1] for level in levels] == [32, 16, 8]
    rebuilt = levels[2]
    for finer in (levels[1], levels[0]):
        rebuilt = finer + metrics.pyramid_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-12)
    assert metrics.swd_resolutions(64) == [64, 32, 16]
    assert metrics.swd_resolutions(16) == [16] and metrics.swd_resolutions(8) == [8]


def test_sliced_wasserstein_of_a_shifted_cloud():
    # every direction u sees the shift c as u.c: the mean of |u.c| over random unit directions
    # in D dimensions is |c| * Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2))
    g = torch.Generator().manual_seed(9)
    a = torch.randn(500, 20, generator=g)
    shift = torch.full((20,), 0.5)
    assert metrics.sliced_wasserstein_1d(a, a, g) == 0.0
    expected = float(shift.norm()) * math.exp(math.lgamma(10) - math.lgamma(10.5)) / math.sqrt(math.pi)
    assert metrics.sliced_wasserstein_1d(a, a + shift, g) == pytest.approx(expected, rel=0.06)


def test_swd_ranks_real_above_blurred_and_noise(flowers16):
    half_a, half_b = flowers16[0::2], flowers16[1::2]  # 153 each, every species in both
    real = metrics.sliced_wasserstein(half_a, half_b)
    assert set(real) == {16}
    blurred = metrics.pyramid_up(metrics.pyramid_down(half_b.double())).round().clamp(0, 255).to(torch.uint8)
    swd_blurred = metrics.sliced_wasserstein(half_a, blurred)[16]
    assert real[16] < 0.5 * swd_blurred
    assert swd_blurred < metrics.sliced_wasserstein(half_a, random_images(half_a.shape[0], 10))[16]
    assert metrics.sliced_wasserstein(half_a, half_b) == real  # seeded: the same images, the same value


def test_fine_detail_and_the_gaussian_blur_against_closed_forms_and_scipy(flowers16):
    images = flowers16[:4].double() / 255
    local = scipy.ndimage.uniform_filter(images.numpy(), (1, 1, 3, 3), mode="nearest")  # edge pixels replicated
    assert metrics.fine_detail(images) == pytest.approx(float(np.std(images.numpy() - local, ddof=1)), rel=1e-9)
    assert metrics.fine_detail(torch.full((2, 3, 8, 8), 0.3)) == 0.0
    # radius int(3 sigma + 0.5) = 4 pixels, borders mirrored without repeating the edge
    expected = scipy.ndimage.gaussian_filter(images.numpy(), (0, 0, 1.2, 1.2), mode="mirror", truncate=4 / 1.2)
    assert np.abs(metrics.gaussian_blur(images, 1.2).numpy() - expected).max() < 1e-12
    assert metrics.gaussian_blur(images, 0) is images


def test_blur_to_fine_detail_hits_the_target_and_leaves_smoother_images_alone(flowers16):
    images = flowers16.float() / 255
    target = 0.6 * metrics.fine_detail(images)
    blurred, sigma = metrics.blur_to_fine_detail(images, target)
    assert sigma > 0 and metrics.fine_detail(blurred) == pytest.approx(target, rel=1e-3)
    assert metrics.blur_to_fine_detail(blurred, 2 * target) == (blurred, 0.0)


def test_the_trajectory_follows_each_evaluation_of_sampling(flowers16, monkeypatch):
    """benchmarks/image_statistics.py --trajectory: one row per network evaluation at the sampler's
    noise rates; the last prediction is the sampled image; a network that knew the photos would
    restore their fine detail in both columns at every step."""
    bench, model = load_script("benchmarks", "image_statistics.py"), tiny_model(flowers16)
    photos, settings = flowers16[:4].float() / 255, SamplingSettings(steps=3, seed=1)
    rows, images = bench.trajectory(model, photos, settings, 16)
    noise_rates, _ = model.schedule(samplers.uniform_times(3))
    assert [row["noise_rate"] for row in rows] == pytest.approx(noise_rates[:3].tolist())
    assert torch.equal(images, generate(model, 4, settings, image_size=16))
    assert rows[-1]["sampled"] == pytest.approx(metrics.fine_detail(images))
    clean = model.normalizer.normalize(photos)
    monkeypatch.setattr(model, "denoise", lambda noisy, noise_rates, signal_rates, **_: (
        (noisy - signal_rates * clean) / noise_rates, clean))
    for row in bench.trajectory(model, photos, settings, 16)[0]:
        assert row["sampled"] == pytest.approx(metrics.fine_detail(photos), rel=1e-5)
        assert row["photos"] == pytest.approx(metrics.fine_detail(photos), rel=1e-5)


@pytest.fixture(scope="module")
def flowers32():
    images, _ = imagefolder.load_folder(imagefolder.bundled_dir(), 32, use_cache=False)
    return images[:64]


def test_the_coarse_structure_report_separates_colour_from_layout(flowers32):
    """benchmarks/coarse_structure.py: the photos against themselves score the sampling floor, and
    their patches' variances ratios of 1; a colour curve (each channel squared, a monotone map) is
    undone by matching histograms, back to that floor; a blur takes the patches' curvature away."""
    bench = load_script("benchmarks", "coarse_structure.py")
    squared = ((flowers32.float() / 255) ** 2 * 255).round().to(torch.uint8)
    blurred = torch.nn.functional.avg_pool2d(flowers32.float(), 5, 1, 2, count_include_pad=False)
    result = bench.report(flowers32, {"same": flowers32.clone(), "squared": squared,
                                      "blurred": blurred.round().to(torch.uint8)}, seed=0)
    same, curve, blur = (result["sets"][name] for name in ("same", "squared", "blurred"))
    floor = same["coarse"]["all"]
    assert same["coarse"][bench.COLOURS_MATCHED] == floor and same["swd"][16] == floor
    assert same["variance_ratios"] == pytest.approx([1.0] * bench.DIRECTIONS_SHOWN)
    assert curve["coarse"]["all"] > 3 * floor and abs(curve["coarse"][bench.COLOURS_MATCHED] - floor) < 0.1 * floor
    assert result["directions"][0] == "luminance, flat"
    assert blur["swd"][32] > 3 * same["swd"][32] and min(blur["variance_ratios"][5:]) < 0.85


def test_the_colour_facts_count_white_pixels_and_a_flower_against_its_ground():
    bench = load_script("benchmarks", "coarse_structure.py")
    images = torch.full((4, 3, 32, 32), 40, dtype=torch.uint8)
    images[0] = 250                                # all white
    images[1, :, 12:20, 12:20] = 200                # a white square inside the centre (10..22)
    images[2, 0] = 230                              # red everywhere: not white
    facts = bench.colour_facts(images)
    assert facts["white pixels"] == pytest.approx((1 + 64 / 1024) / 4)
    assert facts["white images"] == 0.25            # the square is 6 % of its image
    assert facts["red"] == pytest.approx(((250 + 40 + 230 + 40) / 4 + 160 * 64 / 1024 / 4) / 255)
    centre_share = 64 / 144                         # the square's share of the 12x12 centre
    assert facts["centre-ground contrast"] == pytest.approx(centre_share * 160 / 255 / 4, rel=1e-5)


def test_a_principal_direction_is_named_by_its_channels_and_form():
    bench = load_script("benchmarks", "coarse_structure.py")
    ramp = torch.arange(7.0).expand(7, 7) - 3
    assert bench.pattern(torch.stack([ramp, 0.5 * ramp, ramp]).flatten(), 3) == "luminance, left-right"
    opposed = torch.stack([torch.ones(7, 7), torch.zeros(7, 7), -torch.ones(7, 7)])
    assert bench.pattern(opposed.flatten(), 3) == "colour, flat"
    assert bench.pattern(torch.stack([ramp.T] * 3).flatten(), 3) == "luminance, top-bottom"


def test_the_sample_size_report_scores_first_n_and_disjoint_sets_each_beside_its_floor(flowers32):
    """benchmarks/swd_sample_size.py: the first n images are scored as `corolla evaluate --samples n`
    scores them, beside model_card.py's floor of n photos; each disjoint set of n beside its own n
    photos, so the photos the floors are drawn from score exactly 1 set by set."""
    bench = load_script("benchmarks", "swd_sample_size.py")
    card = load_script("benchmarks", "model_card.py")
    heldout, train = flowers32[:32], flowers32[32:]
    order = torch.randperm(32, generator=torch.Generator().manual_seed(1))  # the sets' floors: seed + 1
    blurred = torch.nn.functional.avg_pool2d(train.float(), 5, 1, 2, count_include_pad=False).round().to(torch.uint8)
    result = bench.score(heldout, train, {"photos": train[order], "blurred": blurred}, n=8, seed=0)
    card_floor = list(metrics.sliced_wasserstein(heldout, train[card.floor_pick(32, 8, 0)], seed=0).values())
    assert result["floor"] == card_floor
    photos, blur = result["models"]["photos"], result["models"]["blurred"]
    assert photos["swd"] == list(metrics.sliced_wasserstein(heldout, train[order][:8], seed=0).values())
    assert photos["ratio"] == pytest.approx([a / b for a, b in zip(photos["swd"], card_floor)])
    assert photos["subset_ratios"] == [[1.0, 1.0]] * 4
    assert len(blur["subset_ratios"]) == 4 and min(r[0] for r in blur["subset_ratios"]) > 1.5


# --- Held-out loss --------------------------------------------------------------------------

def tiny_model(train):
    torch.manual_seed(0)
    model = DiffusionModel(configs.preset("tiny").unet)
    model.normalizer.set_statistics(*imagefolder.channel_statistics(train))
    return model.eval()


def test_denoising_loss_of_a_zero_predictor_is_the_mean_absolute_noise(flowers16):
    model = tiny_model(flowers16)  # the U-Net's last conv starts at zero: it predicts zero noise
    images = flowers16[:5]
    losses = metrics.denoising_loss(model, images, seed=3, times=4, batch_size=2)
    noises = torch.stack([torch.randn((4, 3, 16, 16), generator=seeded_generator(3, i)) for i in range(5)])
    expected = noises.abs().mean(dim=(0, 2, 3, 4))
    assert torch.allclose(torch.tensor(losses, dtype=torch.float64), expected.double(), atol=1e-6)
    assert metrics.loss_times(4).tolist() == [0.125, 0.375, 0.625, 0.875]


def test_denoising_loss_is_independent_of_batching(flowers16):
    model = tiny_model(flowers16)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.ema_network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    one = metrics.denoising_loss(model, flowers16[:6], seed=0, times=3, batch_size=6)
    other = metrics.denoising_loss(model, flowers16[:6], seed=0, times=3, batch_size=4)
    assert np.allclose(one, other, rtol=1e-5)
    assert not np.allclose(one, metrics.denoising_loss(model, flowers16[:6], seed=1, times=3), rtol=1e-3)


def test_denoising_loss_at_another_schedules_noise_levels_is_that_schedules_models_loss(flowers16):
    """A cosine model scored at the offset cosine's levels is the same weights as an offset
    cosine model: what compares models trained under different schedules."""
    model = tiny_model(flowers16)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.ema_network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cosine = DiffusionModel(configs.preset("tiny").unet, schedule="cosine")
    cosine.load_state_dict(model.state_dict())
    cosine.eval()
    own = metrics.denoising_loss(model, flowers16[:4], seed=0, times=3)
    assert metrics.denoising_loss(model, flowers16[:4], seed=0, times=3, schedule="offset_cosine") == own
    assert metrics.denoising_loss(cosine, flowers16[:4], seed=0, times=3, schedule="offset_cosine") == own
    assert not np.allclose(metrics.denoising_loss(cosine, flowers16[:4], seed=0, times=3), own, rtol=1e-3)


# --- Memorisation ---------------------------------------------------------------------------

def test_nearest_neighbours_against_brute_force():
    q, r = random_images(7, 11), random_images(9, 12)
    distance, index = metrics.nearest_neighbours(q, r, chunk=3)
    full = torch.cdist(q.flatten(1).double() / 255, r.flatten(1).double() / 255) / math.sqrt(3 * 16 * 16)
    assert torch.equal(index, full.argmin(dim=1))
    assert torch.allclose(distance, full.min(dim=1).values, atol=1e-9)
    own, own_index = metrics.nearest_neighbours(r, r, leave_one_out=True, chunk=4)
    assert not torch.equal(own_index, torch.arange(9))
    assert (own > 0).all()
    black, white = torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert float(metrics.nearest_neighbours(black, white)[0]) == 1.0  # RMS units: [0, 1]


def test_memorisation_tells_copies_from_new_images(flowers16):
    train, heldout = flowers16[:250], flowers16[250:]
    train_distances = metrics.nearest_neighbours(train, train, leave_one_out=True)[0]
    copies, _, index = metrics.memorisation(train[10:30], train, train_distances)
    assert copies["nn_generated_median"] == 0 and copies["nn_ratio"] == 0 and copies["nn_copy_fraction"] == 1
    assert torch.equal(index, torch.arange(10, 30))
    fresh, distances, index = metrics.memorisation(heldout, train, train_distances, heldout)
    assert 0.7 < fresh["nn_ratio"] < 1.4
    assert fresh["nn_copy_fraction"] < 0.1
    assert fresh["nn_heldout_median"] == fresh["nn_generated_median"]
    pairs = metrics.closest_pairs(heldout, train, distances, index, count=3)
    nearest = int(torch.argmin(distances))
    assert pairs.shape == (6, 3, 16, 16)
    assert torch.equal(pairs[0], heldout[nearest]) and torch.equal(pairs[1], train[index[nearest]])


# --- Inception ------------------------------------------------------------------------------

def random_inception_state():
    torch.manual_seed(2)
    network = inception.InceptionV3()
    for name, buffer in network.named_buffers():
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
    return {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_inception_architecture_is_the_fid_graph():
    network = inception.InceptionV3()
    state = network.state_dict()
    # torchvision's Inception-v3 without the auxiliary head, with the TF graph's 1008 classes
    assert sum(p.numel() for p in network.parameters()) == 23_850_960
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)
    assert network.Mixed_7c.max_pool and not network.Mixed_7b.max_pool
    assert network.Conv2d_1a_3x3.bn.eps == 0.001
    out = network(random_images(1, 13, size=32))
    assert out.shape == (1, 2048) and out.dtype == torch.float32 and (out >= 0).all()  # pooled ReLUs


def test_inception_weights_load_from_safetensors_and_torch_save(tmp_path):
    state = random_inception_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        if path.suffix == ".pth":
            with pytest.warns(UserWarning, match="not the standard"):
                network = inception.load_inception(path)
        else:
            network = inception.load_inception(path)
        loaded = network.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        assert not network.training and not any(p.requires_grad for p in network.parameters())


def test_inception_refuses_wrong_and_pickled_files(tmp_path):
    state = random_inception_state()
    del state["fc.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(inception.InceptionWeightsError, match="missing.*fc.bias"):
        inception.load_inception(tmp_path / "partial.safetensors")
    torch.save({"weights": Image.new("RGB", (1, 1))}, tmp_path / "object.pth")  # needs unpickling code
    with pytest.raises(inception.InceptionWeightsError, match="not a readable weights file"):
        inception.load_inception(tmp_path / "object.pth")


def test_missing_inception_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    assert inception.find_weights() is None
    with pytest.raises(inception.InceptionWeightsError) as error:
        inception.load_inception()
    message = str(error.value)
    assert inception.WEIGHTS_URL in message and inception.WEIGHTS_ENV in message
    assert str(tmp_path / "cache" / inception.WEIGHTS_NAME) in message
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(inception.InceptionWeightsError, match=inception.WEIGHTS_ENV):
        inception.find_weights()
    save_file(random_inception_state(), str(tmp_path / "w.safetensors"))
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "w.safetensors"))
    assert inception.find_weights() == tmp_path / "w.safetensors"


# --- Evaluator and `corolla evaluate` -------------------------------------------------------

def test_evaluator_is_deterministic_and_complete(flowers16, tmp_path):
    train, heldout = flowers16[:60], flowers16[60:66]
    model = tiny_model(train)
    settings = metrics.EvalSettings(samples=6, steps=2, batch_size=4, train_loss_images=8)
    evaluator = metrics.Evaluator(train, heldout, settings)
    first = evaluator(model, tmp_path / "pairs.png")
    assert first == evaluator(model)
    assert set(first) >= {"swd", "swd_16", "heldout_loss", "train_loss", "nn_ratio", "nn_copy_fraction",
                          "nn_heldout_median", "kid", "kid_std", "fid"}
    assert first["kid"] is None and first["fid"] is None
    assert first["swd"] == first["swd_16"] > 0
    generated = evaluator.generate(model)  # SWD against the held-out images too, as the function scores it
    assert first["heldout_swd_16"] == metrics.sliced_wasserstein(heldout, generated, settings.seed)[16]
    assert first["heldout_swd_16"] != first["swd_16"]
    assert "heldout_swd_16" not in metrics.Evaluator(train, heldout[:0], settings)(model)  # none held out
    assert len(first["heldout_loss_by_time"]) == metrics.LOSS_TIMES
    assert Image.open(tmp_path / "pairs.png").size == (2 * 66 + 2, 6 * 66 + 2)  # 16 px shown at 64
    with_features = metrics.Evaluator(train, heldout, settings, inception=SmallFeatures().eval())(model)
    assert with_features["kid"] is not None and with_features["fid"] > 0
    assert with_features["swd"] == first["swd"]


def write_folder(folder, count=12, size=16):
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")


def test_corolla_evaluate_writes_table_json_and_pairs(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "images"
    write_folder(folder)
    config = configs.preset("tiny").replace(data={"val_fraction": 0.2})
    train = imagefolder.split(imagefolder.load_folder(folder, 16)[0], 0.2).train
    checkpoint.save_pretrained(tmp_path / "ckpt", tiny_model(train), config)
    args = ["evaluate", str(tmp_path / "ckpt"), "--data", str(folder), "--samples", "4", "--steps", "2",
            "--json", str(tmp_path / "out.json"), "--pairs", str(tmp_path / "pairs.png"), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SWD x1e3" in printed and "needs Inception weights" in printed and inception.WEIGHTS_URL in printed
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["train_images"] == 10 and results["heldout_images"] == 2 and results["samples"] == 4
    assert results["kid"] is None and results["swd"] > 0 and (tmp_path / "pairs.png").is_file()
    # it scores the checkpoint's own samples: the same figures as an Evaluator generating them itself
    model, _ = checkpoint.load_model(tmp_path / "ckpt")
    direct = metrics.Evaluator(train, imagefolder.split(imagefolder.load_folder(folder, 16)[0], 0.2).val,
                               metrics.EvalSettings(samples=4, steps=2))(model)
    assert results["swd"] == direct["swd"] and results["nn_generated_median"] == direct["nn_generated_median"]
    # the same command gives the same numbers
    assert main(args) == 0
    again = json.loads((tmp_path / "out.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in results.items() if k != "seconds"}
    # a weights file that is not there is a usage error naming what to get
    assert main(args + ["--inception-weights", str(tmp_path / "missing.pth")]) == 2
    assert inception.WEIGHTS_NAME in capsys.readouterr().err
    # the losses at another schedule's noise levels, recorded; an unknown schedule is refused
    assert main(args + ["--loss-schedule", "cosine"]) == 0
    assert results["loss_schedule"] == ""
    assert json.loads((tmp_path / "out.json").read_text())["loss_schedule"] == "cosine"
    assert main(args + ["--loss-schedule", "steep"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_corolla_evaluate_with_inception_weights_caches_real_features(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "INPUT_SIZE", 96)  # the command's path, not the network, is tested here
    folder = tmp_path / "images"
    write_folder(folder, count=6)
    config = configs.preset("tiny").replace(data={"val_fraction": 0.2})
    checkpoint.save_pretrained(tmp_path / "ckpt", tiny_model(imagefolder.load_folder(folder, 16)[0]), config)
    save_file(random_inception_state(), str(tmp_path / "w.safetensors"))
    args = ["evaluate", str(tmp_path / "ckpt"), "--data", str(folder), "--samples", "3", "--steps", "1",
            "--json", str(tmp_path / "out.json"), "--pairs", str(tmp_path / "pairs.png"),
            "--inception-weights", str(tmp_path / "w.safetensors")]
    assert main(args) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["kid"] is not None and results["fid"] > 0 and results["kid_std"] >= 0
    cached = list((tmp_path / "cache" / "inception").glob("*.safetensors"))
    assert len(cached) == 1
    assert main(args) == 0  # the second run reads the cached real features and agrees
    assert json.loads((tmp_path / "out.json").read_text())["fid"] == pytest.approx(results["fid"], rel=1e-6)


def test_a_layout_model_draws_at_its_own_size_and_is_upsampled_as_the_cascade_upsamples(flowers16, tmp_path):
    """benchmarks/noise_levels.py --layout: the small model's images of seed 0, drawn at the size its
    checkpoint was trained at (16 here) and upsampled to the large model's as corolla.cascade does:
    the new pixels are interpolated, not repeated."""
    bench = load_script("benchmarks", "noise_levels.py")
    model = tiny_model(flowers16)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.ema_network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = checkpoint.save_pretrained(tmp_path / "small", model, configs.preset("tiny"))
    large = bench.layout_images(str(folder), "fp32", 3, 32, 4, 1.0)
    small = generate(model, 3, SamplingSettings(steps=4, eps_scale=1.0), image_size=16)
    assert large.shape == (3, 3, 32, 32) and large.dtype == torch.uint8
    assert small.std() > 0.05  # images, not a constant
    assert torch.equal(large, quantise(cascade.upsample(small, 32)))
    assert (large[:, :, 0::2, 0::2].int() - large[:, :, 1::2, 1::2].int()).abs().max() > 0


def test_an_expert_takes_the_sampling_calls_from_its_split_up_and_photos_restart_at_their_time(flowers16,
                                                                                                monkeypatch):
    """benchmarks/noise_levels.py: with an expert from t = 0.5, DDIM-20's evaluations at 1.0 ... 0.5
    go to it and those at 0.45 ... 0.05 to the model; noised photos restart with round(20 T0) steps,
    and a network that knew the photos gives them back from any time."""
    bench = load_script("benchmarks", "noise_levels.py")
    model, expert = tiny_model(flowers16), tiny_model(flowers16)
    calls = {"model": [], "expert": []}
    for name, net in (("model", model), ("expert", expert)):
        net.ema_network.register_forward_pre_hook(lambda module, args, name=name: calls[name].append(
            round(float(args[1].flatten()[0]), 6)))
    bench.with_expert(model, expert, 0.5)
    generate(model, 2, SamplingSettings(steps=20), image_size=16)
    variances = model.schedule(samplers.uniform_times(20))[0][:20] ** 2
    assert calls["expert"] == pytest.approx(variances[:11].tolist(), rel=1e-5)
    assert calls["model"] == pytest.approx(variances[11:].tolist(), rel=1e-5)
    photos = flowers16[:4]
    clean = model.normalizer.normalize(photos.float() / 255)
    seen = []
    monkeypatch.setattr(expert, "denoise", lambda noisy, noise_rates, signal_rates, **_: (
        seen.append(1) or ((noisy - signal_rates * clean) / noise_rates, clean)))
    restored = bench.from_photos(expert, photos, 0.3, 20, 1.0)
    assert len(seen) == 6 and (restored.int() - photos.int()).abs().max() <= 1
