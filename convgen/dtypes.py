"""The element types convgen generates code for: one table, read by every layer."""

from __future__ import annotations

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
