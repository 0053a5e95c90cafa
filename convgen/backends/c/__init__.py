"""The C backend: Jinja2 templates (templates/c), the host C compiler, cffi dlopen."""

from __future__ import annotations

import shutil

from convgen import config
from convgen.backends.base import Artifact, Backend, Loaded, LoadedNetwork
from convgen.backends.c.build import build_c, compiler_identity, find_c_compiler
from convgen.backends.c.load import load_function
from convgen.backends.c.network import render_network
from convgen.backends.c.render import render_c
from convgen.backends.common import entry_prototype, function_pointer_type, prototype
from convgen.cache import Cache
from convgen.dtypes import element_type
from convgen.plan.core import Plan


class CBackend(Backend):
    name = "c"
    artifact_suffix = ".so"
    source_suffix = ".c"
    line_comment = "//"
    explicit_vectors = False  # gcc vectorizes; Schedule.vector_width does not change the C

    def available(self) -> str | None:
        if shutil.which(config.c_compiler()[0]) is None:
            return f"no C compiler found (CC={' '.join(config.c_compiler())!r})"
        return None

    def identity(self) -> str:
        return compiler_identity(find_c_compiler())

    def render(self, plan: Plan) -> str:
        return render_c(plan)

    def build(self, plan: Plan, source: str, cache: Cache | None) -> Artifact:
        entry = build_c(source, plan.symbol, openmp=plan.threads > 1, cache=cache)
        return Artifact(entry.file("library"), plan.symbol, prototype(plan),
                        function_pointer_type(plan), source, entry.sha256("library"))

    def load(self, artifact: Artifact, plan: Plan) -> Loaded:
        ffi, lib, function = load_function(artifact.path, artifact.symbol, artifact.cdef,
                                           artifact.sha256)
        return Loaded(ffi, function, (lib,), 1)  # OpenMP inside the call

    def compile_network(self, lowered, symbol: str, title: str) -> LoadedNetwork:
        source = render_network(lowered, symbol, title)
        openmp = any(step.plan is not None and step.plan.threads > 1 for step in lowered.steps)
        entry = build_c(source, symbol, openmp=openmp)
        ffi, lib, function = load_function(
            entry.file("library"), symbol,
            entry_prototype(symbol, element_type(lowered.dtype).c_type), entry.sha256("library"))
        return LoadedNetwork(source, ffi, function, (lib,))


BACKEND = CBackend()
