"""Backends: the registry of code generators, one :class:`Backend` object per name.

A backend is a subpackage (``convgen/backends/<name>/``) holding its renderer, builder,
loader and network code generator behind :class:`~convgen.backends.base.Backend`, and one
line in :data:`REGISTRY`. The whole property-test suite runs on every registered name.
Nothing outside this package branches on a backend's name: it asks the object.
"""

from __future__ import annotations

import warnings

from convgen.backends.base import Artifact, Backend, Loaded, LoadedNetwork
from convgen.backends.c import BACKEND as C_BACKEND
from convgen.backends.cuda import BACKEND as CUDA_BACKEND
from convgen.backends.llvm import BACKEND as LLVM_BACKEND

REGISTRY: dict[str, Backend] = {backend.name: backend
                                for backend in (C_BACKEND, LLVM_BACKEND, CUDA_BACKEND)}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)
# the backends whose code runs on this machine's CPU (the peers benches compare them with)
CPU_BACKENDS: tuple[str, ...] = tuple(name for name, b in REGISTRY.items() if b.device == "cpu")
# None asks for the first of these that this machine can run (warning when it is not the first)
PREFERENCE: tuple[str, ...] = ("c", "llvm")
_warned_fallback = False

__all__ = ["Artifact", "BACKENDS", "Backend", "CPU_BACKENDS", "Loaded", "LoadedNetwork", "REGISTRY",
           "get_backend", "resolve_backend"]


def resolve_backend(name: str | None) -> str:
    """``name`` checked, or for None the preferred backend this machine can run."""
    global _warned_fallback
    if name is None:
        reasons = []
        for candidate in PREFERENCE:
            why_not = REGISTRY[candidate].available()
            if why_not is None:
                if reasons and not _warned_fallback:
                    _warned_fallback = True
                    warnings.warn(f"{'; '.join(reasons)}; convgen falls back to "
                                  f"backend={candidate!r}", RuntimeWarning, stacklevel=3)
                return candidate
            reasons.append(why_not)
        raise RuntimeError(f"no backend can run here: {'; '.join(reasons)}")
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return name


def get_backend(name: str | None) -> Backend:
    """The registered backend object for ``name`` (None: as :func:`resolve_backend`)."""
    return REGISTRY[resolve_backend(name)]
