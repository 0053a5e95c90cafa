"""Lowering: an optimized graph becomes a list of steps with every constant resolved.

Each :class:`Step` is one function call in the generated entry point: its kind
(the template/IR builder to use), the values it reads and writes (as buffer
references), the parameter offsets, and a flat dict of constants. Spatial ops
are lowered to 3 spatial dims like convolutions. Parameters are packed into one
flat array in the model's dtype: folded conv weights and biases, linear weights,
and BatchNorm as per-channel scale and shift, and resample's index and weight tables. In an
integer network (its element type an integer type, convgen.graph.ir INTEGER_OPS only)
constants are packed as integers (exactly), an activation's bounds are integers of the
type (``bounds``) and a pad's fill value is one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from convgen.dtypes import element_type, integer_bounds
from convgen.plan.weights import prepare_weight
from convgen.plan.co import CoTiles
from convgen.plan.depthwise import DepthwiseKind, depthwise_blocked
from convgen.plan.layout import block_lanes
from convgen.plan.core import Plan, make_plan
from convgen.plan.winograd import WinogradPlan
from convgen.plan.defaults import default_co_schedule
from convgen.schedule import Schedule
from convgen.spec import ConvSpec, activation_arguments
from convgen.graph.ir import Graph, GraphError, Node
from convgen.graph.layout import plan_layouts
from convgen.graph.memory import VIEW_OPS, MemoryPlan, alias_source
from convgen.graph.resample import resample_consts, resample_tables
from convgen.graph.tensor_ops import lrn_consts, matmul_consts, remap_consts


@dataclass(frozen=True)
class Buffer:
    """Where a value lives: graph input k, the arena or the parameters at an element offset."""

    kind: str  # "input" | "arena" | "param" (a constant)
    index: int  # input number, arena offset or parameter offset


@dataclass
class Step:
    kind: str  # conv | max_pool | avg_pool | adaptive_avg_pool | linear | activation |
    # softmax | batch_norm | add | cat | remap (transpose, pad, slice, expand) | lrn |
    # binary | where | matmul | resample
    name: str  # the node's name
    function: str  # C/IR function name
    inputs: list[Buffer]
    output: Buffer
    params: dict[str, int] = field(default_factory=dict)  # param name -> element offset
    consts: dict = field(default_factory=dict)
    plan: Plan | None = None  # conv steps
    # elements of each input and of the output (bounds of the arrays a kernel reads/writes)
    in_elements: list[int] = field(default_factory=list)
    out_elements: int = 0


@dataclass
class Lowered:
    steps: list[Step]
    params: np.ndarray  # packed, in the model dtype
    outputs: list[tuple[Buffer, int]]  # (where, elements) per graph output
    arena_elements: int
    dtype: str
    blocked: frozenset[str] = frozenset()  # values kept in the blocked layout
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)


LAYOUTS = ("blocked", "nchw")
# a linear layer splits its outputs over the network's threads from this many
# multiply-adds (below it, waking the second thread costs more than it saves)
PARALLEL_LINEAR_MACS = 1 << 18
# pooling keeps a padded input row of at most this many elements on the stack (two
# passes: rows, then columns); wider rows take the one-pass loop
MAX_POOL_ROW_ELEMENTS = 8192


def _pad3(values, fill: int) -> tuple[int, int, int]:
    values = tuple(values)
    return (fill,) * (3 - len(values)) + values  # type: ignore[return-value]


class _Packer:
    def __init__(self, dtype: str):
        self.dtype = dtype
        info = element_type(dtype)
        # integers are cast directly (int64/uint64 beyond 2**53 stay exact); floats are
        # computed in float64 (folded weights) and rounded once, at the end
        self.stored = np.dtype(dtype) if info.is_integer else np.dtype(np.float64)
        self.align = 64 // info.itemsize  # keep every parameter 64-byte aligned
        self.chunks: list[np.ndarray] = []
        self.size = 0

    def add(self, array: np.ndarray) -> int:
        offset = self.size
        flat = np.ascontiguousarray(np.asarray(array).astype(self.stored)).ravel()
        self.chunks.append(flat)
        pad = (-flat.size) % self.align
        if pad:
            self.chunks.append(np.zeros(pad, dtype=self.stored))
        self.size += flat.size + pad
        return offset

    def array(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(1, dtype=self.dtype)
        return np.concatenate(self.chunks).astype(self.dtype)


def _spatial_consts(in_shape, out_shape) -> dict:
    return {"nc": in_shape[0] * in_shape[1], "channels": in_shape[1],
            "in_size": _pad3(in_shape[2:], 1), "out_size": _pad3(out_shape[2:], 1)}


def _outer_inner(shape: tuple[int, ...], dim: int) -> tuple[int, int, int]:
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def lower(graph: Graph, memory: MemoryPlan, dtype: str,
          schedules: dict[str, Schedule] | None = None, layout: str = "blocked", threads: int | None = None,
          fixed: frozenset[str] = frozenset(),
          defaults: frozenset[str] = frozenset(),
          planner: Callable[[ConvSpec, Schedule | None], Plan] | None = None) -> Lowered:
    """Steps for every node of an optimized graph (no identity nodes left); convolutions
    get their weights prepared for their plans here, once (convgen.plan.weights).
    ``layout`` "blocked": values stay blocked between the layers that can (graph.layout);
    "nchw": every value NCHW. ``threads``: what the network was compiled for (None: the
    most any conv layer runs on), for the ops other than convolutions. ``fixed``: convs
    whose schedule the caller chose (never moved to the blocked depthwise plan);
    ``defaults``: convs on the heuristic default schedule, which a "co" conv reading or
    writing a blocked value trades for the blocked one (plan.defaults.default_co_schedule).
    ``planner``: the backend's own plans (a GPU backend's, convgen.plan.gpu), taken as they
    are: every value NCHW, weights as given, no CPU plan trades."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    schedules = schedules or {}
    plans = {node.name: (planner or make_plan)(
                 ConvSpec.from_dict(node.attrs["spec"]).replace(dtype=dtype),
                 schedules.get(node.name))
             for node in graph.nodes if node.op == "conv"}
    # (integer networks have no convolution, so nothing blocked)
    lanes = 1 if element_type(dtype).is_integer else block_lanes(dtype)
    blocked = choose_layouts(graph, plans, lanes, fixed, defaults) \
        if layout == "blocked" and planner is None else set()
    for name in defaults if planner is None else ():
        plan = plans[name]
        reads, writes = graph.node(name).inputs[0] in blocked, name in blocked
        co = isinstance(plan.kind, CoTiles)
        if co and (reads or writes):
            schedule = default_co_schedule(plan.spec, plan.threads, reads, writes)
            plans[name] = make_plan(plan.spec, schedule)
    inputs = {name: i for i, (name, _) in enumerate(graph.inputs)}

    packer = _Packer(dtype)
    constants: dict[str, int] = {}  # constant node -> parameter offset

    def buffer(name: str) -> Buffer:
        source = alias_source(graph, name)
        if source in inputs:
            return Buffer("input", inputs[source])
        if source in constants:
            return Buffer("param", constants[source])
        return Buffer("arena", memory.offsets[source])

    steps: list[Step] = []
    for i, node in enumerate(graph.nodes):
        if node.op == "constant":  # lives with the parameters: no code
            constants[node.name] = packer.add(node.params["value"])
            continue
        if node.op in VIEW_OPS:
            continue  # a view: no code
        function = f"layer{i}_{node.op}"
        shapes = [graph.shape_of(name) for name in node.inputs]
        step = Step(node.op, node.name, function, [buffer(n) for n in node.inputs],
                    buffer(node.name), in_elements=[math.prod(shape) for shape in shapes],
                    out_elements=math.prod(node.shape))
        if node.op == "identity":
            raise GraphError(f"{node.name}: identity nodes must be removed before lowering")
        in_blocked = bool(node.inputs) and node.inputs[0] in blocked
        if node.op == "conv" and planner is not None:
            step.plan = plans[node.name]
        elif node.op == "conv":
            plan = plans[node.name]
            # the weight prepared once, at load, not in every call (Winograd's U =
            # G g G^T, packed), as a bound kernel's
            step.plan = make_plan(plan.spec, plan.schedule, in_blocked=in_blocked,
                                  out_blocked=node.name in blocked,
                                  depthwise=isinstance(plan.kind, DepthwiseKind),
                                  prepared_weights=True)
        _lower_node(node, step, shapes, packer, dtype)
        if node.op in ("max_pool", "max_pool_indices", "avg_pool", "adaptive_avg_pool"):
            step.consts.update(blocked=in_blocked, lanes=lanes)
            if node.op == "avg_pool":  # a blocked row holds a pixel's lanes per column
                step.consts["padded_row"] = step.consts["row_elements"] \
                    * (lanes if in_blocked else 1) <= MAX_POOL_ROW_ELEMENTS
        steps.append(step)
    if threads is None:
        threads = max((step.plan.threads for step in steps if step.plan is not None),
                      default=1)
    for step in steps:  # pooling and large linear layers use the network's threads
        if step.kind in ("max_pool", "avg_pool"):
            step.consts["threads"] = min(threads, step.consts["jobs"])
        elif step.kind == "linear":
            c = step.consts
            chunks = c["rows"] * -(-c["out_features"] // (16 * lanes))
            large = c["rows"] * c["in_features"] * c["out_features"] >= PARALLEL_LINEAR_MACS
            step.consts.update(lanes=lanes, threads=min(threads, chunks) if large else 1)
    outputs = [(buffer(name), math.prod(graph.shape_of(name))) for name in graph.outputs]
    return Lowered(steps, packer.array(), outputs, memory.arena_elements, dtype,
                   frozenset(blocked), [tuple(shape) for _, shape in graph.inputs],
                   [tuple(graph.shape_of(name)) for name in graph.outputs])


def choose_layouts(graph: Graph, plans: dict[str, Plan], lanes: int,
                   fixed: frozenset[str] = frozenset(),
                   defaults: frozenset[str] = frozenset()) -> set[str]:
    """The blocked values (graph.layout.plan_layouts), after moving plans that cannot
    read or write the blocked layout onto ones that can, wherever the values around them
    end up blocked; ``plans`` is updated.

    Depthwise convs (not ``fixed`` by the caller) try the blocked depthwise plan
    (make_plan(..., depthwise=True)), kept where both their input and output end up blocked; 1x1
    convs on the default GEMM (``defaults``) try the "co" plan, kept where their input or
    output ends up blocked (MobileNetV2's expand and project layers between blocked
    depthwise ones). The others go back to their own plans and the layouts are planned
    again without them."""
    depthwise = {name for name, plan in plans.items()
                 if name not in fixed and depthwise_blocked(plan.spec) is None}
    gemm = {name for name in defaults if isinstance(plans[name].kind, WinogradPlan)
            and plans[name].kind.method == "gemm"
            and plans[name].cout_g >= lanes and plans[name].cin_g >= lanes}
    original = {name: plans[name] for name in depthwise | gemm}
    for name in depthwise:
        plans[name] = make_plan(plans[name].spec, plans[name].schedule, depthwise=True)
    for name in gemm:
        plans[name] = make_plan(plans[name].spec,
                                default_co_schedule(plans[name].spec, plans[name].threads))
    while True:
        blocked = plan_layouts(graph, plans, lanes)
        reads = {name: graph.node(name).inputs[0] in blocked for name in original}
        undone = {name for name in depthwise if name not in blocked or not reads[name]}
        undone |= {name for name in gemm if name not in blocked and not reads[name]}
        if not undone:
            return blocked
        for name in undone:
            plans[name] = original[name]
        depthwise -= undone
        gemm -= undone


def _lower_node(node: Node, step: Step, shapes, packer: _Packer, dtype: str) -> None:
    """Fill ``step`` (a conv step's plan is set) for ``node``."""
    a = node.attrs
    integer = element_type(dtype).is_integer
    if node.op == "conv":
        spec = step.plan.spec
        step.params["weight"] = packer.add(prepare_weight(step.plan, node.params["weight"]))
        if spec.bias:
            step.params["bias"] = packer.add(node.params["bias"])
        step.consts = {"residual": bool(a.get("residual")), "jobs": step.plan.jobs}
    elif node.op in ("max_pool", "max_pool_indices", "avg_pool"):
        nd = len(shapes[0]) - 2
        step.consts = {
            **_spatial_consts(shapes[0], node.shape),
            "kernel": _pad3(a["kernel_size"], 1), "stride": _pad3(a["stride"], 1),
            "padding": _pad3(a["padding"], 0),
            "padding_end": _pad3(a.get("padding_end", a["padding"]), 0),
            "dilation": _pad3(a.get("dilation", (1,) * nd), 1),
            "count_include_pad": bool(a.get("count_include_pad", True)),
            "jobs": shapes[0][0] * shapes[0][1], "threads": 1,
        }
        c = step.consts
        row = max((c["out_size"][2] - 1) * c["stride"][2] + (c["kernel"][2] - 1)
                  * c["dilation"][2] + 1, c["padding"][2] + c["in_size"][2])
        # pooling's two-pass loop, through a padded row of this many elements
        c.update(row_elements=row, padded_row=row <= MAX_POOL_ROW_ELEMENTS)
        if node.op == "max_pool_indices":
            # the indices are held in the element type: exact up to its mantissa's reach
            limit = 2 ** (np.finfo(dtype).nmant + 1)
            if math.prod(shapes[0]) > limit:
                raise GraphError(
                    f"{node.name}: the max-pooling indices of an input of "
                    f"{math.prod(shapes[0])} elements do not fit the {dtype} mantissa "
                    f"(exact up to 2**{np.finfo(dtype).nmant + 1}); compile with "
                    "dtype='float64'")
            c["storage_order"] = int(a.get("storage_order", 0))
    elif node.op == "adaptive_avg_pool":
        step.consts = _spatial_consts(shapes[0], node.shape)
    elif node.op == "linear":
        out_features, in_features = node.params["weight"].shape
        # stored transposed, (in, out): the kernels' inner loop runs over contiguous outputs
        step.params["weight"] = packer.add(np.asarray(node.params["weight"]).T)
        if node.params.get("bias") is not None:
            step.params["bias"] = packer.add(node.params["bias"])
        step.consts = {"rows": math.prod(shapes[0][:-1]), "in_features": in_features,
                       "out_features": out_features, "activation": a.get("activation"),
                       "activation_args": activation_arguments(a.get("activation"),
                                                               a.get("activation_args"))}
    elif node.op == "activation":
        step.consts = {"elements": math.prod(node.shape), "activation": a["name"],
                       "activation_args": activation_arguments(a["name"], a.get("args"))}
        if integer:  # relu, relu6 and clip: min(max(v, lo), hi) in the type's integers
            low, high = {"relu": (0, element_type(dtype).max), "relu6": (0, 6)}.get(
                a["name"], step.consts["activation_args"])
            step.consts["bounds"] = integer_bounds(low, high, dtype)
    elif node.op in ("softmax", "log_softmax"):
        outer, size, inner = _outer_inner(node.shape, a["dim"])
        step.consts = {"outer": outer, "size": size, "inner": inner,
                       "log": node.op == "log_softmax"}
        step.kind = "softmax"
    elif node.op == "batch_norm":
        p = node.params
        scale = p["weight"] / np.sqrt(p["running_var"] + float(a.get("eps", 1e-5)))
        step.params["scale"] = packer.add(scale)
        step.params["shift"] = packer.add(p["bias"] - p["running_mean"] * scale)
        shape = node.shape
        step.consts = {"batch": shape[0], "channels": shape[1],
                       "inner": math.prod(shape[2:])}
    elif node.op == "add":
        step.consts = {"elements": math.prod(node.shape)}
    elif node.op == "cat":
        dim = a["dim"]
        outer, total, inner = _outer_inner(node.shape, dim)
        copies, start = [], 0
        for shape in shapes:  # input k fills columns [start, start + its size) of each row
            copies.append({"start": start * inner, "chunk": shape[dim] * inner})
            start += shape[dim]
        step.consts = {"outer": outer, "out_row": total * inner, "copies": copies}
    elif node.op in ("transpose", "pad", "slice", "expand"):
        step.kind = "remap"
        step.consts = remap_consts(node, shapes[0], node.shape)
        if integer:  # the fill value as an integer of the type
            step.consts["value"] = integer_bounds(step.consts["value"], 0, dtype)[0]
    elif node.op == "lrn":
        step.consts = lrn_consts(node, node.shape)
    elif node.op == "binary":
        step.consts = {"elements": math.prod(node.shape), "op": node.attrs["kind"]}
    elif node.op == "where":
        step.consts = {"elements": math.prod(node.shape)}
    elif node.op == "matmul":
        step.consts = matmul_consts(shapes[0], shapes[1])
    elif node.op == "resample":
        step.consts = resample_consts(node, shapes[0])
        index, weight = resample_tables(node, step.consts["in_size"])
        step.params["index"] = packer.add(index)  # whole numbers, exact in float32
        if not step.consts["nearest"]:
            step.params["weight"] = packer.add(weight)
    else:
        raise GraphError(f"{node.name}: no lowering for op {node.op!r}")
