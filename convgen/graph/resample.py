"""The ``resample`` op: one axis of a tensor resized by interpolation (ONNX Resize/Upsample).

An N-d resize is separable: it is one ``resample`` node per resized axis, in axis order
(ONNX's reference evaluator resizes the same way; onnxruntime's one-pass kernels agree up
to rounding). Output index ``j`` of the axis reads source coordinate ``x = f(j)`` (ONNX's
``coordinate_transformation_mode``) and combines ``taps`` input elements around it:

- ``nearest``: 1 tap, ``x`` rounded as ``nearest_mode`` says ("simple" is Resize-10 and
  Upsample: floor when upsampling, ceil when downsampling);
- ``linear``: 2 taps, ``floor(x)`` and ``floor(x) + 1``, weights ``1 - r`` and ``r``;
- ``cubic``: 4 taps, ``floor(x) - 1 .. floor(x) + 2``, Keys' cubic kernel with
  ``cubic_coeff_a``.

Taps outside the input read its nearest edge element, or, with ``exclude_outside``, get
weight 0 and the others are renormalized. Lowering turns the attributes into per-output
tables (:func:`resample_tables`: a source index and a weight per tap, packed with the
parameters, so the generated source stays the same size whatever the tensor size); the
oracle (:func:`reference_resample`) evaluates the kernel functions directly instead, so
the two check each other.
"""

from __future__ import annotations

import math

import numpy as np

from convgen.dtypes import is_int
from convgen.graph.ir import Node
from convgen.graph.ir import node_error as _fail

MODES = {"nearest": 1, "linear": 2, "cubic": 4}  # mode -> taps
COORDINATES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
# source indices travel as parameters in the model's dtype: float32 holds every integer
# up to 2**24 exactly
MAX_INDEX = 2**24


def _attrs(node: Node) -> dict:
    """The node's attributes with defaults, checked (GraphError naming the node)."""
    a = node.attrs
    mode = a.get("mode", "nearest")
    if mode not in MODES:
        raise _fail(node, f"mode={mode!r} must be one of {tuple(MODES)}")
    coordinate = a.get("coordinate", "half_pixel")
    if coordinate not in COORDINATES:
        raise _fail(node, f"coordinate={coordinate!r} must be one of {COORDINATES}")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    if nearest not in NEAREST_MODES:
        raise _fail(node, f"nearest_mode={nearest!r} must be one of {NEAREST_MODES}")
    values = {}
    for name, default in (("scale", None), ("cubic_coeff_a", -0.75)):
        value = a.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                or not math.isfinite(float(value)):
            raise _fail(node, f"{name}={value!r} must be a finite number")
        values[name] = float(value)
    if values["scale"] <= 0:
        raise _fail(node, f"scale={values['scale']!r} must be > 0")
    return {"mode": mode, "coordinate": coordinate, "nearest_mode": nearest,
            "exclude_outside": bool(a.get("exclude_outside", False)), **values}


def resample_shape(node: Node, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    if len(shapes) != 1:
        raise _fail(node, f"resample takes 1 input, got {len(shapes)}")
    shape = shapes[0]
    axis, size = node.attrs.get("axis"), node.attrs.get("size")
    if not is_int(axis) or not 0 <= axis < len(shape):
        raise _fail(node, f"axis={axis!r} must be a dim of the input shape {shape}")
    if not is_int(size) or size < 1:
        raise _fail(node, f"size={size!r} must be an int >= 1")
    if max(shape[axis], size) > MAX_INDEX:
        raise _fail(node, f"resizing dim {axis} from {shape[axis]} to {size}: at most "
                          f"{MAX_INDEX} elements")
    _attrs(node)
    return shape[:axis] + (int(size),) + shape[axis + 1:]


def source_coordinates(coordinate: str, scale: float, in_size: int,
                       out_size: int) -> np.ndarray:
    """x_original for every output index, as ONNX's coordinate_transformation_mode says."""
    j = np.arange(out_size, dtype=np.float64)
    if coordinate == "half_pixel":
        return (j + 0.5) / scale - 0.5
    if coordinate == "half_pixel_symmetric":
        adjustment = out_size / (scale * in_size)
        return in_size / 2 * (1 - adjustment) + (j + 0.5) / scale - 0.5
    if coordinate == "pytorch_half_pixel":
        return (j + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    if coordinate == "align_corners":
        return j * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
    if coordinate == "asymmetric":
        return j / scale
    return (j + 0.5) / scale  # tf_half_pixel_for_nn


def _round(x: np.ndarray, nearest_mode: str, scale: float) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if nearest_mode == "floor" or (nearest_mode == "simple" and scale >= 1):
        return np.floor(x)
    return np.ceil(x)


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distance ``d``."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def reference_resample(node: Node, x: np.ndarray) -> np.ndarray:
    """The oracle (float64): every output element as sum_i kernel(x_original - i) * x[i]
    over the input indices i near x_original (edge-clamped), from the definitions."""
    a = _attrs(node)
    axis, out_size = int(node.attrs["axis"]), int(node.attrs["size"])
    in_size = x.shape[axis]
    src = source_coordinates(a["coordinate"], a["scale"], in_size, out_size)
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    if a["mode"] == "nearest":
        index = np.clip(_round(src, a["nearest_mode"], a["scale"]), 0, in_size - 1)
        return np.moveaxis(moved[index.astype(np.intp)], 0, axis)
    out = np.zeros((out_size,) + moved.shape[1:])
    for j, s in enumerate(src):
        taps = np.arange(math.floor(s) - 2, math.floor(s) + 4)  # beyond every kernel's reach
        if a["mode"] == "linear":
            k = np.maximum(0.0, 1.0 - np.abs(s - taps))
        else:
            k = _cubic(s - taps, a["cubic_coeff_a"])
        if a["exclude_outside"]:
            k = np.where((taps < 0) | (taps >= in_size), 0.0, k)
            k = k / k.sum()
        rows = moved[np.clip(taps, 0, in_size - 1)]
        out[j] = np.tensordot(k, rows, axes=(0, 0))
    return np.moveaxis(out, 0, axis)


def resample_tables(node: Node, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), each (size, taps): output j is sum_t weight[j, t] * x[index[j, t]],
    every index inside [0, in_size). From ONNX's coefficient formulas, per output index."""
    a = _attrs(node)
    out_size, taps = int(node.attrs["size"]), MODES[a["mode"]]
    src = source_coordinates(a["coordinate"], a["scale"], in_size, out_size)
    if a["mode"] == "nearest":
        index = _round(src, a["nearest_mode"], a["scale"])[:, None]
        return np.clip(index, 0, in_size - 1), np.ones((out_size, 1))
    base = np.floor(src)
    r = (src - base)[:, None]
    if a["mode"] == "linear":
        index = base[:, None] + np.arange(2)
        weight = np.concatenate([1 - r, r], axis=1)
    else:
        A = a["cubic_coeff_a"]
        index = base[:, None] + np.arange(-1, 3)
        s = 1 - r
        weight = np.concatenate([
            ((A * (r + 1) - 5 * A) * (r + 1) + 8 * A) * (r + 1) - 4 * A,
            ((A + 2) * r - (A + 3)) * r * r + 1,
            ((A + 2) * s - (A + 3)) * s * s + 1,
            ((A * (s + 1) - 5 * A) * (s + 1) + 8 * A) * (s + 1) - 4 * A], axis=1)
    if a["exclude_outside"]:
        weight = np.where((index < 0) | (index >= in_size), 0.0, weight)
        weight = weight / weight.sum(axis=1, keepdims=True)
    assert index.shape == weight.shape == (out_size, taps)
    return np.clip(index, 0, in_size - 1), weight


def resample_consts(node: Node, in_shape: tuple[int, ...]) -> dict:
    """The lowered step's constants: x viewed as (outer, in, inner), y as (outer, size,
    inner); ``taps`` per output index; ``nearest``: one tap of weight 1 (no weight table)."""
    axis = int(node.attrs["axis"])
    return {"outer": math.prod(in_shape[:axis]), "in_size": in_shape[axis],
            "out_size": int(node.attrs["size"]), "inner": math.prod(in_shape[axis + 1:]),
            "taps": MODES[node.attrs.get("mode", "nearest")],
            "nearest": node.attrs.get("mode", "nearest") == "nearest",
            "elements": math.prod(in_shape[:axis]) * int(node.attrs["size"])
            * math.prod(in_shape[axis + 1:])}


__all__ = ["COORDINATES", "MODES", "NEAREST_MODES", "reference_resample", "resample_consts",
           "resample_shape", "resample_tables", "source_coordinates"]
