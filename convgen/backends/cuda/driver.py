"""The CUDA driver API through cffi (ABI mode): devices, memory, modules and launches.

Kernels come from nvcc as a fat binary (build.py) and are loaded with
``cuModuleLoadData``, so only the driver library is needed at run time: libcuda.so.1,
which the NVIDIA driver installs, not the CUDA toolkit's runtime (libcudart), and no
Python package beyond cffi. ABI mode (``ffi.dlopen``) needs no compiler, and a machine
without the driver can still import this module; it fails only when a device is asked
for, with :class:`NoCudaDeviceError` pointing at the CPU emulator.

Each device is used through its *primary* context, the one the runtime API (and so
PyTorch and CuPy) uses too, so pointers from those libraries are valid here and ours
there. Every driver call goes through :meth:`Driver._check`, which raises
:class:`CudaDriverError` naming the call and the CUresult.

The library object is injected (``Driver(lib, ffi, ordinal)``); :meth:`Driver.get`
does the dlopen. The tests pass a Python object in its place to check statuses,
messages and launch parameters on a machine without a GPU.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import cffi
import numpy as np

from convgen import config
from convgen.errors import ConvgenError

LIBRARY = "libcuda.so.1"

# Names as the library exports them: cuda.h #defines the plain names to the _v2 entries
# (64-bit CUdeviceptr and size_t; the primary-context release that no longer resets).
# cuEventElapsedTime stays v1: its _v2 exists only in drivers from CUDA 12.8 on.
CDEF = """
typedef int CUresult;
typedef int CUdevice;
typedef int CUdevice_attribute;
typedef int CUfunction_attribute;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;

CUresult cuInit(unsigned int flags);
CUresult cuDriverGetVersion(int *version);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attrib, CUdevice dev);
CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxSynchronize(void);
CUresult cuModuleLoadData(CUmodule *module, const void *image);
CUresult cuModuleUnload(CUmodule module);
CUresult cuModuleGetFunction(CUfunction *function, CUmodule module, const char *name);
CUresult cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule module,
                              const char *name);
CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attrib, int value);
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize);
CUresult cuMemFree_v2(CUdeviceptr dptr);
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes);
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes);
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes);
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t count);
CUresult cuLaunchKernel(CUfunction f, unsigned int gridX, unsigned int gridY,
                        unsigned int gridZ, unsigned int blockX, unsigned int blockY,
                        unsigned int blockZ, unsigned int sharedMemBytes, CUstream stream,
                        void **kernelParams, void **extra);
CUresult cuEventCreate(CUevent *event, unsigned int flags);
CUresult cuEventRecord(CUevent event, CUstream stream);
CUresult cuEventSynchronize(CUevent event);
CUresult cuEventElapsedTime(float *milliseconds, CUevent start, CUevent end);
CUresult cuEventDestroy_v2(CUevent event);
CUresult cuGetErrorName(CUresult error, const char **name);
CUresult cuGetErrorString(CUresult error, const char **description);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)

# CUdevice_attribute and CUfunction_attribute values used here (cuda.h)
ATTR_MAX_SHARED_PER_BLOCK = 8
ATTR_MULTIPROCESSOR_COUNT = 16
ATTR_COMPUTE_CAPABILITY_MAJOR = 75
ATTR_COMPUTE_CAPABILITY_MINOR = 76
ATTR_MAX_SHARED_PER_BLOCK_OPTIN = 97
FUNC_ATTR_MAX_DYNAMIC_SHARED_BYTES = 8

CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INVALID_DEVICE = 101

# For messages when cuGetErrorName itself is missing or fails (a fake library, a driver
# too broken to answer): the codes a user of this module is likely to meet.
ERROR_NAMES = {
    1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY", 100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE", 200: "CUDA_ERROR_INVALID_IMAGE",
    209: "CUDA_ERROR_NO_BINARY_FOR_GPU", 218: "CUDA_ERROR_INVALID_PTX",
    222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", 400: "CUDA_ERROR_INVALID_HANDLE",
    500: "CUDA_ERROR_NOT_FOUND", 700: "CUDA_ERROR_ILLEGAL_ADDRESS",
    701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 702: "CUDA_ERROR_LAUNCH_TIMEOUT",
    719: "CUDA_ERROR_LAUNCH_FAILED", 999: "CUDA_ERROR_UNKNOWN",
}
# After these the context is unusable: every later call fails with the same code.
STICKY_ERRORS = frozenset({700, 702, 714, 715, 716, 717, 718, 719})

EMULATOR_ADVICE = ("set CONVGEN_CUDA_DEVICE=emulator (or "
                   "convgen.config.set_cuda_device('emulator')) to run CUDA kernels on the "
                   "CPU emulator")


class CudaDriverError(ConvgenError, RuntimeError):
    """A CUDA driver call failed: names the call, the CUresult's name and text and its code."""

    def __init__(self, call: str, code: int, name: str = "", description: str = ""):
        super().__init__(call, code, name, description)
        self.call = call
        self.code = code
        self.name = name or ERROR_NAMES.get(code, "CUDA_ERROR_?")
        self.description = description

    def __str__(self) -> str:
        text = f"{self.call} failed: {self.name} ({self.code})"
        if self.description:
            text += f": {self.description}"
        if self.code in STICKY_ERRORS:
            text += (" [the CUDA context is now unusable; every later call in this process "
                     "fails: restart it]")
        return text


class NoCudaDeviceError(ConvgenError, RuntimeError):
    """No CUDA driver library, or no GPU at the asked ordinal: says which, and how to use the
    CPU emulator instead."""


def _open_library(name: str) -> Any:
    """dlopen the driver library (a seam: the tests replace it to act out a missing driver)."""
    return ffi.dlopen(name)


_library_lock = threading.Lock()
_library: Any = None


def load_library() -> Any:
    """The driver library, opened once per process; NoCudaDeviceError where it is missing."""
    global _library
    with _library_lock:
        if _library is None:
            try:
                _library = _open_library(LIBRARY)
            except OSError as exc:
                raise NoCudaDeviceError(
                    f"no CUDA driver: the NVIDIA driver library {LIBRARY} could not be "
                    f"loaded ({exc}); install the NVIDIA driver on a machine with a GPU, or "
                    f"{EMULATOR_ADVICE}") from None
        return _library


def error_text(lib: Any, code: int) -> tuple[str, str]:
    """(name, description) of a CUresult from the driver itself; the table's name and no
    description where the driver cannot say (it never raises: it serves error paths)."""
    texts = []
    for call in ("cuGetErrorName", "cuGetErrorString"):
        try:
            out = ffi.new("const char **")
            if getattr(lib, call)(code, out) != 0 or out[0] == ffi.NULL:
                raise LookupError
            texts.append(ffi.string(out[0]).decode(errors="replace"))
        except Exception:
            texts.append("")
    return texts[0] or ERROR_NAMES.get(code, "CUDA_ERROR_?"), texts[1]


def check(lib: Any, call: str, status: int) -> None:
    """Raise CudaDriverError for a failed ``call`` (``status`` is its CUresult)."""
    if status != 0:
        name, description = error_text(lib, int(status))
        raise CudaDriverError(call, int(status), name, description)


def _probe(lib: Any, ordinal: int) -> int:
    """cuInit then the device count; NoCudaDeviceError where the driver finds no device there."""
    if isinstance(ordinal, bool) or not isinstance(ordinal, int) or ordinal < 0:
        raise ValueError(f"ordinal: expected a GPU index 0, 1, ..., got {ordinal!r}")
    status = lib.cuInit(0)
    if status != 0:
        # a stub library, a driver older than the kernel module, no device: all "no GPU here"
        name, description = error_text(lib, int(status))
        raise NoCudaDeviceError(
            f"no usable CUDA device: cuInit failed with {name} ({status})"
            f"{': ' + description if description else ''}; {EMULATOR_ADVICE}")
    count = ffi.new("int *")
    check(lib, "cuDeviceGetCount", lib.cuDeviceGetCount(count))
    if ordinal >= count[0]:
        found = "no CUDA device" if count[0] == 0 else f"{count[0]} CUDA device(s)"
        raise NoCudaDeviceError(
            f"no CUDA device {ordinal}: the driver found {found}; use an ordinal below "
            f"{count[0]} (CONVGEN_CUDA_DEVICE), or {EMULATOR_ADVICE}")
    return count[0]


# The context this module last made current on each thread: cuCtxSetCurrent is per
# thread, and Python code may reach a Driver from any thread, so each call makes its
# device's context current first, skipping the driver call when it already is.
_thread = threading.local()


class Driver:
    """One device, through its primary context. ``Driver.get(ordinal)`` is the process-wide
    instance; the constructor takes an opened library (or a stand-in) and initializes it."""

    _instances: dict[int, "Driver"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, lib: Any, ffi: cffi.FFI = ffi, ordinal: int = 0):
        self.lib = lib
        self.ffi = ffi
        self.ordinal = ordinal
        _probe(lib, ordinal)
        device = ffi.new("CUdevice *")
        self._check("cuDeviceGet", lib.cuDeviceGet(device, ordinal))
        self.device = device[0]
        context = ffi.new("CUcontext *")
        self._check("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain(context,
                                                                              self.device))
        self.context = context[0]
        try:
            self._activate(force=True)
        except CudaDriverError:
            lib.cuDevicePrimaryCtxRelease_v2(self.device)
            raise

    @classmethod
    def get(cls, ordinal: int | None = None) -> "Driver":
        """The driver for GPU ``ordinal`` (None: config.cuda_device()), created on first use.

        NoCudaDeviceError where there is no driver library or no such device; ValueError
        where ordinal is None and the configured device is the emulator (it has no driver).
        """
        if ordinal is None:
            device = config.cuda_device()
            if device == "emulator":
                raise ValueError("the configured CUDA device is the CPU emulator "
                                 "(CONVGEN_CUDA_DEVICE=emulator): there is no GPU driver to "
                                 "open; pass a GPU ordinal")
            ordinal = int(device)
        with cls._instances_lock:
            instance = cls._instances.get(ordinal)
            if instance is None:
                instance = cls._instances[ordinal] = cls(load_library(), ffi, ordinal)
            return instance

    def _check(self, call: str, status: int) -> None:
        check(self.lib, call, status)

    def _activate(self, force: bool = False) -> None:
        key = int(self.ffi.cast("uintptr_t", self.context))
        if force or getattr(_thread, "context", None) != key:
            self._check("cuCtxSetCurrent", self.lib.cuCtxSetCurrent(self.context))
            _thread.context = key

    def _attribute(self, attribute: int) -> int:
        value = self.ffi.new("int *")
        self._check("cuDeviceGetAttribute",
                    self.lib.cuDeviceGetAttribute(value, attribute, self.device))
        return int(value[0])

    # the device

    def name(self) -> str:
        buffer = self.ffi.new("char[]", 256)
        self._check("cuDeviceGetName", self.lib.cuDeviceGetName(buffer, 256, self.device))
        return self.ffi.string(buffer).decode(errors="replace")

    def driver_version(self) -> tuple[int, int]:
        """The CUDA version the driver supports, e.g. (12, 4): PTX newer than it fails to load."""
        version = self.ffi.new("int *")
        self._check("cuDriverGetVersion", self.lib.cuDriverGetVersion(version))
        return version[0] // 1000, version[0] % 1000 // 10

    def compute_capability(self) -> tuple[int, int]:
        return (self._attribute(ATTR_COMPUTE_CAPABILITY_MAJOR),
                self._attribute(ATTR_COMPUTE_CAPABILITY_MINOR))

    def arch(self) -> str:
        """The nvcc name of the device's architecture, e.g. "sm_90"."""
        major, minor = self.compute_capability()
        return f"sm_{major}{minor}"

    def multiprocessors(self) -> int:
        return self._attribute(ATTR_MULTIPROCESSOR_COUNT)

    def max_shared_per_block(self) -> int:
        """Shared memory a block gets without opting in (48 KiB on every GPU so far)."""
        return self._attribute(ATTR_MAX_SHARED_PER_BLOCK)

    def max_shared_per_block_optin(self) -> int:
        """Shared memory a block may get after Function.set_max_dynamic_shared."""
        return self._attribute(ATTR_MAX_SHARED_PER_BLOCK_OPTIN)

    # memory

    def alloc(self, nbytes: int) -> "DeviceMemory":
        if nbytes <= 0:
            raise ValueError(f"nbytes: expected a positive size, got {nbytes!r} "
                             "(cuMemAlloc refuses 0)")
        self._activate()
        pointer = self.ffi.new("CUdeviceptr *")
        self._check("cuMemAlloc_v2", self.lib.cuMemAlloc_v2(pointer, nbytes))
        return DeviceMemory(self, int(pointer[0]), nbytes)

    def free(self, ptr: int) -> None:
        self._activate()
        self._check("cuMemFree_v2", self.lib.cuMemFree_v2(ptr))

    def copy_to_device(self, dst: "int | DeviceMemory", host: Any) -> None:
        """Copy a host buffer or C-contiguous ndarray to device memory at ``dst``."""
        if isinstance(host, np.ndarray) and not host.flags.c_contiguous:
            raise ValueError("copy_to_device: the host array must be C-contiguous")
        source = self.ffi.from_buffer(host)
        nbytes = len(source)
        address = _address(dst, nbytes, "copy_to_device")
        if nbytes:
            self._activate()
            self._check("cuMemcpyHtoD_v2", self.lib.cuMemcpyHtoD_v2(address, source, nbytes))

    def copy_to_host(self, host: np.ndarray, src: "int | DeviceMemory") -> None:
        """Fill the writable, C-contiguous ``host`` array from device memory at ``src``."""
        if not isinstance(host, np.ndarray) or not host.flags.c_contiguous:
            raise ValueError("copy_to_host: the destination must be a C-contiguous ndarray")
        destination = self.ffi.from_buffer(host, require_writable=True)
        address = _address(src, host.nbytes, "copy_to_host")
        if host.nbytes:
            self._activate()
            self._check("cuMemcpyDtoH_v2",
                        self.lib.cuMemcpyDtoH_v2(destination, address, host.nbytes))

    def copy_device(self, dst: "int | DeviceMemory", src: "int | DeviceMemory",
                    nbytes: int) -> None:
        destination = _address(dst, nbytes, "copy_device")
        source = _address(src, nbytes, "copy_device")
        if nbytes:
            self._activate()
            self._check("cuMemcpyDtoD_v2",
                        self.lib.cuMemcpyDtoD_v2(destination, source, nbytes))

    def memset(self, dst: "int | DeviceMemory", value: int, nbytes: int) -> None:
        """Set ``nbytes`` bytes at ``dst`` to ``value`` (0..255)."""
        address = _address(dst, nbytes, "memset")
        if nbytes:
            self._activate()
            self._check("cuMemsetD8_v2", self.lib.cuMemsetD8_v2(address, value, nbytes))

    def synchronize(self) -> None:
        """Wait for every launch and copy on the device (and report a kernel's fault)."""
        self._activate()
        self._check("cuCtxSynchronize", self.lib.cuCtxSynchronize())

    # code

    def load_module(self, image: bytes) -> "Module":
        """Load a fat binary, cubin or NUL-terminated PTX text (the driver JITs PTX)."""
        self._activate()
        module = self.ffi.new("CUmodule *")
        self._check("cuModuleLoadData", self.lib.cuModuleLoadData(module,
                                                                  self.ffi.from_buffer(image)))
        return Module(self, module[0])


def _address(memory: "int | DeviceMemory", nbytes: int, what: str) -> int:
    """A device address; for DeviceMemory, also check that ``nbytes`` fit in it."""
    if isinstance(memory, DeviceMemory):
        if nbytes > memory.nbytes:
            raise ValueError(f"{what}: {nbytes} bytes do not fit in a {memory.nbytes}-byte "
                             "allocation")
        memory = memory.ptr
    if nbytes < 0:
        raise ValueError(f"{what}: negative size {nbytes}")
    return int(memory)


class DeviceMemory:
    """An allocation this process owns: freed by ``free()``, or when collected."""

    def __init__(self, driver: Driver, ptr: int, nbytes: int):
        self.driver = driver
        self.ptr = ptr
        self.nbytes = nbytes

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self.driver.free(ptr)

    def __int__(self) -> int:
        return self.ptr

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:
            pass  # at interpreter exit, or after a sticky error: nothing to do about it

    def __repr__(self) -> str:
        return f"DeviceMemory(ptr=0x{self.ptr:x}, nbytes={self.nbytes})"


class Module:
    """A loaded module: its kernels and globals; unloaded by ``close()`` or when collected."""

    def __init__(self, driver: Driver, handle: Any):
        self.driver = driver
        self.handle = handle
        self._functions: dict[str, Function] = {}

    def _live(self) -> Any:
        if self.handle is None:
            raise ValueError("the module was unloaded")
        self.driver._activate()
        return self.handle

    def function(self, name: str) -> "Function":
        if name not in self._functions:
            handle = self.driver.ffi.new("CUfunction *")
            self.driver._check(f"cuModuleGetFunction({name!r})",
                               self.driver.lib.cuModuleGetFunction(handle, self._live(),
                                                                   name.encode()))
            self._functions[name] = Function(self, name, handle[0])
        return self._functions[name]

    def global_(self, name: str) -> tuple[int, int]:
        """(device address, size in bytes) of a ``__device__``/``__constant__`` variable."""
        ffi_ = self.driver.ffi
        pointer, size = ffi_.new("CUdeviceptr *"), ffi_.new("size_t *")
        self.driver._check(f"cuModuleGetGlobal_v2({name!r})",
                           self.driver.lib.cuModuleGetGlobal_v2(pointer, size, self._live(),
                                                                name.encode()))
        return int(pointer[0]), int(size[0])

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self._functions.clear()
            self.driver._activate()
            self.driver._check("cuModuleUnload", self.driver.lib.cuModuleUnload(handle))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # at interpreter exit, or after a sticky error


def _dims(value: Sequence[int], what: str) -> tuple[int, int, int]:
    dims = tuple(value)
    if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                 and d >= 1 for d in dims):
        raise ValueError(f"{what}: expected three positive integers, got {value!r}")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


class Function:
    """One kernel of a module; holds the module, so it stays loaded while this lives."""

    def __init__(self, module: Module, name: str, handle: Any):
        self.module = module
        self.name = name
        self.handle = handle

    def set_max_dynamic_shared(self, nbytes: int) -> None:
        """Opt in to more than 48 KiB of dynamic shared memory per block (up to
        Driver.max_shared_per_block_optin minus the static shared memory)."""
        driver = self.module.driver
        driver._activate()
        driver._check(f"cuFuncSetAttribute({self.name!r})",
                      driver.lib.cuFuncSetAttribute(self.handle,
                                                    FUNC_ATTR_MAX_DYNAMIC_SHARED_BYTES, nbytes))

    def _parameters(self, args: Sequence[tuple[str, object]]) -> tuple[Any, list[Any]]:
        """The ``void **`` kernelParams array and the cdata it points into (keep them alive
        until the launch returns: the driver copies the values during the call)."""
        ffi_ = self.module.driver.ffi
        holders = []
        for index, (ctype, value) in enumerate(args):
            if isinstance(value, DeviceMemory):
                value = value.ptr
            try:
                holders.append(ffi_.new(f"{ctype} *", value))
            except (TypeError, OverflowError, cffi.CDefError) as exc:
                raise TypeError(f"{self.name}: kernel argument {index} ({ctype!r}, "
                                f"{value!r}): {exc}") from None
        if not holders:
            return ffi_.NULL, holders
        return ffi_.new("void *[]", [ffi_.cast("void *", h) for h in holders]), holders

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: Sequence[tuple[str, object]], shared_bytes: int = 0) -> None:
        """Launch on the default stream; ``args`` are (C type, value) pairs in the kernel's
        parameter order, e.g. ("unsigned long long", ptr), ("int", n). Asynchronous: a
        fault in the kernel shows at the next synchronizing call."""
        driver = self.module.driver
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        params, holders = self._parameters(args)
        driver._activate()
        status = driver.lib.cuLaunchKernel(self.handle, *grid, *block, shared_bytes,
                                           driver.ffi.NULL, params, driver.ffi.NULL)
        del holders  # alive until here: the driver read the values during the call
        driver._check(f"cuLaunchKernel({self.name!r})", status)

    def time_launch(self, grid: tuple[int, int, int], block: tuple[int, int, int],
                    args: Sequence[tuple[str, object]], shared_bytes: int = 0,
                    repeat: int = 1) -> float:
        """Milliseconds per launch over ``repeat`` back-to-back launches, by GPU events."""
        if repeat < 1:
            raise ValueError(f"repeat: expected >= 1, got {repeat!r}")
        driver = self.module.driver
        start, end = Event(driver), Event(driver)
        try:
            start.record()
            for _ in range(repeat):
                self.launch(grid, block, args, shared_bytes)
            end.record()
            return end.elapsed_ms(start) / repeat
        finally:
            start.close()
            end.close()


class Event:
    """A CUDA event on the default stream, for timing: record, then ``elapsed_ms``."""

    def __init__(self, driver: Driver):
        self.driver = driver
        driver._activate()
        handle = driver.ffi.new("CUevent *")
        driver._check("cuEventCreate", driver.lib.cuEventCreate(handle, 0))
        self.handle = handle[0]

    def record(self) -> None:
        self.driver._activate()
        self.driver._check("cuEventRecord", self.driver.lib.cuEventRecord(self.handle,
                                                                          self.driver.ffi.NULL))

    def synchronize(self) -> None:
        self.driver._activate()
        self.driver._check("cuEventSynchronize", self.driver.lib.cuEventSynchronize(self.handle))

    def elapsed_ms(self, start: "Event") -> float:
        """Milliseconds from ``start`` to this event (waits for this one first)."""
        self.synchronize()
        out = self.driver.ffi.new("float *")
        self.driver._check("cuEventElapsedTime",
                           self.driver.lib.cuEventElapsedTime(out, start.handle, self.handle))
        return float(out[0])

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self.driver._activate()
            self.driver._check("cuEventDestroy_v2", self.driver.lib.cuEventDestroy_v2(handle))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # at interpreter exit, or after a sticky error


def available(ordinal: int = 0) -> str | None:
    """None where the driver library loads and GPU ``ordinal`` exists, else why not (it names
    the emulator). Never raises, and creates no context: it serves backend listings."""
    try:
        _probe(load_library(), ordinal)
    except (NoCudaDeviceError, CudaDriverError) as exc:
        return str(exc)
    except Exception as exc:  # a broken driver install must not break a backend listing
        return f"the CUDA driver could not be queried ({type(exc).__name__}: {exc}); " \
               f"{EMULATOR_ADVICE}"
    return None
