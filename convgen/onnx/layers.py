"""ONNX layer operators as graph nodes: convolution, pooling, Gemm/MatMul, normalization,
activations, elementwise arithmetic (Add ... Div, Sum, Max, Min, Mean, PRelu), ReduceMean.

Each handler takes the node's :class:`~convgen.onnx.ops.Context` and its input values
(None for an omitted optional input) and returns its output values, first output first.
Attribute defaults and their changes across opsets follow the ONNX operator changelog.
"""

from __future__ import annotations

import math

import numpy as np

from convgen.errors import SpecError
from convgen.graph.resample import COORDINATES, NEAREST_MODES
from convgen.onnx.ops import (Context, Tensor, Value, arith, broadcast, is_const,
                              legacy_broadcast, matmul, shape_of)
from convgen.spec import ConvSpec

FLOAT_MAX = float(np.finfo(np.float32).max)  # Clip's missing bound: no C literal for inf


# -- convolution ------------------------------------------------------------------------

def _spatial_input(ctx: Context, x: Value) -> Tensor:
    if not isinstance(x, Tensor):
        x = ctx.tensor(x)
    if not 3 <= len(x.shape) <= 5:
        raise ctx.error(f"expects an input (N, C, *spatial) with 1, 2 or 3 spatial dims, "
                        f"got shape {x.shape}")
    return x


def _auto_pad(ctx: Context) -> str:
    mode = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if mode not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ctx.error(f"auto_pad={mode!r} must be NOTSET, SAME_UPPER, SAME_LOWER or VALID")
    return mode


def window_pads(ctx: Context, sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(lo, hi) per spatial dim from ``pads`` or ``auto_pad`` (Conv and the pools)."""
    nd = len(sizes)
    mode = _auto_pad(ctx)
    if mode == "NOTSET":
        pads = ctx.ints("pads", (0,) * (2 * nd), 2 * nd)
        if any(p < 0 for p in pads):
            raise ctx.error(f"pads={list(pads)} must be >= 0")
        return list(zip(pads[:nd], pads[nd:]))
    if mode == "VALID":
        return [(0, 0)] * nd
    pairs = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        pairs.append((small, big) if mode == "SAME_UPPER" else (big, small))
    return pairs


def _conv_weight(ctx: Context, inputs: list, nd: int) -> tuple[np.ndarray, np.ndarray | None]:
    w = ctx.const(inputs[1] if len(inputs) > 1 else None, "W (the weight)")
    b = inputs[2] if len(inputs) > 2 else None
    if w.ndim != nd + 2:
        raise ctx.error(f"weight W has shape {w.shape}; a {nd}-d convolution needs "
                        f"{nd + 2} dims")
    kernel = ctx.ints("kernel_shape", None)
    if kernel is not None and tuple(kernel) != w.shape[2:]:
        raise ctx.error(f"kernel_shape={list(kernel)} does not match the weight W of shape "
                        f"{w.shape} (kernel dims {list(w.shape[2:])})")
    if b is not None:
        b = ctx.const(b, "B (the bias)")
    return w, b


def _spec(ctx: Context, **fields) -> dict:
    try:
        return ConvSpec(**fields).to_dict()
    except SpecError as exc:
        raise ctx.error(f"not a valid convolution: {exc}") from None


def conv(ctx: Context, inputs: list) -> list:
    x = _spatial_input(ctx, inputs[0])
    nd = len(x.shape) - 2
    w, b = _conv_weight(ctx, inputs, nd)
    group = int(ctx.attr("group", 1))
    channels = x.shape[1]
    if group < 1 or channels % group or w.shape[1] * group != channels:
        raise ctx.error(f"weight W of shape {w.shape} with group={group} needs dim 1 = "
                        f"input channels / group = {channels} / {group}; the input has "
                        f"shape {x.shape}")
    if w.shape[0] % group:
        raise ctx.error(f"group={group} must divide the output channels ({w.shape[0]})")
    if b is not None and b.shape != (w.shape[0],):
        raise ctx.error(f"bias B has shape {b.shape}, expected ({w.shape[0]},)")
    kernel = w.shape[2:]
    strides = ctx.ints("strides", (1,) * nd, nd)
    dilations = ctx.ints("dilations", (1,) * nd, nd)
    pads = window_pads(ctx, x.shape[2:], kernel, strides, dilations)
    spec = _spec(ctx, input_shape=x.shape, out_channels=w.shape[0], kernel_size=kernel,
                 stride=strides, padding=tuple(pads), dilation=dilations, groups=group,
                 bias=b is not None)
    params = {"weight": w} if b is None else {"weight": w, "bias": b}
    return [ctx.emit("conv", [x], {"spec": spec, "residual": False}, params)]


def conv_transpose(ctx: Context, inputs: list) -> list:
    x = _spatial_input(ctx, inputs[0])
    nd = len(x.shape) - 2
    w, b = _conv_weight(ctx, inputs, nd)
    group = int(ctx.attr("group", 1))
    if group < 1 or w.shape[0] != x.shape[1] or x.shape[1] % group:
        raise ctx.error(f"weight W of shape {w.shape} needs dim 0 = input channels "
                        f"({x.shape[1]}, divisible by group={group}); input shape {x.shape}")
    out_channels = w.shape[1] * group
    if b is not None and b.shape != (out_channels,):
        raise ctx.error(f"bias B has shape {b.shape}, expected ({out_channels},)")
    kernel = w.shape[2:]
    strides = ctx.ints("strides", (1,) * nd, nd)
    dilations = ctx.ints("dilations", (1,) * nd, nd)
    extra = list(ctx.ints("output_padding", (0,) * nd, nd))
    natural = [s * (i - 1) + op + (k - 1) * d + 1
               for i, s, op, k, d in zip(x.shape[2:], strides, extra, kernel, dilations)]
    mode = _auto_pad(ctx)
    target = ctx.ints("output_shape", None)
    if target is not None and len(target) == nd + 2:
        target = target[2:]  # some exporters give (N, C, *spatial)
    if target is not None and len(target) != nd:
        raise ctx.error(f"output_shape={list(target)} must have {nd} entries")
    if target is None and mode in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(x.shape[2:], strides)]
    if target is not None:
        # ONNX: total = natural - output_shape; SAME_UPPER puts the odd pad at the end.
        pads = []
        for i, (n, t) in enumerate(zip(natural, target)):
            total = n - t
            if total < 0:  # a larger output: more output padding (as onnxruntime)
                extra[i] -= total
                total = 0
            small, big = total // 2, total - total // 2
            pads.append((small, big) if mode == "SAME_UPPER" else (big, small))
    elif mode == "VALID":
        pads = [(0, 0)] * nd
    else:
        pads = window_pads(ctx, x.shape[2:], kernel, strides, dilations)
    spec = _spec(ctx, input_shape=x.shape, out_channels=out_channels, kernel_size=kernel,
                 stride=strides, padding=tuple(pads), dilation=dilations, groups=group,
                 transposed=True, output_padding=tuple(extra), bias=b is not None)
    params = {"weight": w} if b is None else {"weight": w, "bias": b}
    return [ctx.emit("conv", [x], {"spec": spec, "residual": False}, params)]


# -- pooling ----------------------------------------------------------------------------

def _pool(ctx: Context, inputs: list, op: str) -> list:
    x = _spatial_input(ctx, inputs[0])
    nd = len(x.shape) - 2
    kernel = ctx.ints("kernel_shape", None, nd)
    if kernel is None:
        raise ctx.error("needs the attribute kernel_shape")
    strides = ctx.ints("strides", (1,) * nd, nd)
    dilations = ctx.ints("dilations", (1,) * nd, nd)
    pads = window_pads(ctx, x.shape[2:], kernel, strides, dilations)
    ceil_mode = bool(ctx.attr("ceil_mode", 0)) and _auto_pad(ctx) == "NOTSET"
    lo = tuple(p for p, _ in pads)
    hi = tuple(p for _, p in pads)
    attrs = {"kernel_size": kernel, "stride": strides, "padding": lo, "ceil_mode": ceil_mode}
    if lo != hi or any(p > k // 2 for p, k in zip(lo, kernel)):
        attrs["padding_end"] = hi
    attrs["dilation"] = dilations
    if op == "max_pool":
        if int(ctx.attr("storage_order", 0)) not in (0, 1):
            raise ctx.error("storage_order must be 0 or 1")
    else:
        attrs["count_include_pad"] = bool(ctx.attr("count_include_pad", 0))
    y = ctx.emit(op, [x], attrs)
    if op != "max_pool" or len(ctx.node.output) < 2 or not ctx.node.output[1]:
        return [y]
    # the Indices output: its own node (the same window), int64 at the model's output
    order = int(ctx.attr("storage_order", 0))
    indices = ctx.emit("max_pool_indices", [x], {**attrs, "storage_order": order},
                       role="indices")
    return [y, Tensor(indices.name, indices.shape, "int64")]


def max_pool(ctx: Context, inputs: list) -> list:
    return _pool(ctx, inputs, "max_pool")


def average_pool(ctx: Context, inputs: list) -> list:
    return _pool(ctx, inputs, "avg_pool")


def global_average_pool(ctx: Context, inputs: list) -> list:
    x = _spatial_input(ctx, inputs[0])
    return [ctx.emit("adaptive_avg_pool", [x], {"output_size": (1,) * (len(x.shape) - 2)})]


def global_max_pool(ctx: Context, inputs: list) -> list:
    x = _spatial_input(ctx, inputs[0])
    nd = len(x.shape) - 2
    return [ctx.emit("max_pool", [x], {"kernel_size": x.shape[2:], "stride": (1,) * nd,
                                       "padding": (0,) * nd, "dilation": (1,) * nd,
                                       "ceil_mode": False})]


# -- matrix products --------------------------------------------------------------------

def gemm(ctx: Context, inputs: list) -> list:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    for value, what in ((a, "A"), (b, "B")):
        if len(shape_of(value)) != 2:
            raise ctx.error(f"{what} must be 2-d, got shape {shape_of(value)}")
    if ctx.attr("transA", 0):
        a = ctx.transpose(a, (1, 0), role="transA")
    if is_const(b) and isinstance(a, Tensor):
        weight = b if ctx.attr("transB", 0) else b.T  # (N, K), as Linear
        if weight.shape[1] != a.shape[1]:
            raise ctx.error(f"cannot multiply A' of shape {a.shape} by B' of shape "
                            f"{weight.T.shape}")
        n = weight.shape[0]
        params = {"weight": alpha * weight}
        bias_done = c is None or beta == 0.0
        if not bias_done and is_const(c) and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1) \
                and (c.ndim == 0 or c.shape[-1] in (1, n)):
            params["bias"] = np.broadcast_to(beta * c.reshape(c.shape[-1:]), (n,))
            bias_done = True
        y = ctx.emit("linear", [a], {"activation": None}, params,
                     role=None if bias_done else "linear")
    else:
        if ctx.attr("transB", 0):
            b = ctx.transpose(b, (1, 0), role="transB")
        y = matmul(ctx, a, b, role=None if c is None or beta == 0.0 else "matmul")
        if alpha != 1.0:
            y = arith(ctx, "mul", y, np.array(alpha), role="alpha")
        bias_done = c is None or beta == 0.0
    if not bias_done:
        if isinstance(c, Tensor) and not c.shape:  # a 0-d C: expand needs a dim
            c = ctx.reshape(c, (1,), role="bias_1d")
        c = arith(ctx, "mul", c, np.array(beta), role="beta") if beta != 1.0 else c
        y = arith(ctx, "add", y, c)
    return [y]


def matmul_op(ctx: Context, inputs: list) -> list:
    a, b = inputs
    if isinstance(a, Tensor) and is_const(b) and b.ndim in (1, 2) and a.shape:
        k = b.shape[0]
        if a.shape[-1] != k:
            raise ctx.error(f"cannot multiply shapes {a.shape} and {b.shape} "
                            f"({a.shape[-1]} != {k})")
        if b.ndim == 2:
            return [ctx.emit("linear", [a], {"activation": None}, {"weight": b.T})]
        y = ctx.emit("linear", [a], {"activation": None}, {"weight": b[None, :]},
                     role="linear")
        return [ctx.reshape(y, a.shape[:-1])]
    return [matmul(ctx, a, b)]


# -- normalization ----------------------------------------------------------------------

def batch_normalization(ctx: Context, inputs: list) -> list:
    if ctx.opset >= 14 and ctx.attr("training_mode", 0):
        raise ctx.error("training_mode=1 is not supported (inference only)")
    if len(inputs) < 5:
        raise ctx.error("needs the inputs X, scale, B, input_mean and input_var")
    x = inputs[0]
    scale, bias, mean, var = (ctx.const(v, what) for v, what in zip(
        inputs[1:5], ("scale", "B", "input_mean", "input_var")))
    eps = float(ctx.attr("epsilon", 1e-5))
    shape = shape_of(x)
    if len(shape) < 2:
        raise ctx.error(f"expects an input (N, C, *) of at least 2 dims, got shape {shape}")
    params = [np.asarray(p, dtype=np.float64) for p in (scale, bias, mean, var)]
    spatial = int(ctx.attr("spatial", 1)) if ctx.opset < 9 else 1
    if spatial == 0 and any(p.shape != (shape[1],) for p in params):
        # opset < 9, spatial=0: one statistic per element of (C, *spatial)
        k = params[0] / np.sqrt(params[3] + eps)
        y = arith(ctx, "mul", x, k[None], role="scale")
        return [arith(ctx, "add", y, (params[1] - params[2] * k)[None])]
    for p, what in zip(params, ("scale", "B", "input_mean", "input_var")):
        if p.shape != (shape[1],):
            raise ctx.error(f"{what} has shape {p.shape}, expected ({shape[1]},) for an "
                            f"input of shape {shape}")
    if is_const(x):
        k = params[0] / np.sqrt(params[3] + eps)
        per = (1, -1) + (1,) * (x.ndim - 2)
        return [x * k.reshape(per) + (params[1] - params[2] * k).reshape(per)]
    return [ctx.emit("batch_norm", [x], {"eps": eps}, {
        "weight": params[0], "bias": params[1], "running_mean": params[2],
        "running_var": params[3]})]


def lrn(ctx: Context, inputs: list) -> list:
    x = ctx.tensor(inputs[0])
    size = ctx.attr("size")
    if size is None or int(size) < 1:
        raise ctx.error("needs the attribute size (>= 1)")
    return [ctx.emit("lrn", [x], {"size": int(size), "alpha": float(ctx.attr("alpha", 1e-4)),
                                  "beta": float(ctx.attr("beta", 0.75)),
                                  "bias": float(ctx.attr("bias", 1.0))})]


# -- activations ------------------------------------------------------------------------

def _unary(name: str, args_of=lambda ctx: ()):
    def handler(ctx: Context, inputs: list) -> list:
        return [ctx.activation(inputs[0], name, args_of(ctx))]
    handler.__name__ = name
    return handler


relu = _unary("relu")
sigmoid = _unary("sigmoid")
tanh = _unary("tanh")
leaky_relu = _unary("leaky_relu", lambda ctx: (float(ctx.attr("alpha", 0.01)),))


def clip(ctx: Context, inputs: list) -> list:
    if ctx.opset < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        bounds = []
        for value, what in zip(inputs[1:3], ("min", "max")):
            bound = None if value is None else ctx.const(value, what).reshape(())
            # an integer bound stays an int: exact for int64/uint64 beyond 2**53
            bounds.append(None if bound is None else
                          int(bound) if bound.dtype.kind in "iu" else float(bound))
        bounds += [None] * (2 - len(bounds))
        low, high = bounds
    x = inputs[0]
    if low is None and high is None:
        return [x]
    # a missing bound: the float range's end (an integer network's clip clamps it to its
    # type's, convgen.dtypes.integer_bounds)
    low = -FLOAT_MAX if low is None else low
    high = FLOAT_MAX if high is None else high
    return [ctx.activation(x, "clip", (low, high))]


def _softmax(ctx: Context, inputs: list, op: str) -> list:
    x = inputs[0]
    shape = shape_of(x)
    rank = len(shape)
    axis = int(ctx.attr("axis", 1 if ctx.opset < 13 else -1))
    if not -rank <= axis < max(rank, 1):
        raise ctx.error(f"axis={axis} is out of range for an input of shape {shape}")
    axis %= max(rank, 1)
    if is_const(x):
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return [y if op == "log_softmax" else np.exp(y)]
    if ctx.opset >= 13 or axis == rank - 1:
        return [ctx.emit(op, [x], {"dim": axis})]
    # before opset 13: the input is coerced to 2-d at axis, softmax over the second dim
    rows, cols = int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))
    flat = ctx.reshape(x, (rows, cols), role="to_2d")
    y = ctx.emit(op, [flat], {"dim": 1}, role="softmax")
    return [ctx.reshape(y, shape)]


def softmax(ctx: Context, inputs: list) -> list:
    return _softmax(ctx, inputs, "softmax")


def log_softmax(ctx: Context, inputs: list) -> list:
    return _softmax(ctx, inputs, "log_softmax")


# -- elementwise arithmetic and identities -------------------------------------------------

def _binary(kind: str):
    def handler(ctx: Context, inputs: list) -> list:
        a, b = inputs[0], inputs[1]
        if ctx.opset < 7:
            b = legacy_broadcast(ctx, a, b)
        return [arith(ctx, kind, a, b)]
    handler.__name__ = kind
    return handler


add = _binary("add")
sub = _binary("sub")
mul = _binary("mul")
div = _binary("div")


def _variadic(ctx: Context, inputs: list, kind: str, what: str) -> Value:
    """inputs[0] (kind) inputs[1] (kind) ... with broadcasting (Sum, Max, Min, Mean)."""
    values = [v for v in inputs if v is not None]
    if not values:
        raise ctx.error("needs at least one input")
    total = values[0]
    for i, value in enumerate(values[1:], start=1):
        if ctx.opset < 8 and shape_of(value) != shape_of(total):
            raise ctx.error(f"inputs of shapes {shape_of(total)} and {shape_of(value)}: "
                            f"{what} before opset 8 does not broadcast")
        # the last step is the node's result (named after it) unless Mean divides after it
        last = i == len(values) - 1 and what != "Mean"
        total = arith(ctx, kind, total, value, role=None if last else f"{kind}{i}")
    return total


def sum_op(ctx: Context, inputs: list) -> list:
    return [_variadic(ctx, inputs, "add", "Sum")]


def max_op(ctx: Context, inputs: list) -> list:
    return [_variadic(ctx, inputs, "max", "Max")]


def min_op(ctx: Context, inputs: list) -> list:
    return [_variadic(ctx, inputs, "min", "Min")]


def mean(ctx: Context, inputs: list) -> list:
    count = sum(v is not None for v in inputs)
    total = _variadic(ctx, inputs, "add", "Mean")
    if count == 1:
        return [total]
    if is_const(total):
        return [(total / count).astype(total.dtype)]
    return [arith(ctx, "div", total, np.array(float(count)))]


def prelu(ctx: Context, inputs: list) -> list:
    """x < 0 ? slope * x : x, the slope broadcast to x (opset >= 7: unidirectional numpy
    broadcasting; before, a slope of shape (C,) or (C, 1, ...) per channel also lines up
    with dim 1, as those opsets' exporters wrote it)."""
    x, slope = inputs[0], inputs[1]
    shape, slope_shape = shape_of(x), shape_of(slope)
    if ctx.opset < 7 and len(shape) >= 2 and len(slope_shape) == 1 and slope_shape[0] == shape[1]:
        target = (shape[1],) + (1,) * (len(shape) - 2)
        slope = slope.reshape(target) if is_const(slope) else ctx.reshape(slope, target,
                                                                           role="slope")
    if broadcast(ctx, shape, shape_of(slope)) != tuple(shape):
        raise ctx.error(f"slope of shape {shape_of(slope)} does not broadcast to the input "
                        f"shape {shape}")
    return [arith(ctx, "prelu", x, slope)]


def reduce_mean(ctx: Context, inputs: list) -> list:
    """ReduceMean as a transpose that puts the reduced axes last, a row mean (a linear
    layer whose weight is 1/n, one output) and a reshape to the kept dims."""
    x = inputs[0]
    shape = shape_of(x)
    rank = len(shape)
    if ctx.opset >= 18:
        given = inputs[1] if len(inputs) > 1 else None
        axes = None if given is None else tuple(
            int(a) for a in np.asarray(ctx.const(given, "axes")).reshape(-1))
    else:
        axes = ctx.ints("axes", None)
    keepdims = bool(ctx.attr("keepdims", 1))
    if not axes:
        if ctx.opset >= 18 and ctx.attr("noop_with_empty_axes", 0):
            return [x]
        axes = tuple(range(rank))
    for a in axes:
        if not -rank <= a < rank:
            raise ctx.error(f"axes {list(axes)}: {a} is out of range for rank {rank}")
    axes = tuple(sorted({a % rank for a in axes}))
    out = tuple(1 if i in axes else n for i, n in enumerate(shape)) if keepdims \
        else tuple(n for i, n in enumerate(shape) if i not in axes)
    if is_const(x):
        return [np.mean(x, axis=axes).reshape(out).astype(x.dtype)]
    kept = [i for i in range(rank) if i not in axes]
    columns = int(np.prod([shape[i] for i in axes]))
    rows = int(np.prod([shape[i] for i in kept]))
    moved = ctx.transpose(x, kept + list(axes), role="axes_last")
    flat = ctx.reshape(moved, (rows, columns), role="rows")
    y = ctx.emit("linear", [flat], {"activation": None},
                 {"weight": np.full((1, columns), 1.0 / columns)}, role="mean")
    return [ctx.reshape(y, out)]


def identity(ctx: Context, inputs: list) -> list:
    return [inputs[0]]


def dropout(ctx: Context, inputs: list) -> list:
    if len(inputs) > 2 and inputs[2] is not None:
        training = ctx.const(inputs[2], "training_mode")
        if bool(np.asarray(training).reshape(-1)[0]):
            raise ctx.error("training_mode is true: only inference is supported")
    x = inputs[0]
    if len(ctx.node.output) < 2 or not ctx.node.output[1]:
        return [x]
    # the mask: inference keeps every element (a constant; a graph output of it is cast
    # to bool at the boundary)
    ctx.check_folded(shape_of(x), 1, "the mask")
    return [x, np.ones(shape_of(x), dtype=np.bool_)]


# -- more activations (issue 21) ------------------------------------------------------

def _float_attr(ctx: Context, name: str, default: float) -> float:
    value = ctx.attr(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ctx.error(f"attribute {name}={value!r} must be a number") from None
    if not np.isfinite(value):
        raise ctx.error(f"attribute {name}={value!r} must be finite")
    return value


def _flag_attr(ctx: Context, name: str) -> bool:
    value = ctx.attr(name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in (0, 1):
        raise ctx.error(f"attribute {name}={value!r} must be 0 or 1")
    return bool(value)


def gelu(ctx: Context, inputs: list) -> list:
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.error(f"approximate={approximate!r} must be 'none' or 'tanh'")
    return [ctx.activation(inputs[0], "gelu" if approximate == "none" else "gelu_tanh")]


elu = _unary("elu", lambda ctx: (_float_attr(ctx, "alpha", 1.0),))
hard_sigmoid = _unary("hardsigmoid", lambda ctx: (_float_attr(ctx, "alpha", 0.2),
                                                  _float_attr(ctx, "beta", 0.5)))
hard_swish = _unary("hardswish")
erf = _unary("erf")
softplus = _unary("softplus")
softsign = _unary("softsign")
# ONNX's defaults are float32 roundings of SELU's constants (torch uses the float64 ones)
selu = _unary("selu", lambda ctx: (_float_attr(ctx, "alpha", 1.67326319217681884765625),
                                   _float_attr(ctx, "gamma", 1.05070102214813232421875)))


def swish(ctx: Context, inputs: list) -> list:
    """Swish (opset 24): x * sigmoid(alpha * x); alpha 1 is silu, and otherwise
    silu(alpha * x) / alpha (the scalings become per-channel affines around it)."""
    alpha = _float_attr(ctx, "alpha", 1.0)
    x = inputs[0]
    if alpha == 1.0:
        return [ctx.activation(x, "silu")]
    if alpha == 0.0:
        return [arith(ctx, "mul", x, np.array(0.5))]
    scaled = arith(ctx, "mul", x, np.array(alpha), role="scale")
    y = ctx.activation(scaled, "silu", role="silu")
    return [arith(ctx, "mul", y, np.array(1.0 / alpha))]


# -- Resize and Upsample (issue 21) ------------------------------------------------------

_RESIZE_MODES = ("nearest", "linear", "cubic")
_KEEP_ASPECT = ("stretch", "not_larger", "not_smaller")


def _resize_axes(ctx: Context, rank: int) -> list[int]:
    axes = ctx.ints("axes", None) if ctx.opset >= 18 else None
    if axes is None:
        return list(range(rank))
    if any(not -rank <= a < rank for a in axes):
        raise ctx.error(f"axes={list(axes)} out of range for rank {rank}")
    axes = [a % rank for a in axes]
    if len(set(axes)) != len(axes):
        raise ctx.error(f"axes={list(axes)} repeats an axis")
    return axes


def _resize_targets(ctx: Context, shape: tuple[int, ...], scales, sizes,
                    axes: list[int]) -> list[tuple[int, int, float]]:
    """(axis, output size, scale) for every axis of ``axes`` from constant scales or sizes
    (ONNX: output = floor(input * scale); from sizes, scale = output / input, or with
    keep_aspect_ratio_policy one scale for all axes and output = round(scale * input))."""
    if scales is not None:
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        if scales.size != len(axes):
            raise ctx.error(f"scales has {scales.size} values; expected {len(axes)} "
                            f"(one per axis of {axes})")
        if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise ctx.error(f"scales={scales.tolist()} must be finite and > 0")
        out = []
        for axis, scale in zip(axes, scales):
            size = math.floor(shape[axis] * scale)
            if size < 1:
                raise ctx.error(f"scale {scale} leaves nothing of dim {axis} (size "
                                f"{shape[axis]})")
            out.append((axis, size, float(scale)))
        return out
    sizes = np.asarray(sizes).reshape(-1)
    if sizes.dtype.kind not in "iu" or sizes.size != len(axes):
        raise ctx.error(f"sizes={sizes.tolist()} must be {len(axes)} integers (one per axis "
                        f"of {axes})")
    if np.any(sizes < 1):
        raise ctx.error(f"sizes={sizes.tolist()} must be >= 1")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch") if ctx.opset >= 18 else "stretch"
    if policy not in _KEEP_ASPECT:
        raise ctx.error(f"keep_aspect_ratio_policy={policy!r} must be one of {_KEEP_ASPECT}")
    ratios = [int(n) / shape[a] for a, n in zip(axes, sizes)]
    if policy == "stretch":
        return [(a, int(n), r) for a, n, r in zip(axes, sizes, ratios)]
    scale = min(ratios) if policy == "not_larger" else max(ratios)
    return [(a, max(1, int(scale * shape[a] + 0.5)), scale) for a in axes]


def _resample(ctx: Context, x: Value, targets, attrs: dict) -> Value:
    """One ``resample`` node per axis that changes (in axis order)."""
    x = ctx.tensor(x)
    for axis, size, scale in sorted(targets):
        if size == x.shape[axis] and scale == 1.0:
            continue  # the identity along this axis in every coordinate mode
        x = ctx.emit("resample", [x], {"axis": axis, "size": size, "scale": scale, **attrs},
                     role=f"axis{axis}")
    return x


def resize(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    shape = shape_of(x)
    mode = ctx.attr("mode", "nearest")
    modes = _RESIZE_MODES if ctx.opset >= 11 else _RESIZE_MODES[:2]
    if mode not in modes:
        raise ctx.error(f"mode={mode!r} must be one of {modes}")
    if ctx.opset < 11:  # Resize-10: Upsample's semantics
        scales = ctx.const(inputs[1] if len(inputs) > 1 else None, "scales")
        targets = _resize_targets(ctx, shape, scales, None, list(range(len(shape))))
        return [_resample(ctx, x, targets, {"mode": mode, "coordinate": "asymmetric",
                                            "nearest_mode": "simple"})]
    if ctx.opset >= 18 and _flag_attr(ctx, "antialias"):
        raise ctx.error("antialias=1 is not supported (convgen resamples with a fixed 1, 2 "
                        "or 4-tap filter)")
    coordinate = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if coordinate == "tf_crop_and_resize":
        raise ctx.error("coordinate_transformation_mode='tf_crop_and_resize' is not "
                        "supported (a region of interest and an extrapolation value)")
    # half_pixel_symmetric came in opset 19; tf_half_pixel_for_nn is Resize-11's, and
    # onnxruntime (and TensorFlow converters) use it at later opsets too
    known = [c for c in COORDINATES if c != "half_pixel_symmetric" or ctx.opset >= 19]
    if coordinate not in known:
        raise ctx.error(f"coordinate_transformation_mode={coordinate!r} is not one of "
                        f"{tuple(known) + ('tf_crop_and_resize',)} at opset {ctx.opset}")
    nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor")
    if nearest_mode not in NEAREST_MODES[:4]:
        raise ctx.error(f"nearest_mode={nearest_mode!r} must be one of {NEAREST_MODES[:4]}")
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    if scales is not None and shape_of(scales) == (0,):
        scales = None  # an empty scales with sizes given (opset 11, 13)
    if (scales is None) == (sizes is None):
        raise ctx.error("needs exactly one of the inputs scales and sizes")
    scales = None if scales is None else ctx.const(scales, "scales")
    sizes = None if sizes is None else ctx.const(sizes, "sizes")
    targets = _resize_targets(ctx, shape, scales, sizes, _resize_axes(ctx, len(shape)))
    attrs = {"mode": mode, "coordinate": coordinate, "nearest_mode": nearest_mode,
             "cubic_coeff_a": _float_attr(ctx, "cubic_coeff_a", -0.75),
             "exclude_outside": _flag_attr(ctx, "exclude_outside")}
    return [_resample(ctx, x, targets, attrs)]


def upsample(ctx: Context, inputs: list) -> list:
    """Upsample (opsets 7, 9; deprecated at 10): output = floor(input * scale), the
    asymmetric coordinate transform, nearest rounding down (Resize-10 in onnxruntime)."""
    x = inputs[0]
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise ctx.error(f"mode={mode!r} must be 'nearest' or 'linear'")
    if ctx.opset < 9:
        scales = ctx.attr("scales")
        if scales is None:
            raise ctx.error("needs the attribute scales")
        scales = np.asarray(scales, dtype=np.float64)
    else:
        scales = ctx.const(inputs[1] if len(inputs) > 1 else None, "scales")
    shape = shape_of(x)
    targets = _resize_targets(ctx, shape, scales, None, list(range(len(shape))))
    return [_resample(ctx, x, targets, {"mode": "nearest" if mode == "nearest" else "linear",
                                        "coordinate": "asymmetric", "nearest_mode": "simple"})]


HANDLERS = {
    "Conv": conv, "ConvTranspose": conv_transpose, "MaxPool": max_pool,
    "AveragePool": average_pool, "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool, "Gemm": gemm, "MatMul": matmul_op,
    "BatchNormalization": batch_normalization, "LRN": lrn, "Relu": relu,
    "LeakyRelu": leaky_relu, "Sigmoid": sigmoid, "Tanh": tanh, "Clip": clip,
    "Softmax": softmax, "LogSoftmax": log_softmax, "Add": add, "Sub": sub, "Mul": mul,
    "Div": div, "Sum": sum_op, "Max": max_op, "Min": min_op, "Mean": mean, "PRelu": prelu,
    "ReduceMean": reduce_mean, "Identity": identity, "Dropout": dropout,
    "Gelu": gelu, "Elu": elu, "HardSigmoid": hard_sigmoid, "HardSwish": hard_swish,
    "Selu": selu, "Swish": swish, "Erf": erf, "Softplus": softplus,
    "Softsign": softsign, "Resize": resize, "Upsample": upsample,
}

__all__ = ["HANDLERS", "window_pads"]
