"""Shape inference: the output shape of every graph op, with PyTorch's semantics.

:func:`infer_shape` checks one node against its input shapes and returns its output
shape; :func:`infer_graph` re-infers every node of a graph in order (to validate a graph
built by hand or loaded from a file). Anything invalid raises :class:`GraphError` naming
the node (``name (Module)``), the offending shapes or attribute and the rule.

Conventions chosen where ``ir.py`` is silent (documented here, relied on by the oracle):

- pooling: ``kernel_size``, ``stride`` and ``padding`` are required per-spatial-dim
  tuples (the tracer normalizes torch's ints and ``stride=None``; lowering reads them as
  tuples), their length gives the rank of the batched input ``(N, C, *spatial)``;
  ``dilation`` defaults to ones, ``ceil_mode`` to False,
  ``count_include_pad`` to True. ``padding <= kernel_size // 2`` as PyTorch;
- ``adaptive_avg_pool`` accepts any positive output size (PyTorch's overlapping bins,
  not only divisors of the input), an int for every dim, and None for "keep the input
  size", as ``nn.AdaptiveAvgPool2d``;
- ``softmax``/``log_softmax``/``cat``: ``dim`` must be in [0, rank) (``ir.py`` says
  non-negative; the tracer normalizes negative dims); ``flatten`` accepts negative
  start_dim/end_dim as torch; ``cat`` needs two or more inputs (``ir.py``);
- ``add`` does not broadcast;
- no value (graph input or node output) may hold more than MAX_VALUE_ELEMENTS elements.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from convgen.dtypes import is_int
from convgen.errors import SpecError
from convgen.activations import ACTIVATIONS
from convgen.spec import ConvSpec
from convgen.graph.ir import OPS, Graph, GraphError, Node, node_error
from convgen.graph.resample import resample_shape
from convgen.graph.tensor_ops import SHAPE_RULES

Shape = tuple[int, ...]

# The most elements one graph value (an input or a node's output) may hold. A value lives
# in the model's arena in its dtype and in float64 in the oracle (graph/reference.py):
# 2**30 elements are 4 GiB in float32 and 8 GiB in the oracle, far above the networks
# convgen targets (ResNet-50's largest activation at batch 256 has 2e8 elements), while a
# few bytes of ONNX (an Expand or Pad to 1.6e9 elements) would otherwise ask for more
# memory than a machine has, failing with a MemoryError deep in NumPy or the compiler.
MAX_VALUE_ELEMENTS = 2**30


_fail = node_error


def check_value_size(shape: Sequence[int]) -> str | None:
    """Why a value of ``shape`` is too large (its element count and the limit), or None."""
    count = math.prod(shape)
    if count <= MAX_VALUE_ELEMENTS:
        return None
    return (f"a value of shape {tuple(shape)} would hold {count} elements ({count * 4} "
            f"bytes in float32, {count * 8} in float64); a graph value may hold at most "
            f"{MAX_VALUE_ELEMENTS} elements (MAX_VALUE_ELEMENTS)")


# -- pooling windows ----------------------------------------------------------------------

@dataclass(frozen=True)
class PoolWindow:
    """A pooling node's attributes, normalized to per-spatial-dim tuples."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool
    padding_end: tuple[int, ...] = ()  # after each dim; () means the same as ``padding``

    def __post_init__(self) -> None:
        if not self.padding_end:
            object.__setattr__(self, "padding_end", self.padding)

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool, padding_end: int | None = None) -> int:
    """PyTorch's pooling output size (may be < 1; callers reject that).

    floor-or-ceil((in + p + p_end - d*(k-1) - 1) / s) + 1 (p_end defaults to p); with
    ceil_mode the last window must start inside the input or the left padding, else it
    is dropped (ONNX Runtime's rule too).
    """
    padding_end = padding if padding_end is None else padding_end
    span = size + padding + padding_end - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: [floor(i*in/out), ceil((i+1)*in/out)) per output i."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _per_dim(node: Node, name: str, value: object, ndim: int, minimum: int,
             allow_int: bool = False) -> tuple[int, ...]:
    if allow_int and is_int(value):
        values = (int(value),) * ndim
    elif isinstance(value, (tuple, list)) and len(value) == ndim and all(map(is_int, value)):
        values = tuple(int(v) for v in value)
    else:
        what = "an int or a tuple" if allow_int else "a tuple"
        raise _fail(node, f"{name}={value!r} must be {what} of {ndim} ints "
                          f"(one per spatial dim)")
    if any(v < minimum for v in values):
        raise _fail(node, f"{name}={value!r} must be >= {minimum}")
    return values


def _spatial_rank(node: Node, shape: Shape, per_dim_attr: object) -> int:
    """The number of spatial dims of a pooling input (N, C, *spatial), checked."""
    if isinstance(per_dim_attr, (tuple, list)):
        ndim = len(per_dim_attr)
        if not 1 <= ndim <= 3:
            raise _fail(node, f"{per_dim_attr!r} must have 1, 2 or 3 entries "
                              "(one per spatial dim)")
        if len(shape) != ndim + 2:
            raise _fail(node, f"expects a {ndim + 2}-d input (N, C and {ndim} spatial dims), "
                              f"got shape {shape}")
    else:
        ndim = len(shape) - 2
        if not 1 <= ndim <= 3:
            raise _fail(node, "expects a 3-d, 4-d or 5-d input (N, C, *spatial), "
                              f"got shape {shape}")
    return ndim


def pool_window(node: Node, input_shape: Shape) -> PoolWindow:
    """The normalized window of a ``max_pool``/``avg_pool`` node, checked against the input."""
    attrs = node.attrs
    for name in ("kernel_size", "stride", "padding"):
        if name not in attrs:
            raise _fail(node, f"needs the attribute {name} (a tuple per spatial dim)")
    ndim = _spatial_rank(node, input_shape, attrs["kernel_size"])
    kernel = _per_dim(node, "kernel_size", attrs["kernel_size"], ndim, 1)
    stride = _per_dim(node, "stride", attrs["stride"], ndim, 1)
    padding = _per_dim(node, "padding", attrs["padding"], ndim, 0)
    if node.op == "max_pool_indices" and attrs.get("storage_order", 0) not in (0, 1):
        raise _fail(node, f"storage_order={attrs['storage_order']!r} must be 0 or 1")
    dilation = _per_dim(node, "dilation", attrs.get("dilation", (1,) * ndim), ndim, 1)
    window = PoolWindow(kernel, stride, padding, dilation, bool(attrs.get("ceil_mode", False)),
                        bool(attrs.get("count_include_pad", True)))
    if "padding_end" in attrs:  # asymmetric (ONNX): each side short of the dilated kernel
        end = _per_dim(node, "padding_end", attrs["padding_end"], ndim, 0)
        for i, (k, d, p, e) in enumerate(zip(kernel, dilation, padding, end)):
            if max(p, e) > d * (k - 1):
                raise _fail(node, f"padding={padding}, padding_end={end}: each must be "
                                  f"smaller than the dilated kernel in spatial dim {i}")
        return PoolWindow(kernel, stride, padding, dilation, window.ceil_mode,
                          window.count_include_pad, end)
    for i, (k, p) in enumerate(zip(kernel, padding)):
        if p > k // 2:
            raise _fail(node, f"padding={padding} must be at most half of kernel_size={kernel} "
                              f"(as PyTorch) in spatial dim {i}")
    return window


def _pool_shape(node: Node, shape: Shape) -> Shape:
    w = pool_window(node, shape)
    out = tuple(pool_output_size(size, k, s, p, d, w.ceil_mode, e)
                for size, k, s, p, d, e in zip(shape[2:], w.kernel_size, w.stride, w.padding,
                                               w.dilation, w.padding_end))
    if any(o < 1 for o in out):
        raise _fail(node, f"input shape {shape} is too small for kernel_size={w.kernel_size}, "
                          f"stride={w.stride}, padding={w.padding}, dilation={w.dilation}: "
                          f"the output would be {out}")
    return shape[:2] + out


def adaptive_output_size(node: Node, input_shape: Shape) -> tuple[int, ...]:
    """The per-spatial-dim output size of an ``adaptive_avg_pool`` node (None -> input)."""
    size = node.attrs.get("output_size")
    ndim = _spatial_rank(node, input_shape, size)
    if isinstance(size, (tuple, list)):
        size = tuple(s if s is not None else input_shape[2 + i] for i, s in enumerate(size))
    return _per_dim(node, "output_size", size, ndim, 1, allow_int=True)


# -- one op at a time ---------------------------------------------------------------------

def _arity(node: Node, shapes: list[Shape], expected: int | None, minimum: int = 1) -> None:
    if expected is not None and len(shapes) != expected:
        raise _fail(node, f"{node.op} takes {expected} input(s), got {len(shapes)}")
    if len(shapes) < minimum:
        raise _fail(node, f"{node.op} takes at least {minimum} inputs, got {len(shapes)}")


def _dim(node: Node, dim: object, rank: int, name: str = "dim",
         negative: bool = False) -> int:
    """A dim in [0, rank) (also [-rank, 0) when ``negative``), as a non-negative index."""
    low = -rank if negative else 0
    if not is_int(dim) or not low <= dim < rank:
        raise _fail(node, f"{name}={dim!r} is out of range for a {rank}-d input "
                          f"(expected an int in [{low}, {rank - 1}])")
    return int(dim) % rank


def _conv_shape(node: Node, shapes: list[Shape]) -> Shape:
    residual = bool(node.attrs.get("residual", False))
    _arity(node, shapes, 2 if residual else 1)
    if "spec" not in node.attrs:
        raise _fail(node, "needs the attribute spec (a ConvSpec dict)")
    spec = node.attrs["spec"]
    if not isinstance(spec, (dict, ConvSpec)):
        raise _fail(node, f"spec must be a ConvSpec dict, got {type(spec).__name__}")
    try:
        spec = spec if isinstance(spec, ConvSpec) else ConvSpec.from_dict(spec)
    except SpecError as error:
        raise _fail(node, f"invalid spec: {error}") from error
    want, got = spec.input_shape, tuple(shapes[0])
    if len(got) != len(want):
        raise _fail(node, f"expects a {len(want)}-d input of shape {want}, got shape {got}")
    if got[1] != want[1]:
        raise _fail(node, f"expects input with {want[1]} channels, got shape {got}")
    if got[0] != want[0]:
        raise _fail(node, f"expects batch size {want[0]} (input shape {want}), "
                          f"got shape {got}")
    if got != want:
        raise _fail(node, f"expects spatial size {want[2:]} (input shape {want}), "
                          f"got shape {got}")
    _check_param(node, "weight", spec.weight_shape)
    if spec.bias:
        _check_param(node, "bias", spec.bias_shape)
    elif node.params.get("bias") is not None:
        raise _fail(node, "has a bias parameter but its spec says bias=False")
    out = spec.output_shape
    if residual and tuple(shapes[1]) != out:
        raise _fail(node, f"residual input has shape {tuple(shapes[1])}, "
                          f"expected the output shape {out}")
    return out


def _check_param(node: Node, name: str, expected: Shape) -> None:
    """A present parameter must have ``expected`` shape (absent ones are checked later)."""
    value = node.params.get(name)
    if value is not None and tuple(value.shape) != tuple(expected):
        raise _fail(node, f"parameter {name} has shape {tuple(value.shape)}, "
                          f"expected {tuple(expected)}")


def _check_activation(node: Node, name: object, args: object) -> None:
    if name is None or name == "none":
        return
    if name not in ACTIVATIONS:
        raise _fail(node, f"activation {name!r} is not one of {tuple(ACTIVATIONS)}")
    nargs, defaults = ACTIVATIONS[name]
    args = tuple(args or ())
    if (args or defaults is None) and len(args) != nargs:
        raise _fail(node, f"activation {name} takes {nargs} argument(s), got {args!r}")
    for arg in args:  # the arguments become literals in generated code
        if isinstance(arg, bool) or not isinstance(arg, numbers.Real) or \
                not math.isfinite(float(arg)):
            raise _fail(node, f"activation {name} argument {arg!r} must be a finite number")


def _linear_shape(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 1)
    weight = node.params.get("weight")
    if weight is None or weight.ndim != 2:
        raise _fail(node, "needs a 2-d parameter weight (out_features, in_features), got "
                          f"{None if weight is None else tuple(weight.shape)}")
    out_features, in_features = weight.shape
    shape = tuple(shapes[0])
    if not shape or shape[-1] != in_features:
        raise _fail(node, f"expects input with last dim {in_features} (in_features), "
                          f"got shape {shape}")
    _check_param(node, "bias", (out_features,))
    _check_activation(node, node.attrs.get("activation"), node.attrs.get("activation_args"))
    return shape[:-1] + (int(out_features),)


def _flatten_shape(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 1)
    shape = tuple(shapes[0])
    if not shape:
        return (1,)
    start = _dim(node, node.attrs.get("start_dim", 1), len(shape), "start_dim", True)
    end = _dim(node, node.attrs.get("end_dim", -1), len(shape), "end_dim", True)
    if start > end:
        raise _fail(node, f"start_dim={node.attrs.get('start_dim', 1)} comes after "
                          f"end_dim={node.attrs.get('end_dim', -1)} for input shape {shape}")
    return shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]


def _batch_norm_shape(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 1)
    shape = tuple(shapes[0])
    if len(shape) < 2:
        raise _fail(node, f"expects an input (N, C, *) of at least 2 dims, got shape {shape}")
    mean = node.params.get("running_mean")
    if mean is None:
        raise _fail(node, "needs the parameter running_mean")
    channels = len(mean)
    if shape[1] != channels:
        raise _fail(node, f"expects input with {channels} channels, got shape {shape}")
    for name in ("running_mean", "running_var", "weight", "bias"):
        _check_param(node, name, (channels,))
    if "running_var" not in node.params:
        raise _fail(node, "needs the parameter running_var")
    return shape


def _add_shape(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 2)
    a, b = (tuple(s) for s in shapes)
    if a != b:
        raise _fail(node, f"cannot add shapes {a} and {b} (add needs equal shapes; "
                          f"no broadcasting)")
    return a


def _cat_shape(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, None, minimum=2)
    shapes = [tuple(s) for s in shapes]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise _fail(node, f"cat needs inputs of equal rank, got shapes {shapes}")
    dim = _dim(node, node.attrs.get("dim", 0), rank)
    for s in shapes[1:]:
        if s[:dim] + s[dim + 1:] != shapes[0][:dim] + shapes[0][dim + 1:]:
            raise _fail(node, f"cat on dim {dim} needs every other dim equal, "
                              f"got shapes {shapes}")
    return shapes[0][:dim] + (sum(s[dim] for s in shapes),) + shapes[0][dim + 1:]


def _same_shape(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 1)
    shape = tuple(shapes[0])
    if node.op in ("softmax", "log_softmax"):
        _dim(node, node.attrs.get("dim"), len(shape))
    elif node.op == "activation":
        _check_activation(node, node.attrs.get("name"), node.attrs.get("args"))
    return shape


def _pool(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 1)
    return _pool_shape(node, tuple(shapes[0]))


def _adaptive(node: Node, shapes: list[Shape]) -> Shape:
    _arity(node, shapes, 1)
    shape = tuple(shapes[0])
    return shape[:2] + adaptive_output_size(node, shape)


_RULES = {
    "conv": _conv_shape,
    "max_pool": _pool,
    "max_pool_indices": _pool,
    "avg_pool": _pool,
    "adaptive_avg_pool": _adaptive,
    "linear": _linear_shape,
    "flatten": _flatten_shape,
    "activation": _same_shape,
    "softmax": _same_shape,
    "log_softmax": _same_shape,
    "batch_norm": _batch_norm_shape,
    "add": _add_shape,
    "cat": _cat_shape,
    "identity": _same_shape,
    **SHAPE_RULES,
    "resample": resample_shape,
}
assert set(_RULES) == set(OPS), "every op needs a shape rule"


def infer_shape(node: Node, input_shapes: Sequence[Shape]) -> Shape:
    """The output shape of ``node`` given its inputs' shapes; GraphError when invalid."""
    rule = _RULES.get(node.op)
    if rule is None:
        raise _fail(node, f"unknown op {node.op!r} (expected one of {OPS})")
    shape = tuple(int(v) for v in rule(node, [tuple(s) for s in input_shapes]))
    too_large = check_value_size(shape)
    if too_large:
        raise _fail(node, too_large)
    return shape


def infer_graph(graph: Graph) -> None:
    """Re-infer every node's ``.shape`` in order from ``graph.inputs`` (in place).

    Raises GraphError for a duplicate name, an input that is neither a graph input nor an
    earlier node, an invalid node, or an output that names nothing.
    """
    shapes: dict[str, Shape] = {}
    for name, shape in graph.inputs:
        if name in shapes:
            raise GraphError(f"graph input {name!r} is declared twice")
        shapes[name] = tuple(shape)
        too_large = check_value_size(shapes[name])
        if too_large:
            raise GraphError(f"graph input {name!r}: {too_large}")
    for node in graph.nodes:
        if node.name in shapes:
            raise _fail(node, "the name is already used by a graph input or an earlier node")
        missing = [name for name in node.inputs if name not in shapes]
        if missing:
            raise _fail(node, f"input(s) {missing} are neither graph inputs nor earlier nodes")
        node.shape = infer_shape(node, [shapes[name] for name in node.inputs])
        shapes[node.name] = node.shape
    for name in graph.outputs:
        if name not in shapes:
            raise GraphError(f"graph output {name!r} is neither a graph input nor a node")
