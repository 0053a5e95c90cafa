"""Functional ops in torch.nn.functional's style, for traced values and NumPy arrays.

Given traced :class:`~convgen.graph.trace.Value` inputs, each function records the matching
graph node (named after the function: "relu", "cat", "flatten", ...) and returns a Value.
Given NumPy arrays, it computes eagerly with the graph oracle
(:func:`convgen.graph.reference.op_reference`, float64 inside) and returns an array of
the input's floating dtype. The layers in :mod:`convgen.nn.layers` are built on
:func:`apply`, so they run eagerly on arrays too.

Inference semantics: ``dropout`` is the identity whatever ``training`` says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from convgen.dtypes import is_int
from convgen.graph.ir import Node
from convgen.graph.reference import op_reference
from convgen.graph.trace import (TORCH_FUNCTIONS, Builder, Value, activation_builder, build_node,
                                 default_name, flatten_builder, normalize_dim, shape_of,
                                 softmax_builder)

__all__ = [
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "add", "apply",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "cat", "dropout", "elu", "flatten", "gelu",
    "hardsigmoid", "hardswish", "interpolate", "leaky_relu", "log_softmax", "max_pool1d", "max_pool2d",
    "max_pool3d", "relu", "relu6", "selu", "sigmoid", "silu", "softmax", "tanh",
]

SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


# -- the one entry point: record when traced, evaluate when given arrays ---------------------

def apply(build: Builder, inputs: Sequence, *, module: object = None, name: str = "op"):
    """Record the node ``build`` describes (Value inputs) or evaluate it (array inputs)."""
    values = [x for x in inputs if isinstance(x, Value)]
    if values:
        if len(values) != len(inputs):
            raise values[0]._tracer.unsupported(
                name, "mixing traced values with constant arrays or numbers")
        return values[0]._tracer.record(build, list(inputs), module=module, name=name)
    arrays = [_as_array(x, name) for x in inputs]
    node_name = default_name(module) if module is not None else name
    label = type(module).__name__ if module is not None else ""
    shapes = [a.shape for a in arrays]
    op, attrs, params = build_node(build, shapes, node_name, label)
    node = Node(name=node_name, op=op, inputs=[f"input{i}" for i in range(len(arrays))],
                attrs=attrs, params=params, module=label)
    node.shape = shape_of(node, shapes)
    dtype = np.result_type(*arrays)
    dtype = dtype if dtype.kind == "f" else np.dtype(np.float64)
    return op_reference(node, arrays).astype(dtype, copy=False)


def _as_array(x: object, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        array = x
    elif hasattr(x, "__array__"):
        array = np.asarray(x)
    else:
        raise TypeError(f"{name}: expected a numpy.ndarray or a traced value, "
                        f"got {type(x).__name__}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real-valued array, got dtype {array.dtype}")
    return array


# -- argument normalization (ValueError/TypeError; the tracer adds the layer's name) ---------

def per_dim(name: str, value: object, ndim: int, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of ``ndim`` ints, each >= ``minimum`` -> a tuple of ``ndim`` ints."""
    if is_int(value):
        values = (int(value),) * ndim
    elif isinstance(value, (tuple, list)) and len(value) == ndim and all(map(is_int, value)):
        values = tuple(int(v) for v in value)
    else:
        raise ValueError(f"{name}={value!r} must be an int or a tuple of {ndim} ints")
    if any(v < minimum for v in values):
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return values


def check_rank(shape: tuple[int, ...], ndim: int) -> None:
    """A batched input (N, C, *spatial) with ``ndim`` spatial dims."""
    if len(shape) != ndim + 2:
        raise ValueError(f"expects a {ndim + 2}-d input (N, C, {SPATIAL[ndim]}), "
                         f"got shape {tuple(shape)}")


# -- activations ------------------------------------------------------------------------------

def _activation(x, act: str, args: tuple = (), *, module: object = None, name: str | None = None):
    return apply(activation_builder(act, args), [x], module=module, name=name or act)


def relu(input, inplace: bool = False):
    """max(x, 0)."""
    return _activation(input, "relu")


def relu6(input, inplace: bool = False):
    """min(max(x, 0), 6)."""
    return _activation(input, "relu6")


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False):
    """x if x >= 0 else negative_slope * x."""
    return _activation(input, "leaky_relu", (negative_slope,))


def sigmoid(input):
    return _activation(input, "sigmoid")


def tanh(input):
    return _activation(input, "tanh")


def silu(input, inplace: bool = False):
    """x * sigmoid(x)."""
    return _activation(input, "silu")


def gelu(input, approximate: str = "none"):
    """x * Phi(x) (erf), or its tanh approximation with approximate="tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _activation(input, "gelu" if approximate == "none" else "gelu_tanh")


def elu(input, alpha: float = 1.0, inplace: bool = False):
    """x if x > 0 else alpha * (exp(x) - 1)."""
    return _activation(input, "elu", (alpha,))


def selu(input, inplace: bool = False):
    """scale * elu(x, alpha) with SELU's constants."""
    return _activation(input, "selu")


def hardswish(input, inplace: bool = False):
    """x * relu6(x + 3) / 6."""
    return _activation(input, "hardswish")


def hardsigmoid(input, inplace: bool = False):
    """relu6(x + 3) / 6."""
    return _activation(input, "hardsigmoid", (1.0 / 6.0, 0.5))


# -- resampling ---------------------------------------------------------------------------------

# torch mode -> (spatial dims it takes (None: any), graph resample mode)
_INTERPOLATE_MODES = {"nearest": (None, "nearest"), "nearest-exact": (None, "nearest"),
                      "linear": (1, "linear"), "bilinear": (2, "linear"),
                      "trilinear": (3, "linear"), "bicubic": (2, "cubic")}


def _per_dim(value, nd: int, what: str) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * nd
    if len(values) != nd:
        raise ValueError(f"{what}={value!r} must have {nd} entries (one per spatial dim)")
    return values


def interpolate(input, size=None, scale_factor=None, mode: str = "nearest",
                align_corners=None, recompute_scale_factor=None, antialias: bool = False, *,
                module: object = None, name: str | None = None):
    """torch.nn.functional.interpolate: one ``resample`` node per spatial dim. Modes nearest,
    nearest-exact, linear, bilinear, trilinear, bicubic (A = -0.75); no antialias or area."""
    if mode not in _INTERPOLATE_MODES:
        raise ValueError(f"interpolate: mode={mode!r} must be one of {tuple(_INTERPOLATE_MODES)}")
    dims, kind = _INTERPOLATE_MODES[mode]
    if antialias:
        raise ValueError("interpolate: antialias=True is not supported")
    if align_corners is not None and kind == "nearest":
        raise ValueError(f"interpolate: align_corners only applies to the linear and cubic "
                         f"modes, not {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    shape = tuple(input.shape)
    nd = len(shape) - 2
    if nd < 1 or (dims is not None and nd != dims):
        want = "(N, C, *spatial)" if dims is None else f"{dims + 2}-d"
        raise ValueError(f"interpolate: mode {mode!r} expects a {want} input, got shape {shape}")
    if size is not None:
        sizes = tuple(int(s) for s in _per_dim(size, nd, "size"))
        scales = [out / n for out, n in zip(sizes, shape[2:])]
    else:
        factors = [float(f) for f in _per_dim(scale_factor, nd, "scale_factor")]
        sizes = tuple(int(math.floor(n * f)) for n, f in zip(shape[2:], factors))
        # torch's coordinates use the given factor unless told to recompute it
        scales = [out / n for out, n in zip(sizes, shape[2:])] if recompute_scale_factor \
            else factors
    if mode == "nearest":
        coordinate = "asymmetric"
    elif mode == "nearest-exact":
        coordinate = "tf_half_pixel_for_nn"
    else:
        coordinate = "align_corners" if align_corners else "half_pixel"
    y = input
    for d, (out, scale) in enumerate(zip(sizes, scales)):
        attrs = {"axis": d + 2, "size": out, "mode": kind, "coordinate": coordinate,
                 "scale": scale, "nearest_mode": "floor", "cubic_coeff_a": -0.75,
                 "exclude_outside": False}
        if out == shape[d + 2] and scale == 1.0:
            continue
        y = apply(lambda shapes, attrs=attrs: ("resample", dict(attrs), {}), [y],
                  module=module, name=name or "interpolate")
    return y


def _softmax(op: str, x, dim, dtype, *, module: object = None, name: str | None = None):
    return apply(softmax_builder(op, dim, dtype), [x], module=module, name=name or op)


def softmax(input, dim: int | None = None, _stacklevel: int = 3, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim`` (required)."""
    return _softmax("softmax", input, dim, dtype)


def log_softmax(input, dim: int | None = None, _stacklevel: int = 3, dtype=None):
    """log(softmax(x)) along ``dim`` (required)."""
    return _softmax("log_softmax", input, dim, dtype)


# -- shape ops ----------------------------------------------------------------------------------

def _flatten(x, start_dim: int, end_dim: int, *, module: object = None, name: str = "flatten"):
    return apply(flatten_builder(start_dim, end_dim), [x], module=module, name=name)


def flatten(input, start_dim: int = 0, end_dim: int = -1):
    """Merge dims start_dim..end_dim into one, as torch.flatten."""
    return _flatten(input, start_dim, end_dim)


def cat(tensors, dim: int = 1):
    """Concatenate along ``dim`` (channels by default)."""
    if not isinstance(tensors, (tuple, list)) or not tensors:
        raise TypeError(f"cat: expected a non-empty list of values, got {tensors!r}")
    if len(tensors) == 1:
        only = tensors[0]
        return only if isinstance(only, Value) else np.array(_as_array(only, "cat"))

    def build(shapes):
        return "cat", {"dim": normalize_dim(dim, len(shapes[0]))}, {}

    return apply(build, list(tensors), name="cat")


def add(input, other, alpha: float = 1):
    """input + other (same shapes; no broadcasting, no alpha other than 1)."""
    if alpha != 1:
        raise ValueError(f"add: alpha={alpha!r} is not supported (only 1)")
    return apply(lambda shapes: ("add", {}, {}), [input, other], name="add")


def _identity(x, *, module: object = None, name: str = "identity"):
    return apply(lambda shapes: ("identity", {}, {}), [x], module=module, name=name)


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """The identity: convgen graphs are for inference."""
    return _identity(input, name="dropout")


# -- pooling ------------------------------------------------------------------------------------

def _window(ndim: int, kernel_size, stride, padding) -> dict:
    """Per-dim kernel_size, stride (default: the kernel, as torch) and padding."""
    kernel = per_dim("kernel_size", kernel_size, ndim, 1)
    return {
        "kernel_size": kernel,
        "stride": kernel if stride is None or stride == [] or stride == ()
        else per_dim("stride", stride, ndim, 1),
        "padding": per_dim("padding", padding, ndim, 0),
    }


def _max_pool(ndim: int, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
              *, module: object = None, name: str | None = None):
    if return_indices:
        raise ValueError(f"max_pool{ndim}d: return_indices=True is not supported "
                         "(graphs carry values only)")
    attrs = {
        **_window(ndim, kernel_size, stride, padding),
        "dilation": per_dim("dilation", dilation, ndim, 1),
        "ceil_mode": bool(ceil_mode),
    }

    def build(shapes):
        check_rank(shapes[0], ndim)
        return "max_pool", dict(attrs), {}

    return apply(build, [x], module=module, name=name or f"max_pool{ndim}d")


def _avg_pool(ndim: int, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, *, module: object = None, name: str | None = None):
    if divisor_override is not None:
        raise ValueError(f"avg_pool{ndim}d: divisor_override={divisor_override!r} is not "
                         "supported")
    attrs = {
        **_window(ndim, kernel_size, stride, padding),
        "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_include_pad),
    }

    def build(shapes):
        check_rank(shapes[0], ndim)
        return "avg_pool", dict(attrs), {}

    return apply(build, [x], module=module, name=name or f"avg_pool{ndim}d")


def adaptive_output_size(output_size, ndim: int) -> tuple:
    """An int or a tuple of ``ndim`` entries (int >= 1, or None: keep the input size)."""
    if is_int(output_size):
        output_size = (output_size,) * ndim
    if not isinstance(output_size, (tuple, list)) or len(output_size) != ndim \
            or not all(s is None or is_int(s) for s in output_size):
        raise ValueError(f"output_size={output_size!r} must be an int or a tuple of {ndim} "
                         "ints (or None)")
    if any(s is not None and s < 1 for s in output_size):
        raise ValueError(f"output_size={output_size!r} must be >= 1")
    return tuple(None if s is None else int(s) for s in output_size)


def _adaptive_avg_pool(ndim: int, x, output_size, *, module: object = None,
                       name: str | None = None):
    size = adaptive_output_size(output_size, ndim)

    def build(shapes):
        check_rank(shapes[0], ndim)
        spatial = shapes[0][2:]
        resolved = tuple(spatial[i] if s is None else s for i, s in enumerate(size))
        return "adaptive_avg_pool", {"output_size": resolved}, {}

    return apply(build, [x], module=module, name=name or f"adaptive_avg_pool{ndim}d")


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(1, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(2, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    return _max_pool(3, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _avg_pool(2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    return _avg_pool(3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def adaptive_avg_pool1d(input, output_size):
    return _adaptive_avg_pool(1, input, output_size)


def adaptive_avg_pool2d(input, output_size):
    return _adaptive_avg_pool(2, input, output_size)


def adaptive_avg_pool3d(input, output_size):
    return _adaptive_avg_pool(3, input, output_size)


# torch functions (by __name__) that Value.__torch_function__ maps here, so that
# torch.flatten(x, 1), torch.cat([a, b], 1) or torch.nn.functional.relu(x) trace as well;
# registered in the tracer's table, which cannot import this (higher) module.
TORCH_FUNCTIONS.update({
    "flatten": flatten, "cat": cat, "concat": cat, "concatenate": cat, "add": add,
    "relu": relu, "relu6": relu6, "leaky_relu": leaky_relu, "sigmoid": sigmoid, "tanh": tanh,
    "softmax": softmax, "log_softmax": log_softmax, "dropout": dropout,
    "silu": silu, "gelu": gelu, "elu": elu, "selu": selu, "hardswish": hardswish,
    "hardsigmoid": hardsigmoid, "interpolate": interpolate,
    "max_pool1d": max_pool1d, "max_pool2d": max_pool2d, "max_pool3d": max_pool3d,
    "avg_pool1d": avg_pool1d, "avg_pool2d": avg_pool2d, "avg_pool3d": avg_pool3d,
    "adaptive_avg_pool1d": adaptive_avg_pool1d, "adaptive_avg_pool2d": adaptive_avg_pool2d,
    "adaptive_avg_pool3d": adaptive_avg_pool3d,
})
