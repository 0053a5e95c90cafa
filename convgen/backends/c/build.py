"""Build: C source -> shared library with the host C compiler, through the cache.

The cache key covers everything that shapes the library: convgen's code version,
the backend, the compiler's identity (its resolved path and a hash of the
binary, so no compiler process runs on a cache hit), the flags, the CPU, and the
source text itself.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from convgen import config
from convgen.cache import Cache, CacheEntry, code_version, cpu_identity, file_sha256, make_key
from convgen.errors import CompileError, CompilerNotFoundError
from convgen.log import get_logger

log = get_logger("build")

# -fopenmp-simd: the templates' "#pragma omp simd" (the blocked epilogues' loops over a
# pixel's channels) hold without the OpenMP runtime too
BASE_CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno",
               "-ffp-contract=fast", "-march=native", "-mprefer-vector-width=512",
               "-fopenmp-simd")
OPENMP_FLAGS = ("-fopenmp",)
SOURCE_NAME = "kernel.c"
LIBRARY_NAME = "kernel.so"


def resolve_compiler(command: list[str], missing: str) -> list[str]:
    """``command`` with its first word resolved to an absolute path; CompilerNotFoundError
    with ``missing`` (what is absent and what to do) when it is not on PATH."""
    path = shutil.which(command[0])
    if path is None:
        raise CompilerNotFoundError(missing)
    return [os.path.realpath(path), *command[1:]]


def find_c_compiler() -> list[str]:
    """The C compiler command ($CC, else cc), its first word resolved to an absolute path."""
    command = config.c_compiler()
    return resolve_compiler(command, (
        f"no C compiler found: CC={' '.join(command)!r} is not on PATH. Install gcc "
        "(or set CC) to use backend='c', or use backend='llvm'."))


@functools.lru_cache(maxsize=None)
def _binary_identity(path: str) -> str:
    return f"{path}|sha256:{file_sha256(Path(path))}"


def compiler_identity(command: list[str]) -> str:
    """Resolved path plus a hash of the compiler binary, and its extra words; runs no process.

    The hash is memoized per path for the life of the process.
    """
    return " ".join([_binary_identity(command[0]), *command[1:]])


def c_flags(openmp: bool) -> list[str]:
    return [*BASE_CFLAGS, *(OPENMP_FLAGS if openmp else ()), *config.extra_cflags()]


def c_cache_key(source: str, compiler: list[str], flags: list[str]) -> str:
    return make_key(convgen=code_version(), backend="c", compiler=compiler_identity(compiler),
                    flags=flags, cpu=cpu_identity(), source=source)


def compile_c(source: str, output: Path, flags: list[str], compiler: list[str],
              source_path: Path, language: str = "C") -> None:
    """Write ``source`` to ``source_path`` and compile it to ``output`` (``language`` names
    it in errors)."""
    source_path.write_text(source)
    command = [*compiler, *flags, "-o", str(output), str(source_path), "-lm"]
    log.debug("%s compiler starts: %s", language, shlex.join(command))
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise CompilerNotFoundError(f"could not run the {language} compiler {compiler}: {exc}",
                                    command=command, source_path=str(source_path)) from exc
    log_compiler_run(language, command, result, time.perf_counter() - start)
    if result.returncode != 0:
        raise CompileError(f"{language} compilation failed", command=command,
                           returncode=result.returncode, stderr=result.stderr,
                           source_path=str(source_path))


def log_compiler_run(language: str, command: list[str],
                     result: subprocess.CompletedProcess, seconds: float) -> None:
    """One INFO line per compiler run (outcome, wall time, command line); on success, what
    the compiler said (warnings) at DEBUG, since a failure's CompileError carries it."""
    outcome = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
    log.info("%s compiler %s in %.2f s: %s", language, outcome, seconds, shlex.join(command))
    said = (result.stdout + result.stderr).strip()
    if said and result.returncode == 0:
        log.debug("%s compiler said:\n%s", language, said)


def build_library(source: str, symbol: str, compiler: list[str], flags: list[str], key: str,
                  cache: Cache, backend: str, source_name: str = SOURCE_NAME,
                  language: str = "C", meta_flags: list[str] | None = None) -> CacheEntry:
    """The cache entry for ``key`` holding ``source`` compiled into a shared library by
    ``compiler`` with ``flags``; compiles only on a miss, keeping a failed source."""
    def build(tmp: Path) -> dict[str, str]:
        try:
            compile_c(source, tmp / LIBRARY_NAME, flags, compiler, tmp / source_name, language)
        except CompileError as exc:
            raise cache.keep_failed(exc, symbol + Path(source_name).suffix, source) from None
        return {"source": source_name, "library": LIBRARY_NAME}

    return cache.get_or_build(key, build, extra_meta={
        "symbol": symbol, "backend": backend,
        "flags": flags if meta_flags is None else meta_flags}, required=("library",))


def build_c(source: str, symbol: str, openmp: bool = False,
            cache: Cache | None = None) -> CacheEntry:
    """The cache entry holding ``source`` compiled; compiles only on a miss."""
    compiler = find_c_compiler()
    flags = c_flags(openmp)
    return build_library(source, symbol, compiler, flags, c_cache_key(source, compiler, flags),
                         cache or Cache(), "c")
