"""The element types convgen generates code for: one table, read by every layer."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """One element type: its NumPy name, size, and its spelling in C and LLVM IR."""

    name: str
    itemsize: int
    c_type: str
    llvm_type: str  # llvmlite's ir.FloatType / ir.DoubleType, by their IR names
    eps: float  # machine epsilon, for tolerances
    c_index_type: str  # the C integer of the same width (gather indices, lane masks)
    simd_suffix: str  # x86 intrinsics' suffix for packed vectors of it ("ps", "pd")
    c_math_suffix: str  # C math library suffix (expf, exp)


DTYPES: dict[str, DType] = {
    "float32": DType("float32", 4, "float", "float", float(np.finfo(np.float32).eps),
                     "int", "ps", "f"),
    "float64": DType("float64", 8, "double", "double", float(np.finfo(np.float64).eps),
                     "long long", "pd", ""),
}


def is_int(value: object) -> bool:
    """An integer that is not a bool: Python and NumPy ints, the one check every layer uses."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def dtype_info(name: str) -> DType:
    """The table entry of a canonical dtype name ("float32" or "float64")."""
    return DTYPES[name]


def dtype_for_c_type(c_type: str) -> DType:
    """The table entry whose C spelling is ``c_type`` ("float" or "double")."""
    for info in DTYPES.values():
        if info.c_type == c_type:
            return info
    raise KeyError(f"no dtype is spelled {c_type!r} in C")


def lanes(name: str, vector_bits: int) -> int:
    """Elements of ``name`` in one vector register of ``vector_bits`` bits."""
    return vector_bits // (8 * DTYPES[name].itemsize)


# -- element types of networks ----------------------------------------------------------
#
# A compiled network (convgen.graph.compile) has one element type for every value. Besides
# the float types above it may be an integer type, for the ops that make sense on integers
# (element-wise arithmetic, clip/relu, max pooling, data movement: convgen.graph.ir
# INTEGER_OPS). Convolution specs stay float-only: DTYPES above is what ConvSpec accepts.

@dataclass(frozen=True)
class ElementType:
    """One element type of a network's values: NumPy name, size, C and LLVM spellings."""

    name: str
    itemsize: int
    c_type: str  # float, double, or stdint.h's int8_t ... uint64_t
    llvm_type: str  # "float", "double", or "i8" ... "i64" (LLVM integers carry no sign)
    kind: str  # "f" float, "i" signed integer, "u" unsigned integer (NumPy's kinds)

    @property
    def is_integer(self) -> bool:
        return self.kind in "iu"

    @property
    def signed(self) -> bool:
        return self.kind != "u"

    @property
    def bits(self) -> int:
        return 8 * self.itemsize

    @property
    def min(self) -> int | float:
        """The least value (integers), or -inf (floats)."""
        return int(np.iinfo(self.name).min) if self.is_integer else float("-inf")

    @property
    def max(self) -> int | float:
        return int(np.iinfo(self.name).max) if self.is_integer else float("inf")

    @property
    def wrap_c_type(self) -> str:
        """The unsigned C type integer arithmetic runs in so that it wraps around (signed
        overflow is undefined in C); at least unsigned int wide, since C promotes narrower
        types to (signed) int first: uint16 * uint16 would overflow int."""
        return "uint64_t" if self.itemsize == 8 else "uint32_t"


def _integer(name: str) -> ElementType:
    info = np.iinfo(name)
    return ElementType(name, info.bits // 8, f"{name}_t", f"i{info.bits}", info.kind)


ELEMENT_TYPES: dict[str, ElementType] = {
    "float32": ElementType("float32", 4, "float", "float", "f"),
    "float64": ElementType("float64", 8, "double", "double", "f"),
    **{name: _integer(name) for name in ("int8", "int16", "int32", "int64",
                                         "uint8", "uint16", "uint32", "uint64")},
}
INTEGER_TYPES = tuple(name for name, t in ELEMENT_TYPES.items() if t.is_integer)


def element_type(name: str) -> ElementType:
    """The network element type ``name`` ("float32", "int8", ...); ValueError naming the
    ones there are."""
    try:
        return ELEMENT_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"dtype: expected one of {tuple(ELEMENT_TYPES)}, got {name!r}") \
            from None


def element_type_for_c_type(c_type: str) -> ElementType:
    """The network element type spelled ``c_type`` in C ("float", "int8_t", ...)."""
    for info in ELEMENT_TYPES.values():
        if info.c_type == c_type:
            return info
    raise KeyError(f"no element type is spelled {c_type!r} in C")


def integer_bounds(low: float | int, high: float | int, name: str) -> tuple[int, int]:
    """Clip bounds for the integer element type ``name``: ``low`` rounded up and ``high``
    down to integers (exact for Python ints, however large), both clamped to the type's
    range (a missing bound given as +-FLT_MAX becomes the type's least or greatest)."""
    info = ELEMENT_TYPES[name]

    def clamp(value: int) -> int:
        return min(max(value, info.min), info.max)

    def integer(value, rounding) -> int:
        if is_int(value):
            return int(value)
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"clip bound NaN has no {name} value")
        if math.isinf(value):
            return info.max if value > 0 else info.min
        return rounding(value)

    return clamp(integer(low, math.ceil)), clamp(integer(high, math.floor))
