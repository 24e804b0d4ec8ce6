"""Memorisation: each generated image's nearest training image in pixel space, against the
training set's own leave-one-out nearest-neighbour distances."""
from __future__ import annotations

import math

import torch


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor, leave_one_out: bool = False,
                       chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image its nearest reference image in pixel space -> (RMS distances in
    [0, 1] units, i.e. L2 / sqrt(C*H*W), float64; indices). leave_one_out: queries are the
    references themselves and an image may not be its own neighbour."""
    q = queries.flatten(1).float() / 255.0
    r = references.flatten(1).float() / 255.0
    r_sq = r.square().sum(dim=1)
    indices = []
    for first in range(0, q.shape[0], chunk):
        block = q[first:first + chunk]
        # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, one matrix product per chunk
        d2 = block.square().sum(dim=1, keepdim=True) + r_sq - 2 * block @ r.T
        if leave_one_out:
            rows = torch.arange(block.shape[0])
            d2[rows, first + rows] = math.inf
        indices.append(d2.argmin(dim=1))
    index = torch.cat(indices)
    # the chosen pairs' distances again, exactly, without the expansion's cancellation
    distance = (q.double() - r[index].double()).square().mean(dim=1).sqrt()
    return distance, index


def memorisation(generated: torch.Tensor, train: torch.Tensor, train_distances: torch.Tensor,
                 heldout: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Nearest-training-image distances of generated images against the training set's own
    leave-one-out distances (`train_distances`, from nearest_neighbours(train, train, True)):
    the distances a fresh sample of the data distribution would have. -> (summary, distances,
    indices of the nearest training images).

    nn_ratio: median generated distance / median training distance; about 1 for a model that
    samples new images, near 0 for one that copies. nn_copy_fraction: share of generated images
    closer to a training image than 99% of training images are to theirs (about 0.01 or less
    without copying). nn_heldout_median: the same distance for real held-out images."""
    distances, index = nearest_neighbours(generated, train)
    train_median = float(train_distances.median())
    summary = {
        "nn_generated_median": float(distances.median()),
        "nn_generated_min": float(distances.min()),
        "nn_train_median": train_median,
        "nn_ratio": float(distances.median()) / train_median if train_median > 0 else math.nan,
        "nn_copy_fraction": float((distances < torch.quantile(train_distances, 0.01)).double().mean()),
    }
    if heldout is not None and heldout.shape[0] > 0:
        summary["nn_heldout_median"] = float(nearest_neighbours(heldout, train)[0].median())
    return summary, distances, index


def closest_pairs(generated: torch.Tensor, train: torch.Tensor, distances: torch.Tensor, index: torch.Tensor,
                  count: int = 8) -> torch.Tensor:
    """The `count` generated images nearest to a training image, each followed by that training
    image -> (2*count, C, H, W) uint8, to tile two per row."""
    order = torch.argsort(distances)[:count]
    return torch.stack([torch.stack([generated[i], train[index[i]]]) for i in order.tolist()]).flatten(0, 1)
