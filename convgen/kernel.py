"""Kernel: a loaded, compiled convolution that validates its arrays and calls C.

The C function is declared to cffi with the same prototype that was compiled
into the library. cffi releases the GIL for the duration of the call, and the
generated kernels keep no global mutable state, so one Kernel may be called from
several Python threads at once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convgen.dtypes import dtype_info
from convgen.schedule import Schedule
from convgen.spec import ConvSpec


class Kernel:
    """A compiled convolution: ``kernel(x, w, b=None, out=None) -> y``.

    The entry point computes a range of jobs (output tiles). ``python_threads``
    > 1 splits the range across a thread pool (the LLVM backend's threads; the C
    backend parallelizes inside the call with OpenMP and passes 1).
    """

    def __init__(self, spec: ConvSpec, schedule: Schedule, backend: str, symbol: str,
                 source: str, ffi, function, jobs: int, python_threads: int = 1,
                 keepalive=(), library_path: str | None = None,
                 weight_shape: tuple[int, ...] | None = None):
        self.spec = spec
        self.schedule = schedule
        self.backend = backend
        self.symbol = symbol
        self.source = source
        self.library_path = library_path
        self.jobs = jobs
        # the w argument's shape: the spec's, or a bound kernel's prepared layout
        self.weight_shape = tuple(weight_shape) if weight_shape is not None \
            else spec.weight_shape
        self._ffi = ffi
        self._function = function
        self._keepalive = keepalive  # objects that must outlive the function pointer
        self._dtype = np.dtype(spec.dtype)
        self._ctype = f"{dtype_info(spec.dtype).c_type}[]"
        self._ranges = _split(jobs, python_threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<convgen.Kernel {self.symbol} backend={self.backend}>"

    # -- argument checks -------------------------------------------------------------
    def _input(self, name: str, array: object, shape: tuple[int, ...]) -> np.ndarray:
        return check_input(name, array, self._dtype, shape)

    def _output(self, out: object, inputs: list[np.ndarray]) -> np.ndarray:
        shape = self.spec.output_shape
        if out is None:
            return np.empty(shape, dtype=self._dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != self._dtype:
            raise TypeError(f"out: expected dtype {self._dtype}, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out: expected shape {shape}, got {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("out: expected a C-contiguous array, got a non-contiguous view")
        if not out.flags.aligned:
            raise ValueError(f"out: expected an array aligned to its element size "
                             f"({out.dtype.alignment} bytes), got one whose data starts at "
                             f"address {out.ctypes.data:#x} (misaligned)")
        if not out.flags.writeable:
            raise ValueError("out: expected a writeable array, got a read-only one")
        for array in inputs:
            if np.shares_memory(out, array):
                raise ValueError("out: must not overlap an input array")
        return out

    def __call__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        spec = self.spec
        x = self._input("x", x, spec.input_shape)
        w = self._input("w", w, self.weight_shape)
        inputs = [x, w]
        b = check_bias(spec, b, self._dtype, "this kernel was compiled with")
        if b is not None:
            inputs.append(b)
        y = self._output(out, inputs)
        ffi = self._ffi
        args = (ffi.from_buffer(self._ctype, x), ffi.from_buffer(self._ctype, w),
                ffi.from_buffer(self._ctype, b) if b is not None else ffi.NULL,
                ffi.from_buffer(self._ctype, y, require_writable=True))
        if len(self._ranges) == 1:
            statuses = [self._function(*args, *self._ranges[0])]
        else:
            pool = self._thread_pool()
            futures = [pool.submit(self._function, *args, *r) for r in self._ranges[1:]]
            statuses = [self._function(*args, *self._ranges[0])]
            statuses += [f.result() for f in futures]
        if any(statuses):
            raise RuntimeError(f"{self.symbol} returned status {statuses}")
        return y

    def _thread_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(self._ranges) - 1,
                                                thread_name_prefix="convgen")
            return self._pool


def check_input(name: str, array: object, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` as a C-contiguous array aligned to its element size (copied only if
    needed), or TypeError/ValueError naming the argument, what was expected and what was
    given. Kernels load whole elements (and vectors of them): a misaligned pointer is
    undefined behaviour in C and faults on some CPUs, so such arrays are copied."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of dtype {dtype}, "
                        f"got {type(array).__name__}")
    if array.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {array.dtype}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {array.shape}")
    if array.flags.c_contiguous and array.flags.aligned:
        return array
    return np.array(array, order="C", copy=True)  # a new allocation: aligned


def check_bias(spec: ConvSpec, b: object, dtype: np.dtype, whose: str) -> np.ndarray | None:
    """``b`` checked against ``spec.bias`` (``whose``: what has bias=..., for the message):
    None without bias, else as :func:`check_input`."""
    if spec.bias:
        if b is None:
            raise ValueError(f"b: {whose} bias=True; expected shape {spec.bias_shape}, "
                             "got None")
        return check_input("b", b, dtype, spec.bias_shape)
    if b is not None:
        raise ValueError(f"b: {whose} bias=False; expected None, got an array of shape "
                         f"{getattr(b, 'shape', '?')}")
    return None


def _split(jobs: int, parts: int) -> list[tuple[int, int]]:
    """``jobs`` split into at most ``parts`` contiguous, nearly equal ranges."""
    parts = max(1, min(parts, jobs))
    bounds = [jobs * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]
