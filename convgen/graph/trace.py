"""Tracing: run a module's Python ``forward`` once on symbolic values and record a Graph.

:func:`trace` calls ``module(*values)`` with one :class:`Value` per graph input. A Value
carries only a name and a shape; every convgen.nn layer and convgen.nn.functional op it
reaches appends a :class:`~convgen.graph.ir.Node` (shape from
:func:`convgen.graph.shapes.infer_shape`, so shape errors surface here, naming the layer)
and returns a new Value. ``a + b`` between Values records an ``add``. Anything else done
to a Value (arithmetic, indexing, comparisons, ``bool``, NumPy or math functions, unknown
methods) raises :class:`GraphError` naming the operation and the module whose forward was
running: the graph could not express it, so it must not be silently evaluated.

Node names are the layer's dotted path in the root module ("layer1.0.conv1"); a layer
called twice gets "relu", "relu_1", ...; functional ops and ``+`` are named after the
op ("add", "add_1", "cat", ...).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence

from convgen.dtypes import is_int
from convgen.graph.ir import Graph, GraphError, Node, describe
from convgen.graph.shapes import infer_shape

Shape = tuple[int, ...]
# A node builder: input shapes -> (op, attrs, params). It may raise ValueError/TypeError
# describing the problem; the tracer prefixes the layer's name.
Builder = Callable[[list[Shape]], tuple[str, dict, dict]]

_SUPPORTED = ("convgen.nn supports its layers (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Linear, "
              "...), '+' between traced values, convgen.nn.functional (cat, relu, softmax, "
              "flatten, max_pool2d, ...), x.flatten(1) and x.view(x.size(0), -1)")

_STATE = threading.local()


def active_tracer() -> Tracer | None:
    """The tracer whose ``forward`` call is running in this thread, if any."""
    return getattr(_STATE, "tracer", None)


def default_name(module: object) -> str:
    """The base name of a node recorded by a module that is not part of the root."""
    return type(module).__name__.lower()


class Tracer:
    """Records the nodes of one trace; knows each module's path and which forward runs."""

    def __init__(self, root: object):
        self.root = root
        self.nodes: list[Node] = []
        self.finished = False
        self._used: set[str] = set()
        self._stack: list[object] = []
        named = getattr(root, "named_modules", None)
        self._paths = {id(m): path for path, m in named()} if named is not None else {}

    # -- names and context -------------------------------------------------------------
    def unique(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``, ... : the first name not yet used."""
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def path_of(self, module: object) -> str:
        return self._paths.get(id(module), "")

    @contextlib.contextmanager
    def calling(self, module: object) -> Iterator[None]:
        """Marks ``module.forward`` as running (for error messages)."""
        self._stack.append(module)
        try:
            yield
        finally:
            self._stack.pop()

    def where(self) -> str:
        """' in Block.forward (layer1.0)': the innermost forward running, or ''."""
        if not self._stack:
            return ""
        module = self._stack[-1]
        path = self.path_of(module)
        suffix = f" ({path})" if path else ""
        return f" in {type(module).__name__}.forward{suffix}"

    def unsupported(self, operation: str, detail: str = "") -> GraphError:
        detail = f" ({detail})" if detail else ""
        return GraphError(f"unsupported operation {operation!r} on a traced value{detail}"
                          f"{self.where()}; {_SUPPORTED}")

    # -- recording ---------------------------------------------------------------------
    def record(self, build: Builder, inputs: Sequence[Value], *, module: object = None,
               name: str | None = None) -> Value:
        """Append the node ``build`` describes, with its inferred shape; its output Value."""
        if self.finished:
            raise GraphError("a traced value was used after tracing finished")
        for value in inputs:
            if value._tracer is not self:
                raise GraphError(f"value {value.name!r} belongs to another trace")
        if module is not None:
            base = self.path_of(module) or default_name(module)
            label = type(module).__name__
        else:
            base = name or "op"
            label = ""
        node_name = self.unique(base)
        shapes = [value.shape for value in inputs]
        op, attrs, params = build_node(build, shapes, node_name, label)
        node = Node(name=node_name, op=op, inputs=[value.name for value in inputs],
                    attrs=attrs, params=params, module=label)
        node.shape = shape_of(node, shapes)
        self.nodes.append(node)
        return Value(node_name, node.shape, self)


def build_node(build: Builder, shapes: list[Shape], name: str, label: str):
    """Run a node builder; its ValueError/TypeError becomes a GraphError naming the layer."""
    try:
        return build(shapes)
    except GraphError:
        raise
    except (ValueError, TypeError) as error:
        who = f"{name} ({label})" if label else name
        raise GraphError(f"{who}: {error}") from error


def shape_of(node: Node, shapes: list[Shape]) -> Shape:
    """infer_shape, with any unexpected error turned into a GraphError naming the node."""
    try:
        return infer_shape(node, shapes)
    except GraphError:
        raise
    except (ValueError, TypeError) as error:
        raise GraphError(f"{describe(node)}: {error}") from error


# -- the node builders a traced value's own methods use (nn.functional uses them too) -------

def normalize_dim(dim: object, rank: int, name: str = "dim") -> int:
    """A dim in [-rank, rank) as a non-negative index."""
    if not is_int(dim) or not -rank <= dim < rank:
        raise ValueError(f"{name}={dim!r} is out of range for a {rank}-d input "
                         f"(expected an int in [{-rank}, {rank - 1}])")
    return int(dim) % rank


def activation_builder(act: str, args: tuple = ()) -> Builder:
    """The builder of an ``activation`` node: ``act`` with its float arguments."""
    attrs = {"name": act, "args": tuple(float(a) for a in args)}
    return lambda shapes: ("activation", dict(attrs), {})


def softmax_builder(op: str, dim: object, dtype: object = None) -> Builder:
    """The builder of a ``softmax`` or ``log_softmax`` node along ``dim`` (required)."""
    if dim is None:
        raise ValueError(f"{op} needs dim (e.g. {op}(x, dim=1)); convgen does not guess it, "
                         "as PyTorch's deprecated implicit choice would")
    if dtype is not None:
        raise ValueError(f"{op}: dtype={dtype!r} is not supported (the graph's dtype applies)")

    def build(shapes):
        return op, {"dim": normalize_dim(dim, len(shapes[0]))}, {}

    return build


def flatten_builder(start_dim: object, end_dim: object) -> Builder:
    """The builder of a ``flatten`` node merging dims start_dim..end_dim."""
    def build(shapes):
        rank = len(shapes[0])
        start = normalize_dim(start_dim, rank, "start_dim")
        end = normalize_dim(end_dim, rank, "end_dim")
        if start > end:
            raise ValueError(f"start_dim={start_dim} comes after end_dim={end_dim} "
                             f"for input shape {tuple(shapes[0])}")
        return "flatten", {"start_dim": start, "end_dim": end}, {}

    return build


# torch functions (by __name__) that Value.__torch_function__ maps to convgen's own, so that
# torch.flatten(x, 1), torch.cat([a, b], 1) or torch.nn.functional.relu(x) trace as well.
# convgen.nn.functional, the layer that implements them, registers its functions here.
TORCH_FUNCTIONS: dict[str, Callable] = {}


# -- values ----------------------------------------------------------------------------------

class Value:
    """A symbolic tensor during tracing: a name (graph input or node) and a static shape."""

    __slots__ = ("name", "shape", "_tracer")

    def __init__(self, name: str, shape: Shape, tracer: Tracer):
        self.name = name
        self.shape = tuple(shape)
        self._tracer = tracer

    def __repr__(self) -> str:
        return f"Value({self.name!r}, shape={self.shape})"

    # -- static shape queries, as torch.Tensor ---------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None):
        if dim is None:
            return self.shape
        if not is_int(dim) or not -self.ndim <= dim < self.ndim:
            raise IndexError(f"dim {dim!r} is out of range for shape {self.shape}")
        return self.shape[dim]

    def numel(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d traced value")
        return self.shape[0]

    def contiguous(self, *args, **kwargs) -> Value:
        return self

    # -- the operations a graph can express ------------------------------------------------
    def __add__(self, other: object) -> Value:
        if isinstance(other, Value):
            return _add(self, other)
        if is_int(other) and other == 0:  # sum([a, b, ...]) starts from 0
            return self
        raise self._tracer.unsupported("__add__", f"with a {type(other).__name__} operand; "
                                       "only two traced values can be added")

    def __radd__(self, other: object) -> Value:
        if is_int(other) and other == 0:
            return self
        if isinstance(other, Value):
            return _add(other, self)
        raise self._tracer.unsupported("__radd__", f"with a {type(other).__name__} operand; "
                                       "only two traced values can be added")

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Value:
        return self._tracer.record(flatten_builder(start_dim, end_dim), [self], name="flatten")

    def view(self, *shape) -> Value:
        return self._reshape("view", shape)

    def reshape(self, *shape) -> Value:
        return self._reshape("reshape", shape)

    def _reshape(self, method: str, shape: tuple) -> Value:
        """Only flattening: x.view(x.size(0), -1) (or (n, rest)), or x.view(-1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        target = _resolve_shape(shape, self.numel()) if all(map(is_int, shape)) else None
        if target is not None and self.ndim >= 1:
            if len(self.shape) >= 2 and target == (self.shape[0], math.prod(self.shape[1:])):
                return self._tracer.record(flatten_builder(1, -1), [self], name=method)
            if target == (self.numel(),):
                return self._tracer.record(flatten_builder(0, -1), [self], name=method)
        raise self._tracer.unsupported(
            method, f"to shape {shape} from {self.shape}; only the flatten pattern "
                    "x.view(x.size(0), -1) is supported")

    def relu(self) -> Value:
        return self._tracer.record(activation_builder("relu"), [self], name="relu")

    def sigmoid(self) -> Value:
        return self._tracer.record(activation_builder("sigmoid"), [self], name="sigmoid")

    def tanh(self) -> Value:
        return self._tracer.record(activation_builder("tanh"), [self], name="tanh")

    def softmax(self, dim: int) -> Value:
        return self._tracer.record(softmax_builder("softmax", dim), [self], name="softmax")

    def log_softmax(self, dim: int) -> Value:
        return self._tracer.record(softmax_builder("log_softmax", dim), [self], name="log_softmax")

    # -- everything else is an error -------------------------------------------------------
    def __getattr__(self, name: str):
        if name.startswith("_"):  # Python protocols (copy, pickle, NumPy) probe these
            raise AttributeError(name)
        raise self._tracer.unsupported(name, "unknown attribute or method")

    def __array__(self, *args, **kwargs):
        raise self._tracer.unsupported("__array__", "a traced value has no data")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise self._tracer.unsupported(f"numpy.{ufunc.__name__}")

    def __array_function__(self, func, types, args, kwargs):
        raise self._tracer.unsupported(f"numpy.{func.__name__}")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """torch.flatten(x, 1), torch.cat(...), F.relu(x), ... map to convgen.nn.functional."""
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", str(func))
        target = TORCH_FUNCTIONS.get(name)
        if target is None:
            tracer = next((a._tracer for a in _values_in(args, kwargs)), None)
            if tracer is None:
                raise GraphError(f"unsupported operation 'torch.{name}' on a traced value")
            raise tracer.unsupported(f"torch.{name}")
        if name in ("cat", "concat", "concatenate") and len(args) < 2 and "dim" not in kwargs \
                and "axis" not in kwargs:
            kwargs["dim"] = 0  # torch.cat's default
        return target(*args, **kwargs)


def _values_in(args: tuple, kwargs: dict) -> Iterator[Value]:
    for item in list(args) + list(kwargs.values()):
        if isinstance(item, Value):
            yield item
        elif isinstance(item, (tuple, list)):
            yield from (v for v in item if isinstance(v, Value))


def _resolve_shape(shape: tuple, total: int) -> tuple[int, ...] | None:
    """A view/reshape target with at most one -1 resolved; None when it is not valid."""
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        return None
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if known == 0 or total % known:
            return None
        shape = tuple(total // known if s == -1 else s for s in shape)
    return tuple(shape) if math.prod(shape) == total else None


def _add(a: Value, b: Value) -> Value:
    return a._tracer.record(lambda shapes: ("add", {}, {}), [a, b], name="add")


_UNSUPPORTED = (
    "__sub__", "__rsub__", "__mul__", "__rmul__", "__matmul__", "__rmatmul__",
    "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__",
    "__divmod__", "__rdivmod__", "__pow__", "__rpow__", "__neg__", "__pos__", "__abs__",
    "__invert__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
    "__lshift__", "__rlshift__", "__rshift__", "__rrshift__",
    "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__",
    "__getitem__", "__setitem__", "__delitem__", "__iter__", "__contains__",
    "__bool__", "__float__", "__int__", "__index__", "__complex__",
    "__round__", "__trunc__", "__floor__", "__ceil__",
)


def _unsupported_method(operation: str):
    def method(self, *args, **kwargs):
        raise self._tracer.unsupported(operation)

    method.__name__ = operation
    method.__doc__ = f"Not expressible in a graph: raises GraphError naming {operation!r}."
    return method


for _operation in _UNSUPPORTED:  # set after class creation, so __hash__ stays identity
    setattr(Value, _operation, _unsupported_method(_operation))


# -- the entry point ---------------------------------------------------------------------------

def _input_shapes(input_shapes) -> list[Shape]:
    """One shape or a list of shapes -> a list of tuples of positive ints."""
    if isinstance(input_shapes, tuple) and all(map(is_int, input_shapes)):
        input_shapes = [input_shapes]
    if not isinstance(input_shapes, (list, tuple)) or not input_shapes:
        raise GraphError(f"input shapes: expected a shape tuple or a list of them, "
                         f"got {input_shapes!r}")
    shapes = []
    for shape in input_shapes:
        if not isinstance(shape, (tuple, list)) or not shape \
                or not all(is_int(s) and s >= 1 for s in shape):
            raise GraphError(f"input shape {shape!r}: expected a tuple of positive ints, "
                             "e.g. (1, 3, 224, 224)")
        shapes.append(tuple(int(s) for s in shape))
    return shapes


def trace(module, input_shapes) -> Graph:
    """Run ``module(*inputs)`` once on symbolic inputs of ``input_shapes``; the Graph.

    ``input_shapes`` is a list of shape tuples (one tuple is accepted too). Inputs are
    named "input", or "input0", "input1", ... for several; outputs are the Value(s)
    ``forward`` returns (a tuple or list of Values gives several outputs).
    """
    shapes = _input_shapes(input_shapes)
    names = ["input"] if len(shapes) == 1 else [f"input{i}" for i in range(len(shapes))]
    tracer = Tracer(module)
    for name in names:
        tracer.unique(name)
    values = [Value(name, shape, tracer) for name, shape in zip(names, shapes)]
    previous = active_tracer()
    _STATE.tracer = tracer
    try:
        result = module(*values)
    finally:
        _STATE.tracer = previous
        tracer.finished = True
    outputs = result if isinstance(result, (tuple, list)) else [result]
    if not outputs:
        raise GraphError(f"{type(module).__name__}.forward returned no values")
    output_names = []
    for out in outputs:
        if not isinstance(out, Value) or out._tracer is not tracer:
            raise GraphError(f"{type(module).__name__}.forward must return traced values "
                             f"(the results of layers applied to its inputs), "
                             f"got {type(out).__name__}")
        if out.name in names:  # an input returned as is: give the output its own node
            tracer.finished = False
            out = tracer.record(lambda s: ("identity", {}, {}), [out], name="output")
            tracer.finished = True
        output_names.append(out.name)
    return Graph(inputs=list(zip(names, shapes)), nodes=tracer.nodes, outputs=output_names)
