"""The CUDA Kernel: NumPy arrays in and out (copied to and from the device), or device
arrays (``__cuda_array_interface__`` / DLPack: a torch CUDA tensor, a CuPy array, a
convgen DeviceArray) passed without a copy.

With any device array among the inputs and no ``out``, the result is a new
:class:`~convgen.backends.cuda.arrays.DeviceArray`; with only NumPy inputs it is a NumPy
array, as on the CPU backends. On the emulator, device memory is host memory: only the
emulator's own DeviceArrays are device arrays there (a real GPU pointer cannot be read).
"""

from __future__ import annotations

import numpy as np

from convgen.backends.cuda.emulator import ORDERS
from convgen.backends.cuda.arrays import CudaArrayInfo, DeviceArray, cuda_array_info
from convgen.kernel import Kernel, check_bias, check_input


class CudaKernel(Kernel):
    """A compiled CUDA convolution: ``kernel(x, w, b=None, out=None) -> y``.

    ``launch(x, w, b, y, begin, end)`` takes device pointers (ints); on the emulator they
    are host addresses.
    """

    def __init__(self, *args, launch, emulated: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self._launch = launch
        self.emulated = emulated

    def _device(self, name: str, value: object, shape: tuple[int, ...],
                writable: bool = False) -> CudaArrayInfo | None:
        """The device array ``value`` checked (dtype, shape, contiguity), or None for
        anything else (then checked as a host array)."""
        info = cuda_array_info(value)
        if info is None:
            return None
        if self.emulated and not (isinstance(value, DeviceArray) and value.emulated):
            raise TypeError(f"{name}: the CUDA emulator runs on the CPU and cannot read GPU "
                            "memory; pass a NumPy array or a convgen DeviceArray made while "
                            "CONVGEN_CUDA_DEVICE=emulator")
        if info.dtype != self._dtype:
            raise TypeError(f"{name}: expected dtype {self._dtype}, got {info.dtype}")
        if info.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {info.shape}")
        if writable and info.readonly:
            raise ValueError(f"{name}: expected a writable device array, got a read-only one")
        return info

    def __call__(self, x, w, b=None, out=None):
        spec = self.spec
        host: dict[str, np.ndarray] = {}
        pointers: dict[str, int] = {}
        for name, value, shape in (("x", x, spec.input_shape), ("w", w, self.weight_shape)):
            info = self._device(name, value, shape)
            if info is None:
                host[name] = self._input(name, value, shape)
            else:
                pointers[name] = info.ptr
        if b is not None and spec.bias:
            info = self._device("b", b, spec.bias_shape)
            if info is None:
                host["b"] = check_bias(spec, b, self._dtype, "this kernel was compiled with")
            else:
                pointers["b"] = info.ptr
        else:
            check_bias(spec, b, self._dtype, "this kernel was compiled with")
        on_device = bool(pointers)
        result = out
        if out is None and on_device:
            result = DeviceArray.empty(spec.output_shape, self._dtype)
            pointers["y"] = result.ptr
        elif out is not None and (info := self._device("out", out, spec.output_shape,
                                                       writable=True)) is not None:
            pointers["y"] = info.ptr
        else:
            result = self._output(out, list(host.values()))
            host["y"] = result
        if self.emulated:
            # device memory is host memory: NumPy arrays are passed in place
            for name, array in host.items():
                pointers[name] = array.ctypes.data
            self._run(pointers)
            return result
        staged = {name: (DeviceArray.from_host(array) if name != "y"
                         else DeviceArray.empty(array.shape, array.dtype))
                  for name, array in host.items()}
        for name, array in staged.items():
            pointers[name] = array.ptr
        self._run(pointers)
        if "y" in staged:
            np.copyto(result, staged["y"].copy_to_host())  # waits for the launch
        elif staged:
            # the launch is asynchronous: the staged copies must outlive it
            next(iter(staged.values())).driver.synchronize()
        return result

    def set_thread_order(self, order: str, seed: int = 0) -> None:
        """Emulator only: run each block's threads between barriers in ``order``
        ("forward", "reverse" or "shuffle", by ``seed``) from the next call on. A kernel
        whose result changes with the order has a race (a missing barrier, threads writing
        one element): the suite runs every kernel forward and reversed and compares."""
        if not self.emulated:
            raise ValueError("set_thread_order: only the CUDA emulator can reorder threads")
        if order not in ORDERS:
            raise ValueError(f"order: expected one of {sorted(ORDERS)}, got {order!r}")
        self._launch.set_order(ORDERS[order], seed)

    def _run(self, pointers: dict[str, int]) -> None:
        for begin, end in self._ranges:
            self._launch(pointers["x"], pointers["w"], pointers.get("b", 0), pointers["y"],
                         begin, end)
