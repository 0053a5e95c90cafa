"""ONNX import: ``cg.from_onnx(path or ModelProto)`` -> a model that compiles like a
``convgen.nn`` network.

The ONNX graph is walked once per set of input shapes: initializers and Constant nodes
are NumPy arrays, anything computed from constants only is folded with NumPy (so
exporters' shape subgraphs disappear), and every operator on a run-time tensor becomes
nodes of a convgen :class:`~convgen.graph.ir.Graph` (see :mod:`convgen.onnx.layers` and
:mod:`convgen.onnx.tensors`). Choices where ONNX leaves room:

- initializers are constants, also those listed as graph inputs (IR < 4 models, or
  "overridable" initializers): they are not inputs of the compiled model;
- a graph input that is not an initializer but feeds a parameter slot (Conv's W/B,
  BatchNormalization's scale/B/mean/var, Clip's min/max: ``PARAMETER_SLOTS``) is a
  *weight input*: it is specialized, not computed at run time. The compiled model
  (:class:`SpecializedModel`) takes every graph input in the model's order, reads the
  weight inputs' values at each call, guards them (dtype, shape and a hash of the bytes)
  and compiles the network for those values on the first call that brings them, kept in
  a small cache (``weight_cache`` values), as torch.compile does with its guards: the
  network compiler folds and lays out the weights at compile time (BatchNormalization
  into the convolution, blocked weight layouts), so run-time weights would lose those;
- Dropout and BatchNormalization run in inference mode whatever ``is_test`` says; a used
  mask, Indices or training-statistics output is an error;
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
from convgen.onnx.tensors import HANDLERS as TENSOR_HANDLERS
from convgen.schedule import check_threads

MIN_OPSET = 6
FLOAT_INPUTS = {1: "float32", 11: "float64"}  # TensorProto.FLOAT, DOUBLE
# the element types a graph input may have (TensorProto's numbers): convgen.dtypes
# ELEMENT_TYPES; bool, float16, bfloat16, strings and the 8-bit floats are not among them
ELEMENT_INPUTS = {**FLOAT_INPUTS, 2: "uint8", 3: "int8", 4: "uint16", 5: "int16",
                  6: "int32", 7: "int64", 12: "uint32", 13: "uint64"}
# the inputs of an operator that convgen needs as constants and that a model may give
# as graph inputs (weight inputs, specialized at call time)
PARAMETER_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2),
                   "BatchNormalization": (1, 2, 3, 4), "Clip": (1, 2)}
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


def _declared_inputs(model, constants, label: str) -> list[tuple[str, tuple, str]]:
    """(name, dims, dtype) per graph input that is not an initializer; a dim is an int or
    None."""
    from onnx import TensorProto

    inputs = []
    for value in model.graph.input:
        if value.name in constants:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise OnnxImportError(f"{label}: graph input {value.name!r} is a {kind}, "
                                  "not a tensor")
        elem = value.type.tensor_type.elem_type
        if elem not in ELEMENT_INPUTS:
            raise OnnxImportError(
                f"{label}: graph input {value.name!r} has element type "
                f"{TensorProto.DataType.Name(elem) if elem else 'undefined'}; convgen "
                f"takes inputs of {', '.join(ELEMENT_INPUTS.values())}")
        dims = None
        if value.type.tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in value.type.tensor_type.shape.dim)
        inputs.append((value.name, dims, ELEMENT_INPUTS[elem]))
    return inputs


def _weight_input_names(model, declared) -> set[str]:
    """The declared inputs that feed a parameter slot of some node (PARAMETER_SLOTS)."""
    names = {name for name, *_ in declared}
    found = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        for slot in PARAMETER_SLOTS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot] in names:
                found.add(node.input[slot])
    return found


# -- the model -------------------------------------------------------------------------

class OnnxModel:
    """An imported ONNX model: ``.compile()`` like a convgen.nn network, ``.summary()``.

    ``graph`` is the convgen graph for the current input shapes (``input_shapes``);
    ``compile(input_shape=...)`` rebuilds it for other values of the symbolic dims.
    """

    def __init__(self, model, label: str, input_shape=None):
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
        weights = _weight_input_names(model, declared)
        # every graph input in the model's order: what a SpecializedModel's call takes
        self.call_names = [name for name, *_ in declared]
        self._declared = [(name, dims) for name, dims, _ in declared if name not in weights]
        # the data inputs' element types, by name: what the model's dtype comes from
        self.input_dtypes = {name: dtype for name, _, dtype in declared if name not in weights}
        # weight inputs: (name, declared dims or None, NumPy dtype name)
        self.weight_inputs = [(name, dims, dtype) for name, dims, dtype in declared
                              if name in weights]
        self.input_names = [name for name, _ in self._declared]
        self.output_names = [value.name for value in graph.output]
        self._graph: Graph | None = None
        self.input_shapes: list[tuple] = [dims for _, dims in self._declared]
        shapes = self._resolve(input_shape, required=False)
        if shapes is not None:
            if not self.weight_inputs:  # else the graph needs the weights' values
                self._graph = self._build(shapes)
            self.input_shapes = shapes

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
        if self.weight_inputs:
            raise OnnxImportError(self._needs_weights())
        if self._graph is None:
            self._resolve(None, required=True)  # raises, naming the symbolic input
        return self._graph

    def _needs_weights(self) -> str:
        return (f"{self.label}: the graph inputs {[n for n, *_ in self.weight_inputs]} are "
                "weights (parameters of Conv, BatchNormalization or Clip): the network is "
                "built for their values; call compile() and pass them with the inputs, or "
                "give weights={name: array} to graph_for() or summary()")

    def graph_for(self, input_shape=None, weights: dict | None = None) -> Graph:
        """The convgen graph for ``input_shape`` (None: the current shapes) and the values
        of the weight inputs (``weights``: name -> array; needed when the model has any)."""
        if not self.weight_inputs:
            if weights:
                raise OnnxImportError(f"{self.label}: weights={sorted(weights)}: the model "
                                      "has no weight inputs")
            if input_shape is None:
                return self.graph
            return self._build(self._resolve(input_shape, required=True))
        if weights is None:
            raise OnnxImportError(self._needs_weights())
        return self._build(self._shapes(input_shape), self._weight_values(weights))

    def _shapes(self, input_shape) -> list[Shape]:
        """Static input shapes: ``input_shape``'s, else the current ones (from_onnx's)."""
        if input_shape is None and all(s is not None and None not in s
                                       for s in self.input_shapes):
            return list(self.input_shapes)
        return self._resolve(input_shape, required=True)

    def _weight_values(self, weights: dict) -> dict[str, np.ndarray]:
        """``weights`` checked against the weight inputs: name -> array of its dtype."""
        names = [name for name, *_ in self.weight_inputs]
        unknown = sorted(set(weights) - set(names))
        missing = [name for name in names if name not in weights]
        if unknown or missing:
            raise OnnxImportError(f"{self.label}: weights: expected the weight inputs "
                                  f"{names}; missing {missing}, unknown {unknown}")
        values = {}
        for name, dims, dtype in self.weight_inputs:
            array = np.asarray(weights[name])
            if array.dtype.kind not in "fiu":
                raise TypeError(f"weight input {name!r}: expected a {dtype} array, "
                                f"got dtype {array.dtype}")
            if dims is not None and (len(dims) != array.ndim or any(
                    d is not None and d != n for d, n in zip(dims, array.shape))):
                raise ValueError(f"weight input {name!r}: expected shape {_show(dims)}, "
                                 f"got {array.shape}")
            values[name] = np.array(array, dtype=dtype)  # a copy: the caller may change it
        return values

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
                threads: int | None = None):
        """Compile for ``input_shape`` (None: the model's, or from_onnx's): a CompiledModel.
        ``dtype``: None, the model's own element type (its inputs'), or a float type that
        converts a float model to that precision (module docstring). ``threads`` per
        convolution layer (None: the default thread count's rule), as
        :func:`convgen.graph.compile.compile_graph`."""
        threads = check_threads(threads)
        dtype = self._dtype_for(dtype)
        if self.weight_inputs:
            return SpecializedModel(self, self._shapes(input_shape), backend, dtype, threads)
        return compile_graph(self.graph_for(input_shape), backend, dtype, threads)

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
                + (f"weight inputs {[n for n, *_ in self.weight_inputs]}, "
                   if self.weight_inputs else "")
                + f"outputs {self.output_names})")

    # -- building ----------------------------------------------------------------------
    def _build(self, shapes: list[Shape], weights: dict | None = None) -> Graph:
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
            try:
                results = handlers[node.op_type](ctx, args)
            except OnnxImportError:
                raise
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

    def _finish(self, builder: Builder, values: dict) -> Graph:
        outputs = []
        for name in self.output_names:
            if name not in values:
                raise OnnxImportError(f"{self.label}: graph output {name!r} is computed "
                                      "by no node")
            value = values[name]
            if is_const(value):
                ctx = Context(builder, _FakeNode("Constant"), name, {}, self.opset)
                value = ctx.tensor(value, role="output")
            outputs.append(value.name)
        return builder.graph(outputs)


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
    """A compiled ONNX model with weight inputs: ``model(*inputs)`` takes every graph
    input in the model's order (``names``), weights included, like ONNX Runtime.

    Each call guards the weight inputs (dtype, shape and a BLAKE2 hash of their bytes)
    and runs the network compiled for those values: compiled on the first call that
    brings them, and kept for the ``weight_cache`` most recent sets of values. ``current``
    is the CompiledModel the last call ran.
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
        weights = {name for name, *_ in owner.weight_inputs}
        self._weight_at = [(i, n) for i, n in enumerate(self.names) if n in weights]
        self._data_at = [i for i, n in enumerate(self.names) if n not in weights]
        self.input_shapes = list(shapes)
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()  # the cache: each CompiledModel serializes its calls
        self.current = None
        self.compilations = 0

    def _split(self, inputs) -> tuple[list, dict[str, np.ndarray]]:
        if len(inputs) != len(self.names):
            raise TypeError(f"expected {len(self.names)} input array(s) {self.names} "
                            f"(weight inputs included), got {len(inputs)}")
        weights = self.owner._weight_values({n: inputs[i] for i, n in self._weight_at})
        return [inputs[i] for i in self._data_at], weights

    def compiled_for(self, weights: dict[str, np.ndarray]):
        """The CompiledModel for these weight values (checked), compiled if not cached."""
        weights = self.owner._weight_values(weights)
        key = tuple((name, a.dtype.str, a.shape,
                     hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest())
                    for name, a in sorted(weights.items()))
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                graph = self.owner._build(self.shapes, weights)
                compiled = compile_graph(graph, self.backend, self.dtype, self.threads)
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
        """The NumPy oracle (float64) of the graph built for these weight values."""
        data, weights = self._split(inputs)
        return self.compiled_for(weights).reference(*data)

    def __repr__(self) -> str:
        return (f"SpecializedModel({self.owner.label!r}, inputs {self.names}, "
                f"weights {[n for _, n in self._weight_at]}, "
                f"{len(self._compiled)} compiled)")


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
