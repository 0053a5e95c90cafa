"""The NumPy oracle for graphs: every op of :data:`convgen.graph.ir.OPS`, from the definitions.

The graph counterpart of :mod:`convgen.reference` (which it reuses for convolution):
plain NumPy, float64 throughout, PyTorch's semantics (inference mode). Generated graph
libraries and passes (BatchNorm folding, fusion) are checked against :func:`evaluate`.
Each op's shape rules and attribute conventions are :mod:`convgen.graph.shapes`'s.

Integer graphs (an integer element type, convgen.dtypes.ELEMENT_TYPES; only
convgen.graph.ir.INTEGER_OPS) are evaluated in that integer NumPy dtype instead
(:func:`integer_reference`), so that every answer is exact (int64/uint64 values beyond
2**53 included) and wraps around as the compiled code does.

The oracle computes in float64 and keeps every value, so before it allocates anything
it estimates what it needs (:func:`graph_oracle_bytes`, :func:`conv_oracle_bytes`) and
raises a clear error when that exceeds the memory available (:func:`available_memory`),
rather than dying in a MemoryError (or the OOM killer) halfway.
"""

from __future__ import annotations

import itertools
import math
import os
import resource
from collections.abc import Sequence

import numpy as np

from convgen.dtypes import element_type, integer_bounds
from convgen.reference import apply_activation, reference
from convgen.spec import ConvSpec
from convgen.graph.ir import OPS, Graph, GraphError, Node, check_element_type, describe
from convgen.graph.shapes import PoolWindow, adaptive_bins, adaptive_output_size, infer_shape, pool_window
from convgen.graph.resample import reference_resample
from convgen.graph.tensor_ops import REFERENCES


def op_reference(node: Node, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The output of ``node`` on ``inputs`` (float64), after checking shapes (GraphError)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in inputs]
    expected = infer_shape(node, [a.shape for a in arrays])
    y = _OPS[node.op](node, *arrays)
    assert y.shape == expected, (node.name, y.shape, expected)
    return np.ascontiguousarray(y, dtype=np.float64)


def available_memory() -> int | None:
    """Bytes a new allocation may take now: the kernel's MemAvailable, capped by this
    process's address-space limit (RLIMIT_AS) less what it maps already; None if unknown."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (OSError, ValueError):
        limit = resource.RLIM_INFINITY
    if limit != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            mapped = 0
        room = max(limit - mapped, 0)
        available = room if available is None else min(available, room)
    return available


def conv_oracle_bytes(spec: ConvSpec) -> int:
    """About the most memory :func:`convgen.reference.reference` holds at once for
    ``spec``: float64 copies of x and w, the padded input (forward) or the full scattered
    output (transposed), the accumulator, a tap's patch and product, and the result."""
    batch, cin, cout = spec.batch, spec.in_channels, spec.out_channels
    inputs = batch * cin * math.prod(spec.in_spatial)
    weights = math.prod(spec.weight_shape)
    out = spec.output_spatial
    if spec.transposed:
        full = tuple((i - 1) * s + d * (k - 1) + 1 + op
                     for i, s, d, k, op in zip(spec.in_spatial, spec.stride, spec.dilation,
                                               spec.kernel_size, spec.output_padding))
        work = batch * cout * math.prod(full) + 2 * batch * cout * math.prod(spec.in_spatial)
    else:
        padded = tuple(i + lo + hi for i, (lo, hi) in zip(spec.in_spatial, spec.padding))
        work = (batch * cin * math.prod(padded) + batch * cin * math.prod(out)
                + 2 * batch * cout * math.prod(out))
    return 8 * (inputs + weights + work + 2 * batch * cout * math.prod(out))


def check_oracle_memory(needed: int, what: str) -> None:
    """A ValueError when ``needed`` bytes exceed the memory available now (``what``
    names the computation and its largest part)."""
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(f"{what}: the float64 oracle would need about {needed} bytes "
                         f"({needed / 2**30:.1f} GiB), more than the {available} bytes "
                         f"({available / 2**30:.1f} GiB) of memory available")


def graph_oracle_bytes(graph: Graph) -> tuple[int, str]:
    """(about the bytes :func:`evaluate` needs for ``graph``, its largest value described):
    every value in float64 (evaluate keeps them all) plus the largest op's working set."""
    shapes = {name: tuple(shape) for name, shape in graph.inputs}
    total = sum(8 * math.prod(shape) for shape in shapes.values())
    work, largest, largest_bytes = 0, "", -1
    for node in graph.nodes:
        if any(name not in shapes for name in node.inputs):
            break  # evaluate names the missing input
        shape = infer_shape(node, [shapes[name] for name in node.inputs])
        shapes[node.name] = shape
        size = 8 * math.prod(shape)
        total += size
        spec = node.attrs.get("spec") if node.op == "conv" else None
        if spec is not None:
            spec = spec if isinstance(spec, ConvSpec) else ConvSpec.from_dict(spec)
            work = max(work, conv_oracle_bytes(spec))
        work = max(work, 2 * size)
        if size > largest_bytes:
            largest, largest_bytes = f"{describe(node)} of shape {shape}", size
    return total + work, largest


def integer_reference(node: Node, inputs: Sequence[np.ndarray], dtype: str) -> np.ndarray:
    """The output of ``node`` on ``inputs`` in the integer NumPy dtype ``dtype``, exactly,
    with convgen's integer semantics (convgen.graph.ir: wraparound, division truncating
    toward zero, x / 0 = 0)."""
    check_element_type(Graph([], [node], []), dtype, True)
    info = element_type(dtype)
    arrays = [np.asarray(a).astype(dtype) for a in inputs]
    expected = infer_shape(node, [a.shape for a in arrays])
    op = node.op
    with np.errstate(over="ignore"):  # NumPy wraps integer arrays; 0-d ones would warn
        if op == "add" or (op == "binary" and node.attrs["kind"] == "add"):
            y = np.add(*arrays)
        elif op == "binary" and node.attrs["kind"] in ("sub", "mul"):
            y = (np.subtract if node.attrs["kind"] == "sub" else np.multiply)(*arrays)
        elif op == "binary":
            y = _integer_divide(*arrays, info.signed)
        elif op == "activation":
            name, args = node.attrs["name"], tuple(node.attrs.get("args") or ())
            low, high = {"relu": (0, info.max), "relu6": (0, 6)}.get(name, args)
            low, high = integer_bounds(low, high, dtype)
            y = np.minimum(np.maximum(arrays[0], low), high)  # lo > hi: every value hi
        elif op == "max_pool":
            x = arrays[0]
            window = pool_window(node, x.shape)
            out = expected[2:]
            xp = np.pad(x, _pad_for(window, x.shape[2:], out), constant_values=info.min)
            y = np.full(expected, info.min, dtype=dtype)
            for taps in _windows(window, out):
                y = np.maximum(y, xp[(slice(None), slice(None)) + taps])
        elif op == "pad":
            value = integer_bounds(node.attrs.get("value", 0), 0, dtype)[0]
            x, rank, pads = arrays[0], arrays[0].ndim, node.attrs["pads"]
            crop = tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0))
                         for d, (lo, hi) in enumerate(zip(pads[:rank], pads[rank:])))
            widths = [(max(lo, 0), max(hi, 0)) for lo, hi in zip(pads[:rank], pads[rank:])]
            y = np.pad(x[crop], widths, constant_values=value)
        elif op == "constant":
            y = np.asarray(node.params["value"]).astype(dtype)
        else:  # data movement: the float oracle's, which keeps the dtype
            y = _OPS[op](node, *arrays)
    assert y.shape == expected, (node.name, y.shape, expected)
    return np.ascontiguousarray(y, dtype=dtype)


def _integer_divide(a: np.ndarray, b: np.ndarray, signed: bool) -> np.ndarray:
    """a / b truncated toward zero, exactly (np.trunc(a / b) would round through float64);
    x / 0 = 0 and, signed, x / -1 = -x wrapping around (MIN / -1 = MIN)."""
    zero = b == 0
    minus_one = (b == -1) if signed else np.zeros_like(zero)
    safe = np.where(zero | minus_one, np.ones_like(b), b)
    q = np.floor_divide(a, safe)
    # floor to truncation: one up where the division is inexact and the signs differ
    inexact = np.remainder(a, safe) != 0
    q = q + (inexact & ((a < 0) != (safe < 0))).astype(a.dtype)
    q = np.where(minus_one, np.negative(a), q)
    return np.where(zero, np.zeros_like(a), q).astype(a.dtype)


def evaluate(graph: Graph, inputs: Sequence[np.ndarray] | np.ndarray,
             dtype: str | None = None) -> list[np.ndarray]:
    """Run every node in order on ``inputs`` (one array per graph input); the outputs, float64.

    ``dtype`` an integer element type ("int8" ... "uint64"): the graph is evaluated in that
    dtype, exactly (:func:`integer_reference`), and the outputs have it; None or a float
    type: float64. Raises GraphError before allocating when the oracle would need more
    memory than is available (naming the largest value and both sizes)."""
    integer = dtype is not None and element_type(dtype).is_integer
    if integer:
        check_element_type(graph, dtype, True)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    inputs = list(inputs)
    if len(inputs) != len(graph.inputs):
        raise GraphError(f"graph takes {len(graph.inputs)} input(s) "
                         f"{[name for name, _ in graph.inputs]}, got {len(inputs)}")
    needed, largest = graph_oracle_bytes(graph)
    try:
        check_oracle_memory(needed, f"evaluating the graph (largest value: {largest})")
    except ValueError as exc:
        raise GraphError(str(exc)) from None
    values: dict[str, np.ndarray] = {}
    for (name, shape), array in zip(graph.inputs, inputs):
        array = np.asarray(array)
        if array.dtype.kind not in ("iu" if integer else "iuf"):
            raise TypeError(f"graph input {name}: expected "
                            f"{'an integer' if integer else 'a real'} array, got dtype "
                            f"{array.dtype}")
        if array.shape != tuple(shape):
            raise GraphError(f"graph input {name}: expected shape {tuple(shape)}, "
                             f"got {array.shape}")
        values[name] = array.astype(dtype if integer else np.float64)
    for node in graph.nodes:
        missing = [name for name in node.inputs if name not in values]
        if missing:
            raise GraphError(f"{describe(node)}: input(s) {missing} are neither graph inputs "
                             "nor earlier nodes")
        arrays = [values[name] for name in node.inputs]
        values[node.name] = integer_reference(node, arrays, dtype) if integer \
            else op_reference(node, arrays)
    missing = [name for name in graph.outputs if name not in values]
    if missing:
        raise GraphError(f"graph output(s) {missing} are neither graph inputs nor nodes")
    return [values[name] for name in graph.outputs]


# -- ops ------------------------------------------------------------------------------------

def _param(node: Node, name: str) -> np.ndarray | None:
    value = node.params.get(name)
    return None if value is None else np.asarray(value, dtype=np.float64)


def _conv(node: Node, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """reference() in float64; with a residual: act(conv + bias + residual)."""
    spec = node.attrs["spec"]
    spec = spec if isinstance(spec, ConvSpec) else ConvSpec.from_dict(spec)
    spec = spec.replace(dtype="float64")
    w, b = _param(node, "weight"), _param(node, "bias")
    if w is None:
        raise GraphError(f"{describe(node)}: needs the parameter weight")
    if spec.bias and b is None:
        raise GraphError(f"{describe(node)}: needs the parameter bias (spec.bias is True)")
    if residual is None:
        return reference(spec, x, w, b)
    y = reference(spec.replace(activation=None), x, w, b) + residual
    return apply_activation(spec.activation, spec.activation_args, y)


def _windows(window: PoolWindow, out: tuple[int, ...]):
    """Per kernel tap: the strided slices of the padded input that the tap reads."""
    for tap in itertools.product(*(range(k) for k in window.kernel_size)):
        yield tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                    for t, s, d, o in zip(tap, window.stride, window.dilation, out))


def _pad_for(window: PoolWindow, spatial: tuple[int, ...], out: tuple[int, ...]):
    """(lo, hi) per spatial dim: the padding plus any ceil_mode overhang past it."""
    pads = []
    for size, k, s, p, e, d, o in zip(spatial, window.kernel_size, window.stride,
                                      window.padding, window.padding_end, window.dilation, out):
        needed = (o - 1) * s + d * (k - 1) + 1
        pads.append((p, max(e, needed - size - p)))
    return ((0, 0), (0, 0)) + tuple(pads)


def _max_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """max over each window; padding and overhang are -inf, so only real elements count."""
    window = pool_window(node, x.shape)
    out = infer_shape(node, [x.shape])[2:]
    xp = np.pad(x, _pad_for(window, x.shape[2:], out), constant_values=-np.inf)
    y = np.full(x.shape[:2] + out, -np.inf)
    lead = (slice(None), slice(None))
    for taps in _windows(window, out):
        y = np.maximum(y, xp[lead + taps])  # np.maximum propagates NaN, as torch
    return y


def _max_pool_indices(node: Node, x: np.ndarray) -> np.ndarray:
    """ONNX MaxPool's Indices: per window the flattened index of its first maximum (taps
    in row-major order, the first element not in the padding, then each larger one)."""
    window = pool_window(node, x.shape)
    out = infer_shape(node, [x.shape])[2:]
    spatial = x.shape[2:]
    pads = _pad_for(window, spatial, out)
    xp = np.pad(x, pads, constant_values=np.nan)
    # each padded position's index within its channel, -1 in the padding
    grids = np.meshgrid(*(np.arange(-lo, n + hi) for n, (lo, hi) in zip(spatial, pads[2:])),
                        indexing="ij")
    inside = np.ones(grids[0].shape, dtype=bool)
    for g, n in zip(grids, spatial):
        inside &= (g >= 0) & (g < n)
    order = range(len(spatial)) if node.attrs.get("storage_order", 0) else \
        reversed(range(len(spatial)))  # the fastest dim first
    flat, stride = np.zeros(grids[0].shape, dtype=np.int64), 1
    for d in order:
        flat += grids[d] * stride
        stride *= spatial[d]
    flat = np.where(inside, flat, -1)
    best = np.full(x.shape[:2] + out, np.nan)
    index = np.full(x.shape[:2] + out, -1, dtype=np.int64)
    lead = (slice(None), slice(None))
    for taps in _windows(window, out):
        v, at = xp[lead + taps], np.broadcast_to(flat[taps], best.shape)
        take = (at >= 0) & ((index < 0) | (v > best))
        best = np.where(take, v, best)
        index = np.where(take, at, index)
    volume = int(np.prod(spatial))
    channel = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * len(out))
    return np.where(index >= 0, index + channel * volume, -1).astype(np.float64)


def _avg_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """sum over each window / divisor (PyTorch's, including its ceil_mode rule)."""
    window = pool_window(node, x.shape)
    out = infer_shape(node, [x.shape])[2:]
    xp = np.pad(x, _pad_for(window, x.shape[2:], out))
    total = np.zeros(x.shape[:2] + out)
    lead = (slice(None), slice(None))
    for taps in _windows(window, out):
        total += xp[lead + taps]
    # Windows are boxes, so the divisor is a product of per-dim counts of the taps
    # (dilated: start + t * d): those inside the padded input with count_include_pad (as
    # PyTorch, never the ceil_mode overhang past it), else those inside the input.
    divisor = np.ones(out)
    for i, (size, k, s, p, e, d, o) in enumerate(zip(x.shape[2:], window.kernel_size,
                                                     window.stride, window.padding,
                                                     window.padding_end, window.dilation,
                                                     out)):
        taps = (np.arange(o) * s - p)[:, None] + np.arange(k)[None, :] * d
        low, high = (-p, size + e) if window.count_include_pad else (0, size)
        count = ((taps >= low) & (taps < high)).sum(axis=1)
        shape = [1] * len(out)
        shape[i] = o
        divisor = divisor * count.reshape(shape)
    return total / divisor


def _adaptive_avg_pool(node: Node, x: np.ndarray) -> np.ndarray:
    """Mean over PyTorch's bins; a box mean is the per-dim means in turn."""
    out = adaptive_output_size(node, x.shape)
    y = x
    for i, o in enumerate(out):
        axis = 2 + i
        parts = [np.take(y, range(start, end), axis=axis).mean(axis=axis, keepdims=True)
                 for start, end in adaptive_bins(x.shape[axis], o)]
        y = np.concatenate(parts, axis=axis)
    return y


def _linear(node: Node, x: np.ndarray) -> np.ndarray:
    y = x @ _param(node, "weight").T
    b = _param(node, "bias")
    if b is not None:
        y = y + b
    return apply_activation(node.attrs.get("activation"),
                            tuple(node.attrs.get("activation_args") or ()), y)


def _flatten(node: Node, x: np.ndarray) -> np.ndarray:
    return x.reshape(infer_shape(node, [x.shape]))


def _activation(node: Node, x: np.ndarray) -> np.ndarray:
    return apply_activation(node.attrs.get("name"), tuple(node.attrs.get("args") or ()), x)


def _softmax(node: Node, x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=node.attrs["dim"], keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=node.attrs["dim"], keepdims=True)


def _log_softmax(node: Node, x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=node.attrs["dim"], keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=node.attrs["dim"], keepdims=True))


def _batch_norm(node: Node, x: np.ndarray) -> np.ndarray:
    """Inference: (x - mean) / sqrt(var + eps) * weight + bias over channel dim 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = _param(node, "running_mean").reshape(shape)
    var = _param(node, "running_var").reshape(shape)
    weight, bias = _param(node, "weight"), _param(node, "bias")
    y = (x - mean) / np.sqrt(var + float(node.attrs.get("eps", 1e-5)))
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _add(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def _cat(node: Node, *arrays: np.ndarray) -> np.ndarray:
    return np.concatenate(arrays, axis=node.attrs.get("dim", 0))


def _identity(node: Node, x: np.ndarray) -> np.ndarray:
    return x.copy()


_OPS = {
    "conv": _conv,
    "max_pool": _max_pool,
    "max_pool_indices": _max_pool_indices,
    "avg_pool": _avg_pool,
    "adaptive_avg_pool": _adaptive_avg_pool,
    "linear": _linear,
    "flatten": _flatten,
    "activation": _activation,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "batch_norm": _batch_norm,
    "add": _add,
    "cat": _cat,
    "identity": _identity,
    **REFERENCES,
    "resample": reference_resample,
}

assert set(_OPS) == set(OPS), "every op needs an oracle"
