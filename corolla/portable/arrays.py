"""Array backends: the few operations corolla.schedules and corolla.samplers apply to arrays, for
torch tensors and for numpy arrays, so that one copy of the sampler mathematics serves PyTorch
and the torch-free onnxruntime path (corolla.portable.sampling).

A backend's functions are the torch calls those modules have always made (torch results stay
the same, bit for bit) and their numpy counterparts, in the same precision: float32 arrays stay
float32 and the grids are float64. The numpy backend never imports torch; the torch backend is
built on its first use.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = torch.Tensor | np.ndarray  # what the sampler mathematics takes and returns

BACKENDS = ("torch", "numpy")


class NumpyOps:
    """The operations on numpy arrays."""
    name = "numpy"
    sin, cos, sqrt, log1p, exp, floor, minimum = np.sin, np.cos, np.sqrt, np.log1p, np.exp, np.floor, np.minimum
    where = staticmethod(np.where)  # a Python function in numpy 2, which a class would bind

    @staticmethod
    def log(array: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):  # log(0) = -inf without a warning, as torch
            return np.log(array)

    @staticmethod
    def float64(values: Any) -> np.ndarray:
        """values (an array, a number, a list) as float64."""
        return np.asarray(values, dtype=np.float64)

    @staticmethod
    def float32(values: Sequence[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    @staticmethod
    def like(values: Sequence[float], array: np.ndarray) -> np.ndarray:
        """values as an array of array's dtype."""
        return np.asarray(values, dtype=array.dtype)

    @staticmethod
    def full(shape: tuple[int, ...], value: float, like: np.ndarray) -> np.ndarray:
        return np.full(shape, value, dtype=like.dtype)

    @staticmethod
    def astype(array: np.ndarray, like: np.ndarray) -> np.ndarray:
        return array.astype(like.dtype)

    @staticmethod
    def linspace(start: float, end: float, count: int) -> np.ndarray:
        return np.linspace(start, end, count, dtype=np.float64)

    @staticmethod
    def arange(count: int) -> np.ndarray:
        return np.arange(count, dtype=np.float64)

    @staticmethod
    def zeros64(like: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(like), dtype=np.float64)

    @staticmethod
    def ones_like(array: np.ndarray) -> np.ndarray:
        return np.ones_like(array)

    @staticmethod
    def concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays)

    @staticmethod
    def cumsum(array: np.ndarray) -> np.ndarray:
        return np.cumsum(array, axis=0)

    @staticmethod
    def cumprod(array: np.ndarray) -> np.ndarray:
        return np.cumprod(array, axis=0)

    @staticmethod
    def clip(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
        return np.clip(array, low, high)

    @staticmethod
    def clamp_min(array: np.ndarray, low: float) -> np.ndarray:
        return np.maximum(array, low)

    @staticmethod
    def index(array: np.ndarray) -> np.ndarray:
        return array.astype(np.int64)

    @staticmethod
    def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.solve(a, b)


class TorchOps:
    """The same operations on torch tensors: the calls corolla's torch code made before."""
    name = "torch"

    def __init__(self) -> None:
        import torch
        self.torch = torch
        self.sin, self.cos, self.sqrt, self.log = torch.sin, torch.cos, torch.sqrt, torch.log
        self.log1p, self.exp, self.floor = torch.log1p, torch.exp, torch.floor
        self.where, self.minimum = torch.where, torch.minimum

    def float64(self, values: Any):
        return self.torch.as_tensor(values, dtype=self.torch.float64)

    def float32(self, values: Sequence[float]):
        return self.torch.tensor(values)  # torch's default dtype, float32

    def like(self, values: Sequence[float], array):
        return self.torch.tensor(list(values), dtype=array.dtype, device=array.device)

    def full(self, shape: tuple[int, ...], value: float, like):
        return self.torch.full(shape, value, dtype=like.dtype, device=like.device)

    def astype(self, array, like):
        return array.to(like.dtype)

    def linspace(self, start: float, end: float, count: int):
        return self.torch.linspace(start, end, count, dtype=self.torch.float64)

    def arange(self, count: int):
        return self.torch.arange(count, dtype=self.torch.float64)

    def zeros64(self, like):
        return self.torch.zeros_like(like, dtype=self.torch.float64)

    def ones_like(self, array):
        return self.torch.ones_like(array)

    def concat(self, arrays):
        return self.torch.cat(list(arrays))

    def cumsum(self, array):
        return self.torch.cumsum(array, 0)

    def cumprod(self, array):
        return self.torch.cumprod(array, dim=0)

    def clip(self, array, low: float | None = None, high: float | None = None):
        return array.clamp(low, high)

    def clamp_min(self, array, low: float):
        return array.clamp_min(low)

    def index(self, array):
        return array.long()

    def solve(self, a, b):
        return self.torch.linalg.solve(a, b)


Ops = NumpyOps | TorchOps
NUMPY = NumpyOps()


@functools.cache
def _torch_ops() -> TorchOps:
    return TorchOps()


def backend(name: str) -> Ops:
    """The backend called `name` ("torch" or "numpy")."""
    if name == "numpy":
        return NUMPY
    if name == "torch":
        return _torch_ops()
    raise ValueError(f"unknown array backend {name!r}; choose one of {', '.join(BACKENDS)}")


def of(array: Any, default: str = "torch") -> Ops:
    """The backend of `array`: numpy for numpy arrays and scalars, torch for tensors, `default`
    for plain Python numbers and lists (torch, as corolla's functions always took them)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return NUMPY
    if type(array).__module__.split(".")[0] == "torch":
        return _torch_ops()
    return backend(default)
