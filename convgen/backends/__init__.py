"""Backends: one registry entry each (render, build, load), and ``compile``.

Adding a backend means adding an entry here; the whole property-test suite runs
on every name in :data:`BACKENDS`.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from convgen import config
from convgen.plan.weights import bound_plan, prepares
from convgen.backends.c.build import build_c
from convgen.cache import Cache
from convgen.kernel import Kernel, load_function
from convgen.plan.core import Plan, make_plan
from convgen.records import best_record
from convgen.backends.c.render import function_pointer_type, prototype, render_c
from convgen.schedule import Schedule, default_schedule
from convgen.spec import ConvSpec


@dataclass(frozen=True)
class Artifact:
    """A built kernel: its file (shared library or object file) and entry point."""

    path: Path
    symbol: str
    cdef: str  # the C prototype
    pointer_type: str  # the same signature as a C function pointer type
    source: str
    sha256: str | None = None  # of the file at ``path``, when already verified


@dataclass(frozen=True)
class Loaded:
    ffi: object
    function: object
    keepalive: tuple
    python_threads: int  # threads the caller runs (0 or 1: the code parallelizes itself)


@dataclass(frozen=True)
class Backend:
    name: str
    suffix: str  # file suffix of the artifact, for compile_to
    render: Callable[[Plan], str]
    build: Callable[[Plan, str, Cache | None], Artifact]
    load: Callable[[Artifact, Plan], Loaded]


# -- C: Jinja2 templates, the host C compiler, dlopen -------------------------------
def _build_c(plan: Plan, source: str, cache: Cache | None) -> Artifact:
    entry = build_c(source, plan.symbol, openmp=plan.threads > 1, cache=cache)
    return Artifact(entry.file("library"), plan.symbol, prototype(plan),
                    function_pointer_type(plan), source, entry.sha256("library"))


def _load_c(artifact: Artifact, plan: Plan) -> Loaded:
    ffi, lib, function = load_function(artifact.path, artifact.symbol, artifact.cdef,
                                       artifact.sha256)
    return Loaded(ffi, function, (lib,), 1)  # OpenMP inside the call


# -- LLVM: llvmlite.ir, new pass manager, MCJIT --------------------------------------
def _render_llvm(plan: Plan, pretransformed: bool = False) -> str:
    from convgen.backends.llvm.build import data_layout, target_triple
    from convgen.backends.llvm.render import render_llvm

    return render_llvm(plan, target_triple(), data_layout(), pretransformed)


def _build_llvm(plan: Plan, source: str, cache: Cache | None) -> Artifact:
    from convgen.backends.llvm.build import build_llvm

    entry = build_llvm(source, plan.symbol, cache=cache)
    return Artifact(entry.file("object"), plan.symbol, prototype(plan),
                    function_pointer_type(plan), source)


def _load_llvm(artifact: Artifact, plan: Plan) -> Loaded:
    import cffi

    from convgen.backends.llvm.build import load_object
    from convgen.backends.llvm.wino import uses_openmp

    # a transform-GEMM kernel shares its jobs over OpenMP threads itself where it can; the
    # OpenMP runtime is loaded first (an object loaded from a compile_to directory was
    # rendered in another process)
    inside = plan.winograd is not None and uses_openmp(plan)
    address, engine = load_object(artifact.path, artifact.symbol)
    ffi = cffi.FFI()
    function = ffi.cast(artifact.pointer_type, address)
    return Loaded(ffi, function, (engine,), 1 if inside else plan.threads)


REGISTRY: dict[str, Backend] = {
    "c": Backend("c", ".so", render_c, _build_c, _load_c),
    "llvm": Backend("llvm", ".o", _render_llvm, _build_llvm, _load_llvm),
}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_BACKEND = "c"
_warned_fallback = False


def resolve_backend(name: str | None) -> str:
    """``name``, or for None the default: C, falling back to LLVM without a C compiler."""
    global _warned_fallback
    if name is None:
        if shutil.which(config.c_compiler()[0]) is not None:
            return DEFAULT_BACKEND
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"no C compiler found (CC={' '.join(config.c_compiler())!r}); "
                          "convgen falls back to backend='llvm'", RuntimeWarning, stacklevel=3)
        return "llvm"
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return name


def get_backend(name: str) -> Backend:
    return REGISTRY[resolve_backend(name)]


def kernel_from_artifact(spec: ConvSpec, plan: Plan, backend: str, artifact: Artifact,
                         weight_shape: tuple[int, ...] | None = None) -> Kernel:
    loaded = get_backend(backend).load(artifact, plan)
    return Kernel(spec, plan.schedule, backend, artifact.symbol, artifact.source, loaded.ffi,
                  loaded.function, jobs=plan.jobs, python_threads=loaded.python_threads,
                  keepalive=loaded.keepalive, library_path=str(artifact.path),
                  weight_shape=weight_shape)


def build_artifact(spec: ConvSpec, backend: str | None = None,
                   schedule: Schedule | None = None, cache: Cache | None = None,
                   bound: bool = False) -> tuple[Plan, Artifact, str]:
    """Plan, render and build (or fetch from the cache) without loading; ``bound``: the
    variant that reads prepared weights (convgen.plan.weights), where the plan has one.

    Returns the plan, the artifact and the backend's name (resolved from None).
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a convgen.Schedule or None, "
                        f"got {type(schedule).__name__}")
    name = resolve_backend(backend)
    chosen = REGISTRY[name]
    plan = make_plan(spec, schedule if schedule is not None else default_schedule(spec, name))
    if bound and prepares(plan, name):
        plan = bound_plan(plan)
        render = render_c if name == "c" else _render_llvm
        return plan, chosen.build(plan, render(plan, pretransformed=True), cache), name
    source = chosen.render(plan)
    return plan, chosen.build(plan, source, cache), name


def compile(spec: ConvSpec, backend: str | None = None, schedule: Schedule | None = None,
            cache: Cache | None = None) -> Kernel:  # noqa: A001 - the public name
    """Compile ``spec`` (cached) and return a callable Kernel.

    ``backend`` is "c" or "llvm"; None means "c", or "llvm" (with a warning, once)
    when no C compiler is installed. ``schedule`` None means the best tuning record
    for (spec, backend) if there is one (see convgen.records), else the default.
    """
    if schedule is None and isinstance(spec, ConvSpec):
        backend = resolve_backend(backend)
        schedule = best_record(spec, backend)
    plan, artifact, name = build_artifact(spec, backend, schedule, cache)
    return kernel_from_artifact(spec, plan, name, artifact)
