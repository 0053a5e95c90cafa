"""Hand-built graphs for the whole-network compiler tests (tests/test_graph_compile.py).

Builders return :class:`convgen.graph.ir.Node` with float64 parameters drawn from a
seeded generator; :func:`check` compiles a graph, runs it and compares every output
with the float64 oracle of the *original* (unfused) graph.
"""

from __future__ import annotations

import math

import numpy as np

from convgen.graph.compile import CompiledModel, compile_graph
from convgen.graph.ir import Graph, Node
from convgen.graph.memory import alias_source
from convgen.graph.reference import evaluate
from convgen.graph.shapes import infer_graph
from convgen.spec import ConvSpec

# Allowed |got - want| <= RTOL * |want| + ATOL * (1 + max |want|), per model dtype.
TOLERANCE = {"float32": (1e-4, 1e-4), "float64": (1e-10, 1e-10)}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def conv(name: str, source: str, input_shape: tuple[int, ...], out_channels: int,
         kernel_size=3, *, seed: int = 0, module: str = "Conv", **spec_fields) -> Node:
    """A ``conv`` node (residual False) with random weight (+ bias when the spec has one)."""
    spec = ConvSpec(input_shape=tuple(input_shape), out_channels=out_channels,
                    kernel_size=kernel_size, **spec_fields)
    r = rng(seed)
    params = {"weight": r.standard_normal(spec.weight_shape) / math.sqrt(
        max(1, math.prod(spec.weight_shape[1:])))}
    if spec.bias:
        params["bias"] = r.standard_normal(spec.bias_shape)
    return Node(name, "conv", [source], {"spec": spec.to_dict(), "residual": False}, params,
                module=module)


def conv_spec(node: Node) -> ConvSpec:
    return ConvSpec.from_dict(node.attrs["spec"])


def pool(name: str, source: str, op: str, nd: int, kernel, stride=None, padding=0,
         dilation=None, ceil_mode: bool = False, count_include_pad: bool = True) -> Node:
    """A ``max_pool``/``avg_pool`` node; ints become per-dim tuples (stride None: kernel)."""
    per_dim = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd  # noqa: E731
    attrs = {"kernel_size": per_dim(kernel),
             "stride": per_dim(kernel if stride is None else stride),
             "padding": per_dim(padding), "ceil_mode": ceil_mode}
    if op == "max_pool":
        attrs["dilation"] = per_dim(1 if dilation is None else dilation)
    else:
        attrs["count_include_pad"] = count_include_pad
    return Node(name, op, [source], attrs, module="MaxPool" if op == "max_pool" else "AvgPool")


def adaptive(name: str, source: str, output_size) -> Node:
    return Node(name, "adaptive_avg_pool", [source], {"output_size": output_size},
                module="AdaptiveAvgPool")


def batch_norm(name: str, source: str, channels: int, *, seed: int = 1,
               eps: float = 1e-5) -> Node:
    r = rng(seed)
    params = {"running_mean": r.standard_normal(channels),
              "running_var": r.uniform(0.5, 2.0, channels),
              "weight": r.uniform(0.5, 1.5, channels),
              "bias": r.standard_normal(channels)}
    return Node(name, "batch_norm", [source], {"eps": eps}, params, module="BatchNorm")


def activation(name: str, source: str, act: str, args: tuple = ()) -> Node:
    return Node(name, "activation", [source], {"name": act, "args": tuple(args)},
                module="Activation")


def linear(name: str, source: str, in_features: int, out_features: int, *,
           bias: bool = True, seed: int = 2) -> Node:
    r = rng(seed)
    params = {"weight": r.standard_normal((out_features, in_features)) / math.sqrt(in_features)}
    if bias:
        params["bias"] = r.standard_normal(out_features)
    return Node(name, "linear", [source], {"activation": None, "activation_args": ()}, params,
                module="Linear")


def node(name: str, op: str, inputs: list[str], **attrs) -> Node:
    return Node(name, op, list(inputs), dict(attrs), module=op)


def graph(inputs: list[tuple[str, tuple[int, ...]]], nodes: list[Node],
          outputs: list[str]) -> Graph:
    """A Graph with every node's shape inferred (GraphError when it is invalid)."""
    g = Graph([(name, tuple(shape)) for name, shape in inputs], nodes, list(outputs))
    infer_graph(g)
    return g


def random_inputs(g: Graph, dtype: str = "float32", seed: int = 0) -> list[np.ndarray]:
    r = rng(seed)
    return [r.standard_normal(shape).astype(dtype) for _, shape in g.inputs]


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str, label: str = "") -> None:
    rtol, atol = TOLERANCE[dtype]
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    scale = 1.0 + (float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=label)


def outputs_of(model: CompiledModel, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """model(*arrays) as a list (one output comes back bare)."""
    got = model(*arrays)
    return got if isinstance(got, list) else [got]


def check(g: Graph, backend: str, dtype: str = "float32", seed: int = 0,
          arrays: list[np.ndarray] | None = None, **compile_args) -> CompiledModel:
    """Compile ``g``, run it, and compare every output with evaluate(g) (unfused)."""
    original = g.copy()
    model = compile_graph(g, backend, dtype=dtype, **compile_args)
    arrays = random_inputs(g, dtype, seed) if arrays is None else arrays
    wants = evaluate(original, arrays)
    gots = outputs_of(model, arrays)
    assert len(gots) == len(wants) == len(g.outputs)
    for name, got, want in zip(g.outputs, gots, wants):
        assert got.dtype == np.dtype(dtype), name
        assert_close(got, want, dtype, f"output {name} ({backend}, {dtype})")
    return model


def lifetimes(g: Graph) -> dict[str, tuple[int, int]]:
    """(first, last) step of every arena value of an optimized graph, computed from scratch.

    A value is born at the step of its node and lives through the last step that reads it
    (directly or through flatten views); graph outputs live to ``len(g.nodes)``.
    """
    inputs = {name for name, _ in g.inputs}
    owner = {}
    for n in g.nodes:
        owner[n.name] = owner.get(n.inputs[0], n.inputs[0]) if n.op == "flatten" else n.name
    spans: dict[str, list[int]] = {}
    for i, n in enumerate(g.nodes):
        if n.op != "flatten":
            spans[n.name] = [i, i]
    for i, n in enumerate(g.nodes):
        for name in n.inputs + ([n.name] if n.op == "flatten" else []):
            source = owner.get(name, name)
            if source not in inputs:
                spans[source][1] = max(spans[source][1], i)
    for name in g.outputs:
        source = owner.get(name, name)
        if source not in inputs:
            spans[source][1] = len(g.nodes)
    assert all(alias_source(g, name) == source for name, source in owner.items())
    return {name: (first, last) for name, (first, last) in spans.items()}
