"""Tensor ops imported graphs need: shape rules, NumPy references and lowering constants.

``reshape``, ``transpose``, ``pad``, ``slice``, ``expand``, ``lrn``, ``binary``,
``where``, ``matmul`` and ``constant`` (their attributes are documented in
:mod:`convgen.graph.ir`). The shape rules raise :class:`GraphError` naming the node; the
references are plain NumPy in float64. ``transpose``, ``pad``, ``slice`` and ``expand``
all lower to one ``remap`` step: every output element reads the input at a base offset
plus a linear function of per-dim coordinates, where each coordinate is the output
index (minus a begin) either as it is, or, for the pad modes, through a closed-form
index map (reflect, edge, wrap), or a fill value where it falls outside the input
(constant pad) (:func:`remap_consts`). The generated loop computes the maps, so the
source size does not depend on the tensor size.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from convgen.dtypes import is_int
from convgen.graph.ir import Node
from convgen.graph.ir import node_error as _fail

Shape = tuple[int, ...]

BINARY_KINDS = ("add", "sub", "mul", "div", "max", "min", "prelu")
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _ints(node: Node, name: str, value: object, length: int | None = None,
          minimum: int | None = None) -> tuple[int, ...]:
    """Attribute ``name`` as a tuple of ints (of ``length``, each >= ``minimum``)."""
    if not isinstance(value, (tuple, list)) or not all(map(is_int, value)):
        raise _fail(node, f"{name}={value!r} must be a tuple of ints")
    values = tuple(int(v) for v in value)
    if length is not None and len(values) != length:
        raise _fail(node, f"{name}={value!r} must have {length} entries")
    if minimum is not None and any(v < minimum for v in values):
        raise _fail(node, f"{name}={value!r}: every entry must be >= {minimum}")
    return values


def _real(node: Node, name: str, value: object, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(node, f"{name}={value!r} must be a real number")
    value = float(value)
    if finite and not math.isfinite(value):
        raise _fail(node, f"{name}={value!r} must be finite")
    if math.isnan(value):
        raise _fail(node, f"{name} must not be NaN")
    return value


def _inputs(node: Node, shapes: list[Shape], count: int) -> None:
    if len(shapes) != count:
        raise _fail(node, f"{node.op} takes {count} input(s), got {len(shapes)}")
    if node.op in ("transpose", "pad", "slice", "expand") and not shapes[0]:
        raise _fail(node, f"{node.op} needs an input of at least 1 dim")


# -- shape rules ----------------------------------------------------------------------------

def _reshape(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 1)
    shape = _ints(node, "shape", node.attrs.get("shape"), minimum=1)
    if math.prod(shape) != math.prod(shapes[0]):
        raise _fail(node, f"cannot reshape {shapes[0]} ({math.prod(shapes[0])} elements) "
                          f"to {shape} ({math.prod(shape)} elements)")
    return shape


def _transpose(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 1)
    rank = len(shapes[0])
    perm = _ints(node, "perm", node.attrs.get("perm"), rank)
    if sorted(perm) != list(range(rank)):
        raise _fail(node, f"perm={perm} is not a permutation of the {rank} dims")
    return tuple(shapes[0][p] for p in perm)


def _pad(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 1)
    shape = shapes[0]
    pads = _ints(node, "pads", node.attrs.get("pads"), 2 * len(shape))
    _real(node, "value", node.attrs.get("value", 0.0), finite=False)
    mode = node.attrs.get("mode", "constant")
    if mode not in PAD_MODES:
        raise _fail(node, f"mode={mode!r} must be one of {PAD_MODES}")
    rank = len(shape)
    if mode != "constant" and any(p < 0 for p in pads):
        raise _fail(node, f"pads={pads}: mode {mode!r} takes no negative (cropping) pads")
    if mode == "reflect":
        for d, (size, lo, hi) in enumerate(zip(shape, pads[:rank], pads[rank:])):
            if max(lo, hi) >= size:
                raise _fail(node, f"pads={pads}: reflect padding of dim {d} (size {size}) "
                                  f"must be smaller than the dim, got {max(lo, hi)}")
    out = tuple(s + lo + hi for s, lo, hi in zip(shape, pads[:rank], pads[rank:]))
    if any(o < 1 for o in out):
        raise _fail(node, f"pads={pads} leave nothing of input shape {shape}: output {out}")
    return out


def slice_extents(node: Node, shape: Shape) -> list[range]:
    """Per dim, the input indices a ``slice`` node reads (a Python range: start, stop, step;
    the stop may be -1 for a negative step), checked against ``shape``."""
    rank = len(shape)
    starts = _ints(node, "starts", node.attrs.get("starts"), rank)
    stops = _ints(node, "stops", node.attrs.get("stops"), rank)
    steps = _ints(node, "steps", node.attrs.get("steps"), rank)
    ranges = []
    for d, (size, start, stop, step) in enumerate(zip(shape, starts, stops, steps)):
        if step == 0:
            raise _fail(node, f"steps={steps}: a step must not be 0")
        if not 0 <= start < size or not -1 <= stop <= size:
            raise _fail(node, f"starts={starts}, stops={stops}: dim {d} of size {size} needs "
                              f"0 <= start < {size} and -1 <= stop <= {size}")
        indices = range(start, stop, step)
        if len(indices) < 1:
            raise _fail(node, f"the slice of dim {d} (start {start}, stop {stop}, step "
                              f"{step}) is empty")
        ranges.append(indices)
    return ranges


def _slice(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 1)
    return tuple(len(r) for r in slice_extents(node, shapes[0]))


def _expand(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 1)
    shape = _ints(node, "shape", node.attrs.get("shape"), minimum=1)
    source = shapes[0]
    if not shape:
        raise _fail(node, "shape must have at least 1 dim")
    if len(source) > len(shape):
        raise _fail(node, f"cannot expand shape {source} to fewer dims {shape}")
    for have, want in zip(source[::-1], shape[::-1]):
        if have not in (1, want):
            raise _fail(node, f"cannot broadcast shape {source} to {shape}")
    return shape


def _lrn(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 1)
    if len(shapes[0]) < 2:
        raise _fail(node, f"expects an input (N, C, *) of at least 2 dims, got {shapes[0]}")
    size = node.attrs.get("size")
    if not is_int(size) or size < 1:
        raise _fail(node, f"size={size!r} must be an int >= 1")
    for name in ("alpha", "beta", "bias"):
        _real(node, name, node.attrs.get(name))
    return shapes[0]


def _where(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 3)
    if not shapes[0] == shapes[1] == shapes[2]:
        raise _fail(node, f"where needs equal shapes (condition, x, y), got {shapes} "
                          "(expand them first)")
    return shapes[0]


def _binary(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 2)
    if node.attrs.get("kind") not in BINARY_KINDS:
        raise _fail(node, f"kind={node.attrs.get('kind')!r} must be one of {BINARY_KINDS}")
    if shapes[0] != shapes[1]:
        raise _fail(node, f"binary {node.attrs['kind']} needs equal shapes, got {shapes[0]} "
                          f"and {shapes[1]} (expand one first)")
    return shapes[0]


def _matmul(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 2)
    a, b = shapes
    if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
        raise _fail(node, f"cannot multiply shapes {a} and {b} (expected (..., M, K) and "
                          "(..., K, N) with the same leading dims)")
    return a[:-1] + (b[-1],)


def _constant(node: Node, shapes: list[Shape]) -> Shape:
    _inputs(node, shapes, 0)
    value = node.params.get("value")
    if value is None:
        raise _fail(node, "needs the parameter value")
    if np.asarray(value).size < 1:
        raise _fail(node, "the constant is empty")
    return tuple(int(s) for s in np.shape(value))


SHAPE_RULES = {"reshape": _reshape, "transpose": _transpose, "pad": _pad, "slice": _slice,
               "expand": _expand, "lrn": _lrn, "binary": _binary, "where": _where,
               "matmul": _matmul, "constant": _constant}


# -- references (float64) -------------------------------------------------------------------

def _ref_pad(node: Node, x: np.ndarray) -> np.ndarray:
    rank = x.ndim
    pads = node.attrs["pads"]
    mode = node.attrs.get("mode", "constant")
    if mode != "constant":  # numpy's modes are ONNX's (the shape rule refuses crops)
        return np.pad(x, list(zip(pads[:rank], pads[rank:])), mode=mode)
    crop = tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0))
                 for d, (lo, hi) in enumerate(zip(pads[:rank], pads[rank:])))
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in zip(pads[:rank], pads[rank:])]
    return np.pad(x[crop], widths, constant_values=float(node.attrs.get("value", 0.0)))


def _ref_lrn(node: Node, x: np.ndarray) -> np.ndarray:
    a = node.attrs
    size, channels = int(a["size"]), x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    squares = x * x
    total = np.zeros_like(x)
    for c in range(channels):
        total[:, c] = squares[:, max(0, c - lo):min(channels, c + hi + 1)].sum(axis=1)
    return x / (float(a["bias"]) + float(a["alpha"]) / size * total) ** float(a["beta"])


def _prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    return np.where(x < 0, x * slope, x)


def _ref_binary(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    kind = node.attrs["kind"]
    with np.errstate(divide="ignore", invalid="ignore"):
        # np.maximum/np.minimum propagate NaN from either side, as ONNX Max/Min
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                "div": np.divide, "max": np.maximum, "min": np.minimum,
                "prelu": _prelu}[kind](a, b)


def _ref_slice(node: Node, x: np.ndarray) -> np.ndarray:
    for d, indices in enumerate(slice_extents(node, x.shape)):
        x = np.take(x, np.asarray(indices), axis=d)
    return x


REFERENCES = {
    "reshape": lambda node, x: x.reshape(node.attrs["shape"]),
    "transpose": lambda node, x: np.transpose(x, node.attrs["perm"]),
    "pad": _ref_pad,
    "slice": _ref_slice,
    "expand": lambda node, x: np.broadcast_to(x, tuple(node.attrs["shape"])),
    "lrn": _ref_lrn,
    "binary": _ref_binary,
    "where": lambda node, c, a, b: np.where(c != 0, a, b),
    "matmul": lambda node, a, b: np.matmul(a, b),
    "constant": lambda node: np.asarray(node.params["value"], dtype=np.float64),
}


# -- lowering -------------------------------------------------------------------------------

def _strides(shape: Shape) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


def remap_consts(node: Node, in_shape: Shape, out_shape: Shape) -> dict:
    """One ``remap`` step: output index o reads input offset base + sum(c_d * stride_d)
    with c_d = o_d - begin_d, mapped per ``mode``: "linear" as it is, "constant" the fill
    value unless 0 <= c_d < extent_d in every dim, "reflect" / "edge" / "wrap" the pad
    modes' index maps into [0, extent_d) (reflect through ``period`` = 2 * (extent - 1))."""
    rank = len(out_shape)
    in_strides = _strides(in_shape)
    base, mode = 0, "linear"
    if node.op == "transpose":
        perm = node.attrs["perm"]
        begin, extent = [0] * rank, list(out_shape)
        stride = [in_strides[p] for p in perm]
    elif node.op == "pad":
        pads = node.attrs["pads"]
        begin, extent, stride = list(pads[:rank]), list(in_shape), in_strides
        mode = node.attrs.get("mode", "constant")
    elif node.op == "slice":  # a strided view: start offset, step * stride per dim
        ranges = slice_extents(node, in_shape)
        begin, extent = [0] * rank, list(out_shape)
        base = sum(r.start * s for r, s in zip(ranges, in_strides))
        stride = [r.step * s for r, s in zip(ranges, in_strides)]
    else:  # expand: the input's dims aligned to the right; size-1 dims repeat (stride 0)
        lead = rank - len(in_shape)
        begin, extent = [0] * rank, list(out_shape)
        stride = [0] * lead + [0 if size == 1 else s for size, s in zip(in_shape, in_strides)]
    return {"rank": rank, "out_shape": list(out_shape), "begin": begin, "extent": extent,
            "stride": stride, "base": base, "mode": mode,
            "period": [max(2 * (n - 1), 1) for n in extent],
            "value": float(node.attrs.get("value", 0.0)),
            "checked": mode == "constant", "elements": math.prod(out_shape)}


def lrn_consts(node: Node, shape: Shape) -> dict:
    size = int(node.attrs["size"])
    return {"batch": shape[0], "channels": shape[1], "inner": math.prod(shape[2:]),
            "lo": (size - 1) // 2, "hi": -(-(size - 1) // 2),
            "scale": float(node.attrs["alpha"]) / size, "beta": float(node.attrs["beta"]),
            "bias": float(node.attrs["bias"])}


def matmul_consts(a: Shape, b: Shape) -> dict:
    return {"batch": math.prod(a[:-2]), "m": a[-2], "k": a[-1], "n": b[-1]}
