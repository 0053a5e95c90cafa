"""The LLVM backend: IR built with llvmlite, optimized and JIT-compiled in process."""

from __future__ import annotations

import cffi
import llvmlite
import llvmlite.binding as llvm

from convgen.backends.base import Artifact, Backend, Loaded, LoadedNetwork
from convgen.backends.common import function_pointer_type, prototype
from convgen.backends.llvm.build import build_llvm, data_layout, load_object, target_triple
from convgen.backends.llvm.network import build_network_llvm
from convgen.backends.llvm.render import parallel_inside, render_llvm
from convgen.cache import Cache
from convgen.plan.base import Plan


class LLVMBackend(Backend):
    name = "llvm"
    artifact_suffix = ".o"
    source_suffix = ".ll"
    line_comment = ";"
    explicit_vectors = True  # the IR's vectors are Schedule.vector_width lanes wide
    gathers_by_table = True  # transform-GEMM inputs: one masked gather per patch element

    def available(self) -> str | None:
        return None  # llvmlite is a dependency; it needs no outside tool

    def identity(self) -> str:
        return f"llvmlite {llvmlite.__version__} LLVM " + \
            ".".join(map(str, llvm.llvm_version_info))

    def render(self, plan: Plan) -> str:
        return render_llvm(plan, target_triple(), data_layout())

    def build(self, plan: Plan, source: str, cache: Cache | None) -> Artifact:
        entry = build_llvm(source, plan.symbol, cache=cache)
        return Artifact(entry.file("object"), plan.symbol, prototype(plan),
                        function_pointer_type(plan), source)

    def load(self, artifact: Artifact, plan: Plan) -> Loaded:
        # a transform-GEMM or staged depthwise kernel shares its jobs over OpenMP threads
        # itself where it can; the OpenMP runtime is loaded first (an object loaded from a
        # compile_to directory was rendered in another process)
        inside = parallel_inside(plan)
        address, engine = load_object(artifact.path, artifact.symbol)
        ffi = cffi.FFI()
        function = ffi.cast(artifact.pointer_type, address)
        return Loaded(ffi, function, (engine,), 1 if inside else plan.threads)

    def compile_network(self, lowered, symbol: str, title: str) -> LoadedNetwork:
        return LoadedNetwork(*build_network_llvm(lowered, symbol, title))


BACKEND = LLVMBackend()
