"""Device arrays: reading other libraries' GPU arrays, and convgen's own.

What CuPy, PyTorch, Numba and JAX users hand a CUDA kernel is an object with
``__cuda_array_interface__`` (versions 2 and 3) or ``__dlpack__``; :func:`cuda_array_info`
reads either into a device pointer, shape and dtype without copying, and refuses what a
generated kernel cannot index (strided views, masks, odd dtypes) rather than computing on
the wrong elements.

:class:`DeviceArray` is convgen's own device buffer and exposes
``__cuda_array_interface__`` so that ``torch.as_tensor``/``cupy.asarray`` take it without
a copy. It has two modes, chosen when it is made from ``config.cuda_device()``: on a GPU its
memory comes from ``Driver.alloc``; under the CPU emulator "device memory" is host memory (a
private NumPy array whose address is the pointer), since the emulator's kernels run in this
process and dereference the pointers they are given.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from convgen import config
from convgen.backends.cuda.driver import DeviceMemory, Driver

KDLCUDA = 2  # DLPack's DLDeviceType for CUDA device memory
# cuMemAlloc returns 256-byte-aligned memory and kernels may rely on it (vector loads);
# the emulator's host buffers get the same alignment so they behave alike.
ALIGNMENT = 256
# The element types a kernel can take: fixed-width numbers, native byte order.
_SUPPORTED_KINDS = {"f": (2, 4, 8), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "b": (1,)}
# DLPack type codes (DLDataTypeCode) to NumPy kinds
_DLPACK_KINDS = {0: "i", 1: "u", 2: "f", 6: "b"}


@dataclass(frozen=True)
class CudaArrayInfo:
    """A C-contiguous array in device memory, as another library described it.

    ``obj`` (and, from DLPack, the capsule) is kept here so the memory outlives the info;
    ``stream`` is the CUDA stream the producer asks a consumer to synchronize with (CUDA
    Array Interface version 3; None: none).
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    readonly: bool
    obj: Any = field(compare=False, repr=False)
    stream: int | None = None
    device_id: int | None = None  # the GPU ordinal, where the producer says (DLPack)
    capsule: Any = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _check_dtype(dtype: np.dtype, what: str) -> np.dtype:
    sizes = _SUPPORTED_KINDS.get(dtype.kind, ())
    if dtype.itemsize not in sizes or dtype.byteorder not in ("=", "|") or dtype.fields:
        raise TypeError(f"{what}: unsupported element type {dtype.str!r} ({dtype}): expected "
                        "a native-endian bool, integer or float of 1 to 8 bytes")
    return dtype


def _is_c_contiguous(shape: Sequence[int], strides: Sequence[int], unit: int) -> bool:
    """Row-major and dense; the stride of an extent-1 dimension is never used, so it is not
    checked (NumPy's relaxed rule; PyTorch reports such strides freely)."""
    if 0 in shape:
        return True
    expected = unit
    for extent, stride in zip(reversed(shape), reversed(strides)):
        if extent != 1 and stride != expected:
            return False
        expected *= extent
    return True


def _shape(value: Any, what: str) -> tuple[int, ...]:
    try:
        shape = tuple(value)
    except TypeError:
        raise ValueError(f"{what}: shape must be a tuple of integers, got {value!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
               for d in shape):
        raise ValueError(f"{what}: shape must be non-negative integers, got {value!r}")
    return tuple(int(d) for d in shape)


def _from_interface(obj: Any, interface: Any) -> CudaArrayInfo:
    what = "__cuda_array_interface__"
    if not isinstance(interface, dict):
        raise ValueError(f"{what}: expected a dict, got {type(interface).__name__}")
    missing = [key for key in ("shape", "typestr", "data", "version") if key not in interface]
    if missing:
        raise ValueError(f"{what}: missing key(s) {missing}")
    version = interface["version"]
    if version not in (2, 3):
        raise ValueError(f"{what}: version {version!r} is not supported (2 or 3)")
    shape = _shape(interface["shape"], what)
    try:
        dtype = np.dtype(interface["typestr"])
    except TypeError:
        raise TypeError(f"{what}: typestr {interface['typestr']!r} is not a NumPy type "
                        "string") from None
    dtype = _check_dtype(dtype, what)
    data = interface["data"]
    if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], int)):
        raise ValueError(f"{what}: data must be (pointer: int, readonly: bool), got {data!r}")
    ptr, readonly = data
    if ptr == 0 and math.prod(shape) != 0:
        raise ValueError(f"{what}: null data pointer for a non-empty array of shape {shape}")
    strides = interface.get("strides")
    if strides is not None:
        strides = tuple(strides)
        if len(strides) != len(shape) or not _is_c_contiguous(shape, strides, dtype.itemsize):
            raise ValueError(f"{what}: strides {strides} (bytes) for shape {shape} are not "
                             "C-contiguous; generated kernels index dense row-major arrays: "
                             "make a contiguous copy first")
    if interface.get("mask") is not None:
        raise ValueError(f"{what}: masked arrays are not supported (mask is set)")
    stream = interface.get("stream")
    if stream is not None and (not isinstance(stream, int) or stream == 0):
        raise ValueError(f"{what}: stream {stream!r} is invalid (0 is disallowed; an int "
                         "handle, 1 or 2 for a default stream, or None)")
    return CudaArrayInfo(ptr, shape, dtype, bool(readonly), obj, stream)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


# Private prototypes: setting argtypes on ctypes.pythonapi's shared function objects would
# change them for every other user in the process.
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def dlpack_tensor(capsule: Any) -> _DLTensor:
    """The DLTensor inside an unconsumed "dltensor" capsule (it lives as long as the capsule)."""
    if not _capsule_is_valid(capsule, b"dltensor"):
        raise ValueError("__dlpack__ did not return an unconsumed 'dltensor' capsule")
    return _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor")).dl_tensor


def _call_dlpack(obj: Any) -> Any:
    # stream=1: the producer orders its pending work before the legacy default stream,
    # which convgen launches on. Producers without the keyword get the protocol's default.
    try:
        return obj.__dlpack__(stream=1)
    except TypeError:
        return obj.__dlpack__()


def _from_dlpack(obj: Any) -> CudaArrayInfo:
    what = "__dlpack__"
    # The capsule is never renamed "used_dltensor": convgen does not take ownership. It is
    # kept in the info instead, and when it is collected its destructor calls the
    # producer's deleter, so the memory stays valid exactly as long as the info.
    capsule = _call_dlpack(obj)
    tensor = dlpack_tensor(capsule)
    if tensor.device.device_type != KDLCUDA:
        raise ValueError(f"{what}: the tensor is on DLPack device type "
                         f"{tensor.device.device_type}, though __dlpack_device__ said CUDA")
    code, bits, lanes = tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes
    kind = _DLPACK_KINDS.get(code)
    if kind is None or lanes != 1 or bits % 8:
        raise TypeError(f"{what}: unsupported DLPack dtype (code {code}, bits {bits}, "
                        f"lanes {lanes})")
    dtype = _check_dtype(np.dtype(f"{kind}{bits // 8}"), what)
    shape = tuple(int(tensor.shape[i]) for i in range(tensor.ndim))
    if tensor.strides:  # NULL strides mean compact row-major
        strides = tuple(int(tensor.strides[i]) for i in range(tensor.ndim))
        if not _is_c_contiguous(shape, strides, 1):
            raise ValueError(f"{what}: strides {strides} (elements) for shape {shape} are not "
                             "C-contiguous; generated kernels index dense row-major arrays: "
                             "make a contiguous copy first")
    ptr = (tensor.data or 0) + int(tensor.byte_offset)
    return CudaArrayInfo(ptr, shape, dtype, False, obj, None, int(tensor.device.device_id),
                         capsule)


def cuda_array_info(obj: Any) -> CudaArrayInfo | None:
    """The device array ``obj`` describes through ``__cuda_array_interface__`` (first) or
    DLPack on a CUDA device; None for anything else (NumPy arrays, CPU tensors, lists).

    TypeError for an element type kernels cannot take; ValueError for a layout they cannot
    index (non-contiguous strides, a mask) or a malformed description.
    """
    try:
        interface = obj.__cuda_array_interface__
    except AttributeError:  # not there, or (PyTorch) a CPU tensor refusing it
        interface = None
    if interface is not None:
        return _from_interface(obj, interface)
    device = getattr(obj, "__dlpack_device__", None)
    if device is None or not hasattr(obj, "__dlpack__"):
        return None
    device_type, _ = device()
    if int(device_type) != KDLCUDA:
        return None
    return _from_dlpack(obj)


class DeviceArray:
    """A dense, row-major array in device memory (on a GPU or the emulator's host memory).

    ``ordinal``: None for ``config.cuda_device()``, a GPU index, or "emulator".
    """

    def __init__(self, shape: Sequence[int] | int, dtype: Any = np.float32,
                 ordinal: int | str | None = None):
        self.shape = _shape((shape,) if isinstance(shape, (int, np.integer)) else shape,
                            "DeviceArray")
        self.dtype = _check_dtype(np.dtype(dtype), "DeviceArray")
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        device = config.cuda_device() if ordinal is None else str(ordinal)
        self.emulated = device == "emulator"
        self.ordinal: int | None = None
        self.driver: Driver | None = None
        self.memory: DeviceMemory | None = None
        self._host: np.ndarray | None = None
        if self.emulated:
            raw = np.empty(self.nbytes + ALIGNMENT, np.uint8)
            offset = -raw.ctypes.data % ALIGNMENT
            self._host = raw[offset:offset + self.nbytes].view(self.dtype).reshape(self.shape)
            self.ptr = int(self._host.ctypes.data)
        else:
            self.ordinal = int(device)
            self.driver = Driver.get(self.ordinal)
            # cuMemAlloc refuses 0 bytes; an empty array needs no memory (pointer 0 is
            # what the interface allows for it)
            self.memory = self.driver.alloc(self.nbytes) if self.nbytes else None
            self.ptr = self.memory.ptr if self.memory else 0

    @classmethod
    def empty(cls, shape: Sequence[int] | int, dtype: Any = np.float32,
              ordinal: int | str | None = None) -> "DeviceArray":
        """Uninitialized device memory of that shape and dtype."""
        return cls(shape, dtype, ordinal)

    @classmethod
    def from_host(cls, array: Any, ordinal: int | str | None = None) -> "DeviceArray":
        """A device copy of a host array (its shape and dtype)."""
        host = np.ascontiguousarray(array)
        out = cls(host.shape, host.dtype, ordinal)
        out.copy_from_host(host)
        return out

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def copy_from_host(self, array: Any) -> None:
        """Overwrite this array with a host array of the same shape and dtype."""
        host = np.ascontiguousarray(array)
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(f"copy_from_host: got {host.dtype}{list(host.shape)}, this array "
                             f"is {self.dtype}{list(self.shape)}")
        if self._host is not None:
            np.copyto(self._host, host)
        elif self.memory is not None:
            assert self.driver is not None
            self.driver.copy_to_device(self.memory, host)

    def copy_to_host(self) -> np.ndarray:
        """A new host array with this array's contents (waits for pending launches)."""
        if self._host is not None:
            return self._host.copy()
        out = np.empty(self.shape, self.dtype)
        if self.memory is not None:
            assert self.driver is not None
            self.driver.copy_to_host(out, self.memory)
        return out

    numpy = copy_to_host

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        # stream: convgen launches on the legacy default stream (1), asynchronously, so a
        # consumer must order its work after it; the emulator runs launches to completion.
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": None, "descr": [("", self.dtype.str)],
                "stream": None if self.emulated else 1, "version": 3}

    def __repr__(self) -> str:
        where = "emulator" if self.emulated else f"cuda:{self.ordinal}"
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device={where!r})"


def empty(shape: Sequence[int] | int, dtype: Any = np.float32,
          ordinal: int | str | None = None) -> DeviceArray:
    """DeviceArray.empty: uninitialized device memory."""
    return DeviceArray.empty(shape, dtype, ordinal)


def to_device(array: Any, ordinal: int | str | None = None) -> DeviceArray:
    """DeviceArray.from_host: a device copy of a host array."""
    return DeviceArray.from_host(array, ordinal)
