"""The NumPy oracle: every convolution a :class:`ConvSpec` describes, from the definitions.

This module is the single source of truth that every backend, the tuner's re-check and
bench's sanity check compare with. It is plain NumPy, accumulates in float64 and casts to
``spec.dtype`` only at the end. Conventions are PyTorch's: layout NC(D)(H)W, weight
``(C_out, C_in/groups, *k)``, transposed weight ``(C_in, C_out/groups, *k)``, and
cross-correlation unless ``spec.flip`` (then the kernel is flipped in every spatial dim,
which is the mathematical convolution).

Each kernel tap is one batched matrix product over the input channels of a group, so
ResNet-sized layers run in a fraction of a second.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from convgen.activations import ACTIVATION_TABLE, ACTIVATIONS
from convgen.spec import ConvSpec

# np.pad's name for each of PyTorch's padding modes.
_NP_PAD_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}

def reference(spec: ConvSpec, x: np.ndarray, w: np.ndarray,
              b: np.ndarray | None = None) -> np.ndarray:
    """The output of ``spec`` on input ``x``, weight ``w`` and bias ``b``.

    Returns a new C-contiguous array of shape ``spec.output_shape`` in ``spec.dtype``.
    Raises ValueError when a shape is wrong (or ``b`` is given without ``spec.bias``,
    or missing with it) and TypeError when an array is not real-valued.
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a ConvSpec, got {type(spec).__name__}")
    x = _as_float64("x", x, spec.input_shape)
    w = _as_float64("w", w, spec.weight_shape)
    if spec.bias:
        if b is None:
            raise ValueError(f"b: expected an array of shape {spec.bias_shape} "
                             "(spec.bias is True), got None")
        b = _as_float64("b", b, spec.bias_shape)
    elif b is not None:
        raise ValueError("b: expected None (spec.bias is False), "
                         f"got an array of shape {np.shape(b)}")

    if spec.flip:
        w = w[(slice(None), slice(None)) + (slice(None, None, -1),) * spec.ndim]

    y = _conv_transposed(spec, x, w) if spec.transposed else _conv_forward(spec, x, w)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * spec.ndim)
    y = apply_activation(spec.activation, spec.activation_args, y)
    return np.ascontiguousarray(y, dtype=spec.dtype)


def apply_activation(name: str | None, args: tuple[float, ...], v: np.ndarray) -> np.ndarray:
    """The fused activation ``name`` (None: identity) with ``args``, computed in float64.

    Empty ``args`` take the activation's defaults; the definitions are
    :data:`convgen.activations.ACTIVATION_TABLE`'s.
    """
    v = np.asarray(v, dtype=np.float64)
    if name is None or name == "none":
        return v
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected None or one of {tuple(ACTIVATIONS)}, "
                         f"got {name!r}")
    nargs, defaults = ACTIVATIONS[name]
    args = tuple(args)
    if not args and defaults is not None:
        args = defaults
    if len(args) != nargs:
        raise ValueError(f"activation_args: {name} expected {nargs} arguments, got {args!r}")
    return ACTIVATION_TABLE[name].definition(v, args)


# -- helpers --------------------------------------------------------------------------

def _as_float64(name: str, array: object, expected: tuple[int, ...]) -> np.ndarray:
    """``array`` as float64, after checking that it is real-valued and has ``expected`` shape."""
    array = np.asarray(array)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a real (integer or float) array, "
                        f"got dtype {array.dtype}")
    if array.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {array.shape}")
    return array.astype(np.float64)


def _taps(kernel_size: tuple[int, ...]):
    return itertools.product(*(range(k) for k in kernel_size))


def _conv_forward(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y[n, g*Cog+co, o] = sum_{ci, k} xpad[n, g*Cig+ci, o*s + k*d] * w[g*Cog+co, ci, k]."""
    nd, groups = spec.ndim, spec.groups
    batch, cin = spec.batch, spec.in_channels
    cig, cog = cin // groups, spec.out_channels // groups
    out = spec.output_spatial

    pad_width = ((0, 0), (0, 0)) + tuple(spec.padding)
    xp = np.pad(x, pad_width, mode=_NP_PAD_MODES[spec.padding_mode])
    # (G, Cig, N, *padded): one group's channels contract with one (Cog, Cig) matrix per tap.
    xg = xp.reshape((batch, groups, cig) + xp.shape[2:])
    xg = xg.transpose((1, 2, 0) + tuple(range(3, 3 + nd)))
    wg = w.reshape((groups, cog, cig) + spec.kernel_size)

    acc = np.zeros((groups, cog, batch * math.prod(out)), dtype=np.float64)
    for tap in _taps(spec.kernel_size):
        window = tuple(
            slice(k * d, k * d + s * (o - 1) + 1, s)
            for k, s, d, o in zip(tap, spec.stride, spec.dilation, out)
        )
        patch = xg[(slice(None), slice(None), slice(None)) + window]
        patch = patch.reshape(groups, cig, -1)
        acc += np.matmul(wg[(slice(None), slice(None), slice(None)) + tap], patch)

    y = acc.reshape((groups, cog, batch) + out)
    y = y.transpose((2, 0, 1) + tuple(range(3, 3 + nd)))
    return y.reshape((batch, spec.out_channels) + out)


def _conv_transposed(spec: ConvSpec, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Scatter x[n, g*Cig+ci, i] * w[g*Cig+ci, co, k] into y_full[n, g*Cog+co, i*s + k*d].

    y_full spans (in-1)*s + d*(k-1) + 1 + output_padding per dim (output_padding extends the
    high end); the result is y_full[lo : lo + out] per dim.
    """
    nd, groups = spec.ndim, spec.groups
    batch, cin = spec.batch, spec.in_channels
    cig, cog = cin // groups, spec.out_channels // groups
    insp = spec.in_spatial
    full = tuple(
        (i - 1) * s + d * (k - 1) + 1 + op
        for i, s, d, k, op in zip(insp, spec.stride, spec.dilation, spec.kernel_size,
                                  spec.output_padding)
    )

    # x as (G, Cig, N * prod(in)); weight as (G, Cog, Cig, *k) so each tap is a matrix.
    xg = x.reshape((batch, groups, cig, -1)).transpose(1, 2, 0, 3).reshape(groups, cig, -1)
    wg = w.reshape((groups, cig, cog) + spec.kernel_size).swapaxes(1, 2)

    y_full = np.zeros((groups, cog, batch) + full, dtype=np.float64)
    for tap in _taps(spec.kernel_size):
        window = tuple(
            slice(k * d, k * d + s * (i - 1) + 1, s)
            for k, s, d, i in zip(tap, spec.stride, spec.dilation, insp)
        )
        contrib = np.matmul(wg[(slice(None), slice(None), slice(None)) + tap], xg)
        y_full[(slice(None), slice(None), slice(None)) + window] += contrib.reshape(
            (groups, cog, batch) + insp)

    crop = tuple(slice(lo, lo + o) for (lo, _hi), o in zip(spec.padding, spec.output_spatial))
    y = y_full[(slice(None), slice(None), slice(None)) + crop]
    y = y.transpose((2, 0, 1) + tuple(range(3, 3 + nd)))
    return y.reshape((batch, spec.out_channels) + spec.output_spatial)


def random_arrays(spec: ConvSpec, seed: int = 0):
    """Seeded (x, w, b) uniform in [-1, 1] in the spec's dtype; b is None without bias."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, spec.input_shape).astype(spec.dtype)
    w = rng.uniform(-1.0, 1.0, spec.weight_shape).astype(spec.dtype)
    b = rng.uniform(-1.0, 1.0, spec.bias_shape).astype(spec.dtype) if spec.bias else None
    return x, w, b
