"""Compile a traced graph into one library with one entry point, and run it.

graph -> shape check -> passes (identities, BatchNorm folding, residual add and
activation fusion) -> buffer planning -> lowering -> one C source (gcc, one
shared library) or one LLVM module (JIT) -> :class:`CompiledModel`. One call
from Python per inference: the entry point runs every layer, reading the packed
parameters and writing intermediate values into a preallocated arena.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Sequence

import numpy as np

from convgen.backends import get_backend, resolve_backend
from convgen.compiler import choose_schedule, complete_schedule
from convgen.dtypes import element_type
from convgen.graph.ir import Graph, GraphError, check_element_type
from convgen.plan.depthwise import DepthwiseKind
from convgen.graph.lower import lower
from convgen.graph.memory import plan_memory
from convgen.graph.passes import optimize
from convgen.graph.resample import MODES
from convgen.graph.reference import evaluate
from convgen.graph.shapes import infer_graph
from convgen.kernel import check_input
from convgen.schedule import Schedule, check_threads
from convgen.spec import ConvSpec


def _graph_fingerprint(graph: Graph, dtype: str, schedules: dict, blocked) -> str:
    parts = [graph.inputs, graph.outputs, dtype, sorted((k, v.key()) for k, v in schedules.items()),
             sorted(blocked)]
    for node in graph.nodes:
        parts.append([node.name, node.op, node.inputs, node.shape,
                      json.dumps(node.attrs, sort_keys=True, default=str)])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def _conv_spec(node, dtype: str | None) -> ConvSpec:
    spec = ConvSpec.from_dict(node.attrs["spec"])
    return spec if dtype is None else spec.replace(dtype=dtype)


def _conv_schedules(graph: Graph, threads: int | None, backend: str,
                    dtype: str | None = None,
                    defaults: set[str] | None = None) -> dict[str, Schedule]:
    """Per conv: the best tuning record for its spec measured with bound weights, as a
    network's are, at ``threads`` (None: the thread count of the layer's default), else
    the default at ``threads`` with weights prepared at load (its name added to
    ``defaults``)."""
    out = {}
    for node in graph.nodes:
        if node.op == "conv":
            spec = _conv_spec(node, dtype)
            # networks transform Winograd weights once, at load (graph.lower)
            base, origin = choose_schedule(spec, backend, bound=True, threads=threads)
            if origin == "default" and defaults is not None:
                defaults.add(node.name)
            out[node.name] = base
    return out


def compile_graph(graph: Graph, backend: str | None = None, dtype: str = "float32",
                  threads: int | None = None, layout: str = "blocked",
                  schedules: dict[str, Schedule] | None = None,
                  output_dtypes: Sequence[str | None] | None = None,
                  input_dtypes: Sequence[str | None] | None = None) -> CompiledModel:
    """Compile ``graph`` (as traced: unfused) into a :class:`CompiledModel`.

    ``threads`` per convolution layer: each layer runs the best tuning record measured at
    that thread count, else its default at that thread count; None: the default thread
    count (convgen.get_num_threads) for layers large enough to profit, else one.
    ``layout`` "blocked" (the default, every backend): values between layers that read and
    write it stay in the blocked layout (N, C / VL, *spatial, VL) (convgen.graph.layout,
    docs/layout.md); "nchw": none do.
    Inputs and outputs are NCHW either way.
    ``dtype``: the element type of every value, inputs, outputs and parameters included:
    "float32", "float64", or an integer type ("int8" ... "uint64", convgen.dtypes
    ELEMENT_TYPES) for graphs of the ops that run on integers (convgen.graph.ir
    INTEGER_OPS; any other raises GraphError naming the layer, op and dtype).
    ``schedules``: a Schedule per convolution layer, by its name after fusion (the
    optimized graph's), in place of its tuning record or default; a partial one is
    completed from the layer's default at ``threads`` (see convgen.Schedule).
    ``output_dtypes``: per graph output, None (the network's ``dtype``) or the integer or
    bool dtype its values (exact integers, computed in ``dtype``) are cast to at the
    boundary, as an imported ONNX model declares them (MaxPool's int64 Indices).
    ``input_dtypes``: per graph input, None (arrays of ``dtype``) or "bool": the call takes
    a bool array there and converts it to 0/1 in ``dtype`` (an imported ONNX model's bool
    inputs, Where's condition).
    """
    info = element_type(dtype)  # ValueError naming the element types
    output_dtypes = _output_dtypes(output_dtypes, len(graph.outputs))
    input_dtypes = _input_dtypes(input_dtypes, len(graph.inputs))
    threads = check_threads(threads)
    backend = resolve_backend(backend)
    if dtype not in get_backend(backend).network_dtypes:
        raise GraphError(f"backend {backend!r} compiles networks of "
                         f"{', '.join(get_backend(backend).network_dtypes)} only, not {dtype}")
    original = graph.copy()
    infer_graph(original)
    check_element_type(original, dtype, info.is_integer)
    optimized = optimize(original)
    infer_graph(optimized)
    itemsize = info.itemsize
    memory = plan_memory(optimized, itemsize)
    defaults: set[str] = set()
    chosen = _conv_schedules(optimized, threads, backend, dtype, defaults)
    schedules_given = set(schedules or {})
    defaults -= schedules_given
    for name, schedule in (schedules or {}).items():
        if name not in chosen:
            raise ValueError(f"schedules: {name!r} is not a convolution layer of the network "
                             f"after fusion; those are {sorted(chosen)}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedules[{name!r}]: expected a convgen.Schedule, "
                            f"got {type(schedule).__name__}")
        chosen[name] = complete_schedule(_conv_spec(optimized.node(name), dtype), schedule,
                                         backend, threads, bound=True)
    schedules = chosen
    lowered = lower(optimized, memory, dtype, schedules, layout, threads,
                    frozenset(schedules_given), frozenset(defaults),
                    planner=get_backend(backend).network_planner())
    symbol = f"convgen_net_{_graph_fingerprint(optimized, dtype, schedules, lowered.blocked)}"
    title = f"{len(original.nodes)} layers, inputs {[s for _, s in original.inputs]}"
    network = get_backend(backend).compile_network(lowered, symbol, title)
    return CompiledModel(original, optimized, lowered, memory, backend, symbol, network.source,
                         network.ffi, network.function, network.keepalive, dtype, threads,
                         runner=network.runner, output_dtypes=output_dtypes,
                         input_dtypes=input_dtypes)


def _input_dtypes(dtypes, count: int) -> list[str | None]:
    if dtypes is None:
        return [None] * count
    dtypes = list(dtypes)
    if len(dtypes) != count or any(d not in (None, "bool") for d in dtypes):
        raise ValueError(f"input_dtypes: expected {count} entries (one per graph input), "
                         f"each None or 'bool', got {dtypes}")
    return dtypes


def _output_dtypes(dtypes, count: int) -> list[str | None]:
    if dtypes is None:
        return [None] * count
    dtypes = list(dtypes)
    if len(dtypes) != count:
        raise ValueError(f"output_dtypes: expected {count} entries (one per graph output), "
                         f"got {len(dtypes)}")
    for d in dtypes:
        if d is not None and np.dtype(d).kind not in "biu":
            raise ValueError(f"output_dtypes: {d!r} is not an integer or bool dtype (None "
                             "keeps the network's)")
    return [None if d is None else np.dtype(d).name for d in dtypes]


def aligned_array(array: np.ndarray, align: int = 64) -> np.ndarray:
    """A copy of the 1D ``array`` whose data starts at a multiple of ``align`` bytes."""
    raw = np.empty(array.nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + array.nbytes].view(array.dtype)
    out[:] = array
    return out


class CompiledModel:
    """A compiled network: ``model(x)`` (or ``model(x1, x2, ...)``) -> NumPy output(s).

    One model owns one arena for its intermediate values, so calls on the same
    model are serialized by a lock; compile the network twice to run two
    inferences at once.
    """

    def __init__(self, graph, optimized, lowered, memory, backend, symbol, source, ffi,
                 function, keepalive, dtype, threads, runner=None, output_dtypes=None,
                 input_dtypes=None):
        self.graph = graph
        self.optimized = optimized
        self.backend = backend
        self.symbol = symbol
        self.source = source
        self.dtype = dtype
        self.threads = threads
        self.memory = memory
        self.input_shapes = [tuple(shape) for _, shape in graph.inputs]
        self.output_shapes = [tuple(graph.shape_of(name)) for name in graph.outputs]
        # per output: None, or the integer/bool dtype its values are cast to (an ONNX model's)
        self.output_dtypes = list(output_dtypes or [None] * len(self.output_shapes))
        # per input: None (the network's dtype) or "bool", taken as 0/1 in the network's
        # dtype (exact in every element type): an imported ONNX model's bool inputs
        self.input_dtypes = list(input_dtypes or [None] * len(self.input_shapes))
        self._lowered = lowered
        self.blocked_values = lowered.blocked  # values kept in the blocked layout
        self._ffi = ffi
        self._function = function
        self._keepalive = keepalive
        self._lock = threading.Lock()
        # a backend that runs calls itself (CUDA: device memory, device arrays) owns its
        # parameters and arena
        self._runner = runner
        if runner is not None:
            return
        # both 64-byte aligned: the planner aligns every value's offset to 64 bytes, which
        # puts each pixel of a blocked value (64 bytes of fp32 or fp64) in one cache line
        # (numpy's own allocations are 16-byte aligned)
        self._params = aligned_array(lowered.params)
        self._arena = aligned_array(np.zeros(max(lowered.arena_elements, 1), dtype=dtype))
        ctype = element_type(dtype).c_type
        self._ctype = ctype + "[]"
        self._params_ptr = ffi.from_buffer(self._ctype, self._params)
        self._arena_ptr = ffi.from_buffer(self._ctype, self._arena, require_writable=True)
        self._input_array_type = f"const {ctype} *[]"
        self._output_array_type = f"{ctype} *[]"

    def layer_threads(self) -> dict[str, int]:
        """Threads each convolution layer runs on (from its schedule)."""
        return {step.name: step.plan.threads for step in self._lowered.steps
                if step.plan is not None}

    @property
    def peak_bytes(self) -> int:
        """Bytes of the arena that holds every intermediate value."""
        return self.memory.peak_bytes

    def _check_input(self, index: int, array) -> np.ndarray:
        label = f"input {index}" if len(self.input_shapes) > 1 else "input"
        return check_input(label, array, np.dtype(self.dtype), self.input_shapes[index])

    def __call__(self, *inputs: np.ndarray):
        if len(inputs) != len(self.input_shapes):
            raise TypeError(f"expected {len(self.input_shapes)} input array(s), "
                            f"got {len(inputs)}")
        inputs = self._converted(inputs)
        if self._runner is not None:
            with self._lock:
                outputs = self._runner(inputs)
            return self._typed(outputs)
        arrays = [self._check_input(i, x) for i, x in enumerate(inputs)]
        outputs = [np.empty(shape, dtype=self.dtype) for shape in self.output_shapes]
        ffi = self._ffi
        in_ptrs = ffi.new(self._input_array_type,
                          [ffi.from_buffer(self._ctype, a) for a in arrays])
        out_ptrs = ffi.new(self._output_array_type,
                           [ffi.from_buffer(self._ctype, o, require_writable=True)
                            for o in outputs])
        with self._lock:
            status = self._function(in_ptrs, out_ptrs, self._params_ptr, self._arena_ptr)
        if status != 0:
            raise RuntimeError(f"{self.symbol} returned status {status}")
        return self._typed(outputs)

    def _converted(self, inputs) -> list:
        """The bool inputs (``input_dtypes``) checked and converted to the network's dtype."""
        inputs = list(inputs)
        for i, want in enumerate(self.input_dtypes):
            if want == "bool":
                array = np.asarray(inputs[i])
                if array.dtype != np.bool_:
                    raise TypeError(f"input {i}: expected dtype bool, got {array.dtype}")
                inputs[i] = array.astype(self.dtype)
        return inputs

    def _typed(self, outputs: list):
        """The outputs, each cast to its ``output_dtypes`` entry (bool: nonzero), one array
        alone."""
        outputs = [o if d is None else (np.asarray(o) != 0 if d == "bool"
                                        else np.asarray(o).astype(d))
                   for o, d in zip(outputs, self.output_dtypes)]
        return outputs[0] if len(outputs) == 1 else outputs

    def reference(self, *inputs: np.ndarray):
        """The NumPy oracle of the original (unfused) graph, in float64 (an integer model's
        in its own dtype, exactly; integer and bool outputs cast as the model's)."""
        inputs = self._converted(inputs)
        if element_type(self.dtype).is_integer:
            outputs = evaluate(self.graph, inputs, self.dtype)
        else:
            outputs = evaluate(self.graph, [np.asarray(x, dtype=np.float64) for x in inputs])
        return self._typed(outputs)

    def summary(self, file=None) -> str:
        """Each layer with output shape, parameters, FLOPs and what it was fused into."""
        text = summarize(self.graph, self.optimized, self.memory, self.backend, self.dtype,
                         self.blocked_values, self._lowered.steps)
        print(text, file=file)
        return text


def layer_flops(node, graph: Graph) -> int:
    if node.op == "conv":
        return ConvSpec.from_dict(node.attrs["spec"]).flops
    if node.op == "linear":
        out_features, in_features = node.params["weight"].shape
        return 2 * math.prod(node.shape[:-1]) * in_features * out_features
    if node.op in ("max_pool", "max_pool_indices", "avg_pool"):
        return math.prod(node.shape) * math.prod(node.attrs["kernel_size"])
    if node.op in ("adaptive_avg_pool",):
        return math.prod(graph.shape_of(node.inputs[0]))
    if node.op == "matmul":
        return 2 * math.prod(node.shape) * graph.shape_of(node.inputs[0])[-1]
    if node.op == "lrn":
        return math.prod(node.shape) * (3 + 2 * int(node.attrs["size"]))
    if node.op == "resample":  # a multiply-add per tap; nearest only copies
        mode = node.attrs.get("mode", "nearest")
        return 0 if mode == "nearest" else 2 * MODES[mode] * math.prod(node.shape)
    if node.op in ("flatten", "identity", "reshape", "constant", "transpose", "pad",
                   "slice", "expand"):
        return 0
    return math.prod(node.shape) * (5 if node.op in ("softmax", "log_softmax") else 1)


def layer_parameters(node) -> int:
    """Trainable parameters, as torch counts them (BatchNorm's running stats excluded)."""
    names = ("weight", "bias")
    return sum(int(np.asarray(v).size) for k, v in node.params.items() if k in names)


def summarize(graph: Graph, optimized: Graph, memory, backend: str, dtype: str,
              blocked: frozenset[str] = frozenset(), steps=()) -> str:
    """The summary table; ``blocked`` values are noted (their layout, convgen.plan.layout), and
    a conv ``steps`` ran on the blocked depthwise plan is named."""
    depthwise = {step.name for step in steps
                 if step.plan is not None and isinstance(step.plan.kind, DepthwiseKind)}
    where = {}
    for node in optimized.nodes:
        for name in node.fused:
            where[name] = node.name
    rows = [("layer", "type", "output shape", "params", "FLOPs", "notes")]
    total_params = total_flops = 0
    for node in graph.nodes:
        params, flops = layer_parameters(node), layer_flops(node, graph)
        total_params += params
        total_flops += flops
        if node.name in where:
            verb = "folded into" if node.op == "batch_norm" else "fused into"
            note = f"{verb} {where[node.name]}"
        elif node.op == "identity":
            note = "removed (identity at inference)"
        elif node.op in ("flatten", "reshape"):
            note = "view (no copy)"
        elif node.op == "constant":
            note = "constant (stored with the parameters)"
        else:
            fused = [n for n in optimized.node(node.name).fused] if _has(optimized, node.name) \
                else []
            note = ("absorbs " + ", ".join(fused)) if fused else ""
        if node.name in blocked or where.get(node.name) in blocked:
            note = "; ".join(filter(None, [note, "blocked"]))
        if node.name in depthwise:
            note = "; ".join(filter(None, [note, "depthwise plan"]))
        rows.append((node.name, node.module or node.op, "x".join(map(str, node.shape)),
                     f"{params:,}", f"{flops:,}", note))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if j in (0, 1, 2, 5) else cell.rjust(w)
                               for j, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"{len(graph.nodes)} layers -> {len(optimized.nodes)} steps after fusion; "
                 f"{total_params:,} parameters; {total_flops / 1e9:.3f} GFLOP; backend {backend}, "
                 f"{dtype}")
    if blocked:
        lines.append(f"blocked layout (N, C/VL, ..., VL) kept between layers for "
                     f"{len(blocked)} values; inputs and outputs NCHW")
    lines.append(f"activation memory: {memory.peak_bytes:,} bytes peak (one arena), "
                 f"{memory.unplanned_bytes:,} bytes with one buffer per value")
    return "\n".join(lines)


def _has(graph: Graph, name: str) -> bool:
    return any(n.name == name for n in graph.nodes)


__all__ = ["CompiledModel", "GraphError", "compile_graph"]
