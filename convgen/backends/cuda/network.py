"""A lowered network as one CUDA module: every step a kernel, launched in order.

The launch list (:func:`launches`) is the one description of the network's execution:
rendered into the emulator's host entry (templates/cuda/net.cu.j2) and walked by
:class:`DeviceNetwork` on a GPU through the driver API, with the parameters uploaded once
and the arena allocated once per model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convgen.backends.c.render import environment
from convgen.backends.common import comment_text, entry_parameters
from convgen.backends.cuda.arrays import DeviceArray, cuda_array_info
from convgen.backends.cuda.emulator import ORDERS
from convgen.backends.cuda.ops import launch_shape, op_context
from convgen.backends.cuda.render import render_conv_kernel, threads_per_block
from convgen.dtypes import dtype_info
from convgen.graph.lower import Buffer, Lowered, Step
from convgen.kernel import check_input
from convgen.version import __version__

NULL = Buffer("null", 0)  # an absent bias
JOB = Buffer("job", 0)  # the first job of the launch: 0, the whole grid


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a network: its kernel, grid, block and arguments."""

    name: str  # the layer, for comments
    kernel: str
    blocks: int
    threads: int
    args: tuple[Buffer, ...]


def _arguments(step: Step) -> list[Buffer]:
    """A step's kernel arguments, in its kernel's parameter order."""
    param = {name: Buffer("param", offset) for name, offset in step.params.items()}
    if step.kind == "conv":
        args = [step.inputs[0], param["weight"], param.get("bias", NULL)]
        if step.consts["residual"]:
            args.append(step.inputs[1])
        return args + [step.output, JOB]
    if step.kind == "linear":
        return [step.inputs[0], param["weight"], param.get("bias", NULL), step.output, JOB]
    if step.kind == "batch_norm":
        return [step.inputs[0], param["scale"], param["shift"], step.output, JOB]
    if step.kind == "resample":
        return [step.inputs[0], param["index"], param.get("weight", NULL), step.output, JOB]
    return [*step.inputs, step.output, JOB]


def launches(lowered: Lowered) -> list[Launch]:
    out = []
    for step in lowered.steps:
        if step.kind == "conv":
            blocks, threads = step.plan.jobs, threads_per_block(step.plan)
        else:
            blocks, threads = launch_shape(step.kind, step.consts)
        out.append(Launch(comment_text(step.name), f"{step.function}_kernel", blocks, threads,
                          tuple(_arguments(step))))
    return out


def _expression(buffer: Buffer) -> str:
    """A buffer as a C expression in the host entry."""
    if buffer.kind == "input":
        return f"inputs[{buffer.index}]"
    if buffer.kind == "null":
        return "nullptr"
    if buffer.kind == "job":
        return "0LL"
    return f"{'params' if buffer.kind == 'param' else 'arena'} + {buffer.index}L"


def render_network(lowered: Lowered, symbol: str, title: str) -> str:
    c_type = dtype_info(lowered.dtype).c_type
    steps = []
    for step in lowered.steps:
        entry = {"kind": step.kind, "name": comment_text(step.name)}
        if step.kind == "conv":
            entry["text"] = render_conv_kernel(step.plan, step.function,
                                               step.consts["residual"])
        else:
            entry["o"] = op_context(step, c_type, step.in_elements, step.out_elements)
        steps.append(entry)
    listed = [{"name": launch.name, "kernel": launch.kernel, "blocks": launch.blocks,
               "threads": launch.threads, "args": [_expression(a) for a in launch.args]}
              for launch in launches(lowered)]
    copies = [{"source": _expression(buffer), "elements": elements}
              for buffer, elements in lowered.outputs]
    return environment().get_template("cuda/net.cu.j2").render(
        version=__version__, title=title, steps=steps, launches=listed, symbol=symbol,
        c_type=c_type, params=entry_parameters(c_type), arena_elements=lowered.arena_elements,
        output_copies=copies)


class NetworkRunner:
    """Runs one compiled network per call: NumPy arrays in and out (one copy each way), or
    device arrays in and out without copies (DeviceArray outputs when any input is one).

    Subclasses provide where memory lives: :class:`EmulatedNetwork` (host memory, the host
    entry) and :class:`DeviceNetwork` (a GPU, the launch list).
    """

    def __init__(self, lowered: Lowered):
        self.dtype = np.dtype(lowered.dtype)
        self.input_shapes = list(lowered.input_shapes)
        self.output_shapes = list(lowered.output_shapes)
        self.outputs = list(lowered.outputs)

    def _input(self, index: int, value) -> tuple[int, object]:
        """(address, what keeps it alive) of input ``index``: a device array's own, or a
        NumPy array's (staged on the device by the subclass)."""
        label = f"input {index}" if len(self.input_shapes) > 1 else "input"
        info = cuda_array_info(value)
        if info is None:
            array = check_input(label, value, self.dtype, self.input_shapes[index])
            return self.host_input(index, array)
        self.check_device(label, value)
        if info.dtype != self.dtype:
            raise TypeError(f"{label}: expected dtype {self.dtype}, got {info.dtype}")
        if info.shape != self.input_shapes[index]:
            raise ValueError(f"{label}: expected shape {self.input_shapes[index]}, got "
                             f"{info.shape}")
        return info.ptr, value

    def __call__(self, inputs) -> list:
        staged = [self._input(i, x) for i, x in enumerate(inputs)]
        on_device = any(cuda_array_info(x) is not None for x in inputs)
        results = [DeviceArray.empty(shape, self.dtype) if on_device
                   else np.empty(shape, self.dtype) for shape in self.output_shapes]
        self.run([address for address, _ in staged], results)
        return results

    def host_input(self, index: int, array: np.ndarray) -> tuple[int, object]:
        raise NotImplementedError

    def check_device(self, label: str, value) -> None:
        """Refuse device arrays this runner cannot read."""

    def run(self, inputs: list[int], results: list) -> None:
        raise NotImplementedError


class EmulatedNetwork(NetworkRunner):
    """The network's host entry in an emulator build: device memory is host memory."""

    def __init__(self, lowered: Lowered, ffi, lib, function):
        super().__init__(lowered)
        self.ffi, self.lib, self.function = ffi, lib, function
        self.c_type = dtype_info(lowered.dtype).c_type
        self.params = DeviceArray.from_host(lowered.params, "emulator")
        self.arena = DeviceArray.empty(max(lowered.arena_elements, 1), self.dtype, "emulator")

    def host_input(self, index, array):
        return array.ctypes.data, array

    def set_thread_order(self, order: str, seed: int = 0) -> None:
        """Run each block's threads in ``order`` ("forward", "reverse", "shuffle") from the
        next call on: a network whose result changes with the order has a race."""
        if order not in ORDERS:
            raise ValueError(f"order: expected one of {sorted(ORDERS)}, got {order!r}")
        self.lib.cg_emu_set_order(ORDERS[order], seed & 0xFFFFFFFF)

    def check_device(self, label, value):
        if not (isinstance(value, DeviceArray) and value.emulated):
            raise TypeError(f"{label}: the CUDA emulator runs on the CPU and cannot read GPU "
                            "memory; pass a NumPy array or a convgen DeviceArray made while "
                            "CONVGEN_CUDA_DEVICE=emulator")

    def run(self, inputs, results):
        ffi, pointer = self.ffi, f"{self.c_type} *"
        addresses = [r.ptr if isinstance(r, DeviceArray) else r.ctypes.data for r in results]
        in_ptrs = ffi.new(f"const {pointer}[]", [ffi.cast(pointer, a) for a in inputs])
        out_ptrs = ffi.new(f"{pointer}[]", [ffi.cast(pointer, a) for a in addresses])
        status = self.function(in_ptrs, out_ptrs, ffi.cast(pointer, self.params.ptr),
                               ffi.cast(pointer, self.arena.ptr))
        if status != 0:
            raise RuntimeError(f"network failed in the CUDA emulator (status {status})")


class DeviceNetwork(NetworkRunner):
    """The network on a GPU: its module loaded once, the parameters uploaded once, one arena
    and one staging buffer per input allocated once; a call copies NumPy inputs in, launches
    every kernel of the launch list in order on the default stream, and copies the outputs
    out of the arena (device to host, or device to device for device-array outputs)."""

    def __init__(self, lowered: Lowered, module, listed):
        super().__init__(lowered)
        self.module = module
        self.driver = module.driver
        self.itemsize = self.dtype.itemsize
        self.params = DeviceArray.from_host(lowered.params)
        self.arena = DeviceArray.empty(max(lowered.arena_elements, 1), self.dtype)
        self.staging = [DeviceArray.empty(shape, self.dtype) for shape in self.input_shapes]
        self.launches = [(module.function(launch.kernel), launch) for launch in listed]

    def host_input(self, index, array):
        self.staging[index].copy_from_host(array)
        return self.staging[index].ptr, array

    def _address(self, buffer: Buffer, inputs: list[int]) -> tuple[str, int]:
        if buffer.kind == "input":
            return "unsigned long long", inputs[buffer.index]
        if buffer.kind == "param":
            return "unsigned long long", self.params.ptr + buffer.index * self.itemsize
        if buffer.kind == "arena":
            return "unsigned long long", self.arena.ptr + buffer.index * self.itemsize
        if buffer.kind == "job":
            return "long long", 0
        return "unsigned long long", 0

    def run(self, inputs, results):
        for function, launch in self.launches:
            function.launch((launch.blocks, 1, 1), (launch.threads, 1, 1),
                            [self._address(a, inputs) for a in launch.args])
        for (buffer, elements), result in zip(self.outputs, results):
            _, source = self._address(buffer, inputs)
            if isinstance(result, DeviceArray):
                self.driver.copy_device(result.ptr, source, elements * self.itemsize)
            else:
                self.driver.copy_to_host(result, source)  # waits for the launches


__all__ = ["DeviceNetwork", "EmulatedNetwork", "Launch", "launches", "render_network"]
