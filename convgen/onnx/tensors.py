"""ONNX data-movement and shape operators: Reshape, Flatten, Transpose, Concat, Split, Pad
(constant, reflect, edge, wrap), Expand, Squeeze/Unsqueeze, Slice (any steps) and Where on
run-time tensors (graph nodes), and constant folding
with NumPy of the shape arithmetic exporters emit (Shape, Gather, ConstantOfShape, Cast,
Range, ...) so that such subgraphs disappear on static shapes.

Handlers follow :mod:`convgen.onnx.layers`: ``handler(ctx, inputs) -> outputs``.
"""

from __future__ import annotations

import math

import numpy as np

from convgen.onnx.ops import Context, Tensor, Value, broadcast, is_const, shape_of

# ONNX TensorProto data types -> NumPy (the ones shape arithmetic and weights use)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
          7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32,
          13: np.uint64}


def _axis(ctx: Context, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ctx.error(f"{what}={axis} is out of range for rank {rank}")
    return axis % rank


def _ints_input(ctx: Context, value: Value | None, what: str) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(ctx.const(value, what)).reshape(-1))


# -- constants --------------------------------------------------------------------------

def constant(ctx: Context, inputs: list) -> list:
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if name in ctx.attrs:
            value = ctx.attrs[name]
            if name in ("value_float", "value_floats"):
                return [np.array(value, dtype=np.float32)]
            if name in ("value_int", "value_ints"):
                return [np.array(value, dtype=np.int64)]
            return [np.asarray(value)]
    given = ", ".join(sorted(ctx.attrs)) or "none"
    raise ctx.error(f"needs one of value, value_float(s), value_int(s) (sparse and string "
                    f"constants are not supported); attributes given: {given}")


def shape(ctx: Context, inputs: list) -> list:
    dims = shape_of(inputs[0])
    rank = len(dims)
    start = int(ctx.attr("start", 0))
    end = ctx.attr("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else int(end)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return [np.array(dims[start:end], dtype=np.int64)]


def constant_of_shape(ctx: Context, inputs: list) -> list:
    dims = _ints_input(ctx, inputs[0], "input (the shape)")
    if any(d < 0 for d in dims):
        raise ctx.error(f"shape {list(dims)} has a negative dim")
    value = ctx.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if value.size == 0:
        raise ctx.error("the attribute value is empty (it needs one element)")
    ctx.check_folded(dims, value.dtype.itemsize)
    return [np.full(dims, value[0], dtype=value.dtype)]


def cast(ctx: Context, inputs: list) -> list:
    to = int(ctx.attr("to", 0))
    if to not in DTYPES:
        raise ctx.error(f"cast to ONNX data type {to} is not supported")
    x = inputs[0]
    if is_const(x):
        return [x.astype(DTYPES[to])]
    if np.dtype(DTYPES[to]).kind != "f":
        raise ctx.error(f"cannot cast the run-time tensor {x.name!r} to {np.dtype(DTYPES[to])} "
                        "(convgen computes in floating point)")
    return [x]


def gather(ctx: Context, inputs: list) -> list:
    data = ctx.const(inputs[0], "data")
    indices = np.asarray(ctx.const(inputs[1], "indices")).astype(np.int64)
    axis = _axis(ctx, int(ctx.attr("axis", 0)), data.ndim)
    size = data.shape[axis]
    ctx.check_folded(data.shape[:axis] + indices.shape + data.shape[axis + 1:],
                     data.dtype.itemsize)
    if np.any(indices < -size) or np.any(indices >= size):
        raise ctx.error(f"indices {indices.tolist()} out of range for dim {axis} of size {size}")
    return [np.take(data, np.where(indices < 0, indices + size, indices), axis=axis)]


def range_op(ctx: Context, inputs: list) -> list:
    start, limit, delta = (ctx.const(v, what) for v, what in zip(inputs, ("start", "limit",
                                                                          "delta")))
    if delta.item() == 0:
        raise ctx.error("delta must not be 0")
    steps = (limit.item() - start.item()) / delta.item()
    if not math.isfinite(steps):
        raise ctx.error(f"Range({start.item()}, {limit.item()}, {delta.item()}) is not finite")
    ctx.check_folded((max(math.ceil(steps), 0),), start.dtype.itemsize)
    return [np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)]


def _fold_only(function, arity: int = 1):
    def handler(ctx: Context, inputs: list) -> list:
        values = [ctx.const(v, f"input {i}") for i, v in enumerate(inputs[:arity])]
        ctx.check_folded(broadcast(ctx, *(v.shape for v in values)))
        return [np.asarray(function(*values))]
    return handler


def _pow(a, b):
    return np.power(a, b).astype(a.dtype)


# -- data movement ----------------------------------------------------------------------

def reshape(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    dims = list(_ints_input(ctx, inputs[1] if len(inputs) > 1 else None, "shape"))
    old = shape_of(x)
    allowzero = ctx.opset >= 14 and bool(ctx.attr("allowzero", 0))
    for i, d in enumerate(dims):
        if d == 0 and not allowzero:
            if i >= len(old):
                raise ctx.error(f"shape {dims}: 0 at index {i} copies a dim the input "
                                f"(shape {old}) does not have")
            dims[i] = old[i]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ctx.error(f"shape {dims} may hold at most one -1 and no other negative value")
    total = math.prod(old)
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or total % known:
            raise ctx.error(f"cannot reshape {old} to {dims}")
        dims[dims.index(-1)] = total // known
    if math.prod(dims) != total:
        raise ctx.error(f"cannot reshape {old} ({total} elements) to {dims}")
    if 0 in dims:
        raise ctx.error(f"shape {dims}: empty tensors are not supported")
    if is_const(x):
        return [x.reshape(dims)]
    return [ctx.reshape(x, dims)]


def flatten(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    old = shape_of(x)
    axis = int(ctx.attr("axis", 1))
    if not -len(old) <= axis <= len(old):
        raise ctx.error(f"axis={axis} is out of range for an input of shape {old}")
    axis = axis + len(old) if axis < 0 else axis
    dims = (math.prod(old[:axis]), math.prod(old[axis:]))
    if is_const(x):
        return [x.reshape(dims)]
    if dims == old:
        return [x]
    if axis == 1 and len(old) >= 2:  # (a 1-d input with axis 1 is a reshape to (n, 1))
        return [ctx.emit("flatten", [x], {"start_dim": 1, "end_dim": -1})]
    return [ctx.reshape(x, dims)]


def transpose(ctx: Context, inputs: list) -> list:
    rank = len(shape_of(inputs[0]))
    perm = ctx.ints("perm", tuple(reversed(range(rank))))
    if sorted(perm) != list(range(rank)):
        raise ctx.error(f"perm={list(perm)} is not a permutation of the {rank} dims")
    return [ctx.transpose(inputs[0], perm)]


def _raw_axes(ctx: Context, inputs: list) -> tuple[int, ...] | None:
    """The axes attribute (opset < 13) or input (opset >= 13); None when absent."""
    if ctx.opset >= 13:
        axes = inputs[1] if len(inputs) > 1 else None
        return None if axes is None else _ints_input(ctx, axes, "axes")
    return ctx.ints("axes", None)


def _axes(ctx: Context, axes: tuple[int, ...], rank: int) -> tuple[int, ...]:
    axes = tuple(_axis(ctx, a, rank, "axes") for a in axes)
    if len(set(axes)) != len(axes):
        raise ctx.error(f"axes {list(axes)} repeat a dim")
    return axes


def unsqueeze(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    old = shape_of(x)
    raw = _raw_axes(ctx, inputs)
    if raw is None:
        raise ctx.error("needs axes")
    axes = _axes(ctx, raw, len(old) + len(raw))
    dims, rest = [], iter(old)
    for i in range(len(old) + len(axes)):
        dims.append(1 if i in axes else next(rest))
    return [x.reshape(dims) if is_const(x) else ctx.reshape(x, dims)]


def squeeze(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    old = shape_of(x)
    raw = _raw_axes(ctx, inputs)
    if raw is None:
        axes = tuple(i for i, d in enumerate(old) if d == 1)
    else:
        axes = _axes(ctx, raw, len(old))
    if any(old[a] != 1 for a in axes):
        raise ctx.error(f"cannot squeeze axes {list(axes)} of shape {old}: not all of size 1")
    dims = tuple(d for i, d in enumerate(old) if i not in axes)
    return [x.reshape(dims) if is_const(x) else ctx.reshape(x, dims)]


def concat(ctx: Context, inputs: list) -> list:
    values = [v for v in inputs if v is not None]
    if not values:
        raise ctx.error("needs at least one input")
    rank = len(shape_of(values[0]))
    if ctx.attr("axis") is None:
        raise ctx.error("needs the attribute axis")
    axis = _axis(ctx, int(ctx.attr("axis")), max(rank, 1))
    shapes = [shape_of(v) for v in values]
    for s in shapes:
        if len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
            raise ctx.error(f"cannot concatenate shapes {shapes} on axis {axis}")
    values = [v for v, s in zip(values, shapes) if s[axis] > 0]
    if all(is_const(v) for v in values):
        ctx.check_folded(shapes[0][:axis] + (sum(s[axis] for s in shapes),)
                         + shapes[0][axis + 1:])
        return [np.concatenate(values, axis=axis)]
    if len(values) == 1:
        return [values[0]]
    tensors = [ctx.tensor(v, role=f"const{i}") for i, v in enumerate(values)]
    return [ctx.emit("cat", tensors, {"dim": axis})]


def expand(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    dims = broadcast(ctx, shape_of(x), _ints_input(ctx, inputs[1], "shape"))
    if is_const(x):
        ctx.check_folded(dims, x.dtype.itemsize)
        return [np.broadcast_to(x, dims).copy()]
    return [ctx.expand(x, dims, role=None)]


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _np_pad(x: np.ndarray, pads: tuple[int, ...], value: float,
            mode: str = "constant") -> np.ndarray:
    rank = x.ndim
    begin, end = pads[:rank], pads[rank:]
    if mode != "constant":  # numpy's reflect/edge/wrap are ONNX's; no crops (checked)
        return np.pad(x, list(zip(begin, end)), mode=mode)
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0))
                 for i, (b, e) in enumerate(zip(begin, end)))
    return np.pad(x[crop], [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)],
                  constant_values=value)


def _pad_mode(ctx: Context, pads: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """The mode attribute, checked against the pads: reflect/edge/wrap never crop, and
    reflect pads stay below the dim's size (ONNX Runtime's rule: a reflection of a
    reflection is not defined by the spec)."""
    mode = ctx.attr("mode", "constant") or "constant"
    if mode not in PAD_MODES or (mode == "wrap" and ctx.opset < 19):
        raise ctx.error(f"mode={mode!r} must be constant, reflect or edge (wrap from opset "
                        f"19; the model's opset is {ctx.opset})")
    rank = len(shape)
    if mode != "constant" and any(p < 0 for p in pads):
        raise ctx.error(f"pads {list(pads)}: mode {mode!r} does not crop (negative pads are "
                        "constant mode only)")
    if mode == "reflect":
        for axis, (size, lo, hi) in enumerate(zip(shape, pads[:rank], pads[rank:])):
            if max(lo, hi) >= size:
                raise ctx.error(f"pads {list(pads)}: reflect padding of axis {axis} must be "
                                f"smaller than its size {size} (got {max(lo, hi)})")
    return mode


def pad(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    rank = len(shape_of(x))
    if ctx.opset < 11:
        pads, value = ctx.ints("pads", None), float(ctx.attr("value", 0.0))
        if pads is None:
            raise ctx.error("needs the attribute pads")
    else:
        pads = _ints_input(ctx, inputs[1] if len(inputs) > 1 else None, "pads")
        given = inputs[2] if len(inputs) > 2 else None
        value = 0.0 if given is None else float(np.asarray(ctx.const(given, "constant_value"))
                                                .reshape(-1)[0])
        axes = inputs[3] if len(inputs) > 3 and ctx.opset >= 18 else None
        if axes is not None:
            axes = [_axis(ctx, a, rank, "axes") for a in _ints_input(ctx, axes, "axes")]
            if len(pads) != 2 * len(axes):
                raise ctx.error(f"pads {list(pads)} needs 2 entries per axis in {axes}")
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = pads[i], pads[len(axes) + i]
            pads = tuple(full)
    if len(pads) != 2 * rank:
        raise ctx.error(f"pads {list(pads)} needs {2 * rank} entries for rank {rank}")
    mode = _pad_mode(ctx, tuple(pads), shape_of(x))
    sizes = [n + b + e for n, b, e in zip(shape_of(x), pads[:rank], pads[rank:])]
    if any(s < 1 for s in sizes):
        raise ctx.error(f"pads {list(pads)} leave nothing of the input {shape_of(x)}")
    if not any(pads):
        return [x]
    if is_const(x):
        ctx.check_folded(sizes, x.dtype.itemsize)
        return [_np_pad(x, pads, value, mode)]
    attrs = {"pads": tuple(pads), "value": value}
    if mode != "constant":
        attrs["mode"] = mode
    return [ctx.emit("pad", [x], attrs)]


def slice_op(ctx: Context, inputs: list) -> list:
    x = inputs[0]
    old = shape_of(x)
    rank = len(old)
    if ctx.opset < 10:
        starts, ends = ctx.ints("starts", None), ctx.ints("ends", None)
        axes, steps = ctx.ints("axes", None), None
        if starts is None or ends is None:
            raise ctx.error("needs the attributes starts and ends")
    else:
        optional = [None if len(inputs) <= i or inputs[i] is None
                    else _ints_input(ctx, inputs[i], what)
                    for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
        starts, ends, axes, steps = optional
        if starts is None or ends is None:
            raise ctx.error("needs the inputs starts and ends")
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error("starts, ends, axes and steps must have the same length")
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ctx.error("steps must not be 0")
        index[_axis(ctx, axis, rank, "axes")] = slice(start, end, step)
    if is_const(x):
        return [x[tuple(index)]]
    ranges = [range(*part.indices(size)) for size, part in zip(old, index)]
    if any(len(r) == 0 for r in ranges):
        raise ctx.error(f"the slice of {old} is empty")
    if any(r.step != 1 for r in ranges):  # a strided remap (steps, negative ones too)
        return [ctx.emit("slice", [x], {"starts": tuple(r.start for r in ranges),
                                        "stops": tuple(r.stop for r in ranges),
                                        "steps": tuple(r.step for r in ranges)})]
    pads = tuple([-r.start for r in ranges] + [r.stop - size for r, size in zip(ranges, old)])
    if not any(pads):
        return [x]
    return [ctx.emit("pad", [x], {"pads": pads, "value": 0.0})]


def split(ctx: Context, inputs: list) -> list:
    """Split: parts from the split attribute (opset < 13) or input (opset >= 13), else
    num_outputs (opset 18; the last part may be smaller) or the output count (equal
    parts). Each part is a crop of the input (a pad node with negative pads)."""
    x = inputs[0]
    shape = shape_of(x)
    axis = _axis(ctx, int(ctx.attr("axis", 0)), max(len(shape), 1))
    size = shape[axis]
    count = len(ctx.node.output)
    if ctx.opset >= 13:
        given = inputs[1] if len(inputs) > 1 else None
        parts = None if given is None else _ints_input(ctx, given, "split")
    else:
        parts = ctx.ints("split", None)
        if parts is None and len(inputs) > 1 and inputs[1] is not None:  # Split-1's input
            parts = _ints_input(ctx, inputs[1], "split")
    if parts is None:
        wanted = ctx.attr("num_outputs") if ctx.opset >= 18 else None
        if wanted is not None:
            if int(wanted) != count or count < 1:
                raise ctx.error(f"num_outputs={wanted} but the node has {count} outputs")
            chunk = -(-size // count)
            parts = tuple(min(chunk, size - i * chunk) for i in range(count))
        else:
            if count < 1 or size % count:
                raise ctx.error(f"cannot split axis {axis} of size {size} into {count} equal "
                                "parts (give split)")
            parts = (size // count,) * count
    if len(parts) != count or any(p < 0 for p in parts) or sum(parts) != size:
        raise ctx.error(f"split {list(parts)} must have one non-negative size per output "
                        f"({count}) summing to the size {size} of axis {axis}")
    if any(p == 0 for p in parts):
        raise ctx.error(f"split {list(parts)}: empty outputs are not supported")
    results, start = [], 0
    rank = len(shape)
    for k, part in enumerate(parts):
        if is_const(x):
            results.append(np.take(x, range(start, start + part), axis=axis))
        elif part == size:
            results.append(x)
        else:
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = -start, start + part - size
            results.append(ctx.emit("pad", [x], {"pads": tuple(pads), "value": 0.0},
                                    role=None if k == 0 else f"part{k}"))
        start += part
    return results


def where(ctx: Context, inputs: list) -> list:
    """Where: folded on constants; else a ``where`` node on the three operands broadcast
    (a constant condition becomes 0/1; one that is all true or all false picks an input)."""
    cond, a, b = inputs[0], inputs[1], inputs[2]
    out = broadcast(ctx, shape_of(cond), shape_of(a), shape_of(b))
    if all(is_const(v) for v in (cond, a, b)):
        ctx.check_folded(out, np.result_type(a, b).itemsize)
        return [np.where(cond.astype(bool), a, b)]
    if is_const(cond) and (cond.astype(bool).all() or not cond.astype(bool).any()):
        chosen = a if cond.astype(bool).all() else b
        if is_const(chosen):
            ctx.check_folded(out, chosen.dtype.itemsize)
            return [np.broadcast_to(chosen, out).copy()]
        return [ctx.expand(chosen, out, role="expand")]
    operands = []
    for value, tag in ((cond, "condition"), (a, "x"), (b, "y")):
        if is_const(value):
            ctx.check_folded(out, 8, f"the broadcast {tag}")
            value = np.broadcast_to(value.astype(bool) if tag == "condition" else value, out)
        operands.append(ctx.expand(ctx.tensor(value, role=tag), out, role=f"expand_{tag}"))
    return [ctx.emit("where", operands)]


HANDLERS = {
    "Constant": constant, "Shape": shape, "ConstantOfShape": constant_of_shape, "Cast": cast,
    "Gather": gather, "Range": range_op, "Reshape": reshape, "Flatten": flatten,
    "Transpose": transpose, "Unsqueeze": unsqueeze, "Squeeze": squeeze, "Concat": concat,
    "Expand": expand, "Pad": pad, "Slice": slice_op, "Split": split, "Where": where,
    # on constants only: exporters' shape arithmetic
    "Neg": _fold_only(np.negative), "Abs": _fold_only(np.abs), "Sqrt": _fold_only(np.sqrt),
    "Exp": _fold_only(np.exp), "Log": _fold_only(np.log), "Floor": _fold_only(np.floor),
    "Ceil": _fold_only(np.ceil), "Reciprocal": _fold_only(np.reciprocal),
    "Not": _fold_only(np.logical_not), "Pow": _fold_only(_pow, 2),
    "Equal": _fold_only(np.equal, 2), "Less": _fold_only(np.less, 2),
    "Greater": _fold_only(np.greater, 2), "And": _fold_only(np.logical_and, 2),
    "Or": _fold_only(np.logical_or, 2),
}

__all__ = ["DTYPES", "HANDLERS", "Tensor"]
