"""The Backend interface: what one code generator, compiler and loader provide.

A backend turns a plan into text (``render``), the text into a file in the cache
(``build``), and the file into a callable (``load``); it does the same for a whole
lowered network (``compile_network``). Everything the rest of convgen needs to know
about a backend is asked of this object, never decided from its name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from convgen.cache import Cache
from convgen.dtypes import ELEMENT_TYPES
from convgen.kernel import Kernel
from convgen.plan.core import Plan, describe_plan, make_plan
from convgen.plan.defaults import default_schedule
from convgen.schedule import Schedule
from convgen.spec import ConvSpec

if TYPE_CHECKING:  # annotations only
    from convgen.graph.lower import Lowered


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
    """A loaded kernel: its cffi function and what keeps its code alive."""

    ffi: object
    function: object
    keepalive: tuple
    python_threads: int  # threads the caller runs (0 or 1: the code parallelizes itself)


@dataclass(frozen=True)
class LoadedNetwork:
    """A compiled network's generated text and its loaded entry point."""

    source: str
    ffi: object
    function: object
    keepalive: tuple
    # runs a call itself (``runner(inputs) -> outputs``), owning its parameters and arena
    # (a GPU's); None: CompiledModel calls ``function`` with host memory
    runner: object = None


class Backend(abc.ABC):
    """One code generator behind convgen's layers; one instance in the registry."""

    name: str
    artifact_suffix: str  # the built file's suffix (compile_to writes NAME + suffix)
    source_suffix: str  # the generated text's suffix
    line_comment: str  # how its source starts a comment line (``convgen show``)
    explicit_vectors: bool  # whether Schedule.vector_width changes its code (the tuner asks)
    # whether its transform-GEMM kernels read the input through lane tables (one masked
    # gather per patch element) rather than staging it (``describe`` says which)
    gathers_by_table: bool = False
    # where its kernels run: "cpu" plans (convgen.plan.core) or "gpu" plans (convgen.plan.gpu)
    device: str = "cpu"
    # whether compile_network builds whole networks (the CUDA backend's come with issue 18)
    runs_networks: bool = True
    # the element types its networks may have (convgen.dtypes.ELEMENT_TYPES' names)
    network_dtypes: tuple[str, ...] = tuple(ELEMENT_TYPES)

    @abc.abstractmethod
    def available(self) -> str | None:
        """None when this machine can build and run it, else why not."""

    @abc.abstractmethod
    def identity(self) -> str:
        """What compiles its code (compiler and version): part of every tuning record."""

    def plan(self, spec: ConvSpec, schedule: Schedule, bound: bool = False) -> Plan:
        """The plan of ``spec`` under ``schedule`` on this backend (``bound``: the variant
        that reads prepared weights, where the plan has one)."""
        return make_plan(spec, schedule, prepared_weights=bound)

    def default_schedule(self, spec: ConvSpec, bound: bool = False,
                         threads: int | None = None) -> Schedule:
        """The untuned fallback schedule of ``spec`` on this backend."""
        return default_schedule(spec, self.name, prepared_weights=bound, threads=threads)

    @abc.abstractmethod
    def render(self, plan: Plan) -> str:
        """The generated source of one kernel."""

    @abc.abstractmethod
    def build(self, plan: Plan, source: str, cache: Cache | None) -> Artifact:
        """``source`` compiled (or fetched from the cache)."""

    @abc.abstractmethod
    def load(self, artifact: Artifact, plan: Plan) -> Loaded:
        """The built kernel loaded into this process."""

    def timing_caveat(self) -> str | None:
        """Why this backend's timings say nothing about the hardware it targets (the tuner
        refuses then), or None."""
        return None

    def timing(self, call, inputs: tuple, out_shape: tuple[int, ...], dtype: str):
        """``run(result=None)``: ``call(*inputs, out)`` once, finished when it returns, on
        this backend's memory (inputs and output placed there once); ``result``, a NumPy
        array, receives the output. The tuner times ``run()``."""
        out = np.empty(out_shape, dtype)

        def run(result: np.ndarray | None = None) -> None:
            call(*inputs, result if result is not None else out)

        return run

    def network_planner(self):
        """None: networks get CPU plans (convgen.plan.core, blocked layouts, prepared
        weights); else ``planner(spec, schedule) -> Plan`` for every conv layer, and every
        value stays NCHW."""
        return None

    def make_kernel(self, spec: ConvSpec, plan: Plan, artifact: Artifact, loaded: Loaded,
                    weight_shape: tuple[int, ...] | None = None) -> Kernel:
        """The callable Kernel around a loaded artifact."""
        return Kernel(spec, plan.schedule, self.name, artifact.symbol, artifact.source,
                      loaded.ffi, loaded.function, jobs=plan.jobs,
                      python_threads=loaded.python_threads, keepalive=loaded.keepalive,
                      library_path=str(artifact.path), weight_shape=weight_shape)

    @abc.abstractmethod
    def compile_network(self, lowered: Lowered, symbol: str, title: str) -> LoadedNetwork:
        """A lowered network rendered as one module with one entry point, built, loaded."""

    def describe(self, plan: Plan) -> list[str]:
        """How ``plan`` runs on this backend, in a few lines (``convgen explain``)."""
        return describe_plan(plan, self.gathers_by_table)
