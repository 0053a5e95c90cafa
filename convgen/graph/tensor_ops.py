"""Tensor ops imported graphs need: shape rules, NumPy references and lowering constants.

``reshape``, ``transpose``, ``pad``, ``expand``, ``lrn``, ``binary``, ``matmul`` and
``constant`` (their attributes are documented in :mod:`convgen.graph.ir`). The shape
rules raise :class:`GraphError` naming the node; the references are plain NumPy in
float64. ``transpose``, ``pad`` and ``expand`` all lower to one ``remap`` step: every
output element reads the input at a linear function of its index, or a fill value
where the index falls outside the input (:func:`remap_consts`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from convgen.dtypes import is_int
from convgen.graph.ir import Node
from convgen.graph.ir import node_error as _fail

Shape = tuple[int, ...]

BINARY_KINDS = ("add", "sub", "mul", "div")


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
    if node.op in ("transpose", "pad", "expand") and not shapes[0]:
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
    out = tuple(s + lo + hi for s, lo, hi in zip(shape, pads[:len(shape)], pads[len(shape):]))
    if any(o < 1 for o in out):
        raise _fail(node, f"pads={pads} leave nothing of input shape {shape}: output {out}")
    return out


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


SHAPE_RULES = {"reshape": _reshape, "transpose": _transpose, "pad": _pad, "expand": _expand,
               "lrn": _lrn, "binary": _binary, "matmul": _matmul, "constant": _constant}


# -- references (float64) -------------------------------------------------------------------

def _ref_pad(node: Node, x: np.ndarray) -> np.ndarray:
    rank = x.ndim
    pads = node.attrs["pads"]
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


def _ref_binary(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    kind = node.attrs["kind"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                "div": np.divide}[kind](a, b)


REFERENCES = {
    "reshape": lambda node, x: x.reshape(node.attrs["shape"]),
    "transpose": lambda node, x: np.transpose(x, node.attrs["perm"]),
    "pad": _ref_pad,
    "expand": lambda node, x: np.broadcast_to(x, tuple(node.attrs["shape"])),
    "lrn": _ref_lrn,
    "binary": _ref_binary,
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
    """One ``remap`` step: output index o reads input offset sum((o_d - begin_d) * stride_d)
    where 0 <= o_d - begin_d < extent_d in every dim d, else the fill value."""
    rank = len(out_shape)
    in_strides = _strides(in_shape)
    if node.op == "transpose":
        perm = node.attrs["perm"]
        begin, extent = [0] * rank, list(out_shape)
        stride = [in_strides[p] for p in perm]
    elif node.op == "pad":
        pads = node.attrs["pads"]
        begin, extent, stride = list(pads[:rank]), list(in_shape), in_strides
    else:  # expand: the input's dims aligned to the right; size-1 dims repeat (stride 0)
        lead = rank - len(in_shape)
        begin, extent = [0] * rank, list(out_shape)
        stride = [0] * lead + [0 if size == 1 else s for size, s in zip(in_shape, in_strides)]
    return {"rank": rank, "out_shape": list(out_shape), "begin": begin, "extent": extent,
            "stride": stride, "value": float(node.attrs.get("value", 0.0)),
            "checked": node.op == "pad", "elements": math.prod(out_shape)}


def lrn_consts(node: Node, shape: Shape) -> dict:
    size = int(node.attrs["size"])
    return {"batch": shape[0], "channels": shape[1], "inner": math.prod(shape[2:]),
            "lo": (size - 1) // 2, "hi": -(-(size - 1) // 2),
            "scale": float(node.attrs["alpha"]) / size, "beta": float(node.attrs["beta"]),
            "bias": float(node.attrs["bias"])}


def matmul_consts(a: Shape, b: Shape) -> dict:
    return {"batch": math.prod(a[:-2]), "m": a[-2], "k": a[-1], "n": b[-1]}
