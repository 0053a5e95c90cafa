"""Parameter initialization shared by convgen.nn's layers: torch's bounds, seeded.

Parameters are float32 and drawn as torch initializes them (kaiming-uniform bounds
1/sqrt(fan_in)) from one seeded NumPy generator (:func:`manual_seed`), so a network
built without loading weights is deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from convgen.dtypes import is_int
from convgen.nn.module import Parameter

DEFAULT_SEED = 0
_RNG = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed: int) -> None:
    """Reseed the generator that initializes new layers' parameters."""
    global _RNG
    _RNG = np.random.default_rng(seed)


def _uniform(shape: tuple[int, ...], fan_in: int) -> Parameter:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's kaiming_uniform_(a=sqrt(5)) and bias init."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return Parameter(_RNG.uniform(-bound, bound, size=shape).astype(np.float32))


def _f64(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else np.array(array, dtype=np.float64)


def _positive(name: str, value: object, minimum: int = 1) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
