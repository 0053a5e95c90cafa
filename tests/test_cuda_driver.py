"""The CUDA driver layer and device arrays, on a machine without a GPU.

The driver is exercised through a stand-in library (FakeLib) that answers like a one-GPU
libcuda and keeps "device memory" in host buffers, so statuses, error messages, the
``_v2`` entry points and the launch parameter block are checked for real. The array
interop is checked with objects that speak ``__cuda_array_interface__`` and with real
DLPack capsules from NumPy relabelled as CUDA memory.
"""

from __future__ import annotations

import ctypes
import gc
import pickle
import threading
import weakref

import numpy as np
import pytest

from convgen import config
from convgen.backends.cuda import arrays, driver
from convgen.backends.cuda.arrays import DeviceArray, cuda_array_info, empty, to_device
from convgen.backends.cuda.driver import (CudaDriverError, Driver, NoCudaDeviceError,
                                          available, ffi)
from convgen.errors import ConvgenError

ERRORS = {2: ("CUDA_ERROR_OUT_OF_MEMORY", "out of memory"),
          100: ("CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"),
          700: ("CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered")}
ATTRIBUTES = {75: 9, 76: 0, 16: 132, 8: 48 << 10, 97: 227 << 10}


class FakeLib:
    """libcuda's calls as Python methods: each records (name, args) and returns the status in
    ``fail`` (default 0, success), writing its outputs like the driver does."""

    def __init__(self, devices: int = 1, fail: dict[str, int] | None = None,
                 error_names: bool = True):
        self.devices = devices
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, tuple]] = []
        self.memory: dict[int, np.ndarray] = {}
        self.param_types: list[str] = []
        self.launches: list[dict] = []
        self._keep: list = []  # C strings handed out through const char **
        self._events = 0
        if not error_names:  # a library without cuGetErrorName/String (old or broken)
            self.cuGetErrorName = self.cuGetErrorString = None

    def _status(self, name: str, *args) -> int:
        self.calls.append((name, args))
        return self.fail.get(name, 0)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def cuInit(self, flags):
        return self._status("cuInit", flags)

    def cuDriverGetVersion(self, out):
        out[0] = 12040
        return self._status("cuDriverGetVersion")

    def cuDeviceGetCount(self, out):
        out[0] = self.devices
        return self._status("cuDeviceGetCount")

    def cuDeviceGet(self, out, ordinal):
        out[0] = ordinal
        return self._status("cuDeviceGet", ordinal)

    def cuDeviceGetName(self, buffer, length, device):
        text = b"Fake H100"
        ffi.memmove(buffer, text + b"\0", len(text) + 1)
        return self._status("cuDeviceGetName", length, device)

    def cuDeviceGetAttribute(self, out, attribute, device):
        out[0] = ATTRIBUTES[attribute]
        return self._status("cuDeviceGetAttribute", attribute, device)

    def cuDevicePrimaryCtxRetain(self, out, device):
        out[0] = ffi.cast("CUcontext", 0x1000 + device)
        return self._status("cuDevicePrimaryCtxRetain", device)

    def cuDevicePrimaryCtxRelease_v2(self, device):
        return self._status("cuDevicePrimaryCtxRelease_v2", device)

    def cuCtxSetCurrent(self, context):
        return self._status("cuCtxSetCurrent", int(ffi.cast("uintptr_t", context)))

    def cuCtxSynchronize(self):
        return self._status("cuCtxSynchronize")

    def cuMemAlloc_v2(self, out, nbytes):
        status = self._status("cuMemAlloc_v2", nbytes)
        if status == 0:
            buffer = np.zeros(nbytes, np.uint8)
            out[0] = buffer.ctypes.data
            self.memory[buffer.ctypes.data] = buffer
        return status

    def cuMemFree_v2(self, ptr):
        del self.memory[ptr]
        return self._status("cuMemFree_v2", ptr)

    def cuMemcpyHtoD_v2(self, dst, src, nbytes):
        ffi.memmove(ffi.cast("void *", dst), src, nbytes)
        return self._status("cuMemcpyHtoD_v2", dst, nbytes)

    def cuMemcpyDtoH_v2(self, dst, src, nbytes):
        ffi.memmove(dst, ffi.cast("void *", src), nbytes)
        return self._status("cuMemcpyDtoH_v2", src, nbytes)

    def cuMemcpyDtoD_v2(self, dst, src, nbytes):
        ffi.memmove(ffi.cast("void *", dst), ffi.cast("void *", src), nbytes)
        return self._status("cuMemcpyDtoD_v2", dst, src, nbytes)

    def cuMemsetD8_v2(self, dst, value, count):
        ffi.memmove(ffi.cast("void *", dst), bytes([value]) * count, count)
        return self._status("cuMemsetD8_v2", dst, value, count)

    def cuModuleLoadData(self, out, image):
        out[0] = ffi.cast("CUmodule", 0x2000)
        return self._status("cuModuleLoadData", bytes(ffi.buffer(image)))

    def cuModuleUnload(self, module):
        return self._status("cuModuleUnload")

    def cuModuleGetFunction(self, out, module, name):
        out[0] = ffi.cast("CUfunction", 0x3000)
        return self._status("cuModuleGetFunction", name)

    def cuModuleGetGlobal_v2(self, ptr, size, module, name):
        ptr[0], size[0] = 0x4000, 20
        return self._status("cuModuleGetGlobal_v2", name)

    def cuFuncSetAttribute(self, function, attribute, value):
        return self._status("cuFuncSetAttribute", attribute, value)

    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        # read the parameter block now, as the driver does: it is freed after the call
        values = None if params == ffi.NULL else [
            ffi.cast(ctype + " *", params[i])[0] for i, ctype in enumerate(self.param_types)]
        self.launches.append({"grid": (gx, gy, gz), "block": (bx, by, bz), "shared": shared,
                              "stream_null": stream == ffi.NULL,
                              "extra_null": extra == ffi.NULL, "values": values})
        return self._status("cuLaunchKernel")

    def cuEventCreate(self, out, flags):
        self._events += 1
        out[0] = ffi.cast("CUevent", 0x5000 + self._events)
        return self._status("cuEventCreate", flags)

    def cuEventRecord(self, event, stream):
        return self._status("cuEventRecord", stream == ffi.NULL)

    def cuEventSynchronize(self, event):
        return self._status("cuEventSynchronize")

    def cuEventElapsedTime(self, out, start, end):
        out[0] = 2.5
        return self._status("cuEventElapsedTime")

    def cuEventDestroy_v2(self, event):
        return self._status("cuEventDestroy_v2")

    def _string(self, text: str, out) -> int:
        data = ffi.new("char[]", text.encode())
        self._keep.append(data)
        out[0] = data
        return 0

    def cuGetErrorName(self, code, out):
        return self._string(ERRORS[code][0], out) if code in ERRORS else 1

    def cuGetErrorString(self, code, out):
        return self._string(ERRORS[code][1], out) if code in ERRORS else 1


@pytest.fixture
def fake() -> FakeLib:
    return FakeLib()


@pytest.fixture
def gpu(fake) -> Driver:
    return Driver(fake, ffi, 0)


@pytest.fixture
def no_instances(monkeypatch):
    """Driver.get and load_library start from nothing and leave nothing behind."""
    monkeypatch.setattr(Driver, "_instances", {})
    monkeypatch.setattr(driver, "_library", None)


@pytest.fixture
def emulator():
    config.set_cuda_device("emulator")
    yield
    config.set_cuda_device(None)


def _libcuda_loads() -> bool:
    try:
        ctypes.CDLL(driver.LIBRARY)
    except OSError:
        return False
    return True


# the driver library and devices


def test_available_and_driver_get_say_the_driver_is_missing_and_name_the_emulator(
        no_instances):
    reason = available()
    if _libcuda_loads():  # a GPU machine: either a device is there or the reason says not
        assert reason is None or "emulator" in reason
        return
    assert reason is not None and "libcuda.so.1" in reason and "driver" in reason
    with pytest.raises(NoCudaDeviceError) as caught:
        Driver.get(0)
    message = str(caught.value)
    assert "CONVGEN_CUDA_DEVICE=emulator" in message
    assert "set_cuda_device('emulator')" in message and "CPU emulator" in message
    assert isinstance(caught.value, ConvgenError) and isinstance(caught.value, RuntimeError)
    assert Driver._instances == {}  # a failure is not cached


def test_a_missing_driver_library_is_no_cuda_device_error(no_instances, monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(driver, "_open_library", missing)
    reason = available(0)
    assert "libcuda.so.1" in reason and "cannot open shared object file" in reason
    assert "CONVGEN_CUDA_DEVICE=emulator" in reason
    with pytest.raises(NoCudaDeviceError, match="CONVGEN_CUDA_DEVICE=emulator"):
        Driver.get(0)


def test_available_is_none_with_a_device_and_a_reason_without(no_instances, monkeypatch):
    lib = FakeLib(devices=2)
    monkeypatch.setattr(driver, "_open_library", lambda name: lib)
    assert available(0) is None and available(1) is None
    reason = available(2)
    assert "no CUDA device 2" in reason and "2 CUDA device(s)" in reason
    assert "emulator" in reason
    assert "cuDevicePrimaryCtxRetain" not in lib.names()  # probing makes no context
    assert "ordinal" in available(-1)  # never raises, even for a bad argument


def test_no_device_and_a_failing_cuinit_are_no_cuda_device_error():
    with pytest.raises(NoCudaDeviceError, match="found no CUDA device.*emulator"):
        Driver(FakeLib(devices=0), ffi, 0)
    with pytest.raises(NoCudaDeviceError) as caught:
        Driver(FakeLib(fail={"cuInit": 100}), ffi, 0)
    assert "cuInit failed with CUDA_ERROR_NO_DEVICE (100)" in str(caught.value)
    assert "no CUDA-capable device is detected" in str(caught.value)


def test_driver_get_is_one_instance_per_ordinal_and_refuses_the_emulator(
        no_instances, monkeypatch, emulator):
    lib = FakeLib(devices=2)
    monkeypatch.setattr(driver, "_open_library", lambda name: lib)
    first = Driver.get(1)
    assert Driver.get(1) is first and Driver.get(0) is not first
    assert first.ordinal == 1 and lib.names().count("cuDevicePrimaryCtxRetain") == 2
    with pytest.raises(ValueError, match="emulator"):
        Driver.get()  # the configured device is the emulator


def test_driver_initializes_the_primary_context_and_answers_device_queries(gpu, fake):
    assert fake.names()[:5] == ["cuInit", "cuDeviceGetCount", "cuDeviceGet",
                                "cuDevicePrimaryCtxRetain", "cuCtxSetCurrent"]
    assert fake.calls[4] == ("cuCtxSetCurrent", (0x1000,))
    assert gpu.name() == "Fake H100"
    assert gpu.compute_capability() == (9, 0) and gpu.arch() == "sm_90"
    assert gpu.multiprocessors() == 132
    assert gpu.max_shared_per_block() == 48 << 10
    assert gpu.max_shared_per_block_optin() == 227 << 10
    assert gpu.driver_version() == (12, 4)


def test_a_failed_call_names_the_call_the_error_and_the_code(gpu, fake):
    fake.fail["cuMemAlloc_v2"] = 2
    with pytest.raises(CudaDriverError) as caught:
        gpu.alloc(1 << 40)
    error = caught.value
    assert error.call == "cuMemAlloc_v2" and error.code == 2
    assert str(error) == "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory"
    assert isinstance(error, ConvgenError) and isinstance(error, RuntimeError)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # errors cross processes


def test_error_names_fall_back_to_the_table_and_sticky_errors_say_so():
    lib = FakeLib(error_names=False, fail={"cuCtxSynchronize": 700})
    gpu = Driver(lib, ffi, 0)
    with pytest.raises(CudaDriverError) as caught:
        gpu.synchronize()
    message = str(caught.value)
    assert message.startswith("cuCtxSynchronize failed: CUDA_ERROR_ILLEGAL_ADDRESS (700)")
    assert "unusable" in message
    lib.fail = {"cuCtxSynchronize": 12345}
    with pytest.raises(CudaDriverError, match=r"CUDA_ERROR_\? \(12345\)"):
        gpu.synchronize()


def test_alloc_copy_and_free_use_the_v2_entry_points_and_move_the_bytes(gpu, fake):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    a, b = gpu.alloc(host.nbytes), gpu.alloc(host.nbytes)
    assert a.nbytes == 48 and a.ptr in fake.memory and a.ptr != b.ptr
    gpu.copy_to_device(a, host)
    gpu.copy_device(b, a, host.nbytes)
    out = np.zeros_like(host)
    gpu.copy_to_host(out, b.ptr)  # a plain int pointer works too
    np.testing.assert_array_equal(out, host)
    gpu.memset(a, 0, host.nbytes)
    gpu.copy_to_host(out, a)
    assert not out.any()
    names = fake.names()
    for name in ("cuMemAlloc_v2", "cuMemcpyHtoD_v2", "cuMemcpyDtoD_v2", "cuMemcpyDtoH_v2",
                 "cuMemsetD8_v2"):
        assert name in names
    ptr = a.ptr
    a.free()
    a.free()  # idempotent
    assert a.ptr == 0 and names.count("cuMemFree_v2") == 0
    assert fake.calls[-1] == ("cuMemFree_v2", (ptr,))
    del b
    gc.collect()
    assert fake.names().count("cuMemFree_v2") == 2 and fake.memory == {}


def test_copies_check_sizes_and_layouts(gpu):
    memory = gpu.alloc(16)
    with pytest.raises(ValueError, match="do not fit in a 16-byte"):
        gpu.copy_to_device(memory, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.copy_to_device(memory, np.zeros((2, 2), np.float32).T)
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.copy_to_host(np.zeros((2, 2), np.float32).T, memory)
    with pytest.raises(ValueError, match="positive"):
        gpu.alloc(0)


def test_launch_builds_the_kernel_parameter_block(gpu, fake):
    module = gpu.load_module(b"FATBIN-IMAGE")
    assert fake.calls[-1] == ("cuModuleLoadData", (b"FATBIN-IMAGE",))
    kernel = module.function("conv2d_k")
    assert module.function("conv2d_k") is kernel  # looked up once
    assert fake.names().count("cuModuleGetFunction") == 1
    assert fake.calls[-1] == ("cuModuleGetFunction", (b"conv2d_k",))
    fake.param_types = ["unsigned long long", "int", "long long", "float"]
    memory = gpu.alloc(64)
    kernel.launch((4, 2, 1), (128, 1, 1), [("unsigned long long", memory), ("int", -7),
                                          ("long long", 1 << 40), ("float", 0.5)],
                  shared_bytes=1024)
    launch = fake.launches[-1]
    assert launch["values"] == [memory.ptr, -7, 1 << 40, 0.5]
    assert launch["grid"] == (4, 2, 1) and launch["block"] == (128, 1, 1)
    assert launch["shared"] == 1024 and launch["stream_null"] and launch["extra_null"]
    kernel.launch((1, 1, 1), (1, 1, 1), [])
    assert fake.launches[-1]["values"] is None  # no parameters: a NULL block


def test_launch_checks_its_arguments_and_its_status(gpu, fake):
    kernel = gpu.load_module(b"x").function("k")
    with pytest.raises(TypeError, match=r"kernel argument 1 \('int', 'seven'\)"):
        kernel.launch((1, 1, 1), (1, 1, 1), [("int", 1), ("int", "seven")])
    with pytest.raises(ValueError, match="grid"):
        kernel.launch((1, 1), (1, 1, 1), [])
    with pytest.raises(ValueError, match="block"):
        kernel.launch((1, 1, 1), (0, 1, 1), [])
    assert fake.launches == []
    fake.fail["cuLaunchKernel"] = 2
    with pytest.raises(CudaDriverError, match=r"cuLaunchKernel\('k'\) failed"):
        kernel.launch((1, 1, 1), (1, 1, 1), [])


def test_globals_shared_opt_in_events_and_unload(gpu, fake):
    module = gpu.load_module(b"x")
    assert module.global_("c_mask") == (0x4000, 20)
    kernel = module.function("k")
    kernel.set_max_dynamic_shared(100 << 10)
    assert fake.calls[-1] == ("cuFuncSetAttribute", (8, 100 << 10))
    assert kernel.time_launch((1, 1, 1), (32, 1, 1), [], repeat=5) == 0.5  # 2.5 ms / 5
    assert len(fake.launches) == 5
    names = fake.names()
    assert names.count("cuEventRecord") == 2 and names.count("cuEventDestroy_v2") == 2
    assert names.index("cuEventSynchronize") < names.index("cuEventElapsedTime")
    fake.fail["cuModuleGetFunction"] = 500
    with pytest.raises(CudaDriverError, match=r"cuModuleGetFunction\('missing'\)"):
        module.function("missing")
    module.close()
    assert fake.names()[-1] == "cuModuleUnload"
    with pytest.raises(ValueError, match="unloaded"):
        module.function("k2")


def test_each_thread_makes_the_context_current_once(gpu, fake):
    gpu.synchronize()
    gpu.synchronize()
    before = fake.names().count("cuCtxSetCurrent")
    thread = threading.Thread(target=lambda: (gpu.synchronize(), gpu.synchronize()))
    thread.start()
    thread.join()
    assert fake.names().count("cuCtxSetCurrent") == before + 1


# __cuda_array_interface__


class Interface:
    """An object that describes memory through __cuda_array_interface__ (as CuPy does)."""

    def __init__(self, **interface):
        self.__cuda_array_interface__ = interface


def _interface_of(array: np.ndarray, **changes) -> Interface:
    interface = {"shape": array.shape, "typestr": array.dtype.str,
                 "data": (array.ctypes.data, False), "strides": None, "version": 3}
    interface.update(changes)
    return Interface(**interface)


def test_cuda_array_interface_gives_pointer_shape_and_dtype():
    host = np.zeros((2, 3, 4), np.float32)
    info = cuda_array_info(_interface_of(host))
    assert info.ptr == host.ctypes.data and info.shape == (2, 3, 4)
    assert info.dtype == np.float32 and not info.readonly and info.nbytes == host.nbytes
    assert info.stream is None
    # version 2, C-contiguous strides spelled out, a read-only buffer, a stream
    info = cuda_array_info(_interface_of(host, version=2, strides=(48, 16, 4),
                                         data=(host.ctypes.data, True), stream=7))
    assert info.readonly and info.stream == 7 and info.dtype == np.float32
    # an extent-1 dimension's stride does not matter
    assert cuda_array_info(_interface_of(host[:1], strides=(999, 16, 4))).shape == (1, 3, 4)


def test_cuda_array_interface_refuses_strides_masks_and_odd_types():
    host = np.zeros((4, 6), np.float64)
    with pytest.raises(ValueError, match="not C-contiguous"):
        cuda_array_info(_interface_of(host.T, strides=host.T.strides))
    with pytest.raises(ValueError, match="mask"):
        cuda_array_info(_interface_of(host, mask=(12345, False)))
    with pytest.raises(TypeError, match="unsupported element type"):
        cuda_array_info(_interface_of(host, typestr="<c8"))
    with pytest.raises(TypeError, match="unsupported element type"):
        cuda_array_info(_interface_of(host, typestr=">f4"))
    with pytest.raises(TypeError, match="typestr"):
        cuda_array_info(_interface_of(host, typestr="<zz"))
    with pytest.raises(ValueError, match="version 1"):
        cuda_array_info(_interface_of(host, version=1))
    with pytest.raises(ValueError, match="stream 0"):
        cuda_array_info(_interface_of(host, stream=0))
    with pytest.raises(ValueError, match="null data pointer"):
        cuda_array_info(_interface_of(host, data=(0, False)))


def test_host_arrays_and_other_objects_are_not_device_arrays():
    assert cuda_array_info(np.zeros(3, np.float32)) is None  # __dlpack_device__ is (1, 0)
    assert cuda_array_info([1.0, 2.0]) is None
    assert cuda_array_info(3.0) is None


# DLPack


def _claim_cuda(capsule, device_id: int = 0):
    """Relabel a NumPy DLPack capsule's tensor as CUDA memory (the pointer is unchanged)."""
    tensor = arrays.dlpack_tensor(capsule)
    tensor.device.device_type = arrays.KDLCUDA
    tensor.device.device_id = device_id
    return capsule


class DLPackOnCuda:
    """A producer that exports NumPy memory through DLPack claiming it is on CUDA device 0."""

    def __init__(self, array: np.ndarray, relabel: bool = True):
        self.array = array
        self.relabel = relabel
        self.streams: list[object] = []

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        capsule = self.array.__dlpack__()
        return _claim_cuda(capsule) if self.relabel else capsule


def test_dlpack_gives_the_producer_s_pointer_shape_and_dtype():
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    producer = DLPackOnCuda(host)
    info = cuda_array_info(producer)
    assert info.ptr == host.ctypes.data and info.shape == (2, 3)
    assert info.dtype == np.float32 and info.device_id == 0 and not info.readonly
    assert producer.streams == [1]  # ordered before convgen's legacy default stream
    row = host[1:]  # an offset view: the pointer is its first element
    assert cuda_array_info(DLPackOnCuda(row)).ptr == row.ctypes.data
    assert cuda_array_info(DLPackOnCuda(np.zeros(4, np.int64))).dtype == np.int64
    assert cuda_array_info(DLPackOnCuda(np.zeros((), np.float64))).shape == ()


def test_dlpack_refuses_non_contiguous_views_and_mislabelled_capsules():
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(ValueError, match="not C-contiguous"):
        cuda_array_info(DLPackOnCuda(host.T))
    with pytest.raises(ValueError, match="device type 1"):
        cuda_array_info(DLPackOnCuda(host, relabel=False))
    with pytest.raises(TypeError, match="unsupported"):
        cuda_array_info(DLPackOnCuda(np.zeros(2, np.complex64)))


def test_dlpack_memory_lives_as_long_as_the_info():
    host = np.arange(6, dtype=np.float32)
    alive = weakref.ref(host)
    info = cuda_array_info(DLPackOnCuda(host))
    del host
    gc.collect()
    assert alive() is not None  # the capsule, kept in the info, holds the producer's memory
    assert (ctypes.c_float * 6).from_address(info.ptr)[5] == 5.0
    del info
    gc.collect()
    assert alive() is None  # and its deleter ran once the info was gone


# DeviceArray


def test_device_array_round_trips_in_the_emulator(emulator):
    host = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    array = DeviceArray.from_host(host)
    assert array.emulated and array.ordinal is None
    assert array.shape == (3, 5) and array.dtype == np.float32 and array.nbytes == 60
    assert array.size == 15 and array.ndim == 2 and array.ptr % arrays.ALIGNMENT == 0
    out = array.copy_to_host()
    np.testing.assert_array_equal(out, host)
    out[0, 0] = 99  # a copy, not a view of the device memory
    assert array.numpy()[0, 0] == host[0, 0]
    # the pointer is the memory itself: a kernel writing through it is seen
    ctypes.c_float.from_address(array.ptr + 4).value = -1.0
    assert array.copy_to_host()[0, 1] == -1.0
    assert "emulator" in repr(array)


def test_device_array_interface_is_well_formed_and_reads_back(emulator):
    array = to_device(np.arange(8, dtype=np.int32).reshape(2, 4))
    interface = array.__cuda_array_interface__
    assert interface == {"shape": (2, 4), "typestr": "<i4", "data": (array.ptr, False),
                         "strides": None, "descr": [("", "<i4")], "stream": None,
                         "version": 3}
    info = cuda_array_info(array)
    assert (info.ptr, info.shape, info.dtype, info.readonly) == (array.ptr, (2, 4),
                                                                 np.int32, False)
    assert info.obj is array


def test_device_array_empty_shapes_and_checks(emulator):
    assert empty(5).shape == (5,) and empty(5).dtype == np.float32
    zero = DeviceArray.empty((0, 3), np.float64)
    assert zero.nbytes == 0 and zero.copy_to_host().shape == (0, 3)
    with pytest.raises(TypeError, match="unsupported element type"):
        DeviceArray.empty(3, np.complex128)
    with pytest.raises(ValueError, match="shape"):
        DeviceArray.empty((2, -1))
    target = DeviceArray.empty((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"float64\[2, 2\]"):
        target.copy_from_host(np.zeros((2, 2)))


def test_device_array_on_a_gpu_uses_driver_memory(no_instances, monkeypatch):
    lib = FakeLib()
    monkeypatch.setattr(driver, "_open_library", lambda name: lib)
    config.set_cuda_device(0)
    try:
        host = np.arange(10, dtype=np.float64)
        array = DeviceArray.from_host(host)
    finally:
        config.set_cuda_device(None)
    assert not array.emulated and array.ordinal == 0 and array.ptr in lib.memory
    assert lib.names()[-2:] == ["cuMemAlloc_v2", "cuMemcpyHtoD_v2"]
    np.testing.assert_array_equal(array.copy_to_host(), host)
    assert lib.names()[-1] == "cuMemcpyDtoH_v2"
    interface = array.__cuda_array_interface__
    assert interface["stream"] == 1 and interface["data"] == (array.ptr, False)
    assert DeviceArray.empty((0,), np.float32, ordinal=0).ptr == 0  # no 0-byte cuMemAlloc
    del array
    gc.collect()
    assert lib.names()[-1] == "cuMemFree_v2" and lib.memory == {}
