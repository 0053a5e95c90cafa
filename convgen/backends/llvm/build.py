"""Build and load for the LLVM backend: verify, optimize, emit object code, JIT.

The IR text from :mod:`convgen.backends.llvm.render` is parsed and verified, optimized
with llvmlite's new pass manager (O3) for the host CPU and its features
(512-bit vectors allowed), and emitted as an object file into the same
content-addressed cache as the C backend's libraries. Loading adds that object
file to an MCJIT engine and takes the entry point's address, so a cache hit
neither optimizes nor generates code. Engines are kept alive for the life of
the process: they own the code every function pointer points into.
"""

from __future__ import annotations

import ctypes.util
import functools
import threading
import time
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from convgen.cache import Cache, CacheEntry, code_version, make_key
from convgen.errors import CompileError
from convgen.log import get_logger

log = get_logger("build")

OBJECT_NAME = "kernel.o"
SOURCE_NAME = "kernel.ll"
OPT_LEVEL = 3
# The large code model addresses constants and calls through 64-bit absolute addresses:
# MCJIT maps each section on its own, and while the process holds gigabytes the code and
# its constant pool can land more than 2 GiB apart, where the small model's 32-bit
# PC-relative references cannot reach (RuntimeDyldELF's isInt<32> assertion aborts the
# process). Static relocation: MCJIT resolves each object at its load address.
CODE_MODEL = "large"
RELOCATION = "static"

_ENGINES: list = []  # every engine ever created: never freed (see module docstring)
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _initialize() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # the kernels call into the C math library (expf, tanhf, erff, ...)
    libm = ctypes.util.find_library("m")
    if libm:
        llvm.load_library_permanently(libm)


@functools.lru_cache(maxsize=None)
def openmp_available() -> bool:
    """Load the GNU OpenMP runtime for networks' parallel layers; False if it is absent."""
    _initialize()
    gomp = ctypes.util.find_library("gomp")
    if not gomp:
        return False
    try:
        llvm.load_library_permanently(gomp)
    except RuntimeError:
        return False
    return True


def uses_openmp(plan) -> bool:
    """Whether a kernel of ``plan`` that can share its jobs over OpenMP threads itself
    (transform-GEMM, staged depthwise) does: threads > 1 and the runtime loadable."""
    return plan.threads > 1 and openmp_available()


def host_features() -> str:
    """The host CPU's feature string, with 512-bit vectors preferred where present."""
    _initialize()
    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        features += ",-prefer-256-bit"
    return features


@functools.lru_cache(maxsize=None)
def target_machine():
    _initialize()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=host_features(),
                                        opt=OPT_LEVEL, reloc=RELOCATION,
                                        codemodel=CODE_MODEL)


def target_triple() -> str:
    _initialize()
    return llvm.get_process_triple()


def data_layout() -> str:
    return str(target_machine().target_data)


def llvm_cache_key(ir_text: str) -> str:
    _initialize()
    return make_key(convgen=code_version(), backend="llvm", llvmlite=llvmlite.__version__,
                    llvm=".".join(map(str, llvm.llvm_version_info)),
                    cpu=llvm.get_host_cpu_name(), features=host_features(),
                    triple=llvm.get_process_triple(), opt=OPT_LEVEL, code_model=CODE_MODEL,
                    relocation=RELOCATION, source=ir_text)


def optimize_to_object(ir_text: str, symbol: str = "module") -> bytes:
    """Parse, verify, optimize (new pass manager) and emit object code; ``symbol`` names
    the module in the log line giving each phase's time."""
    _initialize()
    start = time.perf_counter()
    try:
        module = llvm.parse_assembly(ir_text)
        module.verify()
    except RuntimeError as exc:
        raise CompileError("LLVM rejected the generated IR", stderr=str(exc)) from exc
    parsed = time.perf_counter()
    machine = target_machine()
    options = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)
    optimized = time.perf_counter()
    obj = machine.emit_object(module)
    done = time.perf_counter()
    log.info("LLVM %s: %d bytes of IR, parse+verify %.2f s, optimize (O%d, %s) %.2f s, "
             "emit %d bytes of object code %.2f s", symbol, len(ir_text), parsed - start,
             OPT_LEVEL, llvm.get_host_cpu_name(), optimized - parsed, len(obj),
             done - optimized)
    return obj


def build_llvm(ir_text: str, symbol: str, cache: Cache | None = None) -> CacheEntry:
    """The cache entry holding ``ir_text`` compiled to object code; compiles on a miss."""
    cache = cache or Cache()
    key = llvm_cache_key(ir_text)

    def build(tmp: Path) -> dict[str, str]:
        (tmp / SOURCE_NAME).write_text(ir_text)
        try:
            obj = optimize_to_object(ir_text, symbol)
        except CompileError as exc:
            raise cache.keep_failed(exc, f"{symbol}.ll", ir_text) from None
        (tmp / OBJECT_NAME).write_bytes(obj)
        return {"source": SOURCE_NAME, "object": OBJECT_NAME}

    return cache.get_or_build(key, build, extra_meta={"symbol": symbol, "backend": "llvm",
                                                      "llvm": list(llvm.llvm_version_info)},
                              required=("object",))


def load_object(path: Path | str, symbol: str) -> tuple[int, object]:
    """(address of ``symbol``, engine) after adding the object file to a new MCJIT engine."""
    _initialize()
    start = time.perf_counter()
    with _LOCK:
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine())
        engine.add_object_file(str(path))
        engine.finalize_object()
        address = engine.get_function_address(symbol)
        _ENGINES.append(engine)
    log.info("LLVM JIT loaded %s in %.3f s (%s)", symbol, time.perf_counter() - start, path)
    if not address:
        raise CompileError(f"symbol {symbol} not found in {path}", source_path=str(path))
    return address, engine
