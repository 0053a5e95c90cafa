"""Backends: one registry entry each (render, build, load), and ``compile``.

Adding a backend means adding an entry here; the whole property-test suite runs
on every name in :data:`BACKENDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .builder import build_c
from .cache import Cache
from .kernel import Kernel, load_function
from .plan import Plan, make_plan
from .render import prototype, render_c
from .schedule import Schedule
from .spec import ConvSpec


@dataclass(frozen=True)
class Artifact:
    """A built kernel: where its library is and how to declare its entry point."""

    library: Path
    symbol: str
    cdef: str
    source: str


def _build_c(plan: Plan, source: str, cache: Cache | None) -> Artifact:
    entry = build_c(source, plan.symbol, openmp=plan.threads > 1, cache=cache)
    return Artifact(entry.file("library"), plan.symbol, prototype(plan), source)


@dataclass(frozen=True)
class Backend:
    name: str
    render: Callable[[Plan], str]
    build: Callable[[Plan, str, Cache | None], Artifact]


REGISTRY: dict[str, Backend] = {
    "c": Backend("c", render_c, _build_c),
}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)


def get_backend(name: str) -> Backend:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return REGISTRY[name]


def kernel_from_artifact(spec: ConvSpec, schedule: Schedule, backend: str,
                         artifact: Artifact) -> Kernel:
    ffi, lib, function = load_function(artifact.library, artifact.symbol, artifact.cdef)
    return Kernel(spec, schedule, backend, artifact.symbol, artifact.source, ffi, function,
                  keepalive=(lib,), library_path=str(artifact.library))


def build_artifact(spec: ConvSpec, backend: str = "c", schedule: Schedule | None = None,
                   cache: Cache | None = None) -> tuple[Plan, Artifact]:
    """Plan, render and build (or fetch from the cache) without loading."""
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec: expected a convgen.ConvSpec, got {type(spec).__name__}")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a convgen.Schedule or None, "
                        f"got {type(schedule).__name__}")
    chosen = get_backend(backend)
    plan = make_plan(spec, schedule)
    source = chosen.render(plan)
    return plan, chosen.build(plan, source, cache)


def compile(spec: ConvSpec, backend: str = "c", schedule: Schedule | None = None,
            cache: Cache | None = None) -> Kernel:  # noqa: A001 - the public name
    """Compile ``spec`` for ``backend`` (cached) and return a callable Kernel."""
    plan, artifact = build_artifact(spec, backend, schedule, cache)
    return kernel_from_artifact(spec, plan.schedule, backend, artifact)
