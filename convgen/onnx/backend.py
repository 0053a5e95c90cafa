"""convgen as an ONNX backend in ONNX's own sense (``onnx.backend.base.Backend``), so that
ONNX's backend tests run against it as they run against ONNX Runtime.

``ConvgenBackend.prepare(model, device="CPU", backend="c")`` imports the model
(``from_onnx``: an unsupported model raises ``OnnxImportError`` there) and returns a
``ConvgenRep``; ``rep.run(inputs)`` compiles for the shapes and dtype of the arrays it is
given at its first call with them (a static compiler specializes) and keeps one compiled
model per (shapes, dtype), so later runs with the same shapes only run.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

from convgen.dtypes import DTYPES
from convgen.errors import OnnxImportError
from convgen.onnx.importer import OnnxModel, from_onnx

# the convgen backends a prepared model may compile with ("cuda" is not offered: ONNX's
# device "CUDA" is answered no, see ConvgenBackend.supports_device)
CPU_BACKENDS = ("c", "llvm")


class ConvgenRep(BackendRep):
    """A prepared model: ``run(inputs)`` returns its outputs as a namedtuple by output name
    (ONNX's runner reads them by position)."""

    def __init__(self, model: OnnxModel, backend: str, threads: int | None = None):
        super().__init__()
        self.model = model
        self.backend = backend
        self.threads = threads
        self._compiled: dict[tuple, Any] = {}
        # every graph input that is not an initializer, in the model's order: what the
        # runner passes (data inputs, and weights given as inputs)
        constants = {t.name for t in model.proto.graph.initializer}
        self._graph_inputs = [v.name for v in model.proto.graph.input
                              if v.name not in constants]
        names = [_field(name, i) for i, name in enumerate(model.output_names)]
        self._outputs = namedtuple("Outputs", names, rename=True)  # type: ignore[misc]

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        arrays = _as_list(inputs, self._graph_inputs)
        if len(arrays) != len(self._graph_inputs):
            raise ValueError(f"{self.model.label}: expected {len(self._graph_inputs)} "
                             f"input array(s) {self._graph_inputs}, got {len(arrays)}")
        by_name = dict(zip(self._graph_inputs, arrays))
        # the element type of the network: its data inputs' (specialized inputs, shapes
        # and axes among them, are constants to it and keep their own)
        data = [by_name[name] for name in self.model.input_names]
        floats = [by_name[name] for name, *_ in self.model.specialized_inputs
                  if by_name[name].dtype.kind == "f"]
        dtype = _common_dtype(data or floats, self.model.label)
        # input_shape covers the model's data inputs (weight inputs have their own shapes)
        shapes = [tuple(int(d) for d in by_name[name].shape)
                  for name in self.model.input_names]
        key = (tuple(a.shape for a in arrays), dtype)
        compiled = self._compiled.get(key)
        if compiled is None:
            # a model without inputs (Constant only) has its shapes already
            compiled = self.model.compile(input_shape=shapes or None, backend=self.backend,
                                          dtype=dtype, threads=self.threads)
            self._compiled[key] = compiled
        outputs = compiled(*arrays)
        if not isinstance(outputs, list):
            outputs = [outputs]
        return self._outputs(*outputs)


class ConvgenBackend(Backend):
    """The ONNX backend: ``prepare`` options ``backend`` ("c", the default, or "llvm")
    and ``threads`` (as ``compile``).

    ``is_compatible`` is Backend's (always true) on purpose: ONNX's runner skips a model
    that is not compatible, and a model convgen cannot import must fail (``prepare``
    raises OnnxImportError), not be skipped."""

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> ConvgenRep:
        if not cls.supports_device(device):
            raise ValueError(f"convgen's ONNX backend runs on device 'CPU', not {device!r}")
        backend = kwargs.pop("backend", "c")
        if backend not in CPU_BACKENDS:
            raise ValueError(f"backend: expected one of {CPU_BACKENDS}, got {backend!r}")
        threads = kwargs.pop("threads", None)
        # the inputs' shapes are known only at run time: import without fixing them
        return ConvgenRep(from_onnx(model), backend, threads)

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: Any, inputs: Any, device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> tuple:
        """Run one node: a one-node model whose inputs are ``inputs`` (their dtypes and
        shapes declared from the arrays), at opset ``kwargs["opset_version"]`` (default:
        the installed onnx's)."""
        arrays = _as_list(inputs, [name for name in node.input if name])
        names = [name for name in node.input if name]
        if len(arrays) != len(names):
            raise ValueError(f"run_node: node {node.op_type} has {len(names)} input(s), "
                             f"got {len(arrays)} array(s)")
        graph_inputs = [helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for name, a in zip(names, arrays)]
        graph_outputs = [helper.make_empty_tensor_value_info(name)
                         for name in node.output if name]
        graph = helper.make_graph([node], f"run_node_{node.op_type}", graph_inputs,
                                  graph_outputs)
        opset = kwargs.pop("opset_version", None)
        opsets = [helper.make_opsetid("", opset)] if opset is not None else None
        model = helper.make_model(graph, opset_imports=opsets)
        return cls.run_model(model, arrays, device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        # CUDA: convgen compiles kernels for CUDA, but a whole imported model runs on the
        # CPU backends only here
        return Device(device).type == DeviceType.CPU


def _field(name: str, index: int) -> str:
    return name if name.isidentifier() and not name.startswith("_") else f"output_{index}"


def _as_list(inputs: Any, names: list[str]) -> list[np.ndarray]:
    """ONNX's runners pass a list, a tuple, one array or a dict by input name."""
    if isinstance(inputs, dict):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(f"inputs: no array for {missing}")
        return [np.asarray(inputs[name]) for name in names]
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return [np.asarray(x) for x in inputs]


def _common_dtype(arrays: list[np.ndarray], label: str) -> str:
    dtypes = sorted({a.dtype.name for a in arrays})
    if not dtypes:
        return "float32"
    if len(dtypes) > 1:
        raise OnnxImportError(f"{label}: inputs of several element types {dtypes}; a "
                              "compiled convgen model has one element type")
    if dtypes[0] not in DTYPES:
        raise OnnxImportError(f"{label}: element type {dtypes[0]} is not one convgen "
                              f"compiles ({', '.join(DTYPES)})")
    return dtypes[0]


backend = ConvgenBackend
prepare = ConvgenBackend.prepare
run_model = ConvgenBackend.run_model
run_node = ConvgenBackend.run_node
supports_device = ConvgenBackend.supports_device

__all__ = ["ConvgenBackend", "ConvgenRep", "prepare", "run_model", "run_node",
           "supports_device"]
