"""The CUDA emulator: a .cu text built by the host C++ compiler and run on the CPU.

The text nvcc would compile is compiled unchanged by g++ with ``emulator.h``
force-included and ``CONVGEN_CUDA_EMULATOR`` defined; its ``extern "C"`` host
entries (which call ``cg_emu_launch`` under that macro) are loaded through cffi.
Each GPU thread is a fiber, ``__syncthreads`` a barrier over the block's fibers,
blocks spread over OpenMP threads. Two checks a GPU would not give:

- races: ``EmulatedLibrary.call(..., order="reverse")`` runs a block's threads
  between barriers in reverse (or ``"shuffle"``d) order; ``check_races`` runs a
  computation in several orders and raises ``RaceError`` if the results differ;
- barrier divergence: a ``__syncthreads`` not every thread reaches (or threads at
  different ones) makes the launch fail with ``EmulatorError``, never hang.

Builds go through convgen's content-addressed cache like the C backend's; the key
covers the header's text as well as the source.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from convgen import config
from convgen.backends.c.build import build_library, compiler_identity, resolve_compiler
from convgen.backends.c.load import load_function
from convgen.cache import Cache, CacheEntry, code_version, cpu_identity, file_sha256, make_key
from convgen.errors import ConvgenError

HEADER = Path(__file__).resolve().parent / "emulator.h"
SOURCE_NAME = "kernel.cu"
BASE_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno",
              "-ffp-contract=fast", "-march=native", "-DCONVGEN_CUDA_EMULATOR")
ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}

# The emulator's own C API (emulator.h), declared for every library it loads.
RUNTIME_CDEF = """
int cg_emu_set_order(int order, unsigned int seed);
int cg_emu_set_num_threads(int n);
const char* cg_emu_last_error(void);
void cg_emu_clear_error(void);
"""


class EmulatorError(ConvgenError, RuntimeError):
    """A launch the emulator refused or stopped: barrier divergence, a bad launch configuration."""


class RaceError(EmulatorError):
    """The same computation gave different results in different thread orders: a race."""


def find_cxx_compiler() -> list[str]:
    """The C++ compiler command ($CXX, else c++), its first word resolved to an absolute path."""
    command = config.cxx_compiler()
    return resolve_compiler(command, (
        f"no C++ compiler found: CXX={' '.join(command)!r} is not on PATH. Install g++ "
        "(or set CXX) to run CUDA kernels in the emulator."))


def emulator_flags() -> list[str]:
    # $CONVGEN_CXXFLAGS last so it can override (e.g. -O1 -fsanitize=address); they are in
    # the flags, and so in the cache key, so sanitized and plain builds never share an entry
    return [*BASE_FLAGS, *config.extra_cxxflags(), "-include", str(HEADER), "-x", "c++"]


def emulator_cache_key(source: str, compiler: list[str], flags: list[str]) -> str:
    # the header's path is in the flags; its text is what matters, so it is keyed by hash
    portable = [flag for flag in flags if flag != str(HEADER)]
    return make_key(convgen=code_version(), backend="cuda-emulator",
                    compiler=compiler_identity(compiler),
                    flags=portable, header=file_sha256(HEADER), cpu=cpu_identity(),
                    source=source)


def build_emulated(source: str, name: str = "kernel", cache: Cache | None = None) -> CacheEntry:
    """The cache entry holding the .cu ``source`` built for the emulator; compiles only on a miss."""
    compiler = find_cxx_compiler()
    flags = emulator_flags()
    return build_library(source, name, compiler, flags,
                         emulator_cache_key(source, compiler, flags), cache or Cache(),
                         "cuda-emulator", SOURCE_NAME, "CUDA emulator",
                         [f for f in flags if f != str(HEADER)])


class EmulatedLibrary:
    """An emulator library's host entries, called through cffi.

    ``cdef`` declares the host entries (C declarations; each returns an int status,
    0 on success). ``call`` passes NumPy arrays as pointers to their data.
    """

    def __init__(self, library: Path | str, cdef: str, digest: str | None = None):
        self.path = str(library)
        self.ffi, self.lib, _ = load_function(library, "cg_emu_last_error",
                                              RUNTIME_CDEF + cdef, digest)
        # the order is library-wide state: one call at a time sets it and runs
        self._lock = threading.Lock()

    @classmethod
    def from_entry(cls, entry: CacheEntry, cdef: str) -> "EmulatedLibrary":
        return cls(entry.file("library"), cdef, entry.sha256("library"))

    def _argument(self, value):
        if isinstance(value, np.ndarray):
            if not value.flags.c_contiguous:
                raise ValueError("arrays passed to an emulated kernel must be C-contiguous")
            return self.ffi.cast("void *", self.ffi.from_buffer(value, require_writable=False))
        return value

    def call(self, symbol: str, *args, order: str = "forward", seed: int = 0,
             threads: int | None = None) -> None:
        """Call host entry ``symbol``; raise EmulatorError with the emulator's message on failure."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, not {order!r}")
        arguments = [self._argument(value) for value in args]
        function = getattr(self.lib, symbol)
        with self._lock:
            self.lib.cg_emu_set_order(ORDERS[order], seed & 0xFFFFFFFF)
            self.lib.cg_emu_set_num_threads(threads or 0)
            self.lib.cg_emu_clear_error()
            status = function(*arguments)
            message = self.ffi.string(self.lib.cg_emu_last_error()).decode(errors="replace")
        if status != 0:
            raise EmulatorError(f"{symbol} failed in the CUDA emulator (status {status}): "
                                f"{message or 'no message'}")


def load_emulated(entry: CacheEntry | Path | str, cdef: str) -> EmulatedLibrary:
    """The library of a cache entry (or at a path) with host entries declared by ``cdef``."""
    if isinstance(entry, CacheEntry):
        return EmulatedLibrary.from_entry(entry, cdef)
    return EmulatedLibrary(entry, cdef)


def check_races(run: Callable[[str], object], orders=("forward", "reverse"),
                rtol: float = 0.0, atol: float = 0.0):
    """Run ``run(order)`` for each order and compare the results; return the first one.

    ``run`` returns an array or a tuple of arrays. Results that differ between
    orders (beyond rtol/atol; exactly by default) raise RaceError naming the
    orders, the output, how many elements differ and the first of them.
    """
    results = {}
    for order in orders:
        result = run(order)
        results[order] = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    first = orders[0]
    for order in orders[1:]:
        for index, (a, b) in enumerate(zip(results[first], results[order])):
            a, b = np.asarray(a), np.asarray(b)
            same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
            if not same.all():
                where = np.argwhere(~same)
                at = tuple(int(i) for i in where[0])
                raise RaceError(
                    f"race: output {index} differs between thread orders {first!r} and "
                    f"{order!r} in {len(where)} of {a.size} elements; first at {at}: "
                    f"{a[at]!r} vs {b[at]!r} (a missing __syncthreads() or a shared-memory "
                    "race)")
    result = results[first]
    return result if len(result) > 1 else result[0]
