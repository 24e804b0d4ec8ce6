"""A cascade's bicubic upsampling without torch: the images F.interpolate(mode="bicubic",
align_corners=False) gives corolla.cascade.upsample, for the torch-free sampler
(corolla.portable.sampling).

torch's rule (ATen's upsample_bicubic2d): output pixel j of an axis sits at source position
(j + 0.5) * in / out - 0.5, not clamped; its value is Keys' cubic convolution (a = -0.75) of the
four input pixels around it, indices clamped to the edge. An axis is therefore one (out, in)
matrix, and an image its rows' and columns' matrices applied in turn.
"""
from __future__ import annotations

import functools

import numpy as np

A = -0.75  # the cubic convolution's parameter, torch's (and OpenCV's) choice


def _near(x: np.ndarray) -> np.ndarray:
    """Keys' kernel for |x| <= 1."""
    return ((A + 2) * x - (A + 3)) * x * x + 1


def _far(x: np.ndarray) -> np.ndarray:
    """Keys' kernel for 1 < |x| < 2."""
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A


@functools.lru_cache(maxsize=8)
def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float64: row j holds the weights output pixel j takes of the inputs."""
    source = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    first = np.floor(source)
    t = source - first
    weights = np.stack([_far(t + 1), _near(t), _near(1 - t), _far(2 - t)], axis=1)
    matrix = np.zeros((size_out, size_in))
    for k in range(4):  # the four neighbours first - 1 .. first + 2, clamped to the edge
        index = np.clip(first.astype(np.int64) - 1 + k, 0, size_in - 1)
        np.add.at(matrix, (np.arange(size_out), index), weights[:, k])
    matrix.flags.writeable = False
    return matrix


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, h, w) in [0, 1] -> (N, C, size, size) float32, clamped to [0, 1]: corolla.cascade.upsample."""
    rows = bicubic_matrix(images.shape[-2], size)
    columns = bicubic_matrix(images.shape[-1], size)
    up = np.einsum("ih,nchw,jw->ncij", rows, images.astype(np.float64), columns)
    return np.clip(up, 0.0, 1.0).astype(np.float32)
