"""ONNX import: ``cg.from_onnx(path or ModelProto)`` -> a model that compiles like a
``convgen.nn`` network.

The ONNX graph is walked once per set of input shapes: initializers and Constant nodes
are NumPy arrays, anything computed from constants only is folded with NumPy (so
exporters' shape subgraphs disappear), and every operator on a run-time tensor becomes
nodes of a convgen :class:`~convgen.graph.ir.Graph` (see :mod:`convgen.onnx.layers` and
:mod:`convgen.onnx.tensors`). Choices where ONNX leaves room:

- initializers are constants, also those listed as graph inputs (IR < 4 models, or
  "overridable" initializers): they are not inputs of the compiled model;
- a graph input that is not an initializer but that the import needs as a constant is
  a *specialized input*: a *weight input* (it feeds a parameter slot: Conv's W/B,
  BatchNormalization's scale/B/mean/var, Clip's min/max, Pad's constant_value, Dropout's
  training_mode: ``PARAMETER_SLOTS``) or a *shape input* (it feeds a slot that ONNX types
  as integers only: Reshape's and Expand's ``shape``, Pad's ``pads`` and ``axes``,
  Slice's starts/ends/axes/steps, Squeeze/Unsqueeze's ``axes``, and any such slot of an
  operator the importer handles, read from the operator's schema: ``constant_slots``),
  directly or through the shape arithmetic that folds (Identity, Cast, Concat, ...). The
  network compiler folds and lays out weights at compile time (BatchNormalization into
  the convolution, blocked weight layouts) and every shape is a compile-time constant,
  so such inputs are specialized, not computed at run time, as torch.compile does with
  its guards. The compiled model (:class:`SpecializedModel`) takes every graph input in
  the model's order, like ONNX Runtime, reads the specialized inputs' values at each
  call, guards them (dtype, shape and a hash of the bytes) and compiles the network for
  those values on the first call that brings them, kept in a small cache
  (``weight_cache`` sets of values); a value that changes an output shape is just
  another specialization. A value the operator cannot take (a shape with two -1, pads
  that leave nothing) is an OnnxImportError naming the node and the graph input;
- ``compile(constants={name: array})`` fixes graph inputs at compile time instead, as if
  they were initializers (TVM's ``freeze_params``): the compiled model no longer takes
  them (any graph input may be given; with every specialized input fixed, compile
  returns a plain CompiledModel without guards);
- Dropout and BatchNormalization run in inference mode whatever ``is_test`` says;
  Dropout's mask output is all true (bool); a used training-statistics output is an
  error;
- MaxPool's Indices output (ONNX's flattened index over the whole input, storage_order 0
  row-major or 1 column-major within each channel) is a ``max_pool_indices`` node:
  computed in the network's element type and cast to int64 at the output,
  exact while the input has at most 2**24 elements (float32; 2**53 for float64), a
  GraphError at compile beyond that. An Indices value may only be a graph output (or
  pass through Identity); the compiled model's outputs carry ONNX's element types (bool
  mask, int64 indices);
- a symbolic input dim is fixed by ``input_shape``; a static dim may not be changed;
- the element type: a compiled network has one for every value, the model's own by
  default (``compile(dtype=None)``): its data inputs' element type (float32, float64, or
  an integer type int8 ... uint64 for models of the ops that run on integers,
  convgen.graph.ir INTEGER_OPS), which must be one for all of them. An explicit float
  ``dtype`` that differs from a float model's converts the whole model to that precision
  (weights and every value, as torch's ``model.double()``; the compiled model then takes
  and returns arrays of that dtype, and refuses the model's own with a TypeError, as ONNX
  Runtime refuses a wrong input type); integer and float types never convert into each
  other (that would change what the model computes), nor integer types into others.

``onnx`` is an optional dependency (``pip install convgen[onnx]``), imported here only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from convgen.dtypes import element_type
from convgen.errors import OnnxImportError
from convgen.graph.compile import compile_graph, summarize
from convgen.graph.ir import Graph
from convgen.graph.memory import plan_memory
from convgen.graph.passes import optimize
from convgen.graph.shapes import check_value_size, infer_graph
from convgen.onnx.layers import HANDLERS as LAYER_HANDLERS
from convgen.onnx.ops import Builder, Context, Tensor, is_const
from convgen.onnx.tensors import DTYPES as TENSOR_DTYPES
from convgen.onnx.tensors import HANDLERS as TENSOR_HANDLERS
from convgen.schedule import check_threads

MIN_OPSET = 6
FLOAT_INPUTS = {1: "float32", 11: "float64"}  # TensorProto.FLOAT, DOUBLE
# the element types a graph input may have (TensorProto's numbers): convgen.dtypes
# ELEMENT_TYPES; bool, float16, bfloat16, strings and the 8-bit floats are not among them
ELEMENT_INPUTS = {**FLOAT_INPUTS, 2: "uint8", 3: "int8", 4: "uint16", 5: "int16",
                  6: "int32", 7: "int64", 12: "uint32", 13: "uint64"}
BOOL_INPUT = 9  # TensorProto.BOOL: a data input taken only as Where's condition
# the float (or bool) inputs of an operator that convgen needs as constants and that a
# model may give as graph inputs (weight inputs, specialized at call time); the inputs
# that ONNX types as integers only (shapes, axes, pads, ...) are found in the schemas
PARAMETER_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2),
                   "BatchNormalization": (1, 2, 3, 4), "Clip": (1, 2), "Pad": (2,),
                   "Dropout": (2,), "Resize": (1, 2), "Upsample": (1,)}
# operators whose output is a constant while their input is computed at run time (they
# read its shape only): a constant wanted from their output wants nothing of the input
SHAPE_READERS = frozenset({"Shape", "Size"})
Shape = tuple[int, ...]


def _onnx():
    try:
        import onnx  # optional (convgen[onnx]): imported only when a model is imported
    except ImportError:
        raise ImportError("convgen.from_onnx needs the onnx package: "
                          "pip install convgen[onnx]") from None
    return onnx


def _handlers() -> dict:
    return {**LAYER_HANDLERS, **TENSOR_HANDLERS}


# -- reading and checking the model -----------------------------------------------------

def read_model(source: Any) -> tuple[Any, str]:
    """(ModelProto, label for errors) from a path, bytes or a ModelProto."""
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        return source, "<ModelProto>"
    if isinstance(source, (bytes, bytearray)):
        data, label, folder = bytes(source), "<bytes>", None
    elif isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        with open(label, "rb") as f:  # OSError (no such file, ...) as it is
            data = f.read()
        folder = os.path.dirname(os.path.abspath(label))
    else:
        raise TypeError(f"from_onnx: expected a path, bytes or an onnx.ModelProto, "
                        f"got {type(source).__name__}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"{label}: not an ONNX model, or a truncated one "
                              f"(cannot parse it: {exc})") from None
    _check_structure(model, label)
    if folder is not None and _has_external_data(model):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, folder)
        except Exception as exc:
            raise OnnxImportError(f"{label}: cannot load the external tensor data: "
                                  f"{exc}") from None
    return model, label


def _has_external_data(model) -> bool:
    return any(t.data_location == 1 for t in model.graph.initializer)


def _check_structure(model, label: str) -> None:
    """What any ONNX model has; random or truncated bytes often parse but miss these."""
    graph = model.graph
    if not model.HasField("graph") or not graph.output:
        raise OnnxImportError(f"{label}: not an ONNX model, or a truncated one "
                              "(no graph with outputs)")
    if not any(op.domain in ("", "ai.onnx") for op in model.opset_import):
        raise OnnxImportError(f"{label}: not an ONNX model, or a truncated one "
                              "(no opset_import for the default domain)")


def _check_text(model, label: str) -> None:
    """Names must be text: protobuf hands back bytes for invalid UTF-8 (a damaged file)."""
    graph = model.graph
    names = [v.name for v in (*graph.input, *graph.output)]
    names += [t.name for t in graph.initializer]
    for node in graph.node:
        names += [node.op_type, node.domain, node.name, *node.input, *node.output]
        names += [a.name for a in node.attribute]
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise OnnxImportError(f"{label}: a damaged ONNX model: the name {bad!r} is not "
                              "valid UTF-8 text")


def opset_of(model) -> int:
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def _label(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def check_operators(model, label: str) -> None:
    """One error naming every unsupported operator type and the nodes that use it."""
    handlers = _handlers()
    missing: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            op = f"{node.domain}.{node.op_type}"
        elif op in handlers:
            continue
        missing.setdefault(op, []).append(_label(node, i))
    if missing:
        parts = [f"{op} ({', '.join(names)})" for op, names in sorted(missing.items())]
        count = sum(len(v) for v in missing.values())
        raise OnnxImportError(f"{label}: {count} node{'s' if count != 1 else ''} use "
                              f"operators convgen does not support: {'; '.join(parts)}")


def _attributes(node) -> dict:
    from onnx import helper, numpy_helper

    attrs = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
            value = numpy_helper.to_array(value)
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        attrs[attribute.name] = value
    return attrs


def _initializers(model, label: str) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    arrays = {}
    for tensor in model.graph.initializer:
        try:
            arrays[tensor.name] = numpy_helper.to_array(tensor)
        except Exception as exc:
            raise OnnxImportError(f"{label}: initializer {tensor.name!r} cannot be read "
                                  f"({exc})") from None
    return arrays


def _declared_inputs(model, constants, label: str) -> list[tuple[str, tuple, int]]:
    """(name, dims, ONNX element type) per graph input that is not an initializer; a dim
    is an int or None."""
    inputs = []
    for value in model.graph.input:
        if value.name in constants:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise OnnxImportError(f"{label}: graph input {value.name!r} is a {kind}, "
                                  "not a tensor")
        dims = None
        if value.type.tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in value.type.tensor_type.shape.dim)
        inputs.append((value.name, dims, value.type.tensor_type.elem_type))
    return inputs


def _input_dtype(name: str, elem: int, specialized: bool, label: str) -> str:
    """The NumPy dtype of a graph input: one of ELEMENT_INPUTS, or bool, for a data input;
    a specialized input (a constant to the network) may have any element type constants
    have."""
    from onnx import TensorProto

    if elem in ELEMENT_INPUTS:
        return ELEMENT_INPUTS[elem]
    if elem == BOOL_INPUT:
        return "bool"
    if specialized and elem in TENSOR_DTYPES:
        return np.dtype(TENSOR_DTYPES[elem]).name
    raise OnnxImportError(
        f"{label}: graph input {name!r} has element type "
        f"{TensorProto.DataType.Name(elem) if elem else 'undefined'}; convgen "
        f"takes inputs of {', '.join(ELEMENT_INPUTS.values())}")


def _check_bool_inputs(model, names: set[str], label: str) -> None:
    """A bool data input may only be a Where's condition: the network computes it as 0/1 in
    its own element type, which only Where reads as true/false (and convgen has no bool
    operators on run-time tensors)."""
    for name in sorted(names):
        users = [node for node in model.graph.node if name in node.input]
        wrong = [f"{node.op_type} {node.name or '(unnamed)'!r}" for node in users
                 if node.op_type != "Where" or list(node.input).index(name) != 0
                 or name in list(node.input)[1:]]
        if wrong or name in [value.name for value in model.graph.output]:
            raise OnnxImportError(
                f"{label}: graph input {name!r} is bool; convgen takes a bool input only as "
                f"Where's condition, not as an input of {wrong or ['the graph output']}")


def constant_slots(op_type: str, opset: int) -> frozenset[int]:
    """The inputs of ``op_type`` (at ``opset``) that the import needs as constants: its
    PARAMETER_SLOTS, and every input whose schema allows integer element types only
    (shapes, axes, pads, starts/ends, steps, repeats: convgen computes run-time tensors
    in floating point, so such an input always folds)."""
    return frozenset(PARAMETER_SLOTS.get(op_type, ())) | integer_slots(op_type, opset)


@functools.lru_cache(maxsize=None)
def integer_slots(op_type: str, opset: int) -> frozenset[int]:
    """The inputs of ``op_type`` whose schema at ``opset`` allows integer types only."""
    from onnx import defs

    try:
        schema = defs.get_schema(op_type, opset, "")
    except Exception:  # no schema at this opset: the handler checks what it needs
        return frozenset()
    allowed = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}
    slots = set()
    for i, formal in enumerate(schema.inputs):
        types = allowed.get(formal.type_str, [formal.type_str])
        if types and all(t.startswith(("tensor(int", "tensor(uint")) for t in types):
            slots.add(i)
    return frozenset(slots)


def _check_integer_slots(model, declared, opset: int, label: str) -> None:
    """A graph input declared float that feeds an integers-only input (Reshape's shape
    and the like) breaks the operator's type constraint: refused, naming both."""
    from onnx import TensorProto

    elems = {name: elem for name, _, elem in declared}
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        for slot in integer_slots(node.op_type, opset):
            name = node.input[slot] if slot < len(node.input) else ""
            if name not in elems:
                continue
            numpy_type = TENSOR_DTYPES.get(elems[name])
            if numpy_type is None or np.dtype(numpy_type).kind not in "iu":
                kind = TensorProto.DataType.Name(elems[name]) if elems[name] else "undefined"
                raise OnnxImportError(
                    f"{label}: node {_label(node, index)!r} ({node.op_type}): its input "
                    f"{slot} is the graph input {name!r} of element type {kind}; "
                    f"{node.op_type} takes integers there")


def _specialized_input_names(model, declared, opset: int) -> set[str]:
    """The declared inputs the import needs as constants: those in a constant slot of a
    node (:func:`constant_slots`), or that a value needed as a constant is computed from
    (a Concat or Cast of shape values, ...; not through Shape, which reads shapes only).
    One pass from the last node back: ONNX's nodes are in topological order."""
    needed: set[str] = set()
    for node in reversed(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        slots = constant_slots(node.op_type, opset)
        folds = node.op_type not in SHAPE_READERS and any(
            out in needed for out in node.output if out)
        for i, name in enumerate(node.input):
            if name and (folds or i in slots):
                needed.add(name)
    return {name for name, *_ in declared} & needed


# -- the model -------------------------------------------------------------------------

class OnnxModel:
    """An imported ONNX model: ``.compile()`` like a convgen.nn network, ``.summary()``.

    ``graph`` is the convgen graph for the current input shapes (``input_shapes``);
    ``compile(input_shape=...)`` rebuilds it for other values of the symbolic dims.
    ``specialized_inputs`` (also ``weight_inputs``) lists the graph inputs whose values
    the network is built for (name, declared dims, dtype); ``input_names`` and
    ``input_shapes`` cover the others, the data inputs. ``constants`` (name -> array)
    makes graph inputs constants, as initializers.
    """

    def __init__(self, model, label: str, input_shape=None, constants: dict | None = None):
        self.proto = model
        self.label = label
        graph = model.graph
        _check_structure(model, label)
        _check_text(model, label)
        self.opset = opset_of(model)
        if self.opset < MIN_OPSET:
            raise OnnxImportError(f"{label}: opset {self.opset} is older than {MIN_OPSET}; "
                                  "convert the model with onnx.version_converter first")
        check_operators(model, label)
        self._constants = _initializers(model, label)
        declared = _declared_inputs(model, self._constants, label)
        if constants:
            self._constants.update(self._fixed_values(declared, constants))
            declared = [d for d in declared if d[0] not in constants]
        _check_integer_slots(model, declared, self.opset, label)
        specialized = _specialized_input_names(model, declared, self.opset)
        declared = [(name, dims, _input_dtype(name, elem, name in specialized, label))
                    for name, dims, elem in declared]
        # every graph input in the model's order: what a SpecializedModel's call takes
        self.call_names = [name for name, *_ in declared]
        self._declared = [(name, dims) for name, dims, _ in declared
                          if name not in specialized]
        # specialized inputs: (name, declared dims or None, NumPy dtype name)
        self.specialized_inputs = [(name, dims, dtype) for name, dims, dtype in declared
                                   if name in specialized]
        # the data inputs' element types, by name: what the model's dtype comes from (bool
        # inputs aside: they are taken as 0/1 in it)
        self.input_dtypes = {name: dtype for name, _, dtype in declared
                             if name not in specialized and dtype != "bool"}
        self._bool_inputs = {name for name, _, dtype in declared
                             if name not in specialized and dtype == "bool"}
        _check_bool_inputs(model, self._bool_inputs, label)
        self.input_names = [name for name, _ in self._declared]
        self.output_names = [value.name for value in graph.output]
        self._graph: Graph | None = None
        self._graph_dtypes: list[str | None] = []
        self.input_shapes: list[tuple] = [dims for _, dims in self._declared]
        shapes = self._resolve(input_shape, required=False)
        if shapes is not None:
            if not self.specialized_inputs:  # else the graph needs their values
                self._graph, self._graph_dtypes = self._build_typed(shapes)
            self.input_shapes = shapes

    @property
    def weight_inputs(self) -> list[tuple]:
        """The specialized inputs (the name from before shape inputs were specialized)."""
        return self.specialized_inputs

    def _fixed_values(self, declared, constants: dict) -> dict[str, np.ndarray]:
        """``constants`` checked against the graph inputs they fix."""
        if not isinstance(constants, dict):
            raise TypeError(f"constants: expected a dict name -> array, got "
                            f"{type(constants).__name__}")
        names = [name for name, *_ in declared]
        unknown = sorted(set(constants) - set(names))
        if unknown:
            raise OnnxImportError(f"{self.label}: constants: {unknown} are not graph inputs "
                                  f"of the model (those that are not initializers: {names})")
        return {name: _checked_value(name, dims, _input_dtype(name, elem, True, self.label),
                                     constants[name], "graph input")
                for name, dims, elem in declared if name in constants}

    # -- shapes ------------------------------------------------------------------------
    def _resolve(self, input_shape, required: bool) -> list[Shape] | None:
        """One static shape per input, from the model and ``input_shape``; None if unknown."""
        given = _split_shapes(input_shape, len(self._declared), self.label)
        shapes = []
        for i, (name, dims) in enumerate(self._declared):
            want = given[i] if given is not None else None
            if want is None:
                if dims is None or any(d is None for d in dims):
                    if not required:
                        return None
                    raise OnnxImportError(
                        f"{self.label}: graph input {name!r} has the shape "
                        f"{_show(dims)} with symbolic dims; give input_shape=... to fix them")
                shapes.append(tuple(dims))
                continue
            if dims is not None:
                if len(want) != len(dims):
                    raise OnnxImportError(f"{self.label}: input_shape {want} for input "
                                          f"{name!r} has rank {len(want)}, the model's "
                                          f"{_show(dims)} has rank {len(dims)}")
                for axis, (w, d) in enumerate(zip(want, dims)):
                    if d is not None and w != d:
                        raise OnnxImportError(
                            f"{self.label}: input_shape {want} for input {name!r} changes "
                            f"the static dim {axis} of {_show(dims)} ({d} -> {w})")
            shapes.append(want)
        return shapes

    @property
    def graph(self) -> Graph:
        if self.specialized_inputs:
            raise OnnxImportError(self._needs_values())
        if self._graph is None:
            self._resolve(None, required=True)  # raises, naming the symbolic input
        return self._graph

    def _needs_values(self) -> str:
        return (f"{self.label}: the graph inputs {self._specialized_names()} are specialized "
                "inputs (weights, parameters of Conv, BatchNormalization, Clip or Pad, or "
                "shape values: shapes, axes, pads, starts/ends): the network is built for "
                "their values; call compile() and pass them with the inputs, or fix them "
                "with compile(constants={name: array}), or give weights={name: array} to "
                "graph_for() or summary()")

    def _specialized_names(self) -> list[str]:
        return [name for name, *_ in self.specialized_inputs]

    def graph_for(self, input_shape=None, weights: dict | None = None) -> Graph:
        """The convgen graph for ``input_shape`` (None: the current shapes) and the values
        of the specialized inputs (``weights``: name -> array; needed when the model has
        any)."""
        if not self.specialized_inputs:
            if weights:
                raise OnnxImportError(f"{self.label}: weights={sorted(weights)}: the model "
                                      "has no specialized inputs")
            if input_shape is None:
                return self.graph
            return self._build(self._resolve(input_shape, required=True))
        if weights is None:
            raise OnnxImportError(self._needs_values())
        return self._build(self._shapes(input_shape), self._specialized_values(weights))

    def _shapes(self, input_shape) -> list[Shape]:
        """Static input shapes: ``input_shape``'s, else the current ones (from_onnx's)."""
        if input_shape is None and all(s is not None and None not in s
                                       for s in self.input_shapes):
            return list(self.input_shapes)
        return self._resolve(input_shape, required=True)

    def _specialized_values(self, weights: dict) -> dict[str, np.ndarray]:
        """``weights`` checked against the specialized inputs: name -> array of its dtype."""
        names = self._specialized_names()
        unknown = sorted(set(weights) - set(names))
        missing = [name for name in names if name not in weights]
        if unknown or missing:
            raise OnnxImportError(f"{self.label}: weights: expected the specialized inputs "
                                  f"{names}; missing {missing}, unknown {unknown}")
        return {name: _checked_value(name, dims, dtype, weights[name], "specialized input")
                for name, dims, dtype in self.specialized_inputs}

    # -- element type ----------------------------------------------------------------------
    @property
    def dtype(self) -> str:
        """The model's element type: its data inputs' (all one type, else OnnxImportError
        naming each input's), or, for a model without data inputs, its outputs'; float32
        when they declare none convgen has."""
        found = dict(self.input_dtypes)
        if not found:
            found = {value.name: ELEMENT_INPUTS[value.type.tensor_type.elem_type]
                     for value in self.proto.graph.output
                     if value.type.tensor_type.elem_type in ELEMENT_INPUTS}
        types = sorted(set(found.values()))
        if len(types) > 1:
            raise OnnxImportError(
                f"{self.label}: the graph inputs have several element types "
                f"({', '.join(f'{n!r}: {t}' for n, t in found.items())}); a compiled convgen "
                "network has one element type for every value")
        return types[0] if types else "float32"

    def _dtype_for(self, dtype: str | None) -> str:
        """The element type to compile: ``dtype`` checked against the model's (see the
        module docstring: floats convert into each other, nothing else does)."""
        own = self.dtype
        if dtype is None:
            return own
        given = element_type(dtype)  # ValueError naming the element types
        if dtype != own and (given.is_integer or element_type(own).is_integer):
            raise OnnxImportError(
                f"{self.label}: dtype={dtype!r}, but the model computes in {own} (its "
                f"inputs' element type); convgen converts a model only between float32 "
                f"and float64; compile it with dtype=None or {own!r}")
        return dtype

    def _integer(self) -> bool:
        """Whether the model computes in an integer type (an ambiguous one: no, compile
        names the problem)."""
        try:
            return element_type(self.dtype).is_integer
        except OnnxImportError:
            return False

    # -- compiling -------------------------------------------------------------------------
    def compile(self, input_shape=None, backend: str | None = None, dtype: str | None = None,
                threads: int | None = None, constants: dict | None = None):
        """Compile for ``input_shape`` (None: the model's, or from_onnx's): a CompiledModel,
        or a SpecializedModel when the model has specialized inputs.
        ``dtype``: None, the model's own element type (its inputs'), or a float type that
        converts a float model to that precision (module docstring). ``threads`` per
        convolution layer (None: the default thread count's rule), as
        :func:`convgen.graph.compile.compile_graph`. ``constants`` (name -> array) fixes
        graph inputs as if they were initializers: the compiled model does not take them,
        and ``input_shape`` covers the data inputs left."""
        threads = check_threads(threads)
        if constants:
            # the data inputs left keep the shapes fixed so far (from_onnx's input_shape)
            left = [name for name in self.input_names if name not in constants]
            if input_shape is None and left:
                current = dict(zip(self.input_names, self.input_shapes))
                input_shape = [None if current[name] is None or None in current[name]
                               else current[name] for name in left]
            fixed = OnnxModel(self.proto, self.label, input_shape, constants=constants)
            return fixed.compile(None, backend, dtype, threads)
        dtype = self._dtype_for(dtype)
        if self.specialized_inputs:
            return SpecializedModel(self, self._shapes(input_shape), backend, dtype, threads)
        if input_shape is None:
            self.graph  # noqa: B018  (raises, naming the symbolic input)
            graph, dtypes = self._graph, self._graph_dtypes
        else:
            graph, dtypes = self._build_typed(self._resolve(input_shape, required=True))
        return compile_graph(graph, backend, dtype, threads, output_dtypes=dtypes,
                             input_dtypes=self._input_kinds())

    def _input_kinds(self) -> list[str | None]:
        """compile_graph's input_dtypes: "bool" for the bool data inputs (taken as 0/1)."""
        return ["bool" if name in self._bool_inputs else None for name in self.input_names]

    def summary(self, input_shape=None, file=None, weights: dict | None = None) -> str:
        """Print and return each layer with output shape, parameters, FLOPs and fusion."""
        graph = self.graph_for(input_shape, weights).copy()
        infer_graph(graph)
        optimized = optimize(graph)
        infer_graph(optimized)
        dtype = self.dtype
        text = summarize(graph, optimized, plan_memory(optimized, element_type(dtype).itemsize),
                         "(not compiled)", dtype)
        print(text, file=file)
        return text

    def __repr__(self) -> str:
        return (f"OnnxModel({self.label!r}, opset {self.opset}, inputs "
                f"{dict(zip(self.input_names, map(_show, self.input_shapes)))}, "
                + (f"specialized inputs {self._specialized_names()}, "
                   if self.specialized_inputs else "")
                + f"outputs {self.output_names})")

    # -- building ----------------------------------------------------------------------
    def _build(self, shapes: list[Shape], weights: dict | None = None) -> Graph:
        return self._build_typed(shapes, weights)[0]

    def _build_typed(self, shapes: list[Shape], weights: dict | None = None,
                     ) -> tuple[Graph, list[str | None]]:
        """The graph, and the element type of each output when it is not the network's
        (ONNX's bool or int64: Dropout's mask, MaxPool's Indices, integer constants)."""
        handlers = _handlers()
        inputs = [(name, shape) for name, shape in zip(self.input_names, shapes)]
        for name, shape in inputs:
            too_large = check_value_size(shape)
            if too_large:
                raise OnnxImportError(f"{self.label}: graph input {name!r}: {too_large}")
        builder = Builder(inputs, integer=self._integer())
        values: dict[str, Any] = dict(self._constants)
        values.update(weights or {})
        for name, shape in inputs:
            values[name] = Tensor(name, shape)
        used = {name for node in self.proto.graph.node for name in node.input}
        used.update(self.output_names)
        for index, node in enumerate(self.proto.graph.node):
            label = _label(node, index)
            ctx = Context(builder, node, label, _attributes(node), self.opset)
            args = []
            for name in node.input:
                if not name:
                    args.append(None)
                elif name not in values:
                    raise ctx.error(f"input {name!r} is not defined: no graph input, "
                                    "initializer or earlier node output has that name")
                else:
                    args.append(values[name])
            _check_arity(ctx, node, self.opset)
            typed = [(name, a.dtype) for name, a in zip(node.input, args)
                     if isinstance(a, Tensor) and a.dtype is not None]
            if typed and node.op_type != "Identity":
                raise ctx.error(f"reads {typed[0][0]!r}, a run-time {typed[0][1]} tensor "
                                "(MaxPool's Indices): convgen computes those for graph "
                                "outputs only")
            try:
                results = handlers[node.op_type](ctx, args)
            except OnnxImportError as exc:
                given = [name for name in node.input if name in (weights or {})]
                if not given:
                    raise
                # a value given at this call: say which graph input brought it
                shown = "; ".join(f"{name!r} = {_brief(weights[name])}" for name in given)
                raise OnnxImportError(f"{exc} (from the specialized graph input(s) "
                                      f"{shown})") from None
            except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
                # a model that breaks a rule no handler checks: name the node, not the line
                raise ctx.error(f"cannot import it: {exc}") from exc
            outputs = [np.asarray(v) if isinstance(v, (np.generic, np.ndarray)) else v
                       for v in results]
            for k, name in enumerate(node.output):
                if not name:
                    continue
                if k < len(outputs):
                    values[name] = outputs[k]
                elif name in used:
                    raise ctx.error(f"output {k} ({name!r}) is used, but convgen computes "
                                    f"only the first {len(outputs)} output(s) of "
                                    f"{node.op_type} (inference)")
        return self._finish(builder, values)

    def _finish(self, builder: Builder, values: dict) -> tuple[Graph, list[str | None]]:
        outputs, dtypes = [], []
        for name in self.output_names:
            if name not in values:
                raise OnnxImportError(f"{self.label}: graph output {name!r} is computed "
                                      "by no node")
            value = values[name]
            dtype = None
            if is_const(value):
                if value.dtype.kind in "biu":
                    dtype = value.dtype.name
                    # the network carries it as a float; exact in float32 up to 2**24
                    if value.size and np.abs(value.astype(np.float64)).max() > 2**24:
                        raise OnnxImportError(
                            f"{self.label}: graph output {name!r} is an integer constant "
                            "with values beyond 2**24, which the network's float32 cannot "
                            "hold exactly")
                ctx = Context(builder, _FakeNode("Constant"), name, {}, self.opset)
                value = ctx.tensor(value, role="output")
            else:
                dtype = value.dtype
            outputs.append(value.name)
            dtypes.append(dtype)
        return builder.graph(outputs), dtypes


def _check_arity(ctx: Context, node, opset: int) -> None:
    """Input counts and required inputs as the operator's schema for ``opset`` says."""
    from onnx import defs

    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except Exception:  # no schema for this opset: the handler checks what it needs
        return
    given = list(node.input)
    if not schema.min_input <= len(given) <= schema.max_input:
        expected = (str(schema.min_input) if schema.min_input == schema.max_input
                    else f"{schema.min_input} to {schema.max_input}")
        raise ctx.error(f"takes {expected} input(s) at opset {opset}, got {len(given)}")
    single = defs.OpSchema.FormalParameterOption.Single
    for i, formal in enumerate(schema.inputs[:len(given)]):
        if formal.option == single and not given[i]:
            raise ctx.error(f"input {i} ({formal.name}) is required but empty")


class SpecializedModel:
    """A compiled ONNX model with specialized inputs: ``model(*inputs)`` takes every graph
    input in the model's order (``names``), specialized ones included, like ONNX Runtime.

    Each call guards the specialized inputs (dtype, shape and a BLAKE2 hash of their
    bytes) and runs the network compiled for those values: compiled on the first call
    that brings them, and kept for the ``weight_cache`` most recent sets of values.
    ``current`` is the CompiledModel the last call ran; ``compilations`` counts compiles.
    """

    weight_cache = 4

    def __init__(self, owner: OnnxModel, shapes: list[Shape], backend, dtype: str,
                 threads):
        self.owner = owner
        self.shapes = shapes
        self.backend = backend
        self.dtype = dtype
        self.threads = threads
        self.names = list(owner.call_names)
        specialized = set(owner._specialized_names())
        self._weight_at = [(i, n) for i, n in enumerate(self.names) if n in specialized]
        self._data_at = [i for i, n in enumerate(self.names) if n not in specialized]
        self.input_shapes = list(shapes)
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()  # the cache: each CompiledModel serializes its calls
        self.current = None
        self.compilations = 0

    def _split(self, inputs) -> tuple[list, dict[str, np.ndarray]]:
        if len(inputs) != len(self.names):
            raise TypeError(f"expected {len(self.names)} input array(s) {self.names} "
                            f"(specialized inputs included), got {len(inputs)}")
        weights = self.owner._specialized_values({n: inputs[i] for i, n in self._weight_at})
        return [inputs[i] for i in self._data_at], weights

    def compiled_for(self, weights: dict[str, np.ndarray]):
        """The CompiledModel for these specialized values (checked), compiled if not
        cached."""
        weights = self.owner._specialized_values(weights)
        key = tuple((name, a.dtype.str, a.shape,
                     hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest())
                    for name, a in sorted(weights.items()))
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                graph, dtypes = self.owner._build_typed(self.shapes, weights)
                compiled = compile_graph(graph, self.backend, self.dtype, self.threads,
                                         output_dtypes=dtypes,
                                         input_dtypes=self.owner._input_kinds())
                self.compilations += 1
                self._compiled[key] = compiled
                while len(self._compiled) > self.weight_cache:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(key)
            self.current = compiled
        return compiled

    def __call__(self, *inputs):
        data, weights = self._split(inputs)
        return self.compiled_for(weights)(*data)

    def reference(self, *inputs):
        """The NumPy oracle (float64) of the graph built for these specialized values."""
        data, weights = self._split(inputs)
        return self.compiled_for(weights).reference(*data)

    def __repr__(self) -> str:
        return (f"SpecializedModel({self.owner.label!r}, inputs {self.names}, "
                f"specialized {[n for _, n in self._weight_at]}, "
                f"{len(self._compiled)} compiled)")


def _checked_value(name: str, dims, dtype: str, value, what: str) -> np.ndarray:
    """``value`` for the graph input ``name`` (declared ``dims`` and ``dtype``): a copy
    of that dtype (the caller may change the array later); TypeError or ValueError."""
    array = np.asarray(value)
    # a float array for an integer input would be truncated: only its own kind, or
    # integers for a float input (as NumPy promotes)
    kinds = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}[np.dtype(dtype).kind]
    if array.dtype.kind not in kinds:
        raise TypeError(f"{what} {name!r}: expected a {dtype} array, got dtype {array.dtype}")
    if dims is not None and (len(dims) != array.ndim or any(
            d is not None and d != n for d, n in zip(dims, array.shape))):
        raise ValueError(f"{what} {name!r}: expected shape {_show(dims)}, got {array.shape}")
    if array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ValueError(f"{what} {name!r}: values beyond the range of {dtype}")
    return np.array(array, dtype=dtype)


def _brief(array: np.ndarray) -> str:
    """A value for an error message: the values of a small array, else its shape."""
    if array.size <= 16:
        return str(array.tolist())
    return f"an array of shape {array.shape}"


class _FakeNode:
    def __init__(self, op_type: str):
        self.op_type = op_type


def _show(dims) -> str:
    if dims is None:
        return "(unknown)"
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _split_shapes(input_shape, count: int, label: str) -> list[Shape | None] | None:
    """``input_shape`` as one shape per input: a shape, or a list of shapes (or None)."""
    if input_shape is None:
        return None
    if isinstance(input_shape, Sequence) and all(_is_dim(d) for d in input_shape):
        shapes = [input_shape]
    elif isinstance(input_shape, Sequence) and all(
            s is None or (isinstance(s, Sequence) and all(_is_dim(d) for d in s))
            for s in input_shape):
        shapes = list(input_shape)
    else:
        raise OnnxImportError(f"{label}: input_shape={input_shape!r} must be a shape (a tuple "
                              "of positive ints) or a list with one shape per graph input")
    if len(shapes) != count:
        raise OnnxImportError(f"{label}: input_shape gives {len(shapes)} shape(s) for "
                              f"{count} graph input(s)")
    return [None if s is None else tuple(int(d) for d in s) for s in shapes]


def _is_dim(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def from_onnx(model, input_shape=None) -> OnnxModel:
    """Import an ONNX model (a path, bytes or an onnx.ModelProto).

    ``input_shape`` fixes symbolic input dims: one shape, or a list with one per graph
    input. The result compiles like a convgen.nn network: ``.compile(backend=...)``.
    """
    proto, label = read_model(model)
    return OnnxModel(proto, label, input_shape)


__all__ = ["OnnxImportError", "OnnxModel", "SpecializedModel", "from_onnx", "read_model"]
