"""Functional ops in PyTorch's style: the spec comes from the arrays' shapes.

Each distinct (spec, backend, schedule) is compiled once per process and kept in
a small in-memory table; compiled libraries are also reused across processes
through the on-disk cache.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from convgen.compiler import compile as compile_spec
from convgen.backends import resolve_backend
from convgen.kernel import Kernel
from convgen.schedule import Schedule
from convgen.spec import ConvSpec

_KERNELS: dict[tuple[str, str, str], Kernel] = {}
_LOCK = threading.Lock()


def kernel_for(spec: ConvSpec, backend: str | None = None, schedule: Schedule | None = None) -> Kernel:
    """The compiled kernel for ``spec``, compiled at most once per process."""
    backend = resolve_backend(backend)
    key = (spec.key(), backend, schedule.key() if schedule is not None else "")
    with _LOCK:
        kernel = _KERNELS.get(key)
        if kernel is None:
            kernel = compile_spec(spec, backend=backend, schedule=schedule)
            _KERNELS[key] = kernel
    return kernel


def _check_arrays(name: str, ndim: int, x: Any, w: Any, b: Any) -> None:
    for label, array in (("input", x), ("weight", w)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}: {label} must be a numpy.ndarray, "
                            f"got {type(array).__name__}")
        if array.ndim != ndim + 2:
            raise ValueError(f"{name}: {label} must have {ndim + 2} dims, got shape "
                             f"{array.shape}")
    if b is not None:
        if not isinstance(b, np.ndarray):
            raise TypeError(f"{name}: bias must be a numpy.ndarray or None, "
                            f"got {type(b).__name__}")
        if w.dtype != x.dtype or b.dtype != x.dtype:
            raise TypeError(f"{name}: input, weight and bias dtypes differ: "
                            f"{x.dtype}, {w.dtype}, {b.dtype}")
    elif w.dtype != x.dtype:
        raise TypeError(f"{name}: input and weight dtypes differ: {x.dtype}, {w.dtype}")


def _conv(ndim: int, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
          backend, schedule, out):
    name = f"conv{ndim}d"
    _check_arrays(name, ndim, x, w, b)
    if w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"{name}: weight shape {w.shape} with groups={groups} expects "
                         f"{w.shape[1] * groups} input channels, got {x.shape[1]} "
                         f"(input shape {x.shape})")
    spec = ConvSpec(input_shape=x.shape, out_channels=w.shape[0], kernel_size=w.shape[2:],
                    stride=stride, padding=padding, padding_mode=padding_mode,
                    dilation=dilation, groups=groups, bias=b is not None,
                    activation=activation, dtype=x.dtype.name)
    return kernel_for(spec, backend, schedule)(x, w, b, out=out)


def _conv_transpose(ndim: int, x, w, b, stride, padding, output_padding, groups, dilation,
                    activation, backend, schedule, out):
    name = f"conv_transpose{ndim}d"
    _check_arrays(name, ndim, x, w, b)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"{name}: weight shape {w.shape} expects {w.shape[0]} input "
                         f"channels, got {x.shape[1]} (input shape {x.shape})")
    spec = ConvSpec(input_shape=x.shape, out_channels=w.shape[1] * groups,
                    kernel_size=w.shape[2:], stride=stride, padding=padding,
                    output_padding=output_padding, dilation=dilation, groups=groups,
                    transposed=True, bias=b is not None, activation=activation,
                    dtype=x.dtype.name)
    return kernel_for(spec, backend, schedule)(x, w, b, out=out)


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           activation=None, backend=None, schedule=None, out=None) -> np.ndarray:
    """1D convolution (cross-correlation), PyTorch's argument order."""
    return _conv(1, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
                 backend, schedule, out)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           activation=None, backend=None, schedule=None, out=None) -> np.ndarray:
    """2D convolution (cross-correlation), PyTorch's argument order."""
    return _conv(2, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
                 backend, schedule, out)


def conv3d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           activation=None, backend=None, schedule=None, out=None) -> np.ndarray:
    """3D convolution (cross-correlation), PyTorch's argument order."""
    return _conv(3, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
                 backend, schedule, out)


def conv_transpose1d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, activation=None, backend=None, schedule=None, out=None) -> np.ndarray:
    """1D transposed convolution, PyTorch's argument order."""
    return _conv_transpose(1, x, w, b, stride, padding, output_padding, groups, dilation,
                           activation, backend, schedule, out)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, activation=None, backend=None, schedule=None, out=None) -> np.ndarray:
    """2D transposed convolution, PyTorch's argument order."""
    return _conv_transpose(2, x, w, b, stride, padding, output_padding, groups, dilation,
                           activation, backend, schedule, out)


def conv_transpose3d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, activation=None, backend=None, schedule=None, out=None) -> np.ndarray:
    """3D transposed convolution, PyTorch's argument order."""
    return _conv_transpose(3, x, w, b, stride, padding, output_padding, groups, dilation,
                           activation, backend, schedule, out)
