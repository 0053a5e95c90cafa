"""Comparison tolerances: one table per dtype, scaled by the reduction length."""

from __future__ import annotations

import math

import numpy as np

from convgen.dtypes import DTYPES
from convgen.spec import ConvSpec

# Unit round-off per dtype; the bound below multiplies it by the number of terms summed.
EPS = {name: d.eps for name, d in DTYPES.items()}


def reduction_length(spec: ConvSpec) -> int:
    """Terms summed into one output (bias included)."""
    cin_g = spec.in_channels // spec.groups
    return cin_g * math.prod(spec.kernel_size) + (1 if spec.bias else 0)


def tolerance(spec: ConvSpec) -> float:
    """Allowed max |got - want| relative to (1 + max |want|)."""
    return 4.0 * EPS[spec.dtype] * (reduction_length(spec) + 1)


def max_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / (1 + max |want|), in float64."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, want {want.shape}")
    if got.size == 0:
        return 0.0
    scale = 1.0 + float(np.max(np.abs(want)))
    return float(np.max(np.abs(got - want))) / scale


def close(spec: ConvSpec, got: np.ndarray, want: np.ndarray) -> bool:
    return max_error(got, want) <= tolerance(spec)
