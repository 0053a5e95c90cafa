"""The CUDA backend: GPU plans (convgen.plan.gpu) rendered as CUDA C++ (templates/cuda).

Where ``backend="cuda"`` runs is :func:`convgen.config.cuda_device`: a GPU ordinal (the
default, "0": nvcc builds a fat binary loaded through the driver API, device.py) or
"emulator" ($CONVGEN_CUDA_DEVICE=emulator, or ``convgen.config.set_cuda_device``): the host
C++ compiler builds the same .cu text with emulator.h, which runs each GPU thread as a
fiber, checks every array access against its bounds and every barrier for divergence, and
can run a block's threads in another order to expose races (emulator.py).
"""

from __future__ import annotations

import threading

import numpy as np

from convgen import config
from convgen.backends.base import Artifact, Backend, Loaded, LoadedNetwork
from convgen.backends.c.load import load_function
from convgen.backends.common import entry_prototype, function_pointer_type, prototype
from convgen.backends.cuda import device
from convgen.backends.cuda.build import (REPORT_NAME, KernelResources, build_cuda, find_nvcc,
                                         kernel_resources, nvcc_identity, parse_ptxas)
from convgen.backends.cuda.emulator import (RUNTIME_CDEF, EmulatorError, build_emulated,
                                            find_cxx_compiler)
from convgen.backends.c.build import compiler_identity
from convgen.backends.cuda.arrays import DeviceArray, to_device
from convgen.backends.cuda.kernel import CudaKernel
from convgen.backends.cuda.network import DeviceNetwork, EmulatedNetwork, launches, render_network
from convgen.backends.cuda.render import render_cuda
from convgen.cache import Cache
from convgen.dtypes import dtype_info
from convgen.errors import CompilerNotFoundError, ConvgenError
from convgen.plan.base import Plan
from convgen.plan.gpu import default_gpu_schedule, describe_gpu_plan, make_gpu_plan
from convgen.schedule import Schedule
from convgen.spec import ConvSpec


class CudaBackend(Backend):
    name = "cuda"
    source_suffix = ".cu"
    line_comment = "//"
    explicit_vectors = False
    device = "gpu"
    # its network ops (templates/cuda/ops.cu.j2) are written for float types only
    network_dtypes = ("float32", "float64")

    @property
    def artifact_suffix(self) -> str:  # type: ignore[override]
        return ".so" if emulated() else ".fatbin"

    def available(self) -> str | None:
        try:
            if emulated():
                find_cxx_compiler()
                return None
            find_nvcc()
        except (CompilerNotFoundError, ValueError) as exc:
            return str(exc)
        return device.available(int(config.cuda_device()))

    def identity(self) -> str:
        if emulated():
            return "emulator|" + compiler_identity(find_cxx_compiler())
        return nvcc_identity(find_nvcc()) + "|" + device.device_identity(int(config.cuda_device()))

    def plan(self, spec: ConvSpec, schedule: Schedule, bound: bool = False) -> Plan:
        # weights are read as given (no prepared layout on the GPU yet): bound or not, one plan
        return make_gpu_plan(spec, schedule)

    def default_schedule(self, spec: ConvSpec, bound: bool = False,
                         threads: int | None = None) -> Schedule:
        # threads: the emulator's OpenMP threads over blocks (a GPU ignores it)
        return Schedule(threads=threads or 1, gpu=default_gpu_schedule(spec))

    def render(self, plan: Plan) -> str:
        return render_cuda(plan)

    def build(self, plan: Plan, source: str, cache: Cache | None) -> Artifact:
        if emulated():
            entry = build_emulated(source, plan.symbol, cache)
            return Artifact(entry.file("library"), plan.symbol, prototype(plan),
                            function_pointer_type(plan), source, entry.sha256("library"))
        entry = build_cuda(source, plan.symbol, device.target_archs(int(config.cuda_device())),
                           cache)
        return Artifact(entry.file("binary"), plan.symbol, prototype(plan),
                        function_pointer_type(plan), source, entry.sha256("binary"))

    def load(self, artifact: Artifact, plan: Plan) -> Loaded:
        """Loaded.function launches with device pointers: ``(x, w, b, y, begin, end)``."""
        if artifact.path.suffix == ".fatbin":
            if emulated():
                raise ConvgenError(f"{artifact.path} is built for a GPU; the emulator "
                                   "(CONVGEN_CUDA_DEVICE=emulator) runs emulator builds")
            launcher = device.load_kernel(artifact.path, plan, int(config.cuda_device()))
            return Loaded(None, launcher.launch, (launcher,), 1)
        if not emulated():
            raise ConvgenError(f"{artifact.path} is an emulator build; set "
                               "CONVGEN_CUDA_DEVICE=emulator to run it, or rebuild for the GPU")
        ffi, lib, function = load_function(artifact.path, artifact.symbol,
                                           RUNTIME_CDEF + artifact.cdef, artifact.sha256)
        call = EmulatedLaunch(ffi, lib, function, artifact.symbol, plan.c_type, plan.threads)
        return Loaded(ffi, call, (lib, call), 1)

    def make_kernel(self, spec: ConvSpec, plan: Plan, artifact: Artifact, loaded: Loaded,
                    weight_shape: tuple[int, ...] | None = None) -> CudaKernel:
        return CudaKernel(spec, plan.schedule, self.name, artifact.symbol, artifact.source,
                          loaded.ffi, None, jobs=plan.jobs, keepalive=loaded.keepalive,
                          library_path=str(artifact.path), weight_shape=weight_shape,
                          launch=loaded.function, emulated=artifact.path.suffix != ".fatbin")

    def timing_caveat(self) -> str | None:
        if emulated():
            return ("the CUDA emulator runs on the CPU: its timings say nothing about a GPU "
                    "(tune with CONVGEN_CUDA_DEVICE naming a GPU)")
        return None

    def timing(self, call, inputs: tuple, out_shape: tuple[int, ...], dtype: str):
        """Inputs and output in device memory once; ``run`` launches and waits (the
        launch is asynchronous), so a timing covers the kernel, not the copies."""
        staged = tuple(to_device(a) if a is not None else None for a in inputs)
        out = DeviceArray.empty(out_shape, dtype)

        def run(result: np.ndarray | None = None) -> None:
            call(*staged, out)
            if out.driver is not None:
                out.driver.synchronize()
            if result is not None:
                np.copyto(result, out.copy_to_host())

        return run

    def network_planner(self):
        # many layers share one module's 64 KiB of __constant__ memory: weights stay global
        return lambda spec, schedule: make_gpu_plan(spec, schedule, constant_weights=False)

    def compile_network(self, lowered, symbol: str, title: str) -> LoadedNetwork:
        source = render_network(lowered, symbol, title)
        if emulated():
            entry = build_emulated(source, symbol)
            ffi, lib, function = load_function(
                entry.file("library"), symbol,
                RUNTIME_CDEF + entry_prototype(symbol, dtype_info(lowered.dtype).c_type),
                entry.sha256("library"))
            runner = EmulatedNetwork(lowered, ffi, lib, function)
            return LoadedNetwork(source, ffi, function, (lib, runner), runner)
        ordinal = int(config.cuda_device())
        entry = build_cuda(source, symbol, device.target_archs(ordinal))
        module = device.load_module(entry.file("binary"), ordinal)
        runner = DeviceNetwork(lowered, module, launches(lowered))
        return LoadedNetwork(source, None, None, (module, runner), runner)

    def describe(self, plan: Plan) -> list[str]:
        return describe_gpu_plan(plan)

    def resources(self, artifact: Artifact) -> list[KernelResources] | None:
        """ptxas's report of a device build (registers, spills, shared memory per kernel
        and architecture; kept beside the binary), else None."""
        report = artifact.path.with_name(REPORT_NAME)
        if artifact.path.suffix != ".fatbin" or not report.is_file():
            return None
        return parse_ptxas(report.read_text())


class EmulatedLaunch:
    """An emulated kernel's host entry, called with addresses (ints) behind a lock: the
    launch copies the weights into a module-wide __constant__ array and the emulator's
    error state is per library, so two Python threads must not interleave launches."""

    def __init__(self, ffi, lib, function, symbol: str, c_type: str, threads: int):
        self._ffi, self._lib, self._function = ffi, lib, function
        self._symbol = symbol
        self._pointer = f"{c_type} *"
        self._threads = threads
        self._lock = threading.Lock()

    def __call__(self, x: int, w: int, b: int, y: int, begin: int, end: int) -> None:
        cast = self._ffi.cast
        args = (cast(self._pointer, x), cast(self._pointer, w),
                cast(self._pointer, b) if b else self._ffi.NULL, cast(self._pointer, y))
        with self._lock:
            self._lib.cg_emu_set_num_threads(self._threads)
            status = self._function(*args, begin, end)
            if status != 0:
                message = self._ffi.string(self._lib.cg_emu_last_error()).decode(
                    errors="replace")
                raise EmulatorError(f"{self._symbol} failed in the CUDA emulator (status "
                                    f"{status}): {message or 'no message'}")

    def set_order(self, order: int, seed: int = 0) -> None:
        """Run blocks' threads in ``order`` (0 forward, 1 reverse, 2 shuffled by ``seed``)
        from the next launch on: the race check runs a kernel in two orders and compares."""
        with self._lock:
            self._lib.cg_emu_set_order(order, seed & 0xFFFFFFFF)


def emulated() -> bool:
    """Whether backend "cuda" runs on the CPU emulator (config.cuda_device() == "emulator")."""
    return config.cuda_device() == "emulator"


BACKEND = CudaBackend()

__all__ = ["BACKEND", "CudaBackend", "EmulatedLaunch", "emulated", "kernel_resources"]
