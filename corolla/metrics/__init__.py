"""Sample-quality metrics: FID, KID, sliced Wasserstein distance, held-out loss, memorisation,
fine detail, and the evaluation that scores a model with them. One module per metric:

- features: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) compare feature
  distributions; the arithmetic takes features from any network (corolla.inception gives the
  standard one).
- swd: SWD (Karras et al. 2018, progressive GANs, appendix D) compares the distributions of 7x7
  patches of each Laplacian-pyramid level; no pretrained network.
- loss: the held-out loss, the training objective of the EMA network on unseen images, on a
  fixed grid of diffusion times with fixed noise.
- memorisation: each generated image's nearest training image against the training set's own
  leave-one-out nearest-neighbour distances.
- detail: fine detail, and photos blurred to a given amount of it.
- evaluation: a model's samples, held-out and training images scored together (`corolla
  evaluate`, training's evaluations).

The names below are the package's interface: `corolla.metrics.sliced_wasserstein(...)`.
"""
from .detail import blur_to_fine_detail, fine_detail, gaussian_blur
from .evaluation import EvalSettings, Evaluator, cached_real_features, evaluate_checkpoint, quantise
from .features import feature_statistics, fid, frechet_distance, kid, mmd2_unbiased, polynomial_kernel
from .loss import LOSS_TIMES, denoising_loss, loss_times
from .memorisation import closest_pairs, memorisation, nearest_neighbours
from .swd import (
    GAUSSIAN_5X5,
    laplacian_pyramid,
    pyramid_down,
    pyramid_up,
    sliced_wasserstein,
    sliced_wasserstein_1d,
    swd_resolutions,
)

__all__ = [
    "EvalSettings", "Evaluator", "GAUSSIAN_5X5", "LOSS_TIMES", "blur_to_fine_detail", "cached_real_features",
    "closest_pairs", "denoising_loss", "evaluate_checkpoint", "feature_statistics", "fid", "fine_detail",
    "frechet_distance", "gaussian_blur", "kid", "laplacian_pyramid", "loss_times", "memorisation",
    "mmd2_unbiased", "nearest_neighbours", "polynomial_kernel", "pyramid_down", "pyramid_up", "quantise",
    "sliced_wasserstein", "sliced_wasserstein_1d", "swd_resolutions",
]
