"""ONNX import, the shared part: values, the graph builder and the arithmetic helpers.

A value during import is either a :class:`Tensor` (computed at run time by a graph node,
or a graph input) or a NumPy array (a constant: an initializer, a Constant node, or
anything computed from constants only, folded here with NumPy). Operator handlers
(:mod:`convgen.onnx.layers` for layers, :mod:`convgen.onnx.tensors` for shape arithmetic
and data movement) read their inputs as such values and emit graph nodes through a
:class:`Context`; each node's shape comes from :func:`convgen.graph.shapes.infer_shape`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from convgen.errors import OnnxImportError
from convgen.graph.ir import Graph, GraphError, Node
from convgen.graph.shapes import infer_shape
from convgen.reference import apply_activation

# The most elements a constant folded at import may hold (2 GiB at 8 bytes an element).
# Folding runs NumPy on whatever the file asks for, so a few bytes of ONNX (a
# ConstantOfShape of 65536 x 65536, a Range to 3e9) could otherwise exhaust memory. Real
# folded constants are exporters' shape arithmetic (a handful of values) and weights
# (VGG-16's largest, 25088 x 4096, has 1e8 elements), all well under the limit.
MAX_FOLDED_ELEMENTS = 2**28


@dataclass(frozen=True)
class Tensor:
    """A run-time value: a graph input or a node's output, with its static shape; ``dtype``
    is None for the network's element type, else what ONNX says the value is (int64 for
    MaxPool's Indices, computed in the network's element type and cast at the output)."""

    name: str
    shape: tuple[int, ...]
    dtype: str | None = None


Value = Union[Tensor, np.ndarray]
Handler = Callable[["Context", list], list]


def is_const(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def shape_of(value: Value) -> tuple[int, ...]:
    return value.shape if isinstance(value, Tensor) else tuple(value.shape)


class Builder:
    """Collects the graph nodes of one import; every node name unique."""

    def __init__(self, inputs: list[tuple[str, tuple[int, ...]]], integer: bool = False):
        self.inputs = inputs
        # the model computes in an integer element type: no float rewrites (a constant
        # per-channel operand as a batch_norm, division as multiplication by 1 / c)
        self.integer = integer
        self.nodes: list[Node] = []
        self.names: set[str] = {name for name, _ in inputs}

    def unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.names:
            candidate = f"{name}_{k}"
            k += 1
        self.names.add(candidate)
        return candidate

    def graph(self, outputs: list[str]) -> Graph:
        return Graph(list(self.inputs), self.nodes, outputs)


class Context:
    """One ONNX node being imported: its attributes, opset, and how to emit nodes for it."""

    def __init__(self, builder: Builder, node: Any, label: str, attrs: dict, opset: int):
        self.builder = builder
        self.node = node
        self.op_type = node.op_type
        self.label = label  # the node's name, or "{op_type}_{index}" when it has none
        self.attrs = attrs
        self.opset = opset

    # -- errors and attributes ---------------------------------------------------------
    def error(self, message: str) -> OnnxImportError:
        return OnnxImportError(f"node {self.label!r} ({self.op_type}): {message}")

    def check_folded(self, shape: Sequence[int], itemsize: int = 8,
                     what: str = "the folded constant") -> None:
        """Refuse, before NumPy allocates it, a constant of ``shape`` larger than
        MAX_FOLDED_ELEMENTS (an OnnxImportError naming the node, the size and the limit)."""
        count = math.prod(int(d) for d in shape)
        if count > MAX_FOLDED_ELEMENTS:
            raise self.error(f"{what} would have shape {tuple(int(d) for d in shape)}: "
                             f"{count} elements ({count * itemsize} bytes); a constant "
                             f"folded at import may hold at most {MAX_FOLDED_ELEMENTS} "
                             "elements (MAX_FOLDED_ELEMENTS)")

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def ints(self, name: str, default: Sequence[int] | None, count: int | None = None,
             ) -> tuple[int, ...] | None:
        """An ints attribute as a tuple (``default`` when absent), of ``count`` entries."""
        value = self.attrs.get(name)
        if value is None:
            return None if default is None else tuple(default)
        if isinstance(value, (int, np.integer)):
            value = (value,)
        value = tuple(int(v) for v in value)
        if count is not None and len(value) != count:
            raise self.error(f"attribute {name}={list(value)} must have {count} entries")
        return value

    def const(self, value: Value | None, what: str) -> np.ndarray:
        """``value`` as a constant array; an error naming ``what`` when computed at run time."""
        if value is None:
            raise self.error(f"needs the input {what}")
        if not is_const(value):
            if any(value.name == name for name, _ in self.builder.inputs):
                raise self.error(f"{what} must be a constant, but it is the graph input "
                                 f"{value.name!r}, which convgen reads as run-time data; "
                                 f"fix it with compile(constants={{{value.name!r}: array}})")
            raise self.error(f"{what} must be a constant (an initializer or computed from "
                             f"constants), but it is computed at run time from {value.name!r}")
        return value

    def tensor(self, value: Value, role: str = "const") -> Tensor:
        """``value`` as a run-time tensor: a constant becomes a ``constant`` node."""
        if isinstance(value, Tensor):
            return value
        if value.dtype.kind not in "biuf":
            raise self.error(f"cannot use a constant of dtype {value.dtype} as a tensor")
        if value.size == 0:
            raise self.error(f"cannot use an empty constant of shape {value.shape} as a tensor")
        self.check_folded(value.shape, 8, "the constant tensor")  # copied below
        # integers stay integers (exact beyond 2**53, for integer networks)
        return self.emit("constant", [], role=role, params={"value": np.array(
            value, dtype=value.dtype if value.dtype.kind in "iu" else np.float64)})

    # -- emitting nodes ----------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Tensor], attrs: dict | None = None,
             params: dict | None = None, role: str | None = None) -> Tensor:
        """Add one graph node (named after the ONNX node, ``/role`` for helpers)."""
        name = self.builder.unique(self.label if role is None else f"{self.label}/{role}")
        node = Node(name, op, [t.name for t in inputs], dict(attrs or {}),
                    {k: _param_array(v) for k, v in (params or {}).items()},
                    module=self.op_type)
        try:
            node.shape = infer_shape(node, [t.shape for t in inputs])
        except GraphError as exc:
            raise self.error(str(exc)) from None
        self.builder.nodes.append(node)
        return Tensor(name, node.shape)

    def reshape(self, x: Tensor, shape: Sequence[int], role: str | None = None) -> Tensor:
        shape = tuple(int(s) for s in shape)
        if shape == x.shape:
            return x
        return self.emit("reshape", [x], {"shape": shape}, role=role)

    def expand(self, x: Tensor, shape: tuple[int, ...], role: str = "expand") -> Tensor:
        if x.shape == shape:
            return x
        return self.emit("expand", [x], {"shape": shape}, role=role)

    def transpose(self, x: Value, perm: Sequence[int], role: str | None = None) -> Value:
        perm = tuple(int(p) for p in perm)
        if perm == tuple(range(len(perm))):
            return x
        if is_const(x):
            return np.transpose(x, perm)
        return self.emit("transpose", [x], {"perm": perm}, role=role)

    def activation(self, x: Value, name: str, args: tuple = (),
                   role: str | None = None) -> Value:
        if is_const(x):
            return apply_activation(name, tuple(args), x)
        return self.emit("activation", [x], {"name": name, "args": tuple(args)}, role=role)


def _param_array(value) -> np.ndarray:
    """A node parameter as the graph keeps it: float64, integers as they are (exact)."""
    value = np.asarray(value)
    return value if value.dtype.kind in "iu" else np.asarray(value, dtype=np.float64)


def broadcast(ctx: Context, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ctx.error(f"shapes {', '.join(map(str, shapes))} do not broadcast") from None


# -- elementwise arithmetic -------------------------------------------------------------

def _fold_prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    return np.where(x < 0, x * slope, x).astype(np.result_type(x, slope))


_FOLD = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
         "min": np.minimum, "prelu": _fold_prelu}


def fold_binary(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if kind == "div":
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # ONNX integer division truncates
            return np.trunc(a / b).astype(np.result_type(a, b))
        return np.divide(a, b)
    return _FOLD[kind](a, b)


def _per_channel(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``c`` as one value per channel (dim 1) of ``shape`` when it varies along dim 1 only."""
    if len(shape) < 2 or c.ndim > len(shape):
        return None
    aligned = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    if any(n != 1 for i, n in enumerate(aligned.shape) if i != 1):
        return None
    channels = np.broadcast_to(aligned.reshape(aligned.shape[1]), (shape[1],))
    return np.array(channels, dtype=np.float64)


def affine(ctx: Context, x: Tensor, scale: np.ndarray, shift: np.ndarray,
           role: str | None = None) -> Tensor:
    """x * scale + shift per channel, as a ``batch_norm`` node (folds into a conv before it)."""
    channels = x.shape[1]
    return ctx.emit("batch_norm", [x], {"eps": 0.0}, role=role, params={
        "running_mean": np.zeros(channels), "running_var": np.ones(channels),
        "weight": np.broadcast_to(scale, (channels,)), "bias": np.broadcast_to(shift, (channels,))})


def arith(ctx: Context, kind: str, a: Value, b: Value, role: str | None = None) -> Value:
    """a (kind) b with NumPy broadcasting; kind: one of graph.tensor_ops.BINARY_KINDS (add,
    sub, mul, div, max, min, prelu)."""
    out = broadcast(ctx, shape_of(a), shape_of(b))
    if is_const(a) and is_const(b):
        ctx.check_folded(out, np.result_type(a, b).itemsize)
        return fold_binary(kind, a, b)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        a = ctx.expand(a, out, role="expand_a")
        b = ctx.expand(b, out, role="expand_b")
        if kind == "add":
            return ctx.emit("add", [a, b], role=role)
        return ctx.emit("binary", [a, b], {"kind": kind}, role=role)
    x, c, x_first = (a, b, True) if isinstance(a, Tensor) else (b, a, False)
    x = ctx.expand(x, out)
    per = None if ctx.builder.integer else _per_channel(np.asarray(c, dtype=np.float64), out)
    if per is not None and kind in ("add", "sub", "mul", "div") and (x_first or kind != "div"):
        ones, zeros = np.ones_like(per), np.zeros_like(per)
        with np.errstate(divide="ignore"):  # every entry is built; x / 0 is inf, as IEEE
            scale, shift = {
                "add": (ones, per),
                "sub": (ones, -per) if x_first else (-ones, per),
                "mul": (per, zeros),
                "div": (1.0 / per, zeros),
            }[kind]
        return affine(ctx, x, scale, shift, role=role)
    c_tensor = ctx.tensor(np.broadcast_to(c, out), role="const")
    pair = [x, c_tensor] if x_first else [c_tensor, x]
    return ctx.emit("binary", pair, {"kind": kind}, role=role)


def legacy_broadcast(ctx: Context, a: Value, b: Value) -> Value:
    """Opset < 7 Add/Sub/Mul/Div: with broadcast=1, B's dims line up with A's from ``axis``."""
    if not ctx.attr("broadcast", 0):
        if shape_of(a) != shape_of(b):
            raise ctx.error(f"shapes {shape_of(a)} and {shape_of(b)} differ and "
                            "broadcast=0 (opset < 7 needs broadcast=1 to broadcast)")
        return b
    rank_a, shape_b = len(shape_of(a)), shape_of(b)
    axis = ctx.attr("axis")
    axis = rank_a - len(shape_b) if axis is None else int(axis) % max(rank_a, 1)
    if axis + len(shape_b) > rank_a:
        raise ctx.error(f"B of shape {shape_b} does not fit A of shape {shape_of(a)} at "
                        f"axis {axis}")
    target = (1,) * axis + shape_b + (1,) * (rank_a - axis - len(shape_b))
    if is_const(b):
        return b.reshape(target)
    return ctx.reshape(b, target, role="broadcast")


def matmul(ctx: Context, a: Value, b: Value, role: str | None = None) -> Value:
    """numpy.matmul: batch dims broadcast (``expand``), 1-d operands promoted and dropped."""
    if is_const(a) and is_const(b):
        if a.ndim >= 2 and b.ndim >= 2:
            ctx.check_folded(broadcast(ctx, a.shape[:-2], b.shape[:-2])
                             + (a.shape[-2], b.shape[-1]), np.result_type(a, b).itemsize)
        return np.matmul(a, b)
    sa, sb = shape_of(a), shape_of(b)
    if not sa or not sb:
        raise ctx.error(f"MatMul needs operands of rank >= 1, got shapes {sa} and {sb}")
    a_vec, b_vec = len(sa) == 1, len(sb) == 1
    sa = (1,) + sa if a_vec else sa
    sb = sb + (1,) if b_vec else sb
    if sa[-1] != sb[-2]:
        raise ctx.error(f"cannot multiply shapes {shape_of(a)} and {shape_of(b)} "
                        f"({sa[-1]} != {sb[-2]})")
    batch = broadcast(ctx, sa[:-2], sb[:-2])
    if not batch:
        batch = (1,)  # matmul needs equal leading dims; rank-2 operands get a 1
    operands = []
    for value, shape, tag in ((a, sa, "a"), (b, sb, "b")):
        tensor = ctx.tensor(value, role=f"const_{tag}")
        tensor = ctx.reshape(tensor, (1,) * (len(batch) + 2 - len(shape)) + shape,
                             role=f"rank_{tag}")
        operands.append(ctx.expand(tensor, batch + shape[-2:], role=f"expand_{tag}"))
    y = ctx.emit("matmul", operands, role=None if role is None else f"{role}/matmul")
    full = broadcast(ctx, shape_of(a)[:-2] if not a_vec else (),
                     shape_of(b)[:-2] if not b_vec else ())
    final = full + ((sa[-2],) if not a_vec else ()) + ((sb[-1],) if not b_vec else ())
    return ctx.reshape(y, final, role=role if role is not None else "result")


__all__ = ["MAX_FOLDED_ELEMENTS", "Builder", "Context", "OnnxImportError", "Tensor", "affine",
           "arith", "broadcast", "fold_binary", "is_const", "legacy_broadcast", "matmul", "shape_of"]
