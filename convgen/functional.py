"""Functional ops in PyTorch's style: the spec comes from the arrays' shapes.

Each distinct (spec, backend, schedule, threads) is compiled once per process and kept
in a small in-memory table; compiled libraries are also reused across processes
through the on-disk cache. ``threads=`` runs an op on that many threads (None: the
default thread count's rule, see convgen.get_num_threads), as ``convgen.compile``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from convgen import config
from convgen.compiler import compile as compile_spec
from convgen.backends import resolve_backend
from convgen.backends.cuda.arrays import cuda_array_info
from convgen.kernel import Kernel
from convgen.schedule import Schedule, check_threads
from convgen.spec import ConvSpec

_KERNELS: dict[tuple, Kernel] = {}
_LOCK = threading.Lock()


def kernel_for(spec: ConvSpec, backend: str | None = None, schedule: Schedule | None = None,
               threads: int | None = None) -> Kernel:
    """The compiled kernel for ``spec``, compiled at most once per process."""
    backend = resolve_backend(backend)
    threads = check_threads(threads)
    # a partial schedule is completed at compile time: the fields it gives are part of
    # the key, and so is the default thread count when none is asked
    given = "" if schedule is None else (schedule.key(), tuple(sorted(schedule.given)))
    key = (spec.key(), backend, given, ("auto", config.num_threads()) if threads is None
           else threads)
    with _LOCK:
        kernel = _KERNELS.get(key)
        if kernel is None:
            kernel = compile_spec(spec, backend=backend, schedule=schedule, threads=threads)
            _KERNELS[key] = kernel
    return kernel


def _meta(name: str, label: str, array: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a NumPy array or a device array (``__cuda_array_interface__`` /
    DLPack; backend "cuda" takes those without copies)."""
    if isinstance(array, np.ndarray):
        return array.shape, array.dtype
    info = cuda_array_info(array)
    if info is None:
        raise TypeError(f"{name}: {label} must be a numpy.ndarray (or a device array for "
                        f"backend 'cuda'), got {type(array).__name__}")
    return info.shape, info.dtype


def _check_arrays(name: str, ndim: int, x: Any, w: Any, b: Any):
    """The shapes of x and w and the common dtype, checked."""
    (x_shape, x_dtype), (w_shape, w_dtype) = _meta(name, "input", x), _meta(name, "weight", w)
    for label, shape in (("input", x_shape), ("weight", w_shape)):
        if len(shape) != ndim + 2:
            raise ValueError(f"{name}: {label} must have {ndim + 2} dims, got shape {shape}")
    if b is not None:
        _, b_dtype = _meta(name, "bias", b)
        if w_dtype != x_dtype or b_dtype != x_dtype:
            raise TypeError(f"{name}: input, weight and bias dtypes differ: "
                            f"{x_dtype}, {w_dtype}, {b_dtype}")
    elif w_dtype != x_dtype:
        raise TypeError(f"{name}: input and weight dtypes differ: {x_dtype}, {w_dtype}")
    return x_shape, w_shape, x_dtype


def _conv(ndim: int, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
          backend, schedule, threads, out):
    name = f"conv{ndim}d"
    x_shape, w_shape, dtype = _check_arrays(name, ndim, x, w, b)
    if w_shape[1] * groups != x_shape[1]:
        raise ValueError(f"{name}: weight shape {w_shape} with groups={groups} expects "
                         f"{w_shape[1] * groups} input channels, got {x_shape[1]} "
                         f"(input shape {x_shape})")
    spec = ConvSpec(input_shape=x_shape, out_channels=w_shape[0], kernel_size=w_shape[2:],
                    stride=stride, padding=padding, padding_mode=padding_mode,
                    dilation=dilation, groups=groups, bias=b is not None,
                    activation=activation, dtype=dtype.name)
    return kernel_for(spec, backend, schedule, threads)(x, w, b, out=out)


def _conv_transpose(ndim: int, x, w, b, stride, padding, output_padding, groups, dilation,
                    activation, backend, schedule, threads, out):
    name = f"conv_transpose{ndim}d"
    x_shape, w_shape, dtype = _check_arrays(name, ndim, x, w, b)
    if w_shape[0] != x_shape[1]:
        raise ValueError(f"{name}: weight shape {w_shape} expects {w_shape[0]} input "
                         f"channels, got {x_shape[1]} (input shape {x_shape})")
    spec = ConvSpec(input_shape=x_shape, out_channels=w_shape[1] * groups,
                    kernel_size=w_shape[2:], stride=stride, padding=padding,
                    output_padding=output_padding, dilation=dilation, groups=groups,
                    transposed=True, bias=b is not None, activation=activation,
                    dtype=dtype.name)
    return kernel_for(spec, backend, schedule, threads)(x, w, b, out=out)


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           activation=None, backend=None, schedule=None, threads=None, out=None) -> np.ndarray:
    """1D convolution (cross-correlation), PyTorch's argument order."""
    return _conv(1, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
                 backend, schedule, threads, out)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           activation=None, backend=None, schedule=None, threads=None, out=None) -> np.ndarray:
    """2D convolution (cross-correlation), PyTorch's argument order."""
    return _conv(2, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
                 backend, schedule, threads, out)


def conv3d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, padding_mode="zeros",
           activation=None, backend=None, schedule=None, threads=None, out=None) -> np.ndarray:
    """3D convolution (cross-correlation), PyTorch's argument order."""
    return _conv(3, x, w, b, stride, padding, dilation, groups, padding_mode, activation,
                 backend, schedule, threads, out)


def conv_transpose1d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, activation=None, backend=None, schedule=None,
                     threads=None, out=None) -> np.ndarray:
    """1D transposed convolution, PyTorch's argument order."""
    return _conv_transpose(1, x, w, b, stride, padding, output_padding, groups, dilation,
                           activation, backend, schedule, threads, out)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, activation=None, backend=None, schedule=None,
                     threads=None, out=None) -> np.ndarray:
    """2D transposed convolution, PyTorch's argument order."""
    return _conv_transpose(2, x, w, b, stride, padding, output_padding, groups, dilation,
                           activation, backend, schedule, threads, out)


def conv_transpose3d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, activation=None, backend=None, schedule=None,
                     threads=None, out=None) -> np.ndarray:
    """3D transposed convolution, PyTorch's argument order."""
    return _conv_transpose(3, x, w, b, stride, padding, output_padding, groups, dilation,
                           activation, backend, schedule, threads, out)
