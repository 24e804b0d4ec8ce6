"""A class drawn for each image of a conditional model, in numpy, so that PyTorch, the ONNX sampler
and an export's readers draw the same classes for the same seed.

Image i of a seed draws its class from a stream of its own, (seed, i, CLASS_DRAW), so the draw
depends neither on the batch nor on how many images are made, and never moves the image's
noise. The draw is the one torch.multinomial(weights, 1, generator=g) makes (corolla drew with it
before this module): the class of the largest weight / Exp(1) draw, the exponential race that
picks class c with chance weights[c] / sum(weights). The Exp(1) draws are torch's
(noise.TorchGenerator.exponential64), which round to the neighbouring double 1 time in 14; the
class differs from torch's only where two classes' ratios lie that close (tests/test_portable_noise.py
counts no difference in thousands of draws).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .noise import TorchGenerator, stream_seed

CLASS_DRAW = 1  # the stream (seed, image, CLASS_DRAW) draws a ClassMix's class of an image


@dataclass(frozen=True)
class ClassMix:
    """A class drawn for each image of a conditional model, with chances in proportion to `weights`
    (one per class): the model sampled as the whole data set rather than one class at a time."""
    weights: tuple[int, ...]

    @classmethod
    def of_training(cls, classes: Sequence[str], counts: Sequence[int]) -> ClassMix:
        """The training set's mix (Config.data.class_counts); equal chances where a run kept no counts."""
        return cls(tuple(counts) if any(counts) else (1,) * len(classes))

    def draw(self, seed: int, indices: Sequence[int], num_classes: int) -> list[int]:
        """The classes of images `indices` of `seed`, for a model of `num_classes` classes."""
        if len(self.weights) != num_classes or not any(self.weights) or min(self.weights) < 0:
            raise ValueError(f"a mix of {len(self.weights)} class weights for a model of {num_classes} classes: "
                             f"give one weight per class, none negative, not all 0")
        weights = np.asarray(self.weights, np.float64)
        return [int(np.argmax(weights / TorchGenerator(stream_seed(seed, i, CLASS_DRAW)).exponential64(num_classes)))
                for i in indices]
