"""The GPU path of backend "cuda": a fat binary loaded through the driver API and launched.

A kernel's launch is ``grid = (job_end - job_begin)`` blocks of ``threads`` threads with
the parameters (x, w, b, y, job_begin) as device pointers; weights a plan keeps in
``__constant__`` memory are first copied to that symbol (cuModuleGetGlobal).
"""

from __future__ import annotations

import threading
from pathlib import Path

from convgen.backends.cuda import driver
from convgen.backends.cuda.build import DEFAULT_ARCHS
from convgen.backends.cuda.render import constant_weights_name, kernel_name, threads_per_block
from convgen.plan.base import Plan


def available(ordinal: int) -> str | None:
    """None when the driver and GPU ``ordinal`` are there, else why not (naming the emulator)."""
    why = driver.available(ordinal)
    if why is None:
        return None
    return (f"backend 'cuda' needs a GPU: {why}; set CONVGEN_CUDA_DEVICE=emulator (or "
            "convgen.config.set_cuda_device('emulator')) to run CUDA kernels on the CPU emulator")


def device_identity(ordinal: int) -> str:
    """The GPU's name and architecture (part of tuning records), or "no device"."""
    if driver.available(ordinal) is not None:
        return "no device"
    gpu = driver.Driver.get(ordinal)
    return f"{gpu.name()}|{gpu.arch()}"


def target_archs(ordinal: int) -> tuple[str, ...]:
    """The device's own architecture where there is a device, else sm_80 and sm_90."""
    if driver.available(ordinal) is not None:
        return DEFAULT_ARCHS
    return (driver.Driver.get(ordinal).arch(),)


class DeviceKernel:
    """One kernel of a loaded module: ``launch(x, w, b, y, begin, end)`` with device
    pointers (ints; b may be 0 without bias)."""

    def __init__(self, gpu: driver.Driver, module: driver.Module, plan: Plan):
        self.driver = gpu
        self.module = module
        self.function = module.function(kernel_name(plan))
        self.threads = threads_per_block(plan)
        self.jobs = plan.jobs
        name = constant_weights_name(plan)
        self.constant = module.global_(name) if name is not None else None
        self._lock = threading.Lock()  # the __constant__ weights are module-wide

    def launch(self, x: int, w: int, b: int, y: int, begin: int, end: int) -> None:
        if not 0 <= begin <= end <= self.jobs:
            raise ValueError(f"job range [{begin}, {end}) outside [0, {self.jobs})")
        if end == begin:
            return
        with self._lock:
            if self.constant is not None:
                address, nbytes = self.constant
                self.driver.copy_device(address, w, nbytes)
            self.function.launch((end - begin, 1, 1), (self.threads, 1, 1), [
                ("unsigned long long", x), ("unsigned long long", w),
                ("unsigned long long", b), ("unsigned long long", y), ("long long", begin)])


def load_module(path: Path, ordinal: int) -> driver.Module:
    """The fat binary at ``path`` loaded on GPU ``ordinal``."""
    return driver.Driver.get(ordinal).load_module(Path(path).read_bytes())


def load_kernel(path: Path, plan: Plan, ordinal: int) -> DeviceKernel:
    """The kernel of the fat binary at ``path`` loaded on GPU ``ordinal``."""
    gpu = driver.Driver.get(ordinal)
    module = gpu.load_module(Path(path).read_bytes())
    return DeviceKernel(gpu, module, plan)
