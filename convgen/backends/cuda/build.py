"""Build: CUDA source -> a fat binary (a cubin per architecture plus PTX) with nvcc, cached.

ptxas's resource report (``-Xptxas -v``: registers, spill stores and loads, stack, shared
and constant memory per kernel and architecture) is kept beside the binary in the cache
entry and parsed by :func:`kernel_resources`, so ``convgen show``/``explain`` and the tests
read it without compiling again.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from convgen import config
from convgen.cache import Cache, CacheEntry, code_version, file_sha256, make_key
from convgen.errors import CompileError, CompilerNotFoundError
from convgen.log import get_logger

log = get_logger("build")

# Without a device to ask, code for the two architectures of the data-centre GPUs this
# project targets (A100, H100), plus PTX of the newest for the driver to JIT elsewhere.
DEFAULT_ARCHS = ("sm_80", "sm_90")
# What one kernel may declare statically per block on every architecture (more needs the
# dynamic opt-in, cudaFuncSetAttribute).
STATIC_SHARED_BYTES = 48 << 10
BASE_FLAGS = ("-O3", "--use_fast_math", "-Xptxas", "-v", "--fatbin")
SOURCE_NAME = "kernel.cu"
BINARY_NAME = "kernel.fatbin"
REPORT_NAME = "ptxas.txt"


def find_nvcc() -> str:
    """nvcc's resolved path; CompilerNotFoundError naming what to install where it is missing."""
    path = config.nvcc()
    if path is None or not os.path.isfile(path):
        raise CompilerNotFoundError(
            "no CUDA compiler found: nvcc is not on PATH nor in /usr/local/cuda/bin (set "
            "CONVGEN_NVCC to its path, or install the CUDA toolkit)")
    return os.path.realpath(path)


@functools.lru_cache(maxsize=None)
def nvcc_identity(path: str) -> str:
    """The resolved path plus a hash of the nvcc binary (no process runs on a cache hit)."""
    return f"{path}|sha256:{file_sha256(Path(path))}"


def arch_flags(archs: tuple[str, ...]) -> list[str]:
    """-gencode for a cubin per architecture, plus the newest one's PTX."""
    flags = []
    for arch in archs:
        if not re.fullmatch(r"sm_\d{2,3}a?", arch):
            raise ValueError(f"archs: expected names like 'sm_90', got {arch!r}")
        compute = arch.replace("sm_", "compute_")
        code = f"[{arch},{compute}]" if arch == archs[-1] else arch
        flags += ["-gencode", f"arch={compute},code={code}"]
    return flags


def build_cuda(source: str, symbol: str, archs: tuple[str, ...] = DEFAULT_ARCHS,
               cache: Cache | None = None) -> CacheEntry:
    """The cache entry holding ``source`` built for ``archs`` (files "source", "binary" and
    "report", ptxas's text); compiles only on a miss."""
    cache = cache or Cache()
    nvcc = find_nvcc()
    flags = [*BASE_FLAGS, *arch_flags(tuple(archs))]
    key = make_key(convgen=code_version(), backend="cuda", compiler=nvcc_identity(nvcc),
                   flags=flags, source=source)

    def build(tmp: Path) -> dict[str, str]:
        (tmp / SOURCE_NAME).write_text(source)
        command = [nvcc, *flags, "-o", str(tmp / BINARY_NAME), str(tmp / SOURCE_NAME)]
        log.debug("nvcc starts: %s", shlex.join(command))
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            raise CompilerNotFoundError(f"could not run nvcc ({nvcc}): {exc}",
                                        command=command) from exc
        outcome = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
        # ptxas's report (the rest of what nvcc says) is kept in the entry: not logged
        log.info("nvcc %s in %.2f s: %s", outcome, time.perf_counter() - start,
                 shlex.join(command))
        if result.returncode != 0:
            error = CompileError("CUDA compilation failed", command=command,
                                 returncode=result.returncode, stderr=result.stderr,
                                 source_path=str(tmp / SOURCE_NAME))
            raise cache.keep_failed(error, f"{symbol}.cu", source) from None
        # ptxas reports on stderr (stdout in some versions): keep both
        (tmp / REPORT_NAME).write_text(result.stdout + result.stderr)
        return {"source": SOURCE_NAME, "binary": BINARY_NAME, "report": REPORT_NAME}

    return cache.get_or_build(key, build, extra_meta={"symbol": symbol, "backend": "cuda",
                                                      "flags": flags},
                              required=("binary", "report"))


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reported for one kernel on one architecture (bytes unless said)."""

    kernel: str
    arch: str
    registers: int  # per thread
    stack: int  # stack frame per thread
    spill_stores: int
    spill_loads: int
    shared: int  # static shared memory per block
    constant: int  # the kernel's constant bank (its parameters), cmem[0]
    barriers: int

    def line(self) -> str:
        """One line for ``convgen show``/``explain``."""
        return (f"{self.kernel} ({self.arch}): {self.registers} registers, {self.shared} B "
                f"shared, {self.spill_stores} B spill stores, {self.spill_loads} B spill "
                f"loads, {self.stack} B stack")


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")


def parse_ptxas(text: str) -> list[KernelResources]:
    """Every kernel's report in ptxas ``-v`` output, in order."""
    out: list[KernelResources] = []
    current: dict | None = None

    def finish() -> None:
        if current is not None and "registers" in current:
            out.append(KernelResources(**current))

    for line in text.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            finish()
            current = {"kernel": entry.group(1), "arch": entry.group(2), "stack": 0,
                       "spill_stores": 0, "spill_loads": 0, "shared": 0, "constant": 0,
                       "barriers": 0}
            continue
        if current is None:
            continue
        frame = _FRAME.search(line)
        if frame:
            current.update(stack=int(frame.group(1)), spill_stores=int(frame.group(2)),
                           spill_loads=int(frame.group(3)))
        used = _USED.search(line)
        if used:
            current["registers"] = int(used.group(1))
            for amount, what in re.findall(r"(\d+) (bytes smem|barriers|bytes cmem\[0\])", line):
                key = {"bytes smem": "shared", "barriers": "barriers",
                       "bytes cmem[0]": "constant"}[what]
                current[key] = int(amount)
    finish()
    return out


def kernel_resources(entry: CacheEntry) -> list[KernelResources]:
    """The ptxas report kept in a build's cache entry, parsed."""
    return parse_ptxas(entry.file("report").read_text())


def ptxas_report_for(source: str, symbol: str, cache: Cache | None = None,
                     archs: tuple[str, ...] = DEFAULT_ARCHS) -> list[KernelResources]:
    """ptxas's per-kernel, per-architecture report for CUDA ``source`` (the rendered .cu of
    the kernel ``symbol``), built with nvcc through the cache (a second call compiles
    nothing). Works whether or not backend "cuda" runs on the emulator: the emulator's
    build never runs nvcc, so ``convgen show``/``explain`` ask for this one.
    CompilerNotFoundError without nvcc; CompileError when nvcc rejects the source."""
    return kernel_resources(build_cuda(source, symbol, tuple(archs), cache))


def ptxas_report_lines(source: str, symbol: str, cache: Cache | None = None,
                       archs: tuple[str, ...] = DEFAULT_ARCHS) -> list[str]:
    """The lines ``convgen show``/``explain`` print (the caller adds the comment marker):
    a heading, then one line per kernel and architecture; one line saying the report needs
    nvcc where there is none. CompileError propagates."""
    targets = " ".join(archs)
    try:
        resources = ptxas_report_for(source, symbol, cache, archs)
    except CompilerNotFoundError as exc:
        return [f"ptxas report ({targets}) needs nvcc: {exc}"]
    heading = (f"ptxas report (nvcc {' '.join(BASE_FLAGS[:2])}, {targets}; static shared "
               f"memory limit {STATIC_SHARED_BYTES} B):")
    if not resources:
        return [heading, "  (ptxas reported no kernels)"]
    return [heading, *(f"  {r.line()}" for r in resources)]
